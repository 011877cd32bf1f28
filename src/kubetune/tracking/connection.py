"""Where kubetune tracks and how it talks to MLflow: the default store, the client, request limits, errors.

Everything here is shared by the parent run (`kubetune.tracking.parent_run`), a stage's run
(`kubetune.tracking.stage_run`) and the replay of an outage buffer (`kubetune.tracking.offline`).
Importing it does not import mlflow: each function imports what it needs, so the pipeline's light
steps pay for mlflow only when they track.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# MLflow's own tag naming a nested run's parent.
PARENT_RUN_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
_announced: set[str] = set()  # local stores whose location was logged already

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "PARENT_RUN_TAG",
    "TRAINING_EXPERIMENT",
    "default_tracking_uri",
    "http_limits",
    "is_rejection",
    "mlflow_client",
    "short_error",
    "training_experiment_id",
]

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

def training_experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of the experiment called `name`, created as a model-training experiment when missing.

    Args:
        client (`MlflowClient`):
            A client on `tracking_uri`.
        name (`str`):
            The experiment's name.
        tracking_uri (`str`):
            The client's server or store; a local sqlite store gets its artifacts beside the database.

    Returns:
        `str`: the experiment id.
    """
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

def mlflow_client(tracking_uri: str) -> Any:
    """An `MlflowClient` whose tracking and registry are both `tracking_uri`."""
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

def is_rejection(err: BaseException) -> bool:
    """The server answered and said no (4xx, bar 429 rate limiting): resending will not help, unlike an outage."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429

def short_error(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none), at most 300 characters."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."
