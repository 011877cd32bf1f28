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

**Pipelines and versions.** The first package for `pipeline_name` uploads a new pipeline (KFP names its first
version after the pipeline); every later package with different bytes becomes a new *version* of it, named
`version_name` or `<kubetune version>-<UTC time>-<sha256[:12]>`. Each upload's description records the package's
sha256 (`kubetune-sha256=<hex>`): when the latest version already carries the package's hash, nothing is
uploaded, so CI re-runs and `helm upgrade` add no duplicate versions.

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

import contextlib
import difflib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import kfp
import kfp_server_api
import urllib3
import yaml

from kubetune import __version__
from kubetune.launch.cron import Trigger, parse_trigger

__all__ = [
    "HASH_MARKER",
    "PORT_FORWARD",
    "KfpBackendError",
    "PipelineVersion",
    "ScheduleResult",
    "SubmitResult",
    "connect",
    "default_version_name",
    "ensure_experiment",
    "ensure_pipeline_version",
    "normalise_host",
    "package_hash",
    "pipeline_parameters",
    "schedule",
    "submit",
    "unschedule",
]

logger = logging.getLogger(__name__)

PORT_FORWARD = "kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow"
HASH_MARKER = "kubetune-sha256="
# KFP's own bounds for a recurring run's max_concurrency (the API server refuses others).
MAX_CONCURRENCY_RANGE = (1, 10)
_PAGE_SIZE = 100
_MAX_PAGES = 1000  # a server that keeps returning a page token must not loop us forever
_FILTER_EQUALS = 1  # v2beta1 Predicate.Operation.EQUALS, as kfp.Client itself sends it
_PACKAGE_SUFFIXES = (".yaml", ".yml", ".zip", ".tar.gz", ".tgz")  # what kfp.Client can upload
_ENABLE, _DISABLE = kfp_server_api.RecurringRunMode.ENABLE, kfp_server_api.RecurringRunMode.DISABLE


class KfpBackendError(RuntimeError):
    """A call to the KFP backend failed; the message names the URL, what the server said, and what to check."""


@dataclass(frozen=True)
class PipelineVersion:
    """The pipeline version a package maps to on the backend.

    Attributes:
        pipeline_id (`str`): the KFP pipeline id.
        version_id (`str`): the KFP pipeline version id.
        version_name (`str`): the version's name as the backend shows it.
        content_hash (`str`): sha256 of the package bytes.
        uploaded (`bool`): whether this call uploaded it (`False`: the latest version already had this hash).
    """

    pipeline_id: str
    version_id: str
    version_name: str
    content_hash: str
    uploaded: bool


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


class _Client(kfp.Client):
    """`kfp.Client` that remembers its URL and whose start-up health check tries once.

    The stock check retries 5 times, 5 s apart, on any API error: a wrong token waits 25 s and then fails with
    a bare `TimeoutError`. One attempt, whose error carries the server's answer, is what a person needs.
    """

    def __init__(self, url: str, *, namespace: str | None, existing_token: str | None) -> None:
        self.url = url
        with warnings.catch_warnings():  # "only works with KFP >= 2.0.0-beta.2": noise for every user
            warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
            super().__init__(host=url, namespace=namespace or "kubeflow", existing_token=existing_token)

    def get_kfp_healthz(self, sleep_duration: int = 5) -> kfp_server_api.V2beta1GetHealthzResponse:
        """One health check, no retries (`sleep_duration` is accepted for kfp.Client's signature)."""
        return self._healthz_api.healthz_service_get_healthz()


def connect(host: str, *, namespace: str | None = None, existing_token: str | None = None) -> kfp.Client:
    """Open a `kfp.Client` on `host` and check that the KFP API answers.

    Args:
        host (`str`): the KFP API URL, e.g. `http://localhost:8080` (port-forward of `ml-pipeline-ui`); see
            [`normalise_host`] for URLs without a scheme.
        namespace (`str`, *optional*): the Kubeflow profile namespace on a multi-user install; `None` for a
            single-user one.
        existing_token (`str`, *optional*): a bearer token sent with every request.

    Returns:
        `kfp.Client`: a client whose `url` attribute is the normalised host.

    Raises:
        [`KfpBackendError`]: the host cannot be reached or refuses the health check.
    """
    url = normalise_host(host)
    with _api_call(url, "check the KFP API's health (GET /apis/v2beta1/healthz)"):
        client = _Client(url, namespace=namespace, existing_token=existing_token)
        # kfp.Client only checks health when no namespace is set; check once either way so a wrong URL or
        # token fails here, with a message about the connection, not in the middle of an upload.
        if client.get_user_namespace():
            client.get_kfp_healthz()
    return client


