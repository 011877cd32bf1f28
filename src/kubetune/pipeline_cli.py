"""The pipeline commands: run (locally, through kfp.local), compile, submit, schedule, promote."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune.config.errors import ConfigError
from kubetune.config.pipeline import PipelineConfig, load_pipeline_config


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"kubetune {command}")
    p.add_argument("config", nargs="?" if command == "promote" else None,
                   help="pipeline config YAML (see examples/pipeline_sft.yaml)")
    if command == "run":
        p.add_argument("--output", default="outputs/pipeline", help="artifacts, step log, local MLflow store")
        p.add_argument("--alignment", choices=["ppo", "dpo", "kto", "none"], help="full pipeline: the branch")
    if command == "compile":
        p.add_argument("-o", "--output", required=True, help="where to write the pipeline YAML")
    if command in ("submit", "schedule"):
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
        p.add_argument("--experiment", default="kubetune")
        p.add_argument("--namespace", default=None)
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    if command == "submit":
        p.add_argument("--run-name", default=None)
    if command == "schedule":
        p.add_argument("--cron", required=True, help='6-field KFP cron, seconds first: "0 0 3 * * 0"')
        p.add_argument("--job-name", default=None)
        p.add_argument("--max-concurrency", type=int, default=1)
        p.add_argument("--catchup", action="store_true", help="run missed intervals (default: no catch-up)")
        p.add_argument("--disabled", action="store_true", help="create the schedule paused")
    if command == "promote":
        p.add_argument("--model", default=None, help="registered model (default: promotion.registered_model)")
        p.add_argument("--version", required=True)
        p.add_argument("--metric", default=None, help="gate metric (default: promotion.metric)")
        p.add_argument("--lower-is-better", action="store_true", help="the gate metric is a loss")
        p.add_argument("--min-delta", type=float, default=None)
        p.add_argument("--tracking-uri", default=None, help="default: the config's, else $MLFLOW_TRACKING_URI")
        p.add_argument("--force", action="store_true", help="make it champion whatever the metric says")
    return p


def pipeline_command(command: str, argv: Sequence[str]) -> int:
    args = _parser(command).parse_args(list(argv))
    if command == "promote":
        return _promote(args)
    try:
        cfg = load_pipeline_config(args.config)
    except ConfigError as err:
        print(f"kubetune {command}: {err}", file=sys.stderr)
        return 2
    if command == "run":
        from kubetune.launch.local_run import run_local, summary
        from kubetune.validate import preflight_pipeline

        arguments = {"alignment": args.alignment} if args.alignment else {}
        if args.alignment and cfg.pipeline != "full":
            print("kubetune run: --alignment applies to `pipeline: full` only", file=sys.stderr)
            return 2
        try:  # the DAG's validate step checks the same; here it fails before KFP even starts
            preflight_pipeline(cfg)
        except ConfigError as err:
            print(f"kubetune run: {err}", file=sys.stderr)
            return 2
        result = run_local(cfg, args.output, arguments)
        print("\n" + summary(result, cfg))
        return 0 if result.ok else 1
    if command == "compile":
        print(f"wrote {_compile(command, cfg, Path(args.output))}")
        return 0
    return _submit_or_schedule(command, cfg, args)


def _compile(command: str, cfg: PipelineConfig, path: Path) -> Path:
    """Compile `cfg`'s pipeline to `path`, saying what each preprocess step's cache key could not hash here.

    Compiling needs no data files or tokenizer (a cluster reads them); where this machine lacks them, the
    preprocess cache key names them instead of hashing them (`kubetune.data.stage_key`), and a cached step
    is then not redone when only their contents change.
    """
    import warnings

    from kubetune.data.stage_key import CacheKeyWarning
    from kubetune.launch.local_run import compile_pipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheKeyWarning)
        package = compile_pipeline(cfg, path)
    for warning in caught:
        if issubclass(warning.category, CacheKeyWarning):
            print(f"kubetune {command}: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return package


def _promote(args: argparse.Namespace) -> int:
    """`kubetune promote [pipeline.yaml] --model NAME --version N`: the registry gate, by hand."""
    import os

    from kubetune.config.pipeline import Promotion
    from kubetune.tracking.registry import promote

    cfg = load_pipeline_config(args.config) if args.config else None
    gate = cfg.promotion if cfg else Promotion()
    uri = args.tracking_uri or (cfg and cfg.mlflow.tracking_uri) or os.environ.get("MLFLOW_TRACKING_URI")
    model = args.model or (cfg and gate.registered_model)
    if not uri or not model:
        print("kubetune promote: name the model (--model) and the tracking server (--tracking-uri, "
              "MLFLOW_TRACKING_URI, or a pipeline config)", file=sys.stderr)
        return 2
    try:
        decision = promote(uri, model, args.version, args.metric or gate.metric,
                           greater_is_better=not args.lower_is_better if args.metric else gate.greater_is_better,
                           min_delta=gate.min_delta if args.min_delta is None else args.min_delta, force=args.force)
    except KeyError as err:
        print(f"kubetune promote: {err.args[0]}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 — MlflowException and connection errors: say which server, not a traceback
        from mlflow.exceptions import MlflowException

        if not isinstance(err, MlflowException | OSError):
            raise
        print(f"kubetune promote: the MLflow server at {uri} did not answer or refused the request — "
              f"{str(err).splitlines()[0][:300]}\n"
              "  check --tracking-uri / MLFLOW_TRACKING_URI and that the server is up",
              file=sys.stderr)
        return 1
    print(f"{model} v{args.version}: {decision.alias} — {decision.reason}")
    return 0


def _typed(text: str) -> object:
    """`--param max_steps=5` → 5: KFP checks a parameter's JSON type against the pipeline's declaration."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _submit_or_schedule(command: str, cfg, args: argparse.Namespace) -> int:  # noqa: ANN001
    import tempfile

    from kubetune.launch import kfp_backend

    params = {key: _typed(value) for key, value in (item.split("=", 1) for item in args.param)}
    with tempfile.TemporaryDirectory() as tmp:
        package = _compile(command, cfg, Path(tmp) / f"{cfg.name}.yaml")
        name = f"kubetune-{cfg.pipeline}-{cfg.name}"
        if command == "submit":
            result = kfp_backend.submit(package, host=args.host, pipeline_name=name, experiment=args.experiment,
                                        run_name=args.run_name, params=params, namespace=args.namespace)
        else:
            from kubetune.launch.cron import validate_cron

            try:
                cron = validate_cron(args.cron)
            except ValueError as err:
                print(f"kubetune schedule: {err}", file=sys.stderr)
                return 2
            result = kfp_backend.schedule(package, host=args.host, pipeline_name=name, cron=cron,
                                          experiment=args.experiment, job_name=args.job_name, params=params,
                                          max_concurrency=args.max_concurrency, no_catchup=not args.catchup,
                                          enabled=not args.disabled, namespace=args.namespace)
    print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
    return 0
