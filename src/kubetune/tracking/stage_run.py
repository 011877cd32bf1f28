"""A stage's MLflow run (`MLflowTracker`): params, step metrics, tags and artifacts that survive an outage.

Stages run in separate processes (pods on a cluster), so a stage needs only the parent run's id string:
`MLflowTracker.for_stage(uri, parent_run_id, "sft")` opens its nested run from any process.

An unreachable tracking server never stops training. The first call that fails logs one WARNING naming
the server; from then on every call (the run's creation, params, metrics, tags, artifacts, its end) is
appended to `<fallback_dir>/mlflow_buffer.jsonl` (`kubetune.tracking.offline`) and sent, in order, by the
next call that gets through, or by `flush()` / `end()`. Requests go out without retries and with short
timeouts, and after a failure the server is left alone for `retry_after_s`, so an outage costs seconds,
not a stall per step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from kubetune.tracking.connection import PARENT_RUN_TAG, is_rejection, short_error
from kubetune.tracking.metric_values import metric_values
from kubetune.tracking.offline import (
    BUFFER_FILE,
    PENDING_ID_TAG,
    PENDING_PREFIX,
    Record,
    RecordSender,
    append_record,
)

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation), copied so that importing this module does not import mlflow.
MAX_PARAM_LENGTH = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

__all__ = ["MAX_PARAM_LENGTH", "MLflowTracker"]


class MLflowTracker:
    """Logs a stage into one MLflow run, buffering to disk while the server is down.

    Only the main process (`RANK` 0 or unset) logs; on other ranks every method does nothing. Use it as a
    context manager to end the run: `FINISHED`, or `FAILED` if the block raises (`KILLED` on Ctrl-C).

    Args:
        tracking_uri (`str`):
            The MLflow server (`http://...`) or store (`sqlite:///...`).
        run_id (`str`):
            The run to log into (may be a pending id, see `for_stage`).
        fallback_dir (`str` or `os.PathLike`, *optional*):
            Folder for `mlflow_buffer.jsonl` while the server is unreachable: the stage's output_dir.
            Defaults to the working folder.
        request_timeout_s (`float`, *optional*, defaults to `5.0`):
            Timeout of one request (no retries: a failed call is buffered, not repeated).
        artifact_timeout_s (`float`, *optional*, defaults to `60.0`):
            Timeout of one artifact upload.
        retry_after_s (`float`, *optional*, defaults to `30.0`):
            After a failure, calls go straight to the buffer for this long before the server is tried again.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        fallback_dir: str | os.PathLike[str] | None = None,
        *,
        request_timeout_s: float = 5.0,
        artifact_timeout_s: float = 60.0,
        retry_after_s: float = 30.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.buffer_path = Path(fallback_dir if fallback_dir is not None else ".") / BUFFER_FILE
        self.retry_after_s = retry_after_s
        self._run_id = run_id
        self._sender = RecordSender(tracking_uri, request_timeout_s, artifact_timeout_s)
        self._active = int(os.environ.get("RANK", "0")) == 0  # torchrun: every rank runs the stage
        self._failed_at: float | None = None  # monotonic time of the last failed call, for the back-off
        self._outage = False  # warned about the current outage (once per outage, not once per step)
        self._sent_params: dict[str, str] = {}
        self._ended = False

    @classmethod
    def for_stage(
        cls,
        tracking_uri: str,
        parent_run_id: str,
        stage: str,
        experiment: str = "kubetune",
        fallback_dir: str | os.PathLike[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        **options: float,
    ) -> MLflowTracker:
        """A tracker on a new run named `stage`, nested under `parent_run_id` (tag `mlflow.parentRunId`).

        Needs only the parent's id, so it works from any process or pod. If the server is down, the run is
        created when it answers again; until then `run_id` is a pending id (`pending-...`).

        Args:
            tracking_uri (`str`):
                The MLflow server or store.
            parent_run_id (`str`):
                The pipeline's parent run; the nested run joins its experiment. `""` makes a top-level run.
            stage (`str`):
                The run's name and its `stage` tag, e.g. `"sft"`.
            experiment (`str`, *optional*, defaults to `"kubetune"`):
                Experiment of a top-level run (`parent_run_id=""`); nested runs use the parent's.
            fallback_dir (`str` or `os.PathLike`, *optional*):
                Where the outage buffer goes: the stage's output_dir.
            tags (`Mapping[str, Any]`, *optional*):
                Extra tags for the run (stringified).
            **options:
                `request_timeout_s`, `artifact_timeout_s`, `retry_after_s` of the constructor.

        Returns:
            `MLflowTracker`: end it with `end()` or use it as a context manager.
        """
        tracker = cls(tracking_uri, PENDING_PREFIX + uuid.uuid4().hex, fallback_dir, **options)
        run_tags = {"stage": stage, **{k: str(v) for k, v in (tags or {}).items()}, PENDING_ID_TAG: tracker._run_id}
        if parent_run_id:
            run_tags[PARENT_RUN_TAG] = parent_run_id
        tracker._send({"op": "create_run", "run_id": tracker._run_id, "parent_run_id": parent_run_id,
                       "experiment": experiment, "run_name": stage, "tags": run_tags, "start_time": _now_ms()})
        return tracker

    @property
    def run_id(self) -> str:
        """The MLflow run id (a `pending-...` id until the server has created the run)."""
        return self._sender.run_ids.get(self._run_id, self._run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log `params` (e.g. `RunConfig.to_flat()`) in batches of 100.

        Values are stringified; longer than 6000 characters (MLflow's limit) they are cut, with a note in the
        value and one warning. MLflow keeps a param's first value: a changed value is dropped with a warning.

        Args:
            params (`Mapping[str, Any]`):
                Name → value.
        """
        fresh = self._new_params(params)
        items = sorted(fresh.items())
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._send({"op": "params", "run_id": self._run_id, "params": dict(items[start:start + _PARAMS_PER_BATCH])})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the metrics among `metrics` at `step` (others are skipped, see `kubetune.tracking.metric_values`).

        Args:
            metrics (`Mapping[str, Any]`):
                Name → value; names may contain `/` (`rewards/chosen`), other characters MLflow refuses become `_`.
            step (`int`, *optional*):
                The training step; `None` logs at step 0.
        """
        now = _now_ms()
        rows = [[_metric_name(k), float(v), now, int(step or 0)] for k, v in metric_values(metrics).items()]
        for start in range(0, len(rows), _METRICS_PER_BATCH):
            self._send({"op": "metrics", "run_id": self._run_id, "metrics": rows[start:start + _METRICS_PER_BATCH]})

    def callback(self) -> Any:
        """A `TrainerCallback` logging every Trainer log event at its global step (see `MLflowMetricsCallback`)."""
        # imported here: transformers (and with it peft) costs seconds to import, and the pipeline's light
        # steps (validate, register, promote, finalize) track without a Trainer
        from kubetune.tracking.mlflow_callback import MLflowMetricsCallback

        return MLflowMetricsCallback(self)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, to the run's artifacts (a missing path is skipped with a warning).

        Args:
            path (`str` or `os.PathLike`):
                Local file or folder, e.g. the config, `training_loss.png`, `generated_predictions.jsonl`.
            artifact_path (`str`, *optional*):
                Folder inside the run's artifacts; the top level when `None`.
        """
        local = Path(path).resolve()
        if not local.exists():
            logger.warning("MLflow: not logging %s: no such file or folder", local)
            return
        self._send({"op": "artifact", "run_id": self._run_id, "path": str(local), "artifact_path": artifact_path})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified; a tag may be set again).

        Args:
            tags (`Mapping[str, Any]`):
                Name → value.
        """
        items = sorted((k, str(v)) for k, v in tags.items())
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._send({"op": "tags", "run_id": self._run_id, "tags": dict(items[start:start + _PARAMS_PER_BATCH])})

    def flush(self) -> int:
        """Send the buffer now if there is one, even within `retry_after_s` of a failure.

        Returns:
            `int`: the number of buffered records sent (0 when the server is still down: the file stays).
        """
        if not self._active or not self.buffer_path.is_file():
            return 0
        return self._send(None, force=True)

    def end(self, status: str = "FINISHED") -> None:
        """Flush the buffer and mark the run ended (only the first call counts).

        If the server is still unreachable, the end is buffered too, and a warning says how to replay the file.

        Args:
            status (`str`, *optional*, defaults to `"FINISHED"`):
                `"FINISHED"`, `"FAILED"` or `"KILLED"`.
        """
        if self._ended or not self._active:
            return
        self._ended = True
        # One more try even within the back-off: the process may be about to exit with its buffer unsent.
        self._send({"op": "end", "run_id": self._run_id, "status": status, "end_time": _now_ms()}, force=True)
        if self.buffer_path.is_file():
            logger.warning(
                "MLflow at %s is still unreachable at the end of run %s: its records stay in %s. Send them later "
                "with kubetune.tracking.offline.replay_buffer(%r, %r)",
                self.tracking_uri, self.run_id, self.buffer_path, str(self.buffer_path), self.tracking_uri,
            )

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # --- sending and buffering ---

    def _send(self, record: Record | None, force: bool = False) -> int:
        """Send the buffer, then `record`; on an outage append `record` to the buffer.

        Args:
            record (`dict` or `None`):
                What to send after the buffer; `None` sends only the buffer.
            force (`bool`, *optional*, defaults to `False`):
                Try the server even within `retry_after_s` of the last failure.

        Returns:
            `int`: the number of buffered records sent.
        """
        if not self._active:
            return 0
        backing_off = self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_after_s
        if backing_off and not force:
            if record is not None:
                append_record(self.buffer_path, record)
            return 0
        sent = 0
        try:
            if self.buffer_path.is_file():
                sent = self._sender.replay(self.buffer_path)
            if record is not None:
                self._sender.apply(record)
        except Exception as err:
            if record is not None and is_rejection(err):
                if record["op"] == "create_run":
                    raise  # e.g. no such parent run: a wrong id, not an outage; every later call would fail too
                logger.warning("MLflow at %s refused %s for run %s: %s", self.tracking_uri, record["op"],
                               self.run_id, short_error(err))
                return sent
            self._went_offline(err)
            if record is not None:
                append_record(self.buffer_path, record)
            return sent
        self._came_back(sent)
        return sent

    def _went_offline(self, err: BaseException) -> None:
        if not self._outage:
            self._outage = True
            logger.warning(
                "MLflow tracking at %s is UNREACHABLE (%s). Training goes on; metrics are buffered in %s and sent "
                "when the server answers again.", self.tracking_uri, short_error(err), self.buffer_path,
            )
        self._failed_at = time.monotonic()

    def _came_back(self, sent: int) -> None:
        if sent:
            logger.info("MLflow at %s answers again: sent %d buffered records to run %s", self.tracking_uri, sent,
                        self.run_id)
        self._failed_at, self._outage = None, False

    def _new_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        fresh: dict[str, str] = {}
        truncated: list[str] = []
        for key, value in params.items():
            text = _param_text(value)
            if len(text) > MAX_PARAM_LENGTH:
                truncated.append(key)
                note = f"...[truncated: {len(text)} characters]"
                text = text[:MAX_PARAM_LENGTH - len(note)] + note
            previous = self._sent_params.get(key)
            if previous is not None and previous != text:
                logger.warning("MLflow keeps a param's first value: %s stays %r (not %r)", key, previous, text)
                continue
            if previous is None:
                fresh[key] = self._sent_params[key] = text
        if truncated:
            logger.warning("MLflow params hold at most %d characters: truncated %s", MAX_PARAM_LENGTH,
                           ", ".join(sorted(truncated)))
        return fresh


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)  # as mlflow.log_param writes it: 8, 0.0002, True, None


def _metric_name(name: str) -> str:
    # MLflow accepts letters, digits, _ - . / : and space in metric names; anything else would reject the batch.
    return re.sub(r"[^\w.\-/: ]", "_", name)


def _now_ms() -> int:
    return int(time.time() * 1000)
