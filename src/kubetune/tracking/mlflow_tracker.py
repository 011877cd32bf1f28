"""MLflow tracking: one parent run per pipeline run, a nested run per step, metrics that survive an outage.

Steps run in separate processes (pods), so a step only needs the parent run id string. When the
tracking server is unreachable, training goes on: metrics are buffered to a JSON-lines file next
to the step's outputs, flushed when the server answers again, and replayable later.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

import kubetune

logger = logging.getLogger(__name__)

BUFFER_FILE = "mlflow_buffer.jsonl"
_PARAM_LIMIT = 6000  # MLflow's longest param value (characters)

# An unreachable server must cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def default_tracking_uri(root: str | Path) -> str:
    """A local sqlite store under `root`, used when no tracking server is configured."""
    path = Path(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_local_artifact_location(client.tracking_uri))


def _local_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database, not into ./mlruns of whatever the cwd is."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server decides (--artifacts-destination / --default-artifact-root)
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def start_pipeline_run(tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """The parent run of a pipeline run; reuses `MLFLOW_RUN_ID` when the KFP backend injected one.

    Returns its run id.
    """
    client = _client(tracking_uri)
    tags = {**tags, "kfp_run_id": tags.get("kfp_run_id") or os.environ.get("KFP_RUN_ID", ""),
            "kubetune_version": kubetune.__version__}
    injected = os.environ.get("MLFLOW_RUN_ID")
    if injected:
        for key, value in tags.items():
            client.set_tag(injected, key, str(value))
        return injected
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name,
                            tags={k: str(v) for k, v in tags.items()})
    logger.info("MLflow parent run %s in experiment %r at %s", run.info.run_id, experiment, tracking_uri)
    return run.info.run_id


class MLflowTracker:
    """A `Tracker` writing to one MLflow run; buffers to disk while the server is unreachable.

    Args:
        tracking_uri: the MLflow server (or sqlite store).
        run_id: the run to log into.
        fallback_dir: where the buffer file goes (the step's output directory).
    """

    def __init__(self, tracking_uri: str, run_id: str, fallback_dir: str | Path | None = None) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.buffer = Path(fallback_dir or ".") / BUFFER_FILE
        self._client = _client(tracking_uri)
        self._warned = False

    @classmethod
    def for_stage(cls, tracking_uri: str, parent_run_id: str, stage: str, experiment: str = "kubetune",
                  fallback_dir: str | Path | None = None) -> MLflowTracker:
        """A nested run named `stage` under `parent_run_id` (created from any process)."""
        client = _client(tracking_uri)
        parent = client.get_run(parent_run_id)
        run = client.create_run(parent.info.experiment_id, run_name=stage,
                                tags={"mlflow.parentRunId": parent_run_id, "stage": stage})
        return cls(tracking_uri, run.info.run_id, fallback_dir)

    # --- the Tracker protocol ---

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self._call("log_batch", self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_name(k), float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        if items:
            self._call("log_batch", self.run_id, metrics=items)

    def callback(self) -> TrainerCallback:
        return _MLflowCallback(self)

    # --- more ---

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._call("set_tag", self.run_id, key, str(value))

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._call("set_terminated", self.run_id, status)

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    def flush(self) -> None:
        """Send what was buffered while the server was down; keep the file if it is still down."""
        if not self.buffer.is_file():
            return
        try:
            replay_buffer(self.buffer, self.tracking_uri)
        except Exception as err:  # still unreachable: keep the buffer for `replay_buffer` later
            logger.warning("MLflow still unreachable (%s); %s keeps the metrics", err, self.buffer)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            if self.buffer.is_file():
                replay_buffer(self.buffer, self.tracking_uri)
            getattr(self._client, method)(*args, **kwargs)
        except Exception as err:
            if not self._warned:
                logger.warning("MLFLOW TRACKING AT %s IS UNREACHABLE (%s): training goes on; metrics are "
                               "buffered in %s and sent when it answers", self.tracking_uri, err, self.buffer)
                self._warned = True
            self.buffer.parent.mkdir(parents=True, exist_ok=True)
            with self.buffer.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"method": method, "args": _jsonable(args), "kwargs": _jsonable(kwargs)}) + "\n")


def replay_buffer(path: str | Path, tracking_uri: str) -> int:
    """Send every buffered call in `path` to `tracking_uri`, then delete the file. Returns the count."""
    from mlflow.entities import Metric, Param

    client = _client(tracking_uri)
    path = Path(path)
    calls = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for call in calls:
        kwargs = call["kwargs"]
        if "metrics" in kwargs:
            kwargs["metrics"] = [Metric(**m) for m in kwargs["metrics"]]
        if "params" in kwargs:
            kwargs["params"] = [Param(**p) for p in kwargs["params"]]
        getattr(client, call["method"])(*call["args"], **kwargs)
    path.unlink()
    return len(calls)


def _jsonable(value: Any) -> Any:
    from mlflow.entities import Metric, Param

    if isinstance(value, Metric):
        return {"key": value.key, "value": value.value, "timestamp": value.timestamp, "step": value.step}
    if isinstance(value, Param):
        return {"key": value.key, "value": value.value}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _PARAM_LIMIT else text[:_PARAM_LIMIT - 20] + "...[truncated]"


def _metric_name(name: str) -> str:
    # MLflow allows letters, digits, _ - . space / only
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


class _MLflowCallback(TrainerCallback):
    """Sends every Trainer log event (loss, lr, grad-norm, eval metrics, rewards/...) with its step."""

    def __init__(self, tracker: MLflowTracker) -> None:
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if state.is_world_process_zero and logs:
            self.tracker.log_metrics(logs, step=state.global_step)
