"""The one parent MLflow run of a pipeline run: opened by its first step, closed by its exit step.

Steps run in separate processes (pods on a cluster), so the parent is found again from the KFP run id
it is tagged with (or `MLFLOW_RUN_ID`, when the KFP backend's MLflow integration injects one); the
stages' nested runs need only its id string (`kubetune.tracking.stage_run`).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubetune
from kubetune.tracking.connection import (
    PARENT_RUN_TAG,
    http_limits,
    is_rejection,
    mlflow_client,
    short_error,
    training_experiment_id,
)

logger = logging.getLogger(__name__)

__all__ = ["TrackingUnavailable", "end_pipeline_run", "git_commit", "start_pipeline_run"]


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server did not answer (raised where buffering cannot help: the parent run)."""


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
    client = mlflow_client(tracking_uri)
    try:
        with http_limits(request_timeout_s):
            return _open_parent(client, tracking_uri, experiment, run_name, run_tags)
    except Exception as err:
        if is_rejection(err):
            raise
        raise TrackingUnavailable(
            f"MLflow tracking at {tracking_uri} is unreachable ({short_error(err)}): start the server, fix the "
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
    experiment_id = training_experiment_id(client, experiment, tracking_uri)
    existing = _parent_of_kfp_run(client, experiment_id, tags["kfp_run_id"])
    if existing:
        logger.info("MLflow: reusing parent run %s of KFP run %s", existing, tags["kfp_run_id"])
        return existing
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    logger.info("MLflow parent run %s in experiment %r at %s", run.info.run_id, experiment, tracking_uri)
    return str(run.info.run_id)



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
    client = mlflow_client(tracking_uri)
    with http_limits(request_timeout_s):
        experiment_obj = client.get_experiment_by_name(experiment)
        parent = os.environ.get("MLFLOW_RUN_ID") or (
            experiment_obj and _parent_of_kfp_run(client, str(experiment_obj.experiment_id), kfp_run_id))
        if not parent:
            return None
        experiment_id = client.get_run(parent).info.experiment_id
        open_children = client.search_runs([experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{parent}' and "
                                           "attributes.status = 'RUNNING'", max_results=1000)
        for child in open_children:
            client.set_terminated(child.info.run_id, status="KILLED" if status == "KILLED" else "FAILED")
        client.set_terminated(parent, status=status)
    return str(parent)


def _parent_of_kfp_run(client: Any, experiment_id: str, kfp_run_id: str) -> str | None:
    if not kfp_run_id or "'" in kfp_run_id:
        return None
    runs = client.search_runs([experiment_id], f"tags.kfp_run_id = '{kfp_run_id}'", max_results=50)
    parents = [run for run in runs if PARENT_RUN_TAG not in run.data.tags]
    return str(parents[0].info.run_id) if parents else None

