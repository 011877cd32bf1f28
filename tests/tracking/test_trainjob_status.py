"""Progress reports into a TrainJob's `status.trainerStatus`, received by a real local HTTPS server.

No cluster here: the stand-in is `StatusServer`, a real HTTPS server on 127.0.0.1 with a self-signed certificate,
answering the one route of Kubeflow Trainer's status server
(`POST /apis/trainer.kubeflow.org/v1alpha1/namespaces/<ns>/trainjobs/<name>/status`) and checking, as the real one
does, the bearer token; every body it receives must parse as the kubeflow SDK's own
`TrainerV1alpha1UpdateTrainJobStatusRequest`. The environment variables are the three the Trainer controller sets
in a trainer container (`KUBEFLOW_TRAINER_SERVER_URL`, `..._CA_CERT`, `..._TOKEN`). One test drives the callback
with a real Trainer run of a tiny model; the others with a real `TrainerState` and a fake clock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from kubetune.tracking.trainjob_status import (
    MAX_METRICS,
    TrainJobStatusCallback,
    status_metrics,
    trainjob_status_callbacks,
)

DATA = Path(__file__).resolve().parents[2] / "data"
ROUTE = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs/kt-sft-abc/status"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeflow-trainer-controller-manager")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "ca.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class StatusServer:
    """Kubeflow Trainer's status endpoint, as far as a training process sees it (see the module docstring)."""

    token: str = "token-1"
    answer: int = 200  # what the next requests get (503: the controller is restarting)
    received: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    token_file: Path | None = None  # where the pod would find the projected token

    def start(self, folder: Path) -> str:
        cert, key = _self_signed(folder)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != ROUTE:
                    code = 404
                elif self.headers.get("Authorization") != f"Bearer {server.token}":
                    code = 403
                else:
                    code = server.answer
                if code == 200:
                    server.check(body)
                    server.received.append(body)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body if code == 200 else {"status": "Failure", "code": code}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.ca = cert
        return f"https://127.0.0.1:{self.httpd.server_address[1]}{ROUTE}"

    def check(self, body: dict[str, Any]) -> None:
        from kubeflow_trainer_api import models

        parsed = models.TrainerV1alpha1UpdateTrainJobStatusRequest.from_dict(body).to_dict()
        status = dict(parsed["trainerStatus"])
        status["lastUpdatedTime"] = status["lastUpdatedTime"].isoformat()
        if status != body["trainerStatus"]:
            self.invalid.append(f"{body} is not what the Trainer API reads: {parsed}")
        for metric in body["trainerStatus"].get("metrics", []):
            if not (1 <= len(metric["name"]) <= 64 and 1 <= len(metric["value"]) <= 64):
                self.invalid.append(f"metric {metric} is outside the CRD's bounds")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def trainjob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StatusServer]:
    """A status server, and this process's environment as the Trainer controller sets it in a trainer container."""
    server = StatusServer()
    url = server.start(tmp_path)
    token = tmp_path / "token"
    token.write_text(server.token + "\n")
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", url)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_CA_CERT", str(server.ca))
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(token))
    monkeypatch.delenv("DISABLE_KUBEFLOW_INTEGRATION", raising=False)
    server.token_file = token
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drive(callback: TrainJobStatusCallback, clock: Clock, state: TrainerState, args: Any, steps: int) -> None:
    """`steps` training steps of 1 s each, a log line at every one."""
    control = TrainerControl()
    for _ in range(steps):
        clock.now += 1.0
        state.global_step += 1
        callback.on_log(args, state, control, logs={"loss": 2.0 / state.global_step, "learning_rate": 1e-4})


def _args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    """kubetune's TrainingArguments for a tiny run (`train.arguments.training_arguments`, as the stages build them)."""
    from kubetune.config import load_config
    from kubetune.train.arguments import training_arguments

    cfg = load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft", "dataset_dir": str(DATA),
                             "finetuning_type": "full", "bf16": False, **kw})
    return training_arguments(cfg, tmp_path / "out")


