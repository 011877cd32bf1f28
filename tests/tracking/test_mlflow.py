"""MLflow tracking and the registry gate, against a real `mlflow server` process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kubetune.export_marker import mark_complete
from kubetune.tracking.offline import BUFFER_FILE, replay_buffer
from kubetune.tracking.parent_run import start_pipeline_run
from kubetune.tracking.registry import promote, register_model
from kubetune.tracking.stage_run import MLflowTracker


def test_nested_run_from_another_process(mlflow_server: str, tmp_path: Path) -> None:
    parent = start_pipeline_run(mlflow_server, "exp-nested", "parent", {"kfp_run_id": "abc", "config_hash": "h"})
    script = textwrap.dedent(f"""
        from kubetune.tracking.stage_run import MLflowTracker
        with MLflowTracker.for_stage({mlflow_server!r}, {parent!r}, "sft", "exp-nested") as t:
            t.log_params({{"lora_rank": 8, "dataset": ["a", "b"]}})
            for step in range(1, 4):
                t.log_metrics({{"loss": 1.0 / step, "rewards/accuracies": 0.5}}, step=step)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    client = MlflowClient(mlflow_server)
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 1
    child = children[0]
    assert child.data.params["lora_rank"] == "8" and child.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [1, 2, 3]
    assert client.get_run(parent).data.tags["kfp_run_id"] == "abc"


def test_injected_run_id_is_reused(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("exp-injected"))
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    assert start_pipeline_run(mlflow_server, "exp-injected", "p", {"kfp_run_id": "k"}) == run.info.run_id


def test_unreachable_server_buffers_then_replays(mlflow_server: str, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket closes
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("exp-outage"))
    tracker = MLflowTracker(dead, run.info.run_id, fallback_dir=tmp_path)
    for step in range(1, 4):
        tracker.log_metrics({"loss": float(step)}, step=step)
    buffer = tmp_path / BUFFER_FILE
    assert len(buffer.read_text().splitlines()) == 3
    assert sum("UNREACHABLE" in r.message for r in caplog.records) == 1  # loud, once
    assert replay_buffer(buffer, mlflow_server) == 3
    assert not buffer.exists()
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 2.0, 3.0]


def _version(server: str, name: str, tmp_path: Path) -> str:
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("exp-registry")
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment("exp-registry"))
    model = tmp_path / f"model-{run.info.run_id}"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    mark_complete(model)  # as `kubetune export` ends
    return register_model(server, name, str(model), run_id=run.info.run_id, tags={"data_hash": "d"})


def test_champion_gate(mlflow_server: str, tmp_path: Path) -> None:
    name = "gate-model"
    client = MlflowClient(mlflow_server)
    v1 = _version(mlflow_server, name, tmp_path)
    first = promote(mlflow_server, name, v1, "rouge", metrics={"rouge": 50.0}, min_delta=1.0)
    assert first.promoted and "first version" in first.reason
    v2 = _version(mlflow_server, name, tmp_path)
    worse = promote(mlflow_server, name, v2, "rouge", metrics={"rouge": 50.5}, min_delta=1.0)
    assert not worse.promoted and worse.alias == "challenger" and "not better enough" in worse.reason
    assert client.get_model_version_by_alias(name, "champion").version == v1
    assert client.get_model_version(name, v2).tags["promotion_reason"] == worse.reason
    v3 = _version(mlflow_server, name, tmp_path)
    better = promote(mlflow_server, name, v3, "rouge", metrics={"rouge": 52.0}, min_delta=1.0)
    assert better.promoted and better.champion_version == v1 and better.champion_value == 50.0
    assert client.get_model_version_by_alias(name, "champion").version == v3
    assert "model" in client.get_model_version(name, v3).source


def test_lower_is_better_force_and_missing_metric(mlflow_server: str, tmp_path: Path) -> None:
    name = "loss-model"
    v1 = _version(mlflow_server, name, tmp_path)
    assert promote(mlflow_server, name, v1, "eval_loss", greater_is_better=False, metrics={"eval_loss": 1.0}).promoted
    v2 = _version(mlflow_server, name, tmp_path)
    assert not promote(mlflow_server, name, v2, "eval_loss", greater_is_better=False,
                       metrics={"eval_loss": 1.2}).promoted
    assert promote(mlflow_server, name, v2, "eval_loss", force=True).promoted
    v3 = _version(mlflow_server, name, tmp_path)
    with pytest.raises(KeyError, match="eval_loss.*rouge"):
        promote(mlflow_server, name, v3, "eval_loss", metrics={"rouge": 1.0})


def test_promote_command(mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    name = "cli-model"
    v1 = _version(mlflow_server, name, tmp_path)
    MlflowClient(mlflow_server).set_model_version_tag(name, v1, "gate_metric", "bleu")
    MlflowClient(mlflow_server).set_model_version_tag(name, v1, "gate_metric_value", "10.0")
    assert main(["promote", "--model", name, "--version", v1, "--metric", "bleu",
                 "--tracking-uri", mlflow_server]) == 0
    assert "champion" in capsys.readouterr().out
    v2 = _version(mlflow_server, name, tmp_path)
    assert main(["promote", "--model", name, "--version", v2, "--metric", "bleu",
                 "--tracking-uri", mlflow_server]) == 2  # v2 has no bleu anywhere
    assert "bleu" in capsys.readouterr().err


def test_promote_command_says_which_server_did_not_answer(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of backing off for a minute
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert main(["promote", "--model", "m", "--version", "1", "--tracking-uri", url]) == 1
    err = capsys.readouterr().err
    assert f"the MLflow server at {url} did not answer" in err and "Traceback" not in err
