"""MLflow tracking: one parent run per pipeline run, a nested run per stage, metrics that survive an outage.

Stages run in separate processes (pods on a cluster), so a stage needs only the parent run's id string:
`MLflowTracker.for_stage(uri, parent_run_id, "sft")` opens its nested run from any process.

An unreachable tracking server never stops training. The first call that fails logs one WARNING naming
the server; from then on every call (the run's creation, params, metrics, tags, artifacts, its end) is
appended to `<fallback_dir>/mlflow_buffer.jsonl` and sent, in order, by the next call that gets through,
or by `flush()` / `end()`. A buffer left behind because the server never came back is sent later with
`replay_buffer(path, tracking_uri)`. Requests go out without retries and with short timeouts, and after a
failure the server is left alone for `retry_after_s`, so an outage costs seconds, not a stall per step.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import kubetune

logger = logging.getLogger(__name__)

BUFFER_FILE = "mlflow_buffer.jsonl"
# The id a stage's run goes by until the server has created it (it may be down when the stage starts).
PENDING_PREFIX = "pending-"
# MLflow's limits (mlflow.utils.validation), copied so that importing this module does not import mlflow.
MAX_PARAM_LENGTH = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
_announced: set[str] = set()  # local stores whose location was logged already

Record = dict[str, Any]

__all__ = [
    "BUFFER_FILE",
    "MLflowTracker",
    "TrackingUnavailable",
    "default_tracking_uri",
    "git_commit",
    "http_limits",
    "replay_buffer",
    "start_pipeline_run",
]


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server did not answer (raised where buffering cannot help: the parent run)."""


# --- where to track ---------------------------------------------------------------------------------


