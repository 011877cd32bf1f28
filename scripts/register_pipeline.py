#!/usr/bin/env python3
"""Register a kubetune pipeline with Kubeflow Pipelines, and keep (or remove) its recurring run.

This is what the Helm chart's post-install/post-upgrade Job runs (charts/kubetune/templates/register-job.yaml;
the runtime image carries it at /opt/kubetune/scripts/register_pipeline.py). It

1. reads and validates the pipeline config (the chart's ConfigMap, mounted as a file),
2. compiles it to KFP IR YAML, exactly as `kubetune compile` does,
3. uploads it: a new pipeline on first install, a new *version* only when the compiled package changed
   (`kubetune.launch.kfp_packages.ensure_pipeline_version`); it starts no run,
4. with the schedule enabled, keeps one recurring run named `--job-name` on the latest version
   (`kfp_backend.schedule`: kept when identical, replaced when anything differs); disabled, deletes it
   (`kfp_backend.unschedule`).

Every step is idempotent, so re-running the same `helm upgrade` uploads nothing and touches no schedule.
It prints one line per thing it did, and exits 2 on a bad config or argument, 1 when the KFP API fails.

```bash
python scripts/register_pipeline.py --config examples/pipeline_sft.yaml --host http://localhost:8080 \
    --cron "0 0 3 * * 0" --job-name weekly-retrain
```

Each option also reads an environment variable (in brackets in `--help`), for use without arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "register_pipeline"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of pipeline parameters, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    env = os.environ.get

    def option(p: argparse.ArgumentParser, flag: str, var: str, help: str, **kw: Any) -> None:
        default = env(var, kw.pop("default", None))
        p.add_argument(flag, default=default, help=f"{help} [{var}]", **kw)

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    option(p, "--config", "KUBETUNE_CONFIG", "pipeline config YAML (the chart mounts its ConfigMap here)")
    option(p, "--host", "KFP_HOST", "KFP API URL, e.g. http://ml-pipeline.kubeflow:8888")
    option(p, "--experiment", "KFP_EXPERIMENT", "experiment holding the recurring run", default="kubetune")
    option(p, "--namespace", "KFP_NAMESPACE", "profile namespace on a multi-user Kubeflow")
    option(p, "--token-file", "KFP_TOKEN_FILE", "file with a bearer token for the KFP API (multi-user)")
    option(p, "--pipeline-name", "KFP_PIPELINE_NAME", "pipeline name on KFP (default: kubetune-<pipeline>-<name>)")
    option(p, "--schedule-enabled", "SCHEDULE_ENABLED", "keep a recurring run (false: remove it)",
           default="true", type=_bool)
    option(p, "--cron", "SCHEDULE_CRON", '6-field cron, seconds first, UTC, e.g. "0 0 3 * * 0"; or @daily, @every 6h')
    option(p, "--job-name", "SCHEDULE_JOB_NAME", "recurring run name (default: <pipeline-name>-schedule)")
    option(p, "--max-concurrency", "SCHEDULE_MAX_CONCURRENCY", "runs of the schedule at once (1-10)",
           default="1", type=int)
    option(p, "--no-catchup", "SCHEDULE_NO_CATCHUP", "after a pause, start only the latest missed run",
           default="true", type=_bool)
    option(p, "--params", "SCHEDULE_PARAMS", "pipeline parameters of scheduled runs, a JSON object",
           default="{}", type=_params)
    option(p, "--service-account", "SCHEDULE_SERVICE_ACCOUNT", "service account of the runs' pods (default: KFP's)")
    return p


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    # (string defaults, from the environment included, go through each option's `type` like flags do)
    missing = [flag for flag, value in (("--config", args.config), ("--host", args.host)) if not value]
    if args.schedule_enabled and not args.cron:
        missing.append("--cron (or --schedule-enabled=false)")
    if missing:
        p.error(f"missing {', '.join(missing)}")
    return args


def _say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def register(args: argparse.Namespace) -> None:
    """Compile, upload, and schedule or unschedule; raises ConfigError, ValueError or KfpBackendError."""
    from kubetune.config.pipeline import load_pipeline_config
    from kubetune.launch import kfp_api, kfp_backend, kfp_packages
    from kubetune.launch.cron import validate_cron
    from kubetune.launch.local_run import compile_pipeline

    cfg = load_pipeline_config(args.config)
    name = args.pipeline_name or f"kubetune-{cfg.pipeline}-{cfg.name}"
    job_name = args.job_name or f"{name}-schedule"
    cron = validate_cron(args.cron) if args.schedule_enabled else None  # a bad cron fails before any upload
    token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else None
    connection = {"host": args.host, "namespace": args.namespace, "existing_token": token}

    with tempfile.TemporaryDirectory(prefix="kubetune-register-") as tmp:
        package = compile_pipeline(cfg, Path(tmp) / f"{name}.yaml")
        digest = kfp_packages.package_hash(package)
        _say(f"compiled {args.config} ({cfg.pipeline} pipeline {cfg.name!r}) -> sha256 {digest[:12]}")
        if cron is not None:
            result = kfp_backend.schedule(
                package, pipeline_name=name, cron=cron, experiment=args.experiment, job_name=job_name,
                params=args.params, max_concurrency=args.max_concurrency, no_catchup=args.no_catchup,
                service_account=args.service_account or None, **connection,
            )
            _say_version(name, result.version_name, result.version_id, result.uploaded)
            removed = f", removed {len(result.removed_ids)} old" if result.removed_ids else ""
            _say(f"schedule {job_name!r} in experiment {args.experiment!r} ({cron}): {result.action}{removed}"
                 f" -> {result.recurring_run_url}")
            return
        client = kfp_api.connect(args.host, namespace=args.namespace, existing_token=token)
        version = kfp_packages.ensure_pipeline_version(client, package, name, namespace=args.namespace)
        _say_version(name, version.version_name, version.version_id, version.uploaded)
    removed_ids = kfp_backend.unschedule(job_name=job_name, experiment=args.experiment, **connection)
    if removed_ids:
        _say(f"schedule disabled: removed {len(removed_ids)} recurring run(s) named {job_name!r}: "
             f"{', '.join(removed_ids)}")
    else:
        _say(f"schedule disabled: no recurring run named {job_name!r} in experiment {args.experiment!r}")


def _say_version(name: str, version_name: str, version_id: str, uploaded: bool) -> None:
    if uploaded:
        _say(f"pipeline {name!r}: uploaded version {version_name!r} ({version_id})")
    else:
        _say(f"pipeline {name!r}: unchanged, latest version {version_name!r} ({version_id}) has this package")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from kubetune.config.errors import ConfigError
    from kubetune.launch.kfp_api import KfpBackendError

    try:
        register(args)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # a bad cron, max concurrency or parameter name: found before any request
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (KfpBackendError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