def normalise_host(host: str) -> str:
    """The KFP API URL with a scheme and no trailing slash.

    Args:
        host (`str`): a URL; without a scheme, `http://` is assumed for loopback and cluster-internal names
            (`localhost:8080`, `ml-pipeline:8888`, `*.svc`, `*.svc.cluster.local`) and `https://` otherwise.

    Returns:
        `str`: e.g. `http://localhost:8080`.

    Raises:
        `ValueError`: an empty host or a scheme other than http/https.
    """
    text = (host or "").strip().rstrip("/")
    if not text:
        raise ValueError(f"host is required: the KFP API URL, e.g. http://localhost:8080 after `{PORT_FORWARD}`")
    if "://" not in text:
        name = urlsplit("//" + text).hostname or ""
        internal = name in ("localhost", "127.0.0.1", "::1") or "." not in name
        internal = internal or name.endswith((".svc", ".svc.cluster.local"))
        text = ("http://" if internal else "https://") + text
    if urlsplit(text).scheme not in ("http", "https"):
        raise ValueError(f"host {host!r}: the KFP API is served over http:// or https://")
    return text


def package_hash(package_path: str | Path) -> str:
    """sha256 (hex) of a compiled pipeline package's bytes: the identity used to skip duplicate uploads."""
    return hashlib.sha256(Path(package_path).read_bytes()).hexdigest()


