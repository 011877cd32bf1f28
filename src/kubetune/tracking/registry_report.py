"""A file beside a registered version in MLflow: logged into the run the version was registered from (the
pipeline's parent run), where its other reports are."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from kubetune.tracking.connection import http_limits
from kubetune.tracking.registry_reads import registry_client

logger = logging.getLogger(__name__)

_TIMEOUT_S, _RETRIES = 30.0, 2  # as registry.promote


def log_to_version_run(tracking_uri: str, name: str, version: str, path: str | Path, artifact_path: str, *,
                       filename: str | None = None) -> str | None:
    """Log `path` into the run of `name` v`version`, under `artifact_path`; returns the run id (None: no run).

    Args:
        tracking_uri: the MLflow server or store.
        name, version: the registered model version.
        path: the local file.
        artifact_path: the folder inside the run's artifacts.
        filename: the file's name there (default: its own).
    """
    filename = filename or Path(path).name
    client = registry_client(tracking_uri)
    with http_limits(_TIMEOUT_S, _RETRIES):
        run_id = client.get_model_version(name, version).run_id
        if not run_id:
            logger.info("%s v%s was registered without a run: %s is not logged to MLflow", name, version, filename)
            return None
        with tempfile.TemporaryDirectory() as folder:  # log_artifact keeps the file's own name
            staged = Path(folder) / filename
            shutil.copy2(path, staged)
            client.log_artifact(run_id, str(staged), artifact_path=artifact_path)
    return run_id
