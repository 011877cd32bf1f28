"""Run a pipeline on this machine through KFP's local SubprocessRunner, and compile it for a cluster.

`kubetune run` executes the very DAG `kubetune compile` writes: each step is a subprocess here
and a pod there. Steps append their status and time to a step log, which becomes the summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.config.pipeline import PipelineConfig

logger = logging.getLogger(__name__)


@dataclass
class LocalRunResult:
    """Attributes:
    ok: whether every step succeeded.
    steps: one record per step: step, status, seconds (+ metrics, version, decision, error).
    seconds: wall time of the whole run.
    output_root: where the KFP artifacts, step log and local MLflow store are.
    tracking_uri: where MLflow tracked this run.
    """

    ok: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    output_root: Path = Path(".")
    tracking_uri: str = ""

    def find(self, step: str) -> dict[str, Any] | None:
        return next((s for s in reversed(self.steps) if s["step"] == step), None)


def compile_pipeline(cfg: PipelineConfig, package_path: str | Path) -> Path:
    """Write the KFP IR YAML of `cfg`'s pipeline (uploadable in the KFP UI unchanged)."""
    from kfp import compiler

    from kubetune.pipelines import build_pipeline

    path = Path(package_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg), package_path=str(path))
    return path


def run_local(cfg: PipelineConfig, output_root: str | Path, arguments: dict[str, Any] | None = None) -> LocalRunResult:
    """Run the pipeline locally; MLflow tracks to the config's server, else a sqlite store in output_root.

    Args:
        cfg: a validated pipeline config.
        output_root: folder for KFP artifacts (`kfp/`), the step log and the local MLflow store.
        arguments: pipeline parameters to override (e.g. {"alignment": "dpo"}).
    """
    from kfp import local

    from kubetune.components.runtime import STEP_LOG_ENV
    from kubetune.pipelines import build_pipeline

    root = Path(output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    step_log = root / f"steps-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    env = {STEP_LOG_ENV: str(step_log), "MLFLOW_TRACKING_URI": uri}
    if cfg.s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = cfg.s3.endpoint_url
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the SubprocessRunner's step processes inherit this environment
    start = time.perf_counter()
    ok = True
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
                   raise_on_error=True)
        build_pipeline(cfg)(**(arguments or {}))
    except Exception as err:  # the failing step's record in the step log says which and why
        ok = False
        logger.error("pipeline %s failed: %s", cfg.name, err)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    steps = [json.loads(line) for line in step_log.read_text().splitlines()] if step_log.is_file() else []
    ok = ok and all(s["status"] == "succeeded" for s in steps)
    return LocalRunResult(ok=ok, steps=steps, seconds=time.perf_counter() - start, output_root=root,
                          tracking_uri=uri)


def summary(result: LocalRunResult, cfg: PipelineConfig) -> str:
    """Each step's status and time, the eval metrics, the registered version and the promotion decision."""
    lines = [f"pipeline {cfg.name} ({cfg.pipeline}): {'SUCCEEDED' if result.ok else 'FAILED'} "
             f"in {result.seconds:.0f} s", "", f"{'step':22} {'status':10} {'seconds':>8}"]
    for s in result.steps:
        lines.append(f"{s['step']:22} {s['status']:10} {s['seconds']:8.1f}")
        if s.get("error"):
            lines.append(f"    error: {s['error']}")
    evaluation = result.find("evaluate")
    if evaluation and evaluation.get("metrics"):
        lines += ["", "eval metrics:"]
        noise = ("runtime", "per_second", "epoch", "preparation_time", "tokens_seen")
        shown = [k for k in evaluation["metrics"] if not k.endswith(noise)]
        lines += [f"  {k:28} {evaluation['metrics'][k]:.4f}" for k in sorted(shown)]
    registered, promoted = result.find("register"), result.find("promote")
    if registered and registered.get("version"):
        lines += ["", f"registered: {cfg.promotion.registered_model} version {registered['version']}"]
    if promoted and promoted.get("decision"):
        d = promoted["decision"]
        lines.append(f"promotion:  {d['alias']} — {d['reason']}")
    lines += ["", f"artifacts:  {result.output_root / 'kfp'}", f"MLflow:     {result.tracking_uri}"]
    if result.tracking_uri.startswith("sqlite:"):
        lines.append(f"            browse it: mlflow ui --backend-store-uri {result.tracking_uri}")
    return "\n".join(lines)