def default_version_name(content_hash: str, now: datetime | None = None) -> str:
    """`<kubetune version>-<UTC YYYYmmdd-HHMMSS>-<sha256[:12]>`: sortable, and names the content.

    Args:
        content_hash (`str`): the package's sha256 hex digest.
        now (`datetime`, *optional*): the time to stamp; defaults to the current UTC time.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{__version__}-{stamp}-{content_hash[:12]}"


def pipeline_parameters(package_path: str | Path) -> dict[str, str]:
    """The parameters a compiled pipeline (KFP IR YAML) declares, with their KFP types.

    Args:
        package_path (`str` or `Path`): a `.yaml`/`.yml` file from `kfp.compiler.Compiler().compile(...)`.

    Returns:
        `dict[str, str]`: parameter name -> `parameterType` (`STRING`, `NUMBER_INTEGER`, ...).
    """
    with open(package_path, encoding="utf-8") as stream:
        spec = next(yaml.safe_load_all(stream), None) or {}  # a second document is the platform spec
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {name: str(body.get("parameterType", "")) for name, body in declared.items()}


def ensure_pipeline_version(
    client: kfp.Client,
    package_path: str | Path,
    pipeline_name: str,
    *,
    version_name: str | None = None,
    namespace: str | None = None,
) -> PipelineVersion:
    """Make the package's content the latest version of `pipeline_name`, uploading only what is new.

    Args:
        client (`kfp.Client`): from [`connect`].
        package_path (`str` or `Path`): the compiled pipeline package.
        pipeline_name (`str`): the pipeline's name on the backend; it must be unique there.
        version_name (`str`, *optional*): the name of a new version; defaults to [`default_version_name`].
            Unused when the pipeline is new (KFP names the first version after the pipeline) or when the
            latest version already has this content.
        namespace (`str`, *optional*): the profile namespace for a new pipeline on a multi-user install.

    Returns:
        [`PipelineVersion`]: ids, name, hash and whether anything was uploaded.

    Raises:
        [`KfpBackendError`]: an API error, or several pipelines already share `pipeline_name`.
    """
    url = _url(client)
    digest = package_hash(package_path)
    description = f"{HASH_MARKER}{digest} (kubetune {__version__})"
    pipeline_id = _find_pipeline(client, pipeline_name, namespace)
    if pipeline_id is None:
        with _api_call(url, f"upload pipeline {pipeline_name!r}"):
            pipeline = client.upload_pipeline(
                str(package_path), pipeline_name=pipeline_name, description=description, namespace=namespace
            )
        first = _latest_version(client, pipeline.pipeline_id)
        if first is None:
            raise KfpBackendError(f"{url} created pipeline {pipeline_name!r} but lists no version of it")
        return PipelineVersion(pipeline.pipeline_id, first.pipeline_version_id, first.display_name, digest, True)
    latest = _latest_version(client, pipeline_id)
    if latest is not None and _recorded_hash(latest.description) == digest:
        return PipelineVersion(pipeline_id, latest.pipeline_version_id, latest.display_name, digest, False)
    name = version_name or default_version_name(digest)
    with _api_call(url, f"upload version {name!r} of pipeline {pipeline_name!r}"):
        version = client.upload_pipeline_version(
            str(package_path), name, pipeline_id=pipeline_id, description=description
        )
    return PipelineVersion(pipeline_id, version.pipeline_version_id, version.display_name or name, digest, True)


def ensure_experiment(client: kfp.Client, name: str, namespace: str | None = None) -> str:
    """Get the experiment called `name`, creating it if missing; return its id.

    Args:
        client (`kfp.Client`): from [`connect`].
        name (`str`): the experiment's name.
        namespace (`str`, *optional*): the profile namespace on a multi-user install.
    """
    with _api_call(_url(client), f"get or create experiment {name!r}"):
        return client.create_experiment(name=name, namespace=namespace).experiment_id  # kfp: get-or-create


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
        version_name (`str`, *optional*): the name for a new version; see [`ensure_pipeline_version`].
        existing_token (`str`, *optional*): a bearer token for the API.
        service_account (`str`, *optional*): the Kubernetes service account the run's pods use; `None` keeps
            the backend's default (`pipeline-runner`).

    Returns:
        [`SubmitResult`]: ids and the run's URL in the KFP UI.

    Raises:
        `ValueError`: the package is missing or a parameter name is not the pipeline's.
        [`KfpBackendError`]: the backend cannot be reached or refuses a call.
    """
    path = _checked_package(package_path, params)
    client = connect(host, namespace=namespace, existing_token=existing_token)
    version = ensure_pipeline_version(client, path, pipeline_name, version_name=version_name, namespace=namespace)
    experiment_id = ensure_experiment(client, experiment, namespace)
    name = run_name or f"{pipeline_name} {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    with _api_call(_url(client), f"start run {name!r} of pipeline {pipeline_name!r}"):
        run = client.run_pipeline(
            experiment_id=experiment_id, job_name=name, params=dict(params or {}),
            pipeline_id=version.pipeline_id, version_id=version.version_id, service_account=service_account,
        )
    return SubmitResult(
        pipeline_id=version.pipeline_id, version_id=version.version_id, run_id=run.run_id,
        run_url=f"{_url(client)}/#/runs/details/{run.run_id}", experiment_id=experiment_id,
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
        version_name (`str`, *optional*): the name for a new version; see [`ensure_pipeline_version`].
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
    path = _checked_package(package_path, params)
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
        recurring_run_url=f"{_url(client)}/#/recurringrun/details/{keep.recurring_run_id}",
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
        with _api_call(_url(client), f"look up experiment {experiment!r}"):
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
    with _api_call(_url(client), f"list recurring runs named {job_name!r}"):
        runs = _all_pages(
            lambda token: client.list_recurring_runs(
                page_token=token, page_size=_PAGE_SIZE, experiment_id=experiment_id,
                filter=_name_filter(job_name),
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
    url = _url(client)
    paused = [run for run in stale if run.mode == _ENABLE]
    for run in paused:
        with _api_call(url, f"disable recurring run {run.recurring_run_id} ({run.display_name!r})"):
            client.disable_recurring_run(run.recurring_run_id)
    try:
        with _api_call(url, f"create recurring run {spec.job_name!r}"):
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
            with _api_call(_url(client), f"re-enable recurring run {run.recurring_run_id}"):
                client.enable_recurring_run(run.recurring_run_id)
        except KfpBackendError as error:
            logger.warning("could not re-enable %s after a failed replace: %s", run.recurring_run_id, error)


def _delete_recurring_runs(client: kfp.Client, runs: list[Any]) -> None:
    for run in runs:
        with _api_call(_url(client), f"delete recurring run {run.recurring_run_id} ({run.display_name!r})"):
            client.delete_recurring_run(run.recurring_run_id)


# --- pipelines ------------------------------------------------------------------------------------------------


def _find_pipeline(client: kfp.Client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called `name`, or `None`; several with that name is an error for a person."""
    with _api_call(_url(client), f"look up pipeline {name!r}"):
        found = _all_pages(
            lambda token: client.list_pipelines(
                page_token=token, page_size=_PAGE_SIZE, filter=_name_filter(name), namespace=namespace
            ),
            "pipelines",
        )
    found = [pipeline for pipeline in found if pipeline.display_name == name]
    if len(found) > 1:
        ids = ", ".join(pipeline.pipeline_id for pipeline in found)
        raise KfpBackendError(
            f"{_url(client)} has {len(found)} pipelines named {name!r} ({ids}); kubetune adds versions to one "
            f"pipeline per name — delete or rename the extra ones in the KFP UI, or choose another pipeline_name"
        )
    return found[0].pipeline_id if found else None


def _latest_version(client: kfp.Client, pipeline_id: str) -> Any | None:
    """The newest version of a pipeline (by creation time), or `None` if it has none."""
    with _api_call(_url(client), f"list versions of pipeline {pipeline_id}"):
        page = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    return (page.pipeline_versions or [None])[0]


def _recorded_hash(description: str | None) -> str | None:
    """The sha256 that kubetune wrote into a version's description, if any."""
    for word in (description or "").split():
        if word.startswith(HASH_MARKER):
            return word[len(HASH_MARKER):]
    return None


def _checked_package(package_path: str | Path, params: Mapping[str, Any] | None) -> Path:
    """Fail before any request: the package must exist, be uploadable, and declare every parameter given."""
    path = Path(package_path)
    if not path.is_file():
        raise ValueError(f"pipeline package {str(path)!r} not found; build it with `kubetune compile ... -o {path}`")
    if not path.name.endswith(_PACKAGE_SUFFIXES):
        raise ValueError(f"pipeline package {str(path)!r}: kfp uploads {', '.join(_PACKAGE_SUFFIXES)} files")
    if params and path.suffix in (".yaml", ".yml"):
        declared = pipeline_parameters(path)
        unknown = [name for name in params if name not in declared]
        if unknown:
            raise ValueError(_unknown_params_message(path, unknown, declared))
    return path


def _unknown_params_message(path: Path, unknown: list[str], declared: Mapping[str, str]) -> str:
    lines = [f"pipeline package {str(path)!r} has no parameter{'s' if len(unknown) > 1 else ''} {unknown}:"]
    for name in unknown:
        close = difflib.get_close_matches(name, list(declared), n=1)
        lines.append(f"  - {name}" + (f": did you mean {close[0]!r}?" if close else ""))
    lines.append(f"its parameters are: {', '.join(declared) or '(none)'}")
    return "\n".join(lines)


# --- the API, for people ----------------------------------------------------------------------------------------


def _url(client: kfp.Client) -> str:
    return getattr(client, "url", None) or client._existing_config.host  # a plain kfp.Client has no .url


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": _FILTER_EQUALS, "key": "display_name", "stringValue": name}]})


def _all_pages(fetch: Callable[[str], Any], items: str) -> list[Any]:
    """Every item of a paginated list call, following `next_page_token`."""
    found: list[Any] = []
    token = ""
    for _ in range(_MAX_PAGES):
        page = fetch(token)
        found.extend(getattr(page, items) or [])
        token = page.next_page_token or ""
        if not token:
            break
    return found


@contextlib.contextmanager
def _api_call(url: str, what: str) -> Iterator[None]:
    """Turn one KFP call's transport or API error into a [`KfpBackendError`] that says what to check.

    kfp.Client also prints links ("Run details: ...") to stdout; they go to the debug log instead, since the
    results carry the URLs and a CLI's stdout is for its own output.
    """
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    except kfp_server_api.ApiException as error:
        raise KfpBackendError(_api_error_message(url, what, error)) from error
    except urllib3.exceptions.HTTPError as error:
        raise KfpBackendError(_unreachable_message(url, what, getattr(error, "reason", None) or error)) from error
    finally:
        if chatter.getvalue().strip():
            logger.debug("kfp: %s", chatter.getvalue().strip())


def _unreachable_message(url: str, what: str, reason: object) -> str:
    return (
        f"cannot reach the Kubeflow Pipelines API at {url} (trying to {what}): {reason}\n"
        f"Check:\n"
        f"  - the URL: through a port-forward it is http://localhost:8080; start one with\n"
        f"        {PORT_FORWARD}\n"
        f"    and keep it running (from a pod in the cluster: http://ml-pipeline.kubeflow:8888)\n"
        f"  - on a multi-user Kubeflow (Istio/Dex in front of the API), pass a bearer token (existing_token)"
    )


_STATUS_HINTS = {
    401: "The API wants credentials: pass a bearer token (existing_token); on a multi-user Kubeflow, a "
    "ServiceAccount token with the audience pipelines.kubeflow.org.",
    403: "The credentials were accepted but lack permission: on a multi-user Kubeflow, pass namespace=<your "
    "profile namespace> and a token of an identity that may use it.",
    404: "The URL answers but not as the KFP API, or the object is gone: point host at the KFP API (the "
    "ml-pipeline-ui port-forward, or http://ml-pipeline.kubeflow:8888), not at another service.",
    409: "That name is taken on the backend: pass another version_name, or none to get <version>-<time>-<hash>.",
}


def _api_error_message(url: str, what: str, error: kfp_server_api.ApiException) -> str:
    if not error.status:  # kfp_server_api reports TLS and similar transport failures as status 0
        return _unreachable_message(url, what, error.reason)
    detail = _server_message(error.body) or error.reason
    verb = "refused to" if 400 <= error.status < 500 else "failed to"
    message = f"the Kubeflow Pipelines API at {url} {verb} {what}: HTTP {error.status} {error.reason}: {detail}"
    hint = _STATUS_HINTS.get(error.status)
    return f"{message}\n{hint}" if hint else message


def _server_message(body: Any) -> str:
    """The human part of an error body: grpc-gateway's `message`, the upload server's `error_message`, or text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(str(body).split())[:500]
    if isinstance(data, dict):
        for key in ("message", "error_message", "error"):
            if data.get(key):
                return str(data[key])
    return json.dumps(data)[:500]
