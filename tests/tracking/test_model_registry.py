"""The model registry and the champion/challenger gate, against a real `mlflow server`.

(Named test_model_registry.py: tests/data/test_registry.py holds the basename, and tests/ folders are not packages.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from kubetune.export_marker import mark_complete
from kubetune.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    GateMetricMissing,
    alias_version,
    decide,
    promote,
    register_model,
)

LINEAGE = {"kfp_run_id": "kfp-1", "data_hash": "d1", "config_hash": "c1", "base_model": "SmolLM2-135M", "stage": "sft"}


def _model_dir(tmp_path: Path, name: str = "merged") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    mark_complete(folder)  # as `kubetune export` ends (register refuses a folder without the marker)
    return folder


def _pipeline_run(client: Any, experiment: str, eval_metrics: dict[str, float] | None = None) -> str:
    """A parent run like a pipeline's; `eval_metrics` go to a nested `evaluate` run, as the pipeline logs them."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    parent = client.create_run(experiment_id, run_name="pipeline").info.run_id
    if eval_metrics:
        child = client.create_run(experiment_id, run_name="evaluate", tags={"mlflow.parentRunId": parent})
        for key, value in eval_metrics.items():
            client.log_metric(child.info.run_id, key, value)
    return parent


def _version(uri: str, client: Any, name: str, tmp_path: Path, eval_metrics: dict[str, float] | None = None) -> str:
    run = _pipeline_run(client, f"registry-{name}", eval_metrics)
    return register_model(uri, name, str(_model_dir(tmp_path, f"merged-{run}")), run_id=run, tags=LINEAGE)


def _champion(client: Any, name: str) -> str:
    return client.get_model_version_by_alias(name, CHAMPION).version


def test_a_local_model_is_uploaded_to_its_run_with_lineage_tags(mlflow_server: str, mlflow_client: Any,
                                                                 tmp_path: Path, unique: str) -> None:
    name = f"upload-{unique}"
    run = _pipeline_run(mlflow_client, f"registry-{name}")
    first = register_model(mlflow_server, name, _model_dir(tmp_path, "a"), run_id=run, tags=LINEAGE)
    second = register_model(mlflow_server, name, _model_dir(tmp_path, "b"), run_id=run, tags=LINEAGE)
    assert (first, second) == ("1", "2")
    v1, v2 = mlflow_client.get_model_version(name, "1"), mlflow_client.get_model_version(name, "2")
    artifact_uri = mlflow_client.get_run(run).info.artifact_uri
    assert (v1.source, v2.source) == (f"{artifact_uri}/model", f"{artifact_uri}/model-2")  # never overwritten
    assert v1.run_id == run and v1.status == "READY"
    assert {k: v1.tags[k] for k in LINEAGE} == LINEAGE and v1.tags["kubetune_version"]
    files = sorted(a.path for a in mlflow_client.list_artifacts(run, "model"))
    assert files == ["model/_SUCCESS", "model/config.json", "model/model.safetensors"]