def default_tracking_uri(output_root: str | os.PathLike[str]) -> str:
    """A local sqlite store, `sqlite:///<output_root>/mlflow.db`, for when no tracking server is configured.

    Logs where the store is and how to browse it (once per process and store). Artifacts of runs in this
    store go to `mlartifacts/` beside the database, not to `./mlruns` of whatever the working folder is.

    Args:
        output_root (`str` or `os.PathLike`):
            Folder for `mlflow.db`; created if missing.

    Returns:
        `str`: the tracking URI.
    """
    root = Path(output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    if uri in _announced:
        return uri
    _announced.add(uri)
    logger.info("No MLflow tracking URI configured: tracking to %s (browse with `mlflow ui --backend-store-uri %s`)",
                root / "mlflow.db", uri)
    return uri


def _local_artifact_location(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a local sqlite database; `None` lets a server choose (its artifact root)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def git_commit() -> str | None:
    """The commit kubetune runs from: `KUBETUNE_GIT_COMMIT` (set in images), else HEAD of a source checkout.

    Returns:
        `str` or `None`: the commit hash, or `None` when neither is known (e.g. an installed wheel).
    """
    if commit := os.environ.get("KUBETUNE_GIT_COMMIT"):
        return commit
    repo = Path(kubetune.__file__).resolve().parents[2]  # src/kubetune/__init__.py -> the checkout
    if not (repo / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


# --- the parent run of a pipeline run ---------------------------------------------------------------


def start_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    *,
    kfp_run_id: str | None = None,
    request_timeout_s: float = 10.0,
) -> str:
    """Open the one parent run of a pipeline run, and return its id for the stages' nested runs.

    The run is tagged with the KFP run id, `kubetune_version` and the git commit when known, plus `tags`
    (the caller's `config_hash`, `data_hash`, ...). If `MLFLOW_RUN_ID` is set (the KFP backend's MLflow
    integration injects it), that run is tagged and returned instead of creating one. A parent run with
    the same `kfp_run_id` in the experiment is reused, so a retried first step does not open a second one.

    Args:
        tracking_uri (`str`):
            The MLflow server (`http://...`) or store (`sqlite:///...`).
        experiment (`str`):
            Experiment name; created if missing.
        run_name (`str`):
            Display name of a newly created run.
        tags (`Mapping[str, Any]`, *optional*):
            Extra tags, e.g. `config_hash`, `data_hash`, `pipeline`; values are stringified, `None`s dropped.
        kfp_run_id (`str`, *optional*):
            The KFP run id; defaults to `tags["kfp_run_id"]`, then the `KFP_RUN_ID` environment variable.
        request_timeout_s (`float`, *optional*, defaults to `10.0`):
            Per-request timeout; requests are not retried, so a dead server fails this in seconds.

    Returns:
        `str`: the parent run id.

    Raises:
        TrackingUnavailable: the server did not answer (nothing can be buffered before a run exists).
    """
    run_tags = _pipeline_tags(tags or {}, kfp_run_id)
    client = _client(tracking_uri)
    try:
        with http_limits(request_timeout_s):
            return _open_parent(client, tracking_uri, experiment, run_name, run_tags)
    except Exception as err:
        if _is_rejection(err):
            raise
        raise TrackingUnavailable(
            f"MLflow tracking at {tracking_uri} is unreachable ({_short(err)}): start the server, fix the "
            "tracking URI (mlflow.tracking_uri / MLFLOW_TRACKING_URI), or leave it unset to track locally"
        ) from err


def _pipeline_tags(tags: Mapping[str, Any], kfp_run_id: str | None) -> dict[str, str]:
    merged = {k: str(v) for k, v in tags.items() if v is not None}
    kfp_id = kfp_run_id or merged.get("kfp_run_id") or os.environ.get("KFP_RUN_ID", "")
    merged.update(kfp_run_id=kfp_id, kubetune_version=kubetune.__version__)
    if commit := git_commit():
        # Ours for searching, MLflow's own so that its UI shows the commit on the run page.
        merged.setdefault("git_commit", commit)
        merged.setdefault("mlflow.source.git.commit", commit)
    return merged


def _open_parent(client: Any, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    from mlflow.entities import RunTag

    injected = os.environ.get("MLFLOW_RUN_ID")
    if injected:
        client.log_batch(injected, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        logger.info("MLflow: logging the pipeline into the injected run MLFLOW_RUN_ID=%s at %s", injected, tracking_uri)
        return injected
    experiment_id = _experiment_id(client, experiment, tracking_uri)
    existing = _parent_of_kfp_run(client, experiment_id, tags["kfp_run_id"])
    if existing:
        logger.info("MLflow: reusing parent run %s of KFP run %s", existing, tags["kfp_run_id"])
        return existing
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    logger.info("MLflow parent run %s in experiment %r at %s", run.info.run_id, experiment, tracking_uri)
    return str(run.info.run_id)


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        # MLflow 3 tells GenAI experiments from model-training ones by this tag (its UI still opens in GenAI
        # mode until asked otherwise: `kubetune run` prints links with `workflowType=machine_learning`)
        return str(client.create_experiment(name, artifact_location=_local_artifact_location(tracking_uri),
                                            tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT}))
    except MlflowException as err:  # another pipeline created it a moment ago
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return str(client.get_experiment_by_name(name).experiment_id)


def end_pipeline_run(tracking_uri: str, experiment: str, kfp_run_id: str, status: str, *,
                     request_timeout_s: float = 10.0) -> str | None:
    """Close the parent run of a pipeline run, and every nested run still open under it.

    The pipeline's exit step calls this whatever happened, so no run is left RUNNING: the parent
    gets `status`; a nested run still RUNNING (its step was killed before it could close it, or a
    retried attempt died) becomes FAILED, or KILLED when the pipeline was cancelled.

    Args:
        tracking_uri (`str`):
            The MLflow server or store.
        experiment (`str`):
            The experiment the parent run is in.
        kfp_run_id (`str`):
            The KFP run id the parent is tagged with (`MLFLOW_RUN_ID`, when set, names the parent instead).
        status (`str`):
            FINISHED, FAILED or KILLED.
        request_timeout_s (`float`, *optional*, defaults to `10.0`):
            Per-request timeout.

    Returns:
        `str` or `None`: the parent run id, or `None` when the pipeline opened none (it failed before).
    """
    client = _client(tracking_uri)
    with http_limits(request_timeout_s):
        experiment_obj = client.get_experiment_by_name(experiment)
        parent = os.environ.get("MLFLOW_RUN_ID") or (
            experiment_obj and _parent_of_kfp_run(client, str(experiment_obj.experiment_id), kfp_run_id))
        if not parent:
            return None
        experiment_id = client.get_run(parent).info.experiment_id
        open_children = client.search_runs([experiment_id], f"tags.`{_PARENT_TAG}` = '{parent}' and "
                                           "attributes.status = 'RUNNING'", max_results=1000)
        for child in open_children:
            client.set_terminated(child.info.run_id, status="KILLED" if status == "KILLED" else "FAILED")
        client.set_terminated(parent, status=status)
    return str(parent)


def _parent_of_kfp_run(client: Any, experiment_id: str, kfp_run_id: str) -> str | None:
    if not kfp_run_id or "'" in kfp_run_id:
        return None
    runs = client.search_runs([experiment_id], f"tags.kfp_run_id = '{kfp_run_id}'", max_results=50)
    parents = [run for run in runs if _PARENT_TAG not in run.data.tags]
    return str(parents[0].info.run_id) if parents else None


# --- a stage's run --------------------------------------------------------------------------------


class MLflowTracker:
    """A `kubetune.tracking.Tracker` that logs into one MLflow run, buffering to disk while the server is down.

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
        self._sender = _Sender(tracking_uri, request_timeout_s, artifact_timeout_s)
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
        run_tags = {"stage": stage, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            run_tags[_PARENT_TAG] = parent_run_id
        tracker._send({"op": "create_run", "run_id": tracker._run_id, "parent_run_id": parent_run_id,
                       "experiment": experiment, "run_name": stage, "tags": run_tags, "start_time": _now_ms()})
        return tracker

    @property
    def run_id(self) -> str:
        """The MLflow run id (a `pending-...` id until the server has created the run)."""
        return self._sender.run_ids.get(self._run_id, self._run_id)

    # --- the Tracker protocol ---

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
        """Log the numeric values of `metrics` at `step` (non-numbers are skipped; NaN is kept: it is news).

        Args:
            metrics (`Mapping[str, Any]`):
                Name → value; names may contain `/` (`rewards/chosen`), other characters MLflow refuses become `_`.
            step (`int`, *optional*):
                The training step; `None` logs at step 0.
        """
        now = _now_ms()
        rows = [[_metric_name(k), float(v), now, int(step or 0)] for k, v in metrics.items() if _is_number(v)]
        for start in range(0, len(rows), _METRICS_PER_BATCH):
            self._send({"op": "metrics", "run_id": self._run_id, "metrics": rows[start:start + _METRICS_PER_BATCH]})

    def callback(self) -> Any:
        """A `TrainerCallback` logging every Trainer log event at its global step (see `MLflowMetricsCallback`)."""
        # imported here: transformers (and with it peft) costs seconds to import, and the pipeline's light
        # steps (validate, register, promote, finalize) track without a Trainer
        from kubetune.tracking.mlflow_callback import MLflowMetricsCallback

        return MLflowMetricsCallback(self)

    # --- more than the protocol ---

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
                "with kubetune.tracking.mlflow_tracker.replay_buffer(%r, %r)",
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
                _append(self.buffer_path, record)
            return 0
        sent = 0
        try:
            if self.buffer_path.is_file():
                sent = self._sender.replay(self.buffer_path)
            if record is not None:
                self._sender.apply(record)
        except Exception as err:
            if record is not None and _is_rejection(err):
                if record["op"] == "create_run":
                    raise  # e.g. no such parent run: a wrong id, not an outage; every later call would fail too
                logger.warning("MLflow at %s refused %s for run %s: %s", self.tracking_uri, record["op"],
                               self.run_id, _short(err))
                return sent
            self._went_offline(err)
            if record is not None:
                _append(self.buffer_path, record)
            return sent
        self._came_back(sent)
        return sent

    def _went_offline(self, err: BaseException) -> None:
        if not self._outage:
            self._outage = True
            logger.warning(
                "MLflow tracking at %s is UNREACHABLE (%s). Training goes on; metrics are buffered in %s and sent "
                "when the server answers again.", self.tracking_uri, _short(err), self.buffer_path,
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


# --- talking to MLflow ----------------------------------------------------------------------------


class _Sender:
    """Applies buffer records to an MLflow client, remembering the real ids of runs created from pending ones."""

    def __init__(self, tracking_uri: str, request_timeout_s: float = 5.0, artifact_timeout_s: float = 60.0) -> None:
        self.tracking_uri = tracking_uri
        self.request_timeout_s = request_timeout_s
        self.artifact_timeout_s = artifact_timeout_s
        self.run_ids: dict[str, str] = {}  # pending id -> created run id
        self._client: Any = None
        self._apply: dict[str, Callable[[Any, str, Record], None]] = {
            "create_run": self._create_run, "params": _log_params, "metrics": _log_metrics, "tags": _set_tags,
            "artifact": _log_artifact, "end": _end_run,
        }

    @property
    def client(self) -> Any:
        if self._client is None:  # lazily: for a sqlite URI, making the client creates the database
            self._client = _client(self.tracking_uri)
        return self._client

    def apply(self, record: Record) -> None:
        """Send one record; raises what MLflow raises."""
        if record["op"] not in self._apply:
            raise ValueError(f"unknown record {record['op']!r} in an MLflow buffer (from a newer kubetune?)")
        timeout = self.artifact_timeout_s if record["op"] == "artifact" else self.request_timeout_s
        with http_limits(timeout):
            self._apply[record["op"]](self.client, self.run_ids.get(record["run_id"], record["run_id"]), record)

    def replay(self, path: Path) -> int:
        """Send the records in `path` in order and delete it; on an outage keep the unsent ones there and raise.

        Records the server refuses (a changed param, a deleted run) are dropped with a warning: resending
        them can never succeed, and they must not hold back the rest.

        Returns:
            `int`: the number of records sent.
        """
        records = _read_records(path)
        for index, record in enumerate(records):
            try:
                self.apply(record)
            except Exception as err:
                if not _is_rejection(err):
                    _write_records(path, [self._with_known_ids(r) for r in records[index:]])
                    raise
                logger.warning("MLflow at %s refused buffered %s for run %s: %s", self.tracking_uri, record["op"],
                               record["run_id"], _short(err))
        path.unlink()
        return len(records)

    def _with_known_ids(self, record: Record) -> Record:
        # A run created earlier in this replay must not be created again by the next one.
        return {**record, "run_id": self.run_ids.get(record["run_id"], record["run_id"])}

    def _create_run(self, client: Any, run_id: str, record: Record) -> None:
        if not run_id.startswith(PENDING_PREFIX):
            return  # created by an earlier, interrupted replay
        if record["parent_run_id"]:
            experiment_id = client.get_run(record["parent_run_id"]).info.experiment_id
        else:
            experiment_id = _experiment_id(client, record["experiment"], self.tracking_uri)
        run = client.create_run(experiment_id, start_time=record["start_time"], tags=record["tags"],
                                run_name=record["run_name"])
        self.run_ids[record["run_id"]] = run.info.run_id
        logger.info("MLflow run %s (%s) under parent %s at %s", run.info.run_id, record["run_name"],
                    record["parent_run_id"] or "-", self.tracking_uri)


def _log_params(client: Any, run_id: str, record: Record) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in record["params"].items()], synchronous=True)


def _log_metrics(client: Any, run_id: str, record: Record) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in record["metrics"]]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


def _set_tags(client: Any, run_id: str, record: Record) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()], synchronous=True)


def _log_artifact(client: Any, run_id: str, record: Record) -> None:
    path = Path(record["path"])
    if path.is_dir():
        client.log_artifacts(run_id, str(path), record["artifact_path"])
    elif path.is_file():
        client.log_artifact(run_id, str(path), record["artifact_path"])
    else:  # deleted since it was buffered: retrying can never succeed
        logger.warning("MLflow: buffered artifact %s no longer exists; skipped", path)


def _end_run(client: Any, run_id: str, record: Record) -> None:
    client.set_terminated(run_id, record["status"], end_time=record["end_time"])


def replay_buffer(path: str | os.PathLike[str], tracking_uri: str) -> int:
    """Send a buffer file left by an `MLflowTracker` (the server was down until the end) to `tracking_uri`.

    Runs that were still pending are created under their parent; records are sent in order; the file is
    deleted once everything is sent, and keeps what is unsent if the server fails again (run it again).

    Args:
        path (`str` or `os.PathLike`):
            The `mlflow_buffer.jsonl` in a stage's output folder.
        tracking_uri (`str`):
            The MLflow server or store to send to.

    Returns:
        `int`: the number of records sent.
    """
    return _Sender(tracking_uri, request_timeout_s=30.0, artifact_timeout_s=600.0).replay(Path(path))


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def http_limits(timeout_s: float, retries: int = 0) -> Iterator[None]:
    """Limit the retries and the timeout of MLflow requests made inside the block.

    MLflow's HTTP client has no per-client setting: it reads `MLFLOW_HTTP_REQUEST_MAX_RETRIES` and
    `MLFLOW_HTTP_REQUEST_TIMEOUT` from the environment on each request. Its defaults (7 retries with
    exponential back-off, 120 s timeout) would stall a training step for minutes on a dead server; a failed
    tracker call is buffered instead. Set only around our own calls, so other MLflow users in the process
    keep their settings (the environment is process-wide: a concurrent thread's request sees them too).

    Args:
        timeout_s (`float`):
            Timeout of one request, in seconds (rounded, at least 1).
        retries (`int`, *optional*, defaults to `0`):
            Retries after a failed request (MLflow backs off exponentially between them).
    """
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(retries),
                      MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, round(timeout_s))))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _is_rejection(err: BaseException) -> bool:
    """The server answered and said no (4xx, bar 429 rate limiting): resending will not help, unlike an outage."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


# --- small helpers --------------------------------------------------------------------------------


def _append(path: Path, record: Record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:  # opened per record: a crash loses at most the last line
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_records(path: Path) -> list[Record]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a killed process
    return records


def _write_records(path: Path, records: Sequence[Record]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)  # as mlflow.log_param writes it: 8, 0.0002, True, None


def _metric_name(name: str) -> str:
    # MLflow accepts letters, digits, _ - . / : and space in metric names; anything else would reject the batch.
    return re.sub(r"[^\w.\-/: ]", "_", name)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."
