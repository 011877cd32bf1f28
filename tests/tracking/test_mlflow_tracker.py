"""MLflow tracking against a real `mlflow server`: parent and nested runs across processes, step metrics from a
real Trainer, artifacts, `MLFLOW_RUN_ID` reuse, and training through a tracking outage."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow_server import MlflowServer, TcpForwarder, free_port
from tiny_trainer import train_tiny

from kubetune.config import load_config
from kubetune.tracking.connection import default_tracking_uri
from kubetune.tracking.offline import BUFFER_FILE, PENDING_PREFIX, replay_buffer
from kubetune.tracking.parent_run import TrackingUnavailable, end_pipeline_run, git_commit, start_pipeline_run
from kubetune.tracking.stage_run import MAX_PARAM_LENGTH, MLflowTracker

CONFIG = {"model_name_or_path": "tiny-llama", "stage": "sft", "finetuning_type": "lora", "lora_rank": 8,
          "dataset": "kubi_sft", "template": "chatml", "learning_rate": 1e-2, "max_steps": 4}

# The sft stage, as a pod would run it: a fresh interpreter that knows only the parent run id, read from stdin
# (so that its slow imports overlap the server's start-up), training with tests/tiny_trainer.py.
SFT_STAGE = """
import json, sys
sys.path.insert(0, {tests!r})
from tiny_trainer import train_tiny
from kubetune.config import load_config
from kubetune.tracking.stage_run import MLflowTracker

cfg = load_config(None, json.loads({config!r}))
parent = sys.stdin.readline().strip()
with MLflowTracker.for_stage({uri!r}, parent, "sft", fallback_dir={out!r}) as tracker:
    tracker.log_params(cfg.to_flat())
    train_tiny({out!r}, [tracker.callback()])
    tracker.log_artifact({config_file!r})
