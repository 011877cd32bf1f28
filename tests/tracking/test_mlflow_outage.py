"""MLflow outages during a real (tiny-model) training run, against a real `mlflow server` (sqlite store; the fast
variants also on PostgreSQL, the chart's production store, in `make chaos`).

Two faults. The slow tests terminate the server (SIGTERM to its process group) and start it again on the
same port over the same database and artifact folder: a tracking pod restarted behind its Service. A
restart costs 10-20 s of mlflow start-up here, so the fast test cuts the network instead: the client goes
through a forwarder that, when "down", refuses new connections and cuts the open ones (keep-alive
included), as a Service without ready endpoints or a partition would. Either way training must not
stop, and every point of `trainer_log.jsonl` must reach the server's metric history exactly once.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow_server as mlflow_server_module
import pytest
from mlflow_server import MlflowServer
from outage_proxies import AnswerDropper, CuttingForwarder
from tiny_trainer import train_tiny

from kubetune.tracking import TRAINER_LOG, JsonlLogCallback
from kubetune.tracking.offline import BUFFER_FILE
from kubetune.tracking.parent_run import start_pipeline_run
from kubetune.tracking.stage_run import MLflowTracker

pytestmark = pytest.mark.chaos

# trainer_log.jsonl's name → the MLflow metric it is logged as (same value, same step)
COMPARED = {"loss": "loss", "lr": "learning_rate", "grad_norm": "grad_norm", "eval_loss": "eval_loss"}


class RestartableMlflow:
    """An `mlflow server` that can be stopped and started again on the same port, database and artifacts."""

    def __init__(self, root: Path, template_db: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if template_db is not None:  # an already-migrated database: a fresh one takes ~10 s to migrate
            with sqlite3.connect(template_db) as source, sqlite3.connect(root / "mlflow.db") as copy:
                source.backup(copy)
        self.server = mlflow_server_module.start_mlflow_server(root)
        self.url = self.server.url
        self.port = int(self.url.rsplit(":", 1)[1])
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1
        self.server.stop()

    def start(self) -> float:
        """Start it again on its port; returns the seconds until it answered."""
        # start_mlflow_server picks its port with free_port(): hand it the old one
        original = mlflow_server_module.free_port
        mlflow_server_module.free_port = lambda host="127.0.0.1": self.port
        try:
            self.server = mlflow_server_module.start_mlflow_server(self.root)
        finally:
            mlflow_server_module.free_port = original
        assert self.server.url == self.url
        return self.server.startup_s

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def restartable_mlflow(tmp_path: Path, mlflow_server_process: MlflowServer) -> Any:
    mlflow_server_process.wait_until_up()
    server = RestartableMlflow(tmp_path / "mlflow", template_db=mlflow_server_process.root / "mlflow.db")
    yield server
    server.close()


class AtSteps:
    """A `TrainerCallback` that runs `actions[step]()` when that optimiser step ends (before its log event)."""

    def __init__(self, actions: dict[int, Any]) -> None:
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def on_step_end(inner, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: N805
                if state.global_step in actions:
                    actions[state.global_step]()

        self.callback = _Callback()


def compare_with_trainer_log(client: Any, run_id: str, trainer_log: Path) -> tuple[int, int, list[str]]:
    """(points missing on the server, points there twice or more, what differs) over `COMPARED` metrics."""
    expected: dict[str, Counter[tuple[int, float]]] = {metric: Counter() for metric in COMPARED.values()}
    for line in trainer_log.read_text().splitlines():
        record = json.loads(line)
        for name, metric in COMPARED.items():
            if name in record:
                expected[metric][(record["current_steps"], float(record[name]))] += 1
    missing = duplicated = 0
    notes = []
    for metric, points in expected.items():
        got = Counter((m.step, float(m.value)) for m in client.get_metric_history(run_id, metric))
        lost = points - got
        extra = got - points
        missing += sum(lost.values())
        duplicated += sum(extra.values())
        if lost or extra:
            notes.append(f"{metric}: missing {sorted(lost)[:5]}, extra {sorted(extra)[:5]}")
    return missing, duplicated, notes


def test_mlflow_cut_off_during_training_and_back_loses_and_doubles_nothing(
    chaos_row: Any, store: str, backend: str, tmp_path: Path
) -> None:
    """The network to the server cut after step 3 of 12 for a second, back after step 6 (fast variant).

    Training goes on; the buffered points are sent by the first log call once the server answers (step 6,
    not only at the end); the server's history equals trainer_log.jsonl, point for point.
    """
    from mlflow import MlflowClient

    row = chaos_row(f"MLflow cut off during training, back ({backend} store)")
    proxy = CuttingForwarder(("127.0.0.1", int(store.rsplit(":", 1)[1])))
    proxy.start()
    parent = start_pipeline_run(proxy.url, "cut-off", "pipeline")
    out = tmp_path / "sft"
    seen: dict[str, Any] = {}

    def down() -> None:
        row.runs += 1
        proxy.stop()

    def up() -> None:
        time.sleep(0.6)  # the outage lasts longer than the tracker's back-off (0.5 s)
        seen["buffered"] = (out / BUFFER_FILE).is_file()
        proxy.start()

    def after_return() -> None:
        seen["buffer_left_at_step_7"] = (out / BUFFER_FILE).is_file()

    outage = AtSteps({3: down, 6: up, 7: after_return})
    try:
        with MLflowTracker.for_stage(proxy.url, parent, "sft", fallback_dir=out, retry_after_s=0.5) as tracker:
            trainer = train_tiny(out, [outage.callback, JsonlLogCallback(out), tracker.callback()], max_steps=12,
                                 eval_steps=4)
    finally:
        proxy.stop()
    assert trainer.state.global_step == 12
    assert seen["buffered"] and not seen["buffer_left_at_step_7"]  # buffered while down, flushed on return
    assert not (out / BUFFER_FILE).exists()
    client = MlflowClient(store)
    missing, duplicated, notes = compare_with_trainer_log(client, tracker.run_id, out / TRAINER_LOG)
    row.data_lost = missing + duplicated
    row.detail = "down steps 3-6"
    assert row.data_lost == 0, notes
    assert len(client.get_metric_history(tracker.run_id, "loss")) == 12
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_mlflow_answers_lost_after_the_server_wrote_store_nothing_twice(
    chaos_row: Any, store: str, backend: str, tmp_path: Path
) -> None:
    """The answers to the run's creation and to the first batch of metrics are cut after the server wrote them.

    Both are buffered and sent again; the run exists once and each point once (the server keeps one copy of
    a point with the same key, value, timestamp and step; the run is found again by its pending-id tag).
    """
    from mlflow import MlflowClient

    row = chaos_row(f"MLflow answers lost after the server wrote ({backend} store)")
    rules = [lambda request: b"/runs/create " in request.split(b"\r\n", 1)[0],
             lambda request: b"/runs/log-batch " in request.split(b"\r\n", 1)[0] and b'"metrics": [{' in request]
    proxy = AnswerDropper(("127.0.0.1", int(store.rsplit(":", 1)[1])), rules)
    proxy.start()
    parent = start_pipeline_run(store, "answers-lost", "pipeline")
    out = tmp_path / "sft"
    try:
        with MLflowTracker.for_stage(proxy.url, parent, "sft", fallback_dir=out, retry_after_s=0) as tracker:
            train_tiny(out, [JsonlLogCallback(out), tracker.callback()], max_steps=6, eval_steps=4)
    finally:
        proxy.stop()
    row.runs = len(proxy.dropped)
    client = MlflowClient(store)
    missing, duplicated, notes = compare_with_trainer_log(client, tracker.run_id, out / TRAINER_LOG)
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    row.data_lost = missing + duplicated
    row.detail = f"{len(runs)} run(s) for 1 stage"
    assert len(proxy.dropped) == 2, proxy.dropped
    assert row.data_lost == 0, notes
    assert [r.info.run_id for r in runs] == [tracker.run_id]
    assert not (out / BUFFER_FILE).exists()


@pytest.mark.slow
def test_mlflow_stopped_during_training_and_restarted_loses_and_doubles_nothing(
    chaos_row: Any, restartable_mlflow: RestartableMlflow, tmp_path: Path
) -> None:
    """Server terminated after step 3 of 16, started again (same port and store) after step 6.

    Training goes on through the outage; the buffered points are sent by the first log call after the
    server is back (step 7, not only at the end), and the server's history equals trainer_log.jsonl.
    """
    from mlflow import MlflowClient

    row = chaos_row("MLflow stopped during training, restarted")
    server = restartable_mlflow
    parent = start_pipeline_run(server.url, "outage", "pipeline")
    out = tmp_path / "sft"
    seen: dict[str, Any] = {}

    def down() -> None:
        row.runs += 1
        server.stop()

    def up() -> None:
        seen["restart_s"] = server.start()
        seen["buffered"] = (out / BUFFER_FILE).is_file()

    def after_return() -> None:
        seen["buffer_left_at_step_8"] = (out / BUFFER_FILE).is_file()

    outage = AtSteps({3: down, 6: up, 8: after_return})
    start = time.monotonic()
    with MLflowTracker.for_stage(server.url, parent, "sft", fallback_dir=out, retry_after_s=1.0) as tracker:
        trainer = train_tiny(out, [outage.callback, JsonlLogCallback(out), tracker.callback()], max_steps=16,
                             eval_steps=4)
    assert trainer.state.global_step == 16  # training was not held up
    assert seen["buffered"] and not seen["buffer_left_at_step_8"]  # buffered while down, flushed on return
    assert not (out / BUFFER_FILE).exists()
    client = MlflowClient(server.url)
    missing, duplicated, notes = compare_with_trainer_log(client, tracker.run_id, out / TRAINER_LOG)
    row.data_lost = missing + duplicated
    row.detail = f"down steps 3-6, restart {seen['restart_s']:.0f} s, run {time.monotonic() - start:.0f} s"
    assert row.data_lost == 0, notes
    assert len(client.get_metric_history(tracker.run_id, "loss")) == 16
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in runs] == [tracker.run_id]  # one run for the stage, not one per attempt


@pytest.mark.slow
def test_mlflow_cut_off_at_random_moments_of_training(chaos_row: Any, mlflow_server: str, tmp_path: Path) -> None:
    """Six network cuts at random moments (requests in flight are cut), 0.2-1.5 s each, during 150 steps.

    The first cut is on as the stage starts, so its run is created from the buffer (a pending id until
    then). retry_after_s is 0.2 s: the tracker probes often, so some cuts land on requests in flight.
    Cuts rather than restarts: a real restart costs 10-20 s of mlflow start-up here (the test above does one).
    """
    from mlflow import MlflowClient

    row = chaos_row("MLflow cut off 6x at random moments of training")
    proxy = CuttingForwarder(("127.0.0.1", int(mlflow_server.rsplit(":", 1)[1])))
    parent = start_pipeline_run(mlflow_server, "random-cuts", "pipeline")
    out = tmp_path / "sft"
    rng = random.Random(18)
    done = threading.Event()

    def chaos() -> None:
        for index in range(6):
            if index and done.wait(rng.uniform(0.5, 3.0)):
                break
            row.runs += 1
            proxy.stop()
            time.sleep(rng.uniform(0.2, 1.5))
            proxy.start()

    killer = threading.Thread(target=chaos, daemon=True)
    with MLflowTracker.for_stage(proxy.url, parent, "sft", fallback_dir=out, retry_after_s=0.2) as tracker:
        killer.start()
        trainer = train_tiny(out, [JsonlLogCallback(out), tracker.callback()], max_steps=150, eval_steps=4,
                             step_pause_s=0.05)
        done.set()
        killer.join(30)
    proxy.stop()
    assert trainer.state.global_step == 150
    assert not (out / BUFFER_FILE).exists()
    client = MlflowClient(mlflow_server)
    missing, duplicated, notes = compare_with_trainer_log(client, tracker.run_id, out / TRAINER_LOG)
    row.data_lost = missing + duplicated
    row.detail = f"{row.runs} cuts"
    assert row.data_lost == 0, notes
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in runs] == [tracker.run_id]