def test_a_uri_is_referenced_not_copied(mlflow_server: str, mlflow_client: Any, unique: str, bucket: str,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.storage import upload_dir

    monkeypatch.setenv("KFP_RUN_ID", "kfp-env")
    uri = upload_dir(_model_dir(tmp_path), f"s3://{bucket}/kubi/20250101-000000")  # its _SUCCESS last
    version = register_model(mlflow_server, f"s3-{unique}", uri)
    registered = mlflow_client.get_model_version(f"s3-{unique}", version)
    assert registered.source == uri
    assert registered.tags["kfp_run_id"] == "kfp-env"


def test_a_local_model_needs_a_run_and_must_exist(mlflow_server: str, tmp_path: Path, unique: str) -> None:
    with pytest.raises(ValueError, match="needs an MLflow run"):
        register_model(mlflow_server, f"norun-{unique}", _model_dir(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        register_model(mlflow_server, f"norun-{unique}", tmp_path / "nowhere", run_id="x")


def test_champion_moves_only_when_beaten_by_more_than_min_delta(mlflow_server: str, mlflow_client: Any,
                                                               tmp_path: Path, unique: str) -> None:
    name = f"gate-{unique}"

    def gate(version: str, rouge: float) -> Any:
        return promote(mlflow_server, name, version, "rouge", min_delta=1.0, metrics={"rouge": rouge, "bleu": 1.0})

    v1 = _version(mlflow_server, mlflow_client, name, tmp_path)
    first = gate(v1, 50.0)
    assert (first.promoted, first.alias, first.champion_version) == (True, CHAMPION, None)
    assert "first version" in first.reason and _champion(mlflow_client, name) == v1

    v2 = _version(mlflow_server, mlflow_client, name, tmp_path)
    worse = gate(v2, 50.5)  # better, but not by more than min_delta
    assert (worse.promoted, worse.alias, worse.champion_version, worse.champion_value) == (False, CHALLENGER, v1, 50.0)
    assert "not better enough" in worse.reason and "min_delta 1" in worse.reason
    assert _champion(mlflow_client, name) == v1
    assert mlflow_client.get_model_version_by_alias(name, CHALLENGER).version == v2
    tags = mlflow_client.get_model_version(name, v2).tags
    assert (tags["promotion_decision"], tags["promotion_reason"]) == (CHALLENGER, worse.reason)
    assert (tags["gate_metric"], float(tags["gate_metric_value"])) == ("rouge", 50.5)

    v3 = _version(mlflow_server, mlflow_client, name, tmp_path)
    better = gate(v3, 52.0)
    assert (better.promoted, better.candidate_value, better.champion_version) == (True, 52.0, v1)
    assert _champion(mlflow_client, name) == v3
    assert mlflow_client.get_model_version(name, v1).tags["superseded_by"] == v3
    assert mlflow_client.get_model_version(name, v3).tags["promotion_decision"] == CHAMPION


def test_lower_is_better(mlflow_server: str, mlflow_client: Any, tmp_path: Path, unique: str) -> None:
    name = f"loss-{unique}"
    versions = [_version(mlflow_server, mlflow_client, name, tmp_path) for _ in range(3)]
    for version, loss in zip(versions, (1.0, 1.2, 0.8), strict=True):
        promote(mlflow_server, name, version, "eval_loss", greater_is_better=False, metrics={"eval_loss": loss})
    assert _champion(mlflow_client, name) == versions[2]
    assert mlflow_client.get_model_version(name, versions[1]).tags["promotion_decision"] == CHALLENGER
    assert "lower is better" in mlflow_client.get_model_version(name, versions[1]).tags["promotion_reason"]


def test_the_gate_metric_is_read_from_the_versions_runs(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                        unique: str) -> None:
    # `kubetune promote --model NAME --version N` passes no metrics: they come from the pipeline's evaluate run.
    name = f"fromrun-{unique}"
    v1 = _version(mlflow_server, mlflow_client, name, tmp_path, eval_metrics={"predict_bleu-4": 6.2})
    v2 = _version(mlflow_server, mlflow_client, name, tmp_path, eval_metrics={"predict_bleu-4": 66.4})
    assert promote(mlflow_server, name, v1, "predict_bleu-4").candidate_value == pytest.approx(6.2)
    decision = promote(mlflow_server, name, v2, "predict_bleu-4")
    assert decision.promoted and decision.champion_value == pytest.approx(6.2)
    assert _champion(mlflow_client, name) == v2


def test_the_base_models_scores_are_not_the_versions(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                     unique: str) -> None:
    """evaluate-base nests under the same parent with the same metric names, and may start after evaluate."""
    name = f"baseline-{unique}"
    run = _pipeline_run(mlflow_client, f"registry-{name}", {"predict_bleu-4": 40.0})
    experiment_id = mlflow_client.get_run(run).info.experiment_id
    base = mlflow_client.create_run(experiment_id, run_name="evaluate-base", tags={"mlflow.parentRunId": run})
    mlflow_client.log_metric(base.info.run_id, "predict_bleu-4", 5.0)  # the newest child: the base model's score
    version = register_model(mlflow_server, name, str(_model_dir(tmp_path)), run_id=run, tags=LINEAGE)
    assert promote(mlflow_server, name, version, "predict_bleu-4").candidate_value == pytest.approx(40.0)


def test_a_missing_gate_metric_names_the_ones_there_are(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                        unique: str) -> None:
    name = f"missing-{unique}"
    v1 = _version(mlflow_server, mlflow_client, name, tmp_path, eval_metrics={"eval_loss": 0.3, "predict_bleu-4": 6.0})
    with pytest.raises(GateMetricMissing, match=r"'predict_rouge-l'.*eval_loss, predict_bleu-4"):
        promote(mlflow_server, name, v1, "predict_rouge-l")
    with pytest.raises(KeyError, match=r"'rouge'.*available: bleu"):  # a KeyError, for callers that catch those
        promote(mlflow_server, name, v1, "rouge", metrics={"bleu": 1.0})
    assert alias_version(mlflow_server, name, CHAMPION) is None  # nothing moved


def test_force_sets_champion_whatever_the_metrics(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                  unique: str) -> None:
    name = f"force-{unique}"
    v1 = _version(mlflow_server, mlflow_client, name, tmp_path)
    promote(mlflow_server, name, v1, "rouge", metrics={"rouge": 50.0})
    v2 = _version(mlflow_server, mlflow_client, name, tmp_path)
    assert not promote(mlflow_server, name, v2, "rouge", metrics={"rouge": 10.0}).promoted
    forced = promote(mlflow_server, name, v2, "rouge", force=True)  # reads its recorded 10.0; would not be needed
    assert forced.promoted and "forced" in forced.reason and forced.champion_value == 50.0
    assert _champion(mlflow_client, name) == v2
    assert alias_version(mlflow_server, name, CHALLENGER) is None  # v2 no longer holds both aliases
    assert mlflow_client.get_model_version(name, v2).tags["promotion_forced"] == "true"
    v3 = _version(mlflow_server, mlflow_client, name, tmp_path)
    assert promote(mlflow_server, name, v3, "no_such_metric", force=True).candidate_value is None


def test_bad_min_delta_is_refused(mlflow_server: str) -> None:
    with pytest.raises(ValueError, match="min_delta"):
        promote(mlflow_server, "any", "1", "rouge", min_delta=-1.0)


@pytest.mark.parametrize(
    ("candidate", "champion", "greater_is_better", "min_delta", "promoted"),
    [
        (51.0, 50.0, True, 0.0, True),
        (50.0, 50.0, True, 0.0, False),  # a tie keeps the champion
        (50.5, 50.0, True, 1.0, False),
        (51.5, 50.0, True, 1.0, True),
        (0.8, 1.0, False, 0.0, True),
        (1.2, 1.0, False, 0.0, False),
        (0.95, 1.0, False, 0.1, False),
        (math.nan, 1.0, True, 0.0, False),  # a diverged run never wins
    ],
)
def test_decide(candidate: float, champion: float, greater_is_better: bool, min_delta: float, promoted: bool) -> None:
    assert decide(candidate, champion, greater_is_better, min_delta) is promoted