print(tracker.run_id)
"""


def _metric_steps(client: Any, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # free a moment ago: nothing listens there


def _start_sft_stage(url: str, out: Path, config_file: Path) -> subprocess.Popen[str]:
    script = SFT_STAGE.format(tests=str(Path(__file__).resolve().parents[1]),
                              config=json.dumps(CONFIG), uri=url, out=str(out), config_file=str(config_file))
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_stages_nest_under_the_parent_across_processes(mlflow_server_process: MlflowServer, tmp_path: Path,
                                                       unique: str) -> None:
    from mlflow import MlflowClient

    url = mlflow_server_process.url
    config_file = tmp_path / "run_config.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    stage = _start_sft_stage(url, tmp_path / "sft", config_file)  # importing torch while the server starts
    try:
        mlflow_server_process.wait_until_up()
        parent = start_pipeline_run(url, f"pipeline-{unique}", "sft-pipeline",
                                    {"config_hash": "cfg123", "data_hash": "data456"}, kfp_run_id=f"kfp-{unique}")
        out, err = stage.communicate(parent + "\n", timeout=180)
    finally:
        stage.kill()
    assert stage.returncode == 0, err[-3000:]
    sft_run = out.strip().splitlines()[-1]

    # The evaluate stage, in this process, again from the id string alone.
    predictions = tmp_path / "generated_predictions.jsonl"
    predictions.write_text(json.dumps({"prompt": "hi", "predict": "hello", "label": "hello"}) + "\n")
    with MLflowTracker.for_stage(url, parent, "evaluate", fallback_dir=tmp_path / "eval") as evaluate:
        evaluate.log_metrics({"predict_rouge-l": 87.5, "eval_loss": 0.22, "note": "not a number"}, step=4)
        evaluate.log_artifact(predictions)

    client = MlflowClient(url)
    parent_run = client.get_run(parent)
    tags = parent_run.data.tags
    assert (tags["kfp_run_id"], tags["config_hash"], tags["data_hash"]) == (f"kfp-{unique}", "cfg123", "data456")
    assert tags["kubetune_version"] and tags.get("git_commit") == git_commit()  # None outside a git checkout
    children = client.search_runs([parent_run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.info.run_name for run in children) == ["evaluate", "sft"]
    assert {run.info.status for run in children} == {"FINISHED"}

    sft_data = client.get_run(sft_run).data
    flat = load_config(None, CONFIG).to_flat()
    assert len(sft_data.params) == len(flat) > 100  # more than one log_batch of params
    assert sft_data.params["lora_rank"] == "8" and sft_data.params["learning_rate"] == "0.01"
    assert sft_data.params["dataset"] == json.dumps(flat["dataset"])
    assert _metric_steps(client, sft_run, "loss") == [1, 2, 3, 4]
    assert _metric_steps(client, sft_run, "learning_rate") == [1, 2, 3, 4]
    assert _metric_steps(client, sft_run, "grad_norm") == [1, 2, 3, 4]
    assert _metric_steps(client, sft_run, "eval_loss") == [2, 4]
    assert all(m.value > 0 for m in client.get_metric_history(sft_run, "throughput"))
    assert "train_loss" in sft_data.metrics  # the end-of-training summary too
    assert [a.path for a in client.list_artifacts(sft_run)] == ["run_config.yaml"]
    assert not (tmp_path / "sft" / BUFFER_FILE).exists()

    assert client.get_run(evaluate.run_id).data.metrics == {"predict_rouge-l": 87.5, "eval_loss": 0.22}
    downloaded = client.download_artifacts(evaluate.run_id, predictions.name, str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == predictions.read_text()


def test_injected_run_id_is_used_instead_of_a_new_run(mlflow_server: str, mlflow_client: Any, unique: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = mlflow_client.create_experiment(f"injected-{unique}")
    injected = mlflow_client.create_run(experiment).info.run_id  # what the KFP backend would have made
    monkeypatch.setenv("MLFLOW_RUN_ID", injected)
    monkeypatch.setenv("KFP_RUN_ID", "kfp-from-env")
    assert start_pipeline_run(mlflow_server, f"injected-{unique}", "ignored", {"config_hash": "c"}) == injected
    assert mlflow_client.get_run(injected).data.tags["kfp_run_id"] == "kfp-from-env"
    assert len(mlflow_client.search_runs([experiment])) == 1


def test_a_retried_first_step_reuses_the_parent(mlflow_server: str, unique: str) -> None:
    first = start_pipeline_run(mlflow_server, f"retry-{unique}", "p", kfp_run_id=f"kfp-{unique}")
    assert start_pipeline_run(mlflow_server, f"retry-{unique}", "p", kfp_run_id=f"kfp-{unique}") == first
    assert start_pipeline_run(mlflow_server, f"retry-{unique}", "p", kfp_run_id=f"other-{unique}") != first


def test_a_new_experiment_opens_on_its_runs_table(mlflow_server: str, mlflow_client: Any, unique: str) -> None:
    """MLflow 3's UI shows an untagged experiment as a GenAI one (traces, judges); ours declare model training."""
    start_pipeline_run(mlflow_server, f"kind-{unique}", "p", kfp_run_id=f"kfp-{unique}")
    tags = mlflow_client.get_experiment_by_name(f"kind-{unique}").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_ending_a_pipeline_closes_its_parent_and_any_open_step_run(mlflow_server: str, mlflow_client: Any,
                                                                   unique: str) -> None:
    name = f"end-{unique}"
    parent = start_pipeline_run(mlflow_server, name, "p", kfp_run_id=f"kfp-{unique}")
    other = start_pipeline_run(mlflow_server, name, "p", kfp_run_id=f"other-{unique}")
    experiment = mlflow_client.get_experiment_by_name(name).experiment_id
    finished = mlflow_client.create_run(experiment, tags={"mlflow.parentRunId": parent})
    mlflow_client.set_terminated(finished.info.run_id, "FINISHED")
    killed_pod = mlflow_client.create_run(experiment, tags={"mlflow.parentRunId": parent})  # never closed

    assert end_pipeline_run(mlflow_server, name, f"kfp-{unique}", "FAILED") == parent
    status = {run_id: mlflow_client.get_run(run_id).info.status
              for run_id in (parent, finished.info.run_id, killed_pod.info.run_id, other)}
    assert status == {parent: "FAILED", finished.info.run_id: "FINISHED", killed_pod.info.run_id: "FAILED",
                      other: "RUNNING"}  # another pipeline run's parent is not touched
    assert mlflow_client.get_run(parent).info.end_time is not None
    assert end_pipeline_run(mlflow_server, name, f"never-{unique}", "FINISHED") is None  # nothing opened: no-op


