"""A registered champion whose model cannot be read: the evaluate step still scores (the base model stands in and
says why), and promotion refuses the candidate with a gate naming the champion's version and the reason.

Against a real `mlflow server` (sqlite store, local artifacts); the champions are registered as MLflow holds them
(a version whose artifacts are gone, one whose source holds no model), the end-to-end case on the tiny model.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.config.pipeline import load_pipeline_config
from kubetune.evaluate.candidate_vs_baseline import Baseline, compare, find_baseline
from kubetune.evaluate.gates import (
    CHAMPION_UNREADABLE,
    CHAMPION_UNREADABLE_WHY,
    FETCH_FAILED,
    NO_MODEL,
    REGISTRY_UNREADABLE,
    GateSettings,
    check_gates,
)

REPO = Path(__file__).resolve().parents[2]


def _config(model_dir: Path, tracking_uri: str, registered: str, **extra: Any) -> str:
    data = {
        "name": "tiny", "model_name_or_path": str(model_dir), "finetuning_type": "lora", "lora_rank": 4,
        "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 4,
        "disable_tqdm": True, "do_sample": False, "max_new_tokens": 4, "report_to": "none",
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": 5e-2, "max_steps": 2,
                           "per_device_train_batch_size": 2, "save_strategy": "no"}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"},
        "promotion": {"registered_model": registered, "metric": "eval_loss", "greater_is_better": False},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": f"unreadable-{registered}"}, **extra,
    }
    return load_pipeline_config(text=yaml.safe_dump(data)).to_param()


def _champion(client: Any, name: str, source: str, gate_value: float = 99.0) -> str:
    """A version registered with `source` (as MLflow keeps whatever a registrar gave it), made champion."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # the model's first version
        client.create_registered_model(name)
    version = client.create_model_version(name, source, tags={
        "gate_metric": "eval_loss", "gate_metric_value": repr(gate_value), "export_complete": "true"}).version
    client.set_registered_model_alias(name, "champion", version)
    return version


def _model_folder(path: Path) -> Path:
    """A folder as `kubetune export` leaves it (config, weights, its completion marker)."""
    from kubetune.export_marker import mark_complete

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    mark_complete(path)
    return path


def _champion_whose_artifacts_are_gone(server: Any, client: Any, name: str, tmp_path: Path) -> str:
    """Registered as the register step does (uploaded into its run's artifacts), made champion, then its files
    deleted from the server's artifact store (a purge, a lost volume)."""
    from kubetune.tracking.registry import register_model

    found = client.get_experiment_by_name(f"unreadable-{name}")
    experiment = found.experiment_id if found else client.create_experiment(f"unreadable-{name}")
    run = client.create_run(experiment, run_name="pipeline").info.run_id
    version = register_model(server.url, name, str(_model_folder(tmp_path / f"champion-{run}")), run_id=run)
    client.set_registered_model_alias(name, "champion", version)
    stored = server.root / "artifacts" / experiment / run
    assert stored.is_dir(), sorted(p.name for p in (server.root / "artifacts").iterdir())
    shutil.rmtree(stored)
    return version


def _cfg(model_dir: Path, uri: str, name: str):  # noqa: ANN202
    return load_pipeline_config(text=_config(model_dir, uri, name))


def test_a_champion_whose_artifacts_are_gone_is_named_with_the_fetch_error(
        mlflow_server_process: Any, mlflow_server: str, mlflow_client: Any, tiny_model_dir: Path, unique: str,
        tmp_path: Path, cache_dir: Path) -> None:
    name = f"gone-{unique}"
    version = _champion_whose_artifacts_are_gone(mlflow_server_process, mlflow_client, name, tmp_path)
    baseline = find_baseline(_cfg(tiny_model_dir, mlflow_server, name), mlflow_server)
    assert baseline.model_path is None and baseline.label.startswith("base model")
    assert (baseline.unreadable_champion, baseline.why) == (version, FETCH_FAILED)
    assert f"champion v{version}'s model" in baseline.note and "could not be fetched" in baseline.note
    assert baseline.refusal_metrics() == {CHAMPION_UNREADABLE: float(version), CHAMPION_UNREADABLE_WHY: FETCH_FAILED}


def test_a_champion_whose_s3_source_holds_no_model_or_nothing_is_named(
        mlflow_server: str, mlflow_client: Any, tiny_model_dir: Path, unique: str, tmp_path: Path,
        bucket: str) -> None:
    from kubetune.storage import upload_dir

    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("the weights were moved elsewhere")
    name = f"s3-{unique}"
    cfg = _cfg(tiny_model_dir, mlflow_server, name)
    version = _champion(mlflow_client, name, upload_dir(not_a_model, f"s3://{bucket}/models/no-config"))
    baseline = find_baseline(cfg, mlflow_server)
    assert (baseline.unreadable_champion, baseline.why, baseline.model_path) == (version, NO_MODEL, None)
    assert f"champion v{version}'s model 's3://{bucket}/models/no-config" in baseline.note
    assert "holds no model" in baseline.note

    version = _champion(mlflow_client, name, f"s3://{bucket}/models/never-uploaded")
    baseline = find_baseline(cfg, mlflow_server)
    assert (baseline.unreadable_champion, baseline.why) == (version, FETCH_FAILED), baseline.note


