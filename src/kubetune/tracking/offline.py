"""A stage run's outage buffer: records of MLflow calls kept on disk while the server is down, and their replay.

Each record is one JSON line of `<fallback_dir>/mlflow_buffer.jsonl`: `op` (`create_run`, `params`,
`metrics`, `tags`, `artifact`, `end`), the `run_id` it is for and the call's arguments. A run created
while the server was down goes by a pending id (`pending-...`) until a replay creates it; the
`RecordSender` that created it maps the pending id to the real one for the records after it.
A buffer left behind because the server never came back is sent later with `replay_buffer`.

Sending a record again is harmless: the server keeps one copy of a metric point (key, value, timestamp and
step are the record's), params and tags get the same values, and a run is created once. A `create_run`
whose answer was lost (the server wrote the run, then the connection broke) is the one call that would
not be: so every run is tagged with its pending id (`PENDING_ID_TAG`), and a replay first looks for a
run carrying it before creating one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubetune.tracking.connection import (
    http_limits,
    is_rejection,
    mlflow_client,
    short_error,
    training_experiment_id,
)

logger = logging.getLogger(__name__)

BUFFER_FILE = "mlflow_buffer.jsonl"
# The id a stage's run goes by until the server has created it (it may be down when the stage starts).
PENDING_PREFIX = "pending-"
# The tag that names the pending id a run was created for: a replayed creation finds the run by it.
PENDING_ID_TAG = "kubetune_pending_id"

Record = dict[str, Any]

__all__ = ["BUFFER_FILE", "PENDING_ID_TAG", "PENDING_PREFIX", "Record", "RecordSender", "append_record",
           "replay_buffer"]


class RecordSender:
    """Applies buffer records to an MLflow client, remembering the real ids of runs created from pending ones.

    Args:
        tracking_uri (`str`):
            The MLflow server (`http://...`) or store (`sqlite:///...`).
        request_timeout_s (`float`, *optional*, defaults to `5.0`):
            Timeout of one request (no retries: the caller buffers a failed record instead).
        artifact_timeout_s (`float`, *optional*, defaults to `60.0`):
            Timeout of one artifact upload.
    """

    def __init__(self, tracking_uri: str, request_timeout_s: float = 5.0, artifact_timeout_s: float = 60.0) -> None:
        self.tracking_uri = tracking_uri
        self.request_timeout_s = request_timeout_s
        self.artifact_timeout_s = artifact_timeout_s
        self.run_ids: dict[str, str] = {}  # pending id -> created run id
        self._client: Any = None
        self._replaying = False  # records from the buffer: a first attempt may have reached the server
        self._apply: dict[str, Callable[[Any, str, Record], None]] = {
            "create_run": self._create_run, "params": _log_params, "metrics": _log_metrics, "tags": _set_tags,
            "artifact": _log_artifact, "end": _end_run,
        }

    @property
    def client(self) -> Any:
        if self._client is None:  # lazily: for a sqlite URI, making the client creates the database
            self._client = mlflow_client(self.tracking_uri)
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
        self._replaying = True
        try:
            for index, record in enumerate(records):
                try:
                    self.apply(record)
                except Exception as err:
                    if not is_rejection(err):
                        _write_records(path, [self._with_known_ids(r) for r in records[index:]])
                        raise
                    logger.warning("MLflow at %s refused buffered %s for run %s: %s", self.tracking_uri,
                                   record["op"], record["run_id"], short_error(err))
        finally:
            self._replaying = False
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
            experiment_id = training_experiment_id(client, record["experiment"], self.tracking_uri)
        if self._replaying and (existing := _run_made_for(client, experiment_id, run_id)) is not None:
            self.run_ids[run_id] = existing  # an earlier attempt created it; its answer was lost
            logger.info("MLflow run %s (%s) was created by an earlier attempt at %s", existing, record["run_name"],
                        self.tracking_uri)
            return
        run = client.create_run(experiment_id, start_time=record["start_time"], tags=record["tags"],
                                run_name=record["run_name"])
        self.run_ids[record["run_id"]] = run.info.run_id
        logger.info("MLflow run %s (%s) under parent %s at %s", run.info.run_id, record["run_name"],
                    record["parent_run_id"] or "-", self.tracking_uri)


def _run_made_for(client: Any, experiment_id: str, pending_id: str) -> str | None:
    """The id of the run already created for `pending_id` (tagged `PENDING_ID_TAG`), or `None`."""
    found = client.search_runs([experiment_id], f"tags.{PENDING_ID_TAG} = '{pending_id}'", max_results=1)
    return found[0].info.run_id if found else None


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
    return RecordSender(tracking_uri, request_timeout_s=30.0, artifact_timeout_s=600.0).replay(Path(path))


def append_record(path: Path, record: Record) -> None:
    """Append one record to the buffer file `path`, creating its folder."""
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

