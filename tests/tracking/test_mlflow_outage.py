"""MLflow outages during a real (tiny-model) training run, against a real `mlflow server` (sqlite store).

Two faults. The slow tests terminate the server (SIGTERM to its process group) and start it again on the
same port over the same database and artifact folder: a tracking pod restarted behind its Service. A
restart costs 10-20 s of mlflow start-up here, so the fast test cuts the network instead: the client goes
through a forwarder that, when "down", refuses new connections and cuts the open ones (keep-alive
included), as a Service without ready endpoints or a partition would. Either way training must not
stop, and every point of `trainer_log.jsonl` must reach the server's metric history exactly once.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow_server as mlflow_server_module
import pytest
from mlflow_server import MlflowServer, TcpForwarder, _pipe

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


class CuttingForwarder(TcpForwarder):
    """A `TcpForwarder` whose `stop()` also cuts every connection it forwards (idle keep-alive ones too)."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        super().__init__(target, port)
        self._open: list[socket.socket] = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def stop(self) -> None:
        super().stop()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()


class AnswerDropper(TcpForwarder):
    """A forwarder that relays HTTP requests but, once per rule, cuts the connection instead of relaying the answer.

    The server has done the work (created the run, stored the metrics); the client sees a broken
    connection: the one outage in which resending what failed could store it twice.

    Args:
        target (`tuple[str, int]`):
            The server.
        rules (`list[Callable[[bytes], bool]]`):
            Each matches a request (its bytes) whose answer is dropped, the first time only.
    """

    def __init__(self, target: tuple[str, int], rules: list[Any]) -> None:
        super().__init__(target)
        self.rules = list(rules)
        self.dropped: list[str] = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        from_client = from_server = b""
        with client, upstream:
            while (request := _http_message(client, from_client)) is not None:
                message, from_client = request
                upstream.sendall(message)
                if (answer := _http_message(upstream, from_server)) is None:
                    return
                reply, from_server = answer
                rule = next((r for r in self.rules if r(message)), None)
                if rule is not None:
                    self.rules.remove(rule)
                    self.dropped.append(message.split(b"\r\n", 1)[0].decode())
                    return  # the server wrote; its answer never arrives
                client.sendall(reply)


