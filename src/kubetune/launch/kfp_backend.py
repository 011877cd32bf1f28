"""Submit compiled kubetune pipelines to a Kubeflow Pipelines backend, and keep one recurring retraining run.

Everything goes through `kfp.Client` (KFP 2.x, REST API `/apis/v2beta1`):

```python
from kubetune.launch.kfp_backend import schedule, submit

submit("out.yaml", host="http://localhost:8080", pipeline_name="kubetune-rlhf-demo",
       params={"learning_rate": 1e-4})
schedule("out.yaml", host="http://localhost:8080", pipeline_name="kubetune-rlhf-demo",
         cron="0 0 3 * * 0", job_name="weekly-retrain")
```

`host` is the KFP API: `http://localhost:8080` through `kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow`,
or `http://ml-pipeline.kubeflow:8888` from a pod in the cluster.

**Pipelines and versions** are `kubetune.launch.kfp_packages`'s: a package is uploaded only when its bytes are
new. The connection and its error messages are `kubetune.launch.kfp_api`'s.

**Recurring runs.** KFP has no call that updates a recurring run, so [`schedule`] keeps exactly one per
`job_name` in the experiment:

- one that already matches (same pipeline version, trigger, parameters, max concurrency, catch-up, mode and,
  when given, service account) is kept untouched — re-running is a no-op;
- otherwise the old ones are *disabled*, the new one is created, and then the old ones are *deleted*.
  Disabling first means the old and new schedules never fire together; if creating the new one fails, the
  old ones are re-enabled, so a bad upgrade leaves the previous schedule running. Deleting rather than
  leaving them disabled keeps one schedule per name in the UI; the runs they started stay in the experiment.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import kfp
import kfp_server_api

from kubetune.launch.cron import Trigger, parse_trigger
from kubetune.launch.kfp_api import PAGE_SIZE, KfpBackendError, all_pages, api_call, client_url, connect, name_filter
from kubetune.launch.kfp_packages import HASH_MARKER, checked_package, ensure_experiment, ensure_pipeline_version

__all__ = ["ScheduleResult", "SubmitResult", "schedule", "submit", "unschedule"]

logger = logging.getLogger(__name__)

# KFP's own bounds for a recurring run's max_concurrency (the API server refuses others).
MAX_CONCURRENCY_RANGE = (1, 10)
_ENABLE, _DISABLE = kfp_server_api.RecurringRunMode.ENABLE, kfp_server_api.RecurringRunMode.DISABLE


@dataclass(frozen=True)
class SubmitResult:
    """What [`submit`] started.

    Attributes:
        pipeline_id (`str`): the KFP pipeline id.
        version_id (`str`): the pipeline version the run uses.
        run_id (`str`): the new run's id.
        run_url (`str`): the run's page in the KFP UI (`<host>/#/runs/details/<run_id>`).
        experiment_id (`str`): the experiment the run belongs to.
        version_name (`str`): the pipeline version's name.
        uploaded (`bool`): whether a pipeline or version was uploaded (`False`: identical package, reused).
    """

    pipeline_id: str
    version_id: str
    run_id: str
    run_url: str
    experiment_id: str = ""
    version_name: str = ""
    uploaded: bool = False


@dataclass(frozen=True)
class ScheduleResult:
    """What [`schedule`] left on the backend.

    Attributes:
        pipeline_id (`str`): the KFP pipeline id.
        version_id (`str`): the pipeline version the recurring run starts.
        recurring_run_id (`str`): the live recurring run's id.
        recurring_run_url (`str`): its page in the KFP UI.
        experiment_id (`str`): the experiment it belongs to.
        action (`str`): `"created"` (none had this name), `"replaced"` (old ones deleted, a new one created)
            or `"unchanged"` (an identical one was kept).
        removed_ids (`tuple[str, ...]`): recurring runs with the same name that were deleted.
        version_name (`str`): the pipeline version's name.
        uploaded (`bool`): whether a pipeline or version was uploaded.
        trigger ([`Trigger`]): the schedule sent: a 6-field cron expression or an interval in seconds.
    """

    pipeline_id: str
    version_id: str
    recurring_run_id: str
    recurring_run_url: str
    experiment_id: str
    action: Literal["created", "replaced", "unchanged"]
    removed_ids: tuple[str, ...] = ()
    version_name: str = ""
    uploaded: bool = False
    trigger: Trigger | None = None


@dataclass(frozen=True)
class _RecurringSpec:
    """The recurring run [`schedule`] wants to exist."""

    experiment_id: str
    job_name: str
    pipeline_id: str
    version_id: str
    trigger: Trigger
    params: dict[str, Any]
    max_concurrency: int
    no_catchup: bool
    enabled: bool
    service_account: str | None
    description: str


def submit(
    package_path: str | Path,
    *,
    host: str,
    pipeline_name: str,
    experiment: str = "kubetune",
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    version_name: str | None = None,
    existing_token: str | None = None,
    service_account: str | None = None,
) -> SubmitResult:
    """Upload a compiled pipeline (or a new version of it) and start one run.

    Args:
        package_path (`str` or `Path`): the compiled pipeline (`kubetune compile ... -o out.yaml`).
        host (`str`): the KFP API URL, e.g. `http://localhost:8080`.
        pipeline_name (`str`): the pipeline's name on the backend.
        experiment (`str`, *optional*, defaults to `"kubetune"`): the experiment to run in (created if missing).
        run_name (`str`, *optional*): the run's name; defaults to `<pipeline_name> <UTC time> UTC`.
        params (`Mapping[str, Any]`, *optional*): pipeline parameters; names are checked against the package.
        namespace (`str`, *optional*): the profile namespace on a multi-user install.
        version_name (`str`, *optional*): the name for a new version; see
            [`kubetune.launch.kfp_packages.ensure_pipeline_version`].
        existing_token (`str`, *optional*): a bearer token for the API.
        service_account (`str`, *optional*): the Kubernetes service account the run's pods use; `None` keeps
            the backend's default (`pipeline-runner`).

    Returns:
        [`SubmitResult`]: ids and the run's URL in the KFP UI.

    Raises:
        `ValueError`: the package is missing or a parameter name is not the pipeline's.
        [`KfpBackendError`]: the backend cannot be reached or refuses a call.
    """
    path = checked_package(package_path, params)
    client = connect(host, namespace=namespace, existing_token=existing_token)
    version = ensure_pipeline_version(client, path, pipeline_name, version_name=version_name, namespace=namespace)
    experiment_id = ensure_experiment(client, experiment, namespace)
    name = run_name or f"{pipeline_name} {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    with api_call(client_url(client), f"start run {name!r} of pipeline {pipeline_name!r}"):
        run = client.run_pipeline(
            experiment_id=experiment_id, job_name=name, params=dict(params or {}),
            pipeline_id=version.pipeline_id, version_id=version.version_id, service_account=service_account,
        )
    return SubmitResult(
        pipeline_id=version.pipeline_id, version_id=version.version_id, run_id=run.run_id,
        run_url=f"{client_url(client)}/#/runs/details/{run.run_id}", experiment_id=experiment_id,
        version_name=version.version_name, uploaded=version.uploaded,
    )


def schedule(
    package_path: str | Path,
    *,
    host: str,
    pipeline_name: str,
    cron: str,
    experiment: str = "kubetune",
    job_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    enabled: bool = True,
    namespace: str | None = None,
    version_name: str | None = None,
    existing_token: str | None = None,
    service_account: str | None = None,
    description: str | None = None,
) -> ScheduleResult:
    """Upload a compiled pipeline (or a new version) and keep one recurring run of it named `job_name`.

    Safe to re-run (e.g. from every `helm upgrade`): an identical recurring run is left alone, a different
    one is replaced (disable old, create new, delete old; see the module docstring).

    Args:
        package_path (`str` or `Path`): the compiled pipeline.
        host (`str`): the KFP API URL.
        pipeline_name (`str`): the pipeline's name on the backend.
        cron (`str`): a 6-field cron expression (seconds first, UTC: `"0 0 3 * * 0"` = Sundays 03:00), a macro
            (`@daily`, `@weekly`, ...) or `@every <duration>` (an interval); see [`kubetune.launch.cron`].
        experiment (`str`, *optional*, defaults to `"kubetune"`): the experiment that holds the recurring run
            and its runs (created if missing); same-name recurring runs are looked up in it.
        job_name (`str`, *optional*): the recurring run's name, its identity across re-runs; defaults to
            `<pipeline_name>-schedule`.
        params (`Mapping[str, Any]`, *optional*): pipeline parameters for every run.
        max_concurrency (`int`, *optional*, defaults to 1): runs of this schedule allowed at once (KFP: 1-10).
        no_catchup (`bool`, *optional*, defaults to `True`): after a pause, start only the latest missed run
            instead of one per missed tick (a retraining backfill would waste GPU hours).
        enabled (`bool`, *optional*, defaults to `True`): create it enabled, or paused.
        namespace (`str`, *optional*): the profile namespace on a multi-user install.
        version_name (`str`, *optional*): the name for a new version; see
            [`kubetune.launch.kfp_packages.ensure_pipeline_version`].
        existing_token (`str`, *optional*): a bearer token for the API.
        service_account (`str`, *optional*): the service account of the runs' pods; `None`: backend default.
        description (`str`, *optional*): shown in the UI; defaults to a line naming kubetune and the package hash.

    Returns:
        [`ScheduleResult`]: ids, URL, and whether the recurring run was created, replaced or unchanged.

    Raises:
        `ValueError`: a bad cron expression, max_concurrency, package or parameter name (before any request).
        [`KfpBackendError`]: the backend cannot be reached or refuses a call.
    """
    trigger = parse_trigger(cron)
    low, high = MAX_CONCURRENCY_RANGE
    if not low <= max_concurrency <= high:
        raise ValueError(f"max_concurrency={max_concurrency}: KFP allows {low} to {high} concurrent runs")
    path = checked_package(package_path, params)
    client = connect(host, namespace=namespace, existing_token=existing_token)
    version = ensure_pipeline_version(client, path, pipeline_name, version_name=version_name, namespace=namespace)
    spec = _RecurringSpec(
        experiment_id=ensure_experiment(client, experiment, namespace),
        job_name=job_name or f"{pipeline_name}-schedule",
        pipeline_id=version.pipeline_id,
        version_id=version.version_id,
        trigger=trigger,
        params=dict(params or {}),
        max_concurrency=max_concurrency,
        no_catchup=no_catchup,
        enabled=enabled,
        service_account=service_account,
        description=description or f"kubetune schedule of {pipeline_name} ({HASH_MARKER}{version.content_hash})",
    )
    existing = _recurring_runs_named(client, spec.experiment_id, spec.job_name)
    keep = next((run for run in existing if _matches(run, spec)), None)
    stale = [run for run in existing if run is not keep]
    if keep is None:
        keep = _replace_recurring_run(client, spec, stale)
        action: Literal["created", "replaced", "unchanged"] = "replaced" if stale else "created"
    else:
        _delete_recurring_runs(client, stale)  # duplicates left by hand or by an older tool
        action = "unchanged"
    return ScheduleResult(
        pipeline_id=version.pipeline_id, version_id=version.version_id, recurring_run_id=keep.recurring_run_id,
        recurring_run_url=f"{client_url(client)}/#/recurringrun/details/{keep.recurring_run_id}",
        experiment_id=spec.experiment_id, action=action, removed_ids=tuple(r.recurring_run_id for r in stale),
        version_name=version.version_name, uploaded=version.uploaded, trigger=trigger,
    )


def unschedule(
    *,
    host: str,
    job_name: str,
    experiment: str = "kubetune",
    namespace: str | None = None,
    existing_token: str | None = None,
) -> list[str]:
    """Delete the recurring runs named `job_name` in `experiment` (e.g. from a `helm uninstall` hook).

    Args:
        host (`str`): the KFP API URL.
        job_name (`str`): the recurring run's name, as given to [`schedule`].
        experiment (`str`, *optional*, defaults to `"kubetune"`): the experiment that holds it.
        namespace (`str`, *optional*): the profile namespace on a multi-user install.
        existing_token (`str`, *optional*): a bearer token for the API.

    Returns:
        `list[str]`: the ids deleted; empty when there was nothing to delete (also when the experiment is missing).
    """
    client = connect(host, namespace=namespace, existing_token=existing_token)
    try:
        with api_call(client_url(client), f"look up experiment {experiment!r}"):
            experiment_id = client.get_experiment(experiment_name=experiment, namespace=namespace).experiment_id
    except ValueError as error:
        if str(error).startswith("No experiment is found"):  # kfp.Client's words: nothing was scheduled there
            return []
        raise
    runs = _recurring_runs_named(client, experiment_id, job_name)
    _delete_recurring_runs(client, runs)
    return [run.recurring_run_id for run in runs]


# --- recurring runs -------------------------------------------------------------------------------------------


def _recurring_runs_named(client: kfp.Client, experiment_id: str, job_name: str) -> list[Any]:
    """All recurring runs called `job_name` in the experiment (oldest first, as the backend lists them)."""
    with api_call(client_url(client), f"list recurring runs named {job_name!r}"):
        runs = all_pages(
            lambda token: client.list_recurring_runs(
                page_token=token, page_size=PAGE_SIZE, experiment_id=experiment_id,
                filter=name_filter(job_name),
            ),
            "recurring_runs",
        )
    return [run for run in runs if run.display_name == job_name]  # exact, whatever the server's filter did


def _matches(run: Any, spec: _RecurringSpec) -> bool:
    """Whether an existing recurring run already does what `spec` asks (so it can be kept as is)."""
    reference = run.pipeline_version_reference
    trigger = run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    interval = trigger.periodic_schedule.interval_second if trigger and trigger.periodic_schedule else None
    parameters = (run.runtime_config.parameters if run.runtime_config else None) or {}
    return (
        reference is not None
        and reference.pipeline_version_id == spec.version_id
        and cron == spec.trigger.cron_expression
        and (int(interval) if interval else None) == spec.trigger.interval_second
        and int(run.max_concurrency or 0) == spec.max_concurrency
        and bool(run.no_catchup) == spec.no_catchup
        and run.mode == (_ENABLE if spec.enabled else _DISABLE)
        and parameters == spec.params
        # The backend fills in its default service account; compare only one we asked for.
        and (spec.service_account is None or run.service_account == spec.service_account)
    )


def _replace_recurring_run(client: kfp.Client, spec: _RecurringSpec, stale: list[Any]) -> Any:
    """Disable the stale runs, create the new one, then delete the stale ones; re-enable them if creating fails."""
    url = client_url(client)
    paused = [run for run in stale if run.mode == _ENABLE]
    for run in paused:
        with api_call(url, f"disable recurring run {run.recurring_run_id} ({run.display_name!r})"):
            client.disable_recurring_run(run.recurring_run_id)
    try:
        with api_call(url, f"create recurring run {spec.job_name!r}"):
            created = client.create_recurring_run(
                experiment_id=spec.experiment_id, job_name=spec.job_name, description=spec.description,
                cron_expression=spec.trigger.cron_expression, interval_second=spec.trigger.interval_second,
                max_concurrency=spec.max_concurrency, no_catchup=spec.no_catchup, params=spec.params,
                pipeline_id=spec.pipeline_id, version_id=spec.version_id, enabled=spec.enabled,
                service_account=spec.service_account,
            )
    except KfpBackendError:
        _reenable(client, paused)
        raise
    _delete_recurring_runs(client, stale)
    return created


def _reenable(client: kfp.Client, runs: list[Any]) -> None:
    """Best effort: put back the schedules we paused, so a failed replace leaves the old one running."""
    for run in runs:
        try:
            with api_call(client_url(client), f"re-enable recurring run {run.recurring_run_id}"):
                client.enable_recurring_run(run.recurring_run_id)
        except KfpBackendError as error:
            logger.warning("could not re-enable %s after a failed replace: %s", run.recurring_run_id, error)


def _delete_recurring_runs(client: kfp.Client, runs: list[Any]) -> None:
    for run in runs:
        with api_call(client_url(client), f"delete recurring run {run.recurring_run_id} ({run.display_name!r})"):
            client.delete_recurring_run(run.recurring_run_id)
