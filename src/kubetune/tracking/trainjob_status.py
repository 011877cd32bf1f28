"""Training progress in the Kubeflow Trainer `TrainJob`'s `status.trainerStatus` (progress %, ETA, metrics).

Kubeflow Trainer v2.2 added this (KEP-2779, "TrainJob progress"; alpha, behind the controller's `TrainJobStatus`
feature gate). With the gate on, the controller runs a status server and gives every trainer container three
variables: `KUBEFLOW_TRAINER_SERVER_URL`, the HTTPS endpoint for this one job
(`https://<controller service>:<port>/apis/trainer.kubeflow.org/v1alpha1/namespaces/<ns>/trainjobs/<name>/status`),
`KUBEFLOW_TRAINER_SERVER_CA_CERT`, the CA that signed the server's certificate, and
`KUBEFLOW_TRAINER_SERVER_TOKEN`, a projected service-account token whose audience names the job (it expires
after an hour and the kubelet rotates the file, so it is read again for every report). The training process POSTs
`{"trainerStatus": {"progressPercentage", "estimatedRemainingSeconds", "metrics": [{"name", "value"}],
"lastUpdatedTime"}}` with that token as a bearer token; the controller checks the token and applies the status
itself, so the job's pods need no RBAC of their own. Without the variables (an older Trainer, the gate off, a
PyTorchJob, no cluster) nothing is reported.

transformers 5 has a reporter of its own (`KubeflowCallback`), which `TrainingArguments` adds by itself whenever
the variables are set, and the kubeflow SDK has `update_trainjob_status`. kubetune reports with its own, and
`train.arguments.training_arguments` takes transformers' out again (unless `report_to` names kubeflow, when this
one stays silent), so that the status is written once and agrees with `trainer_log.jsonl` and the console: the
same ETA (`throughput.TrainingPace`, which counts only this call's steps — transformers' divides by the global
step, too short an ETA on a job resumed from a checkpoint), the same metrics (`metric_values`: numpy scalars
too, as TRL logs them), within the API's limits (a name or value over 64 characters, or a 257th metric, would
have the whole update refused). An unreachable server costs one warning and a pause (`retry_after_s`), never a
failed run, nor a timeout at every step (the SDK's throttle counts only updates that succeeded).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.tracking.metric_values import metric_values
from kubetune.tracking.throughput import TrainingPace

logger = logging.getLogger(__name__)

SERVER_URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"
CA_CERT_ENV = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
TOKEN_ENV = "KUBEFLOW_TRAINER_SERVER_TOKEN"
DISABLE_ENV = "DISABLE_KUBEFLOW_INTEGRATION"  # transformers' switch for its callback; it turns this one off too

# the Trainer API's bounds on `trainerStatus.metrics` (TrainJob CRD validation)
MAX_METRICS = 256
MAX_FIELD_CHARS = 64


def in_trainjob_with_status() -> bool:
    """Whether this process runs in a TrainJob whose controller takes progress reports (the variables are set)."""
    if os.environ.get(DISABLE_ENV, "").upper() in ("1", "TRUE"):
        return False
    return bool(os.environ.get(SERVER_URL_ENV)) and bool(os.environ.get(TOKEN_ENV))


def trainjob_status_callbacks() -> list[TrainerCallback]:
    """`[TrainJobStatusCallback()]` inside a TrainJob that takes progress reports, else `[]` (see the module)."""
    return [TrainJobStatusCallback()] if in_trainjob_with_status() else []


def status_metrics(values: dict[str, Any]) -> list[dict[str, str]]:
    """The metrics among `values` in the API's form (`[{"name", "value"}]`), within its limits.

    A name longer than the API allows is left out rather than cut (two cut names could collide); values are
    Python's shortest round-tripping form of the number.
    """
    out = []
    for name, number in metric_values(values).items():
        value = repr(number)
        if len(name) <= MAX_FIELD_CHARS and len(value) <= MAX_FIELD_CHARS:
            out.append({"name": name, "value": value})
    return out[:MAX_METRICS]


class TrainJobStatusCallback(TrainerCallback):
    """Report progress, ETA and the latest metrics to the TrainJob's status at each log event (global rank 0 only).

    Training lines are sent at most every `min_interval_s`; evaluation lines (rare, and what a reader wants to
    see) and the end of training always are. The metrics are the latest value of each one logged so far, so a
    training line does not hide the last evaluation's. Progress stops at 99 until training has ended.

    Args:
        min_interval_s (`float`, *optional*, defaults to 5.0):
            The least time between two training-line reports (the Trainer's guidance: at most one per 5 s).
        retry_after_s (`float`, *optional*, defaults to 60.0):
            After a failed report, how long nothing is sent.
        timeout_s (`float`, *optional*, defaults to 3.0):
            How long one report may take.
        clock (`Callable[[], float]`, *optional*, defaults to `time.monotonic`):
            Seconds from a fixed point (for the rate limit and the ETA); tests pass a fake one.
    """

    def __init__(self, min_interval_s: float = 5.0, retry_after_s: float = 60.0, timeout_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval_s, self.retry_after_s, self.timeout_s, self._clock = (min_interval_s, retry_after_s,
                                                                                timeout_s, clock)
        self._pace = TrainingPace(clock)
        self._latest: dict[str, Any] = {}
        self._next_at = float("-inf")  # no report before this time (the rate limit, or the pause after a failure)
        self._active = False
        self._failed_last = False  # the last report failed: wait out `retry_after_s`, even at the end
        self._warned = False
        self._context: ssl.SSLContext | None = None
        self.sent = 0  # reports the server accepted

    # --- the Trainer's events ---

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        report_to = getattr(args, "report_to", None) or []
        self._active = state.is_world_process_zero and "kubeflow" not in report_to
        if not self._active:
            return
        self._pace.start(state.global_step, state.num_input_tokens_seen)
        self._report(state, progress=self._progress(state), eta=None, force=True)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not self._active or not logs:
            return
        self._latest.update(logs)
        training_line = "loss" in logs
        pace = self._pace.update(state.global_step, state.max_steps, None, training_line=training_line)
        eta = None if pace.remaining_s is None else round(pace.remaining_s)
        self._report(state, progress=self._progress(state), eta=eta, force=not training_line)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._active:
            self._report(state, progress=100, eta=0, force=True)

    # --- the report ---

    @staticmethod
    def _progress(state: TrainerState) -> int | None:
        if not state.max_steps:
            return None
        return min(99, int(100 * state.global_step / state.max_steps))

    def _report(self, state: TrainerState, *, progress: int | None, eta: int | None, force: bool) -> None:
        now = self._clock()
        if now < self._next_at and (not force or self._failed_last):
            return
        status: dict[str, Any] = {"lastUpdatedTime": datetime.now(UTC).isoformat(timespec="seconds")}
        if progress is not None:
            status["progressPercentage"] = progress
        if eta is not None:
            status["estimatedRemainingSeconds"] = max(0, eta)
        metrics = status_metrics({**self._latest, "step": state.global_step})
        if metrics:
            status["metrics"] = metrics
        try:
            self._post({"trainerStatus": status})
        except Exception as err:  # noqa: BLE001 - progress is a display: whatever went wrong, training goes on
            self._failed_last = True
            self._next_at = now + self.retry_after_s
            if not self._warned:
                self._warned = True
                logger.warning("could not report progress to the TrainJob's status at %s (%s); training goes on, "
                               "retrying every %.0f s without further warnings", os.environ.get(SERVER_URL_ENV),
                               str(err).splitlines()[0][:300] if str(err) else type(err).__name__,
                               self.retry_after_s)
            return
        self._failed_last = False
        self._next_at = now + self.min_interval_s
        self.sent += 1

    def _post(self, body: dict[str, Any]) -> None:
        url = os.environ.get(SERVER_URL_ENV, "")
        with open(os.environ.get(TOKEN_ENV, ""), encoding="utf-8") as handle:
            token = handle.read().strip()  # read each time: the kubelet rotates the projected token
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        context = self._tls() if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            ca = os.environ.get(CA_CERT_ENV)
            self._context = ssl.create_default_context(cafile=ca if ca and os.path.isfile(ca) else None)
        return self._context