def _http_message(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message (head and body) read from `sock` after `buffered`, and what followed it; `None` at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        if not (chunk := sock.recv(65536)):
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
            if not (chunk := sock.recv(65536)):
                return None
            rest += chunk
        end = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + 5
    else:
        end = int(fields.get(b"content-length", b"0"))
        while len(rest) < end:
            if not (chunk := sock.recv(65536)):
                return None
            rest += chunk
    return head + b"\r\n\r\n" + rest[:end], rest[end:]


class AtSteps:
    """A `TrainerCallback` that runs `actions[step]()` when that optimiser step ends (before its log event)."""

    def __init__(self, actions: dict[int, Any]) -> None:
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def on_step_end(inner, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: N805
                if state.global_step in actions:
                    actions[state.global_step]()

        self.callback = _Callback()


def train_tiny(output_dir: Path, callbacks: list[Any], max_steps: int, step_pause_s: float = 0.0) -> Any:
    """Train a 2-layer, hidden-32 Llama on random tokens, logging every step and evaluating every 4."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    class Pause(TrainerCallback):  # a step of a real model takes longer than this one's
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(step_pause_s)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    rows = []
    for _ in range(16):
        ids = torch.randint(0, 64, (16,)).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * 16, "labels": ids})
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-2, logging_steps=1, eval_strategy="steps", eval_steps=4, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, include_num_input_tokens_seen="non_padding",
    )
    extra = [Pause()] if step_pause_s else []
    trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=rows, eval_dataset=rows[:8],
                      callbacks=[*callbacks, *extra])
    trainer.train()
    return trainer


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
    chaos_row: Any, mlflow_server: str, tmp_path: Path
) -> None:
    """The network to the server cut after step 3 of 12 for a second, back after step 6 (fast variant).

    Training goes on; the buffered points are sent by the first log call once the server answers (step 6,
    not only at the end); the server's history equals trainer_log.jsonl, point for point.
    """
    from mlflow import MlflowClient

    row = chaos_row("MLflow cut off during training, back")
    proxy = CuttingForwarder(("127.0.0.1", int(mlflow_server.rsplit(":", 1)[1])))
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
            trainer = train_tiny(out, [outage.callback, JsonlLogCallback(out), tracker.callback()], max_steps=12)
    finally:
        proxy.stop()
    assert trainer.state.global_step == 12
    assert seen["buffered"] and not seen["buffer_left_at_step_7"]  # buffered while down, flushed on return
    assert not (out / BUFFER_FILE).exists()
    client = MlflowClient(mlflow_server)
    missing, duplicated, notes = compare_with_trainer_log(client, tracker.run_id, out / TRAINER_LOG)
    row.data_lost = missing + duplicated
    row.detail = "down steps 3-6"
    assert row.data_lost == 0, notes
    assert len(client.get_metric_history(tracker.run_id, "loss")) == 12
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_mlflow_answers_lost_after_the_server_wrote_store_nothing_twice(
    chaos_row: Any, mlflow_server: str, tmp_path: Path
) -> None:
    """The answers to the run's creation and to the first batch of metrics are cut after the server wrote them.

    Both are buffered and sent again; the run exists once and each point once (the server keeps one copy of
    a point with the same key, value, timestamp and step; the run is found again by its pending-id tag).
    """
    from mlflow import MlflowClient

    row = chaos_row("MLflow answers lost after the server wrote")
    rules = [lambda request: b"/runs/create " in request.split(b"\r\n", 1)[0],
             lambda request: b"/runs/log-batch " in request.split(b"\r\n", 1)[0] and b'"metrics": [{' in request]
    proxy = AnswerDropper(("127.0.0.1", int(mlflow_server.rsplit(":", 1)[1])), rules)
    proxy.start()
    parent = start_pipeline_run(mlflow_server, "answers-lost", "pipeline")
    out = tmp_path / "sft"
    try:
        with MLflowTracker.for_stage(proxy.url, parent, "sft", fallback_dir=out, retry_after_s=0) as tracker:
            train_tiny(out, [JsonlLogCallback(out), tracker.callback()], max_steps=6)
    finally:
        proxy.stop()
    row.runs = len(proxy.dropped)
    client = MlflowClient(mlflow_server)
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
        trainer = train_tiny(out, [outage.callback, JsonlLogCallback(out), tracker.callback()], max_steps=16)
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
def test_mlflow_killed_at_random_moments_of_training(
    chaos_row: Any, restartable_mlflow: RestartableMlflow, tmp_path: Path
) -> None:
    """Two outages at random moments (requests in flight are cut), each 1-4 s, during 120 steps, after one at the start.

    The stage's run is created while the server is down at the start too: it goes by a pending id until
    the server is back. retry_after_s is 0.5 s, so the tracker probes the server often, outages or not.
    """
    from mlflow import MlflowClient

    row = chaos_row("MLflow down 3x (start, 2 random moments) during training")
    server = restartable_mlflow
    parent = start_pipeline_run(server.url, "random-outages", "pipeline")
    out = tmp_path / "sft"
    rng = random.Random(18)
    done = threading.Event()

    def chaos() -> None:
        time.sleep(2.0)
        server.start()
        for _ in range(2):
            if done.wait(rng.uniform(1.0, 6.0)):
                return
            row.runs += 1
            server.stop()
            time.sleep(rng.uniform(1.0, 4.0))
            server.start()

    server.stop()  # down as the stage starts: its run is created from the buffer
    row.runs += 1
    killer = threading.Thread(target=chaos, daemon=True)
    killer.start()
    with MLflowTracker.for_stage(server.url, parent, "sft", fallback_dir=out, retry_after_s=0.5) as tracker:
        trainer = train_tiny(out, [JsonlLogCallback(out), tracker.callback()], max_steps=120, step_pause_s=0.15)
        done.set()
        killer.join(120)
        if server.server.process.poll() is not None:
            server.start()  # the last outage may outlast training: end() sends the buffer
    assert trainer.state.global_step == 120
    assert not (out / BUFFER_FILE).exists()
    client = MlflowClient(server.url)
    missing, duplicated, notes = compare_with_trainer_log(client, tracker.run_id, out / TRAINER_LOG)
    row.data_lost = missing + duplicated
    row.detail = f"{server.stops} outages"
    assert row.data_lost == 0, notes
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in runs] == [tracker.run_id]