class TinyRegression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def test_a_real_training_run_reports_its_progress_eta_and_metrics_into_the_status(trainjob, tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    rows = [{"x": x, "labels": x.sum()} for x in torch.randn(16, 4, generator=gen)]
    args = _args(tmp_path, max_steps=6, per_device_train_batch_size=4, logging_steps=1, learning_rate=0.05,
                 save_strategy="no", disable_tqdm=True, eval_strategy="steps", eval_steps=3, val_size=0.1)
    assert "kubeflow" not in args.report_to  # transformers' own reporter, taken out again: one writer
    callback = TrainJobStatusCallback(min_interval_s=0.0)
    Trainer(model=TinyRegression(), args=args, train_dataset=rows, eval_dataset=rows[:4],
            callbacks=[callback]).train()

    assert trainjob.invalid == []
    statuses = [body["trainerStatus"] for body in trainjob.received]
    assert callback.sent == len(statuses) >= 8  # the start, six training lines, two evaluations, the end
    first, last = statuses[0], statuses[-1]
    assert first["progressPercentage"] == 0 and "estimatedRemainingSeconds" not in first
    assert (last["progressPercentage"], last["estimatedRemainingSeconds"]) == (100, 0)
    progress = [s["progressPercentage"] for s in statuses]
    assert progress == sorted(progress) and max(progress[:-1]) == 99  # 100 only once training has ended
    assert all("estimatedRemainingSeconds" in s for s in statuses[1:])
    named = {m["name"]: m["value"] for m in last["metrics"]}
    assert named["step"] == "6" and float(named["eval_loss"]) > 0 and float(named["loss"]) > 0
    assert "train_runtime" in named  # the Trainer's closing line, kept with the last training loss
    for status in statuses:
        dt.datetime.fromisoformat(status["lastUpdatedTime"])


def test_training_lines_are_rate_limited_and_evaluations_and_the_end_are_not(trainjob, tmp_path) -> None:
    clock = Clock()
    callback = TrainJobStatusCallback(min_interval_s=5.0, clock=clock)
    state, args, control = TrainerState(max_steps=100), _args(tmp_path), TrainerControl()
    callback.on_train_begin(args, state, control)
    _drive(callback, clock, state, args, steps=12)  # 12 s: one report per 5 s
    assert [s["trainerStatus"]["progressPercentage"] for s in trainjob.received] == [0, 5, 10]
    callback.on_log(args, state, control, logs={"eval_loss": 0.75})  # within 5 s of the last: sent anyway
    callback.on_train_end(args, state, control)
    *_, evaluation, end = [body["trainerStatus"] for body in trainjob.received]
    assert {"name": "eval_loss", "value": "0.75"} in evaluation["metrics"]
    assert {"name": "loss", "value": repr(2.0 / 12)} in evaluation["metrics"]  # the latest of each metric
    # ETA from this run's own pace: 12 steps in 12 s, 88 to go
    assert evaluation["estimatedRemainingSeconds"] == 88
    assert (end["progressPercentage"], end["estimatedRemainingSeconds"]) == (100, 0)


def test_a_rotated_token_is_read_again(trainjob, tmp_path) -> None:
    clock = Clock()
    callback = TrainJobStatusCallback(min_interval_s=0.0, retry_after_s=0.0, clock=clock)
    state, args = TrainerState(max_steps=10), _args(tmp_path)
    callback.on_train_begin(args, state, TrainerControl())
    trainjob.token = "token-2"  # the kubelet rotated the projected token; the server accepts only the new one
    trainjob.token_file.write_text("token-2")
    _drive(callback, clock, state, args, steps=1)
    assert len(trainjob.received) == 2 and callback.sent == 2


def test_an_unreachable_or_failing_server_warns_once_and_never_stops_training(trainjob, tmp_path, caplog) -> None:
    clock = Clock()
    callback = TrainJobStatusCallback(min_interval_s=0.0, retry_after_s=30.0, clock=clock)
    state, args, control = TrainerState(max_steps=100), _args(tmp_path), TrainerControl()
    trainjob.answer = 503
    with caplog.at_level(logging.WARNING, logger="kubetune.tracking.trainjob_status"):
        callback.on_train_begin(args, state, control)
        _drive(callback, clock, state, args, steps=10)  # within the 30 s pause: not even tried
        callback.on_log(args, state, control, logs={"eval_loss": 1.0})
        trainjob.answer = 200
        _drive(callback, clock, state, args, steps=25)  # tried again 30 s after the failure (step 30), and sent
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "HTTP Error 503" in warnings[0] and "training goes on" in warnings[0]
    sent = [body["trainerStatus"]["progressPercentage"] for body in trainjob.received]
    assert sent == list(range(30, 36))  # nothing during the pause, not even the forced evaluation line

    trainjob.stop()  # the controller is gone altogether: a refused connection, still no exception
    clock.now += 60
    _drive(callback, clock, state, args, steps=1)
    callback.on_train_end(args, state, control)


def test_only_global_rank_zero_reports_and_never_beside_transformers_own_callback(trainjob, tmp_path) -> None:
    for state, args in ((TrainerState(max_steps=10, is_world_process_zero=False), _args(tmp_path)),
                        (TrainerState(max_steps=10), _args(tmp_path, report_to=["kubeflow"]))):
        clock = Clock()
        callback = TrainJobStatusCallback(min_interval_s=0.0, clock=clock)
        callback.on_train_begin(args, state, TrainerControl())
        _drive(callback, clock, state, args, steps=3)
        callback.on_train_end(args, state, TrainerControl())
    assert trainjob.received == []


def test_transformers_own_reporter_stays_only_when_report_to_names_it(trainjob, tmp_path) -> None:
    assert TrainingArguments(output_dir=str(tmp_path)).report_to == ["kubeflow"]  # what transformers does here
    assert "kubeflow" not in _args(tmp_path).report_to
    assert "kubeflow" not in _args(tmp_path, report_to="tensorboard").report_to
    assert "kubeflow" in _args(tmp_path, report_to="kubeflow").report_to


def test_the_callback_is_added_only_where_the_trainjob_takes_reports(trainjob, monkeypatch) -> None:
    assert [type(c) for c in trainjob_status_callbacks()] == [TrainJobStatusCallback]
    monkeypatch.setenv("DISABLE_KUBEFLOW_INTEGRATION", "true")
    assert trainjob_status_callbacks() == []
    monkeypatch.delenv("DISABLE_KUBEFLOW_INTEGRATION")
    monkeypatch.delenv("KUBEFLOW_TRAINER_SERVER_URL")  # an older Trainer, the feature gate off, a PyTorchJob
    assert trainjob_status_callbacks() == []


def test_every_stage_gets_the_callback_from_run_stage_beside_the_callers_own(trainjob, monkeypatch) -> None:
    from kubetune import stages
    from kubetune.config import load_config

    given: list = []
    monkeypatch.setitem(stages.RECIPES, "sft", lambda cfg, callbacks: given.extend(callbacks))
    mine = object()
    stages.run_stage(load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft",
                                        "dataset_dir": str(DATA), "finetuning_type": "full", "bf16": False}),
                     callbacks=[mine])
    assert given[0] is mine and [type(c) for c in given[1:]].count(TrainJobStatusCallback) == 1


def test_metrics_stay_within_the_trainer_apis_bounds() -> None:
    import numpy as np

    values = {"loss": np.float32(0.5), "rewards/chosen": -1.25, "step": 3, "done": True, "note": "text",
              "x" * 65: 1.0}
    assert status_metrics(values) == [{"name": "loss", "value": "0.5"}, {"name": "rewards/chosen", "value": "-1.25"},
                                      {"name": "step", "value": "3"}]
    assert len(status_metrics({f"m{i}": i for i in range(300)})) == MAX_METRICS