def test_a_readable_champion_is_the_baseline_and_a_first_model_is_not_refused(
        mlflow_server: str, mlflow_client: Any, tiny_model_dir: Path, unique: str, bucket: str) -> None:
    from kubetune.storage import upload_dir

    name = f"fine-{unique}"
    first = find_baseline(_cfg(tiny_model_dir, mlflow_server, name), mlflow_server)
    assert (first.note, first.refusal_metrics()) == ("no champion registered yet", {})
    version = _champion(mlflow_client, name, upload_dir(tiny_model_dir, f"s3://{bucket}/models/tiny"))
    baseline = find_baseline(_cfg(tiny_model_dir, mlflow_server, name), mlflow_server)
    assert (baseline.label, baseline.refusal_metrics()) == (f"champion v{version}", {})
    fetched = Path(baseline.model_path)  # fetched into the cache once, where the model loader finds it
    assert (fetched / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()


def test_a_registry_that_does_not_answer_is_not_taken_for_no_champion(tiny_model_dir: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    baseline = find_baseline(_cfg(tiny_model_dir, dead, "whatever"), dead)
    assert baseline.why == REGISTRY_UNREADABLE and "registry could not be read" in baseline.note
    assert baseline.refusal_metrics()[CHAMPION_UNREADABLE] == 0.0  # the version is unknown
    gate = check_gates({"eval_loss": 1.0, "baseline/eval_loss": 2.0, **baseline.refusal_metrics()},
                       GateSettings("eval_loss", greater_is_better=False))[0]
    assert not gate.passed and "registry did not answer" in gate.detail and "v0" not in gate.detail


def test_the_comparison_carries_it_and_every_other_gate_still_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    baseline = Baseline("base model x", note="champion v7's model 's3://b/m' could not be fetched (boom)",
                        unreadable_champion="7", why=FETCH_FAILED)
    cfg = _cfg(tiny_model_dir, "http://unused", "x")
    candidate = cfg.eval_config(None, output_dir=str(tmp_path / "candidate"))

    def run_eval(run_cfg, side):  # noqa: ANN001, ANN202  what the step measured on each side
        return {"eval_loss": 1.0 if side == "candidate" else 2.0}, []

    result = compare(cfg, candidate, baseline, run_eval)
    assert result.metrics[CHAMPION_UNREADABLE] == 7.0 and result.metrics["delta/eval_loss"] == -1.0
    assert result.report.notes == ["Baseline: champion v7's model 's3://b/m' could not be fetched (boom)."]
    gates = check_gates(result.metrics, GateSettings("eval_loss", greater_is_better=False,
                                                     no_regression={"eval_loss": 0.1}))
    assert [g.passed for g in gates] == [False, True, True]  # the candidate is better than the base, still refused
    assert gates[0].name == "the baseline is the registered champion"
    assert "champion v7 was not scored: its model could not be fetched" in gates[0].detail
    assert "compared with the base model" in gates[0].detail


def test_the_evaluate_step_succeeds_and_promotion_refuses_naming_the_champion(
        mlflow_server_process: Any, mlflow_server: str, mlflow_client: Any, tiny_model_dir: Path, tmp_path: Path,
        cache_dir: Path, unique: str) -> None:
    from kubetune.components import runtime
    from kubetune.stages import run_stage
    from kubetune.tracking.pipeline_tracking import open_pipeline_run
    from kubetune.tracking.registry import register_model

    name = f"refuse-{unique}"
    config = _config(tiny_model_dir, mlflow_server, name)
    cfg = runtime.parse(config)
    champion = _champion_whose_artifacts_are_gone(mlflow_server_process, mlflow_client, name, tmp_path)
    mlflow_client.set_model_version_tag(name, champion, "gate_metric", "eval_loss")
    mlflow_client.set_model_version_tag(name, champion, "gate_metric_value", "99.0")  # a poor champion
    adapter = tmp_path / "adapter"
    run_stage(cfg.stage_config("sft", output_dir=str(adapter)))
    parent = open_pipeline_run(cfg, f"kfp-{unique}")

    html = tmp_path / "evaluation.html"
    metrics = runtime.evaluate(config, str(adapter), str(tmp_path / "report.md"), str(tmp_path / "pred.jsonl"),
                               run_id=f"kfp-{unique}", parent_run_id=parent, html_path=str(html))
    assert metrics["eval_loss"] > 0 and "baseline/eval_loss" in metrics  # the step measured both sides
    assert (metrics[CHAMPION_UNREADABLE], metrics[CHAMPION_UNREADABLE_WHY]) == (float(champion), FETCH_FAILED)
    shown = html.read_text()
    assert f"champion v{champion}&#x27;s model" in shown and "could not be fetched" in shown

    version = register_model(mlflow_server, name, str(_model_folder(tmp_path / "merged")), run_id=parent)
    decision = runtime.promote(config, version, metrics)
    # the registry alone would promote (99 is a poor champion value); the gate refuses, naming v1 and why
    assert not decision["promoted"] and decision["alias"] == "challenger", decision
    refused = decision["gates"][0]
    assert (refused["name"], refused["passed"]) == ("the baseline is the registered champion", False)
    assert f"champion v{champion} was not scored: its model could not be fetched" in refused["detail"]
    assert "Registry:" in decision["reason"] and f"champion v{champion}" in decision["reason"]
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == champion
    tags = mlflow_client.get_model_version(name, version).tags
    assert tags["promotion_decision"] == "challenger" and "was not scored" in tags["promotion_reason"]


@pytest.fixture
def unique() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


@pytest.fixture
def mlflow_client(mlflow_server: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