@pytest.mark.parametrize(("state", "status"), [
    ("SUCCEEDED", "FINISHED"),  # kfp.local
    ("COMPLETE", "FINISHED"),  # the KFP backend (MLMD's execution state)
    ("FAILED", "FAILED"), ("SYSTEM_ERROR", "FAILED"), ("CANCELED", "KILLED"), ("CANCELLED", "KILLED"),
])
def test_kfp_final_states_map_to_mlflow_statuses(state: str, status: str) -> None:
    from kubetune.tracking.pipeline_tracking import mlflow_status

    assert mlflow_status(state) == status


def test_long_params_are_truncated_with_a_note_and_batched(mlflow_server: str, mlflow_client: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    params: dict[str, Any] = {f"p{i:03d}": i for i in range(250)}  # three batches of at most 100
    params["dataset"] = ",".join(f"dataset_{i}" for i in range(1000))  # about 11,000 characters
    with MLflowTracker.for_stage(mlflow_server, "", "params", f"params-{tmp_path.name}", fallback_dir=tmp_path) as t:
        t.log_params(params)
        t.log_params({"p001": 1, "p002": "changed"})  # unchanged: skipped; changed: MLflow keeps the first
    logged = mlflow_client.get_run(t.run_id).data.params
    assert len(logged) == 251 and logged["p002"] == "2"
    assert len(logged["dataset"]) == MAX_PARAM_LENGTH
    assert logged["dataset"].endswith(f"...[truncated: {len(params['dataset'])} characters]")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("truncated dataset" in w for w in warnings) and any("p002 stays '2'" in w for w in warnings)


def test_a_wrong_parent_id_is_an_error_not_an_outage(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="not found|does not exist"):
        MLflowTracker.for_stage(mlflow_server, "0" * 32, "sft", fallback_dir=tmp_path)
    assert not (tmp_path / BUFFER_FILE).exists()


def test_no_parent_run_without_a_server(tmp_path: Path) -> None:
    with pytest.raises(TrackingUnavailable, match="127.0.0.1.*unreachable"):
        start_pipeline_run(_dead_url(), "exp", "run")


def test_training_goes_on_through_an_outage_and_the_buffer_replays(
    mlflow_server: str, mlflow_client: Any, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    parent = start_pipeline_run(mlflow_server, f"outage-{unique}", "p")
    dead = _dead_url()
    out = tmp_path / "sft"
    with MLflowTracker.for_stage(dead, parent, "sft", fallback_dir=out) as tracker:
        tracker.log_params({"lora_rank": 8})
        trainer = train_tiny(out, [tracker.callback()])
        (out / "training_loss.png").write_bytes(b"a plot")
        tracker.log_artifact(out / "training_loss.png")
    assert trainer.state.global_step == 4  # training was not held up
    outage = [r for r in caplog.records if r.levelno == logging.WARNING and "UNREACHABLE" in r.getMessage()]
    assert len(outage) == 1 and dead in outage[0].getMessage()  # loud, once, naming the server
    assert any("replay_buffer" in r.getMessage() for r in caplog.records)  # the end says how to send it later
    buffer = out / BUFFER_FILE
    ops = [json.loads(line)["op"] for line in buffer.read_text().splitlines()]
    assert ops[0] == "create_run" and ops[-1] == "end" and ops.count("metrics") >= 7  # 4 train, 2 eval, summary
    assert tracker.run_id.startswith(PENDING_PREFIX)

    with pytest.raises(Exception, match="127.0.0.1"):
        replay_buffer(buffer, dead)  # still down: nothing is lost
    assert len(buffer.read_text().splitlines()) == len(ops)
    assert replay_buffer(buffer, mlflow_server) == len(ops)
    assert not buffer.exists()
    experiment = mlflow_client.get_run(parent).info.experiment_id
    [run] = mlflow_client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert run.info.run_name == "sft" and run.info.status == "FINISHED" and run.data.params == {"lora_rank": "8"}
    assert _metric_steps(mlflow_client, run.info.run_id, "loss") == [1, 2, 3, 4]
    assert _metric_steps(mlflow_client, run.info.run_id, "eval_loss") == [2, 4]
    assert [a.path for a in mlflow_client.list_artifacts(run.info.run_id)] == ["training_loss.png"]


def test_buffered_metrics_are_flushed_when_the_server_comes_back(
    mlflow_server_process: MlflowServer, mlflow_client: Any, tmp_path: Path, unique: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    server = mlflow_server_process
    parent = start_pipeline_run(server.url, f"comeback-{unique}", "p")
    proxy = TcpForwarder(target=("127.0.0.1", int(server.url.rsplit(":", 1)[1])))  # not listening yet: "down"
    caplog.set_level(logging.INFO, logger="kubetune.tracking")
    trackers = [MLflowTracker.for_stage(proxy.url, parent, stage, fallback_dir=tmp_path / stage, retry_after_s=0)
                for stage in ("sft", "dpo")]
    try:
        for tracker in trackers:
            tracker.log_metrics({"loss": 3.0}, step=1)
            tracker.log_metrics({"loss": 2.0}, step=2)
            assert tracker.run_id.startswith(PENDING_PREFIX)
            assert len(tracker.buffer_path.read_text().splitlines()) == 3  # the run's creation, two steps
        proxy.start()  # the server is back
        sft, dpo = trackers
        sft.log_metrics({"loss": 1.0}, step=3)  # the next call sends the buffer first
        assert dpo.flush() == 3  # or an explicit flush
        for tracker in trackers:
            tracker.end()
    finally:
        proxy.stop()
    assert [(m.step, m.value) for m in mlflow_client.get_metric_history(sft.run_id, "loss")] == [
        (1, 3.0), (2, 2.0), (3, 1.0)]
    assert _metric_steps(mlflow_client, dpo.run_id, "loss") == [1, 2]
    for tracker in trackers:
        assert not tracker.buffer_path.exists()
        run = mlflow_client.get_run(tracker.run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    assert any("answers again: sent 3 buffered records" in r.getMessage() for r in caplog.records)


def test_only_the_main_process_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # another torchrun rank: no run of its own, no buffer
    with MLflowTracker.for_stage(_dead_url(), "", "sft", fallback_dir=tmp_path) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=1)
    assert not (tmp_path / BUFFER_FILE).exists()


def test_default_tracking_uri_is_a_local_sqlite_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubetune.tracking")
    uri = default_tracking_uri(tmp_path / "outputs")
    assert uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert (tmp_path / "outputs").is_dir()
    assert any(str(tmp_path / "outputs" / "mlflow.db") in r.getMessage() for r in caplog.records)  # says where


def test_local_store_keeps_artifacts_beside_the_database(mlflow_server_process: MlflowServer, tmp_path: Path) -> None:
    # Start from a consistent copy of the test server's database, already migrated: migrating a fresh one
    # takes ~10 s and is MLflow's own business.
    (tmp_path / "outputs").mkdir()
    mlflow_server_process.wait_until_up()
    with sqlite3.connect(mlflow_server_process.root / "mlflow.db") as source, \
            sqlite3.connect(tmp_path / "outputs" / "mlflow.db") as copy:
        source.backup(copy)
    uri = default_tracking_uri(tmp_path / "outputs")
    parent = start_pipeline_run(uri, "local", "p")
    with MLflowTracker.for_stage(uri, parent, "sft", fallback_dir=tmp_path) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_artifact(__file__)
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()
    assert list((tmp_path / "outputs" / "mlartifacts").rglob(Path(__file__).name))

