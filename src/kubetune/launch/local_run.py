"""Run a pipeline on this machine through KFP's local SubprocessRunner, and compile it for a cluster.

`kubetune run` executes the very DAG `kubetune compile` writes (placed for this machine: see
`build_pipeline(local=True)`): each step is a subprocess here and a pod there. Steps append their
status and time to a step log, which becomes the summary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubetune.config.pipeline import PipelineConfig


@dataclass
class LocalRunResult:
    """Attributes:
    ok: whether every step succeeded.
    steps: one record per step: step, status, seconds (+ metrics, version, decision, error).
    seconds: wall time of the whole run.
    output_root: where the KFP artifacts, step log and local MLflow store are.
    tracking_uri: where MLflow tracked this run.
    logs_dir: the folder of this run's log files (`pipeline.log`, one file per step).
    step_logs: each step's log file, by step name.
    """

    ok: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    output_root: Path = Path(".")
    tracking_uri: str = ""
    logs_dir: Path = Path(".")
    step_logs: dict[str, Path] = field(default_factory=dict)

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


def run_local(cfg: PipelineConfig, output_root: str | Path, arguments: dict[str, Any] | None = None,
              console: TextIO | None = None) -> LocalRunResult:
    """Run the pipeline locally; MLflow tracks to the config's server, else a sqlite store in output_root.

    Everything stays in places the user owns: the steps' work directories (checkpoints) under
    `output_root/work`, caches under `$KUBETUNE_CACHE` or `~/.cache/kubetune` — the config's
    `model_cache` (a cluster PVC) applies to compiled pipelines only. The console gets a line per
    step start and end and training progress; every step's full output goes to `output_root/logs/`.

    Args:
        cfg: a validated pipeline config.
        output_root: folder for KFP artifacts (`kfp/`), work directories, logs, the step log and the
            local MLflow store.
        arguments: pipeline parameters to override (e.g. {"alignment": "dpo"}).
        console: where the progress lines go (default: standard output).
    """
    from kfp import local

    from kubetune.components.runtime import STEP_LOG_ENV, WORK_DIR_ENV
    from kubetune.launch.console import StepLogRouter
    from kubetune.pipelines import build_pipeline

    console = console or sys.stdout
    root = Path(output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    step_log = root / f"steps-{stamp}.jsonl"
    logs = root / "logs" / stamp
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    env = {STEP_LOG_ENV: str(step_log), WORK_DIR_ENV: str(root / "work"), "MLFLOW_TRACKING_URI": uri}
    if cfg.s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = cfg.s3.endpoint_url
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the SubprocessRunner's step processes inherit this environment
    console.write(f"kubetune run: pipeline {cfg.name} ({cfg.pipeline}); full logs in {logs}/\n")
    console.flush()
    router = StepLogRouter(logs, console)
    start = time.perf_counter()
    ok = True
    try:
        with contextlib.redirect_stdout(router), contextlib.redirect_stderr(router), _root_logging_to(router):
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
                       raise_on_error=True)
            build_pipeline(cfg, local=True)(**(arguments or {}))
    except Exception as err:  # a failed step's record in the step log says which and why
        ok = False
        router.write(f"pipeline {cfg.name} failed: {err}\n")
        console.write(f"pipeline {cfg.name} failed: {err}\n")
    finally:
        router.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    steps = [json.loads(line) for line in step_log.read_text().splitlines()] if step_log.is_file() else []
    recorded = {s["step"] for s in steps}
    for step in router.started:  # a process killed (out of memory, a signal) cannot write its record
        if step not in recorded:
            steps.append({"step": step, "status": "failed", "seconds": 0.0,
                          "error": "the step's process ended without reporting: killed? (see its log)"})
    ok = ok and bool(steps) and all(s["status"] == "succeeded" for s in steps)
    return LocalRunResult(ok=ok, steps=steps, seconds=time.perf_counter() - start, output_root=root,
                          tracking_uri=uri, logs_dir=logs, step_logs=dict(router.step_logs))


@contextlib.contextmanager
def _root_logging_to(stream: Any) -> Iterator[None]:
    """Send this process's own log records (kfp.local's orchestrator, ours) to `stream` while the pipeline runs.

    `kubetune`'s CLI configures logging before the run, so the root handlers hold the real stderr, which
    `redirect_stderr` cannot reach.
    """
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [logging.StreamHandler(stream)]
    try:
        yield
    finally:
        root.handlers = saved


_NOISE = ("runtime", "per_second", "epoch", "preparation_time", "tokens_seen", "_samples")


def summary(result: LocalRunResult, cfg: PipelineConfig) -> str:
    """Each step's status and time, held-out metrics before and after, the registered version and the
    promotion decision, and where to look: MLflow links, logs, artifacts."""
    lines = [f"pipeline {cfg.name} ({cfg.pipeline}): {'SUCCEEDED' if result.ok else 'FAILED'} "
             f"in {result.seconds:.0f} s", "", f"{'step':22} {'status':10} {'seconds':>8}"]
    for s in result.steps:
        lines.append(f"{s['step']:22} {s['status']:10} {s['seconds']:8.1f}")
        if s.get("error"):
            lines.append(f"    error: {s['error']}")
            if s["step"] in result.step_logs:
                lines.append(f"    log:   {result.step_logs[s['step']]}")
    lines += _metrics_table(result, cfg)
    registered, promoted = result.find("register"), result.find("promote")
    if registered and registered.get("version"):
        lines += ["", f"registered: {cfg.promotion.registered_model} version {registered['version']}"]
    if promoted and promoted.get("decision"):
        d = promoted["decision"]
        lines.append(f"promotion:  {d['alias']} — {d['reason']}")
    lines += ["", *_mlflow_lines(result, cfg), f"logs:       {result.logs_dir}/ (one file per step)",
              f"artifacts:  {result.output_root / 'kfp'}"]
    return "\n".join(lines)


def _metrics_table(result: LocalRunResult, cfg: PipelineConfig) -> list[str]:
    step = result.find("evaluate") or {}
    scored = step.get("metrics") or {}
    # the evaluate step scores the baseline (the champion, else the base model) beside the candidate
    before = {k.removeprefix("baseline/"): v for k, v in scored.items() if k.startswith("baseline/")}
    after = {k: v for k, v in scored.items() if not k.startswith(("baseline/", "delta/", "reward/", "judge/"))}
    names = sorted(k for k in {*before, *after} if not k.endswith(_NOISE))
    if not names:
        return []
    rows = ", ".join(cfg.eval_config().data.eval_dataset or []) or "val_size of the sft data"
    lines = ["", f"held-out metrics ({rows}); baseline: {step.get('baseline', 'the base model')}",
             f"  {'metric':26} {'baseline':>10} {'candidate':>10}"]
    for name in names:
        cells = [f"{m[name]:10.4f}" if name in m else f"{'—':>10}" for m in (before, after)]
        gate = "  ← promotion gate" if name == cfg.promotion.metric else ""
        lines.append(f"  {name:26} {cells[0]} {cells[1]}{gate}")
    return lines + _paired_lines(scored)


def _paired_lines(scored: dict[str, float]) -> list[str]:
    """The reward model's and the judge's verdicts on both sides' answers, with their 95% intervals."""
    lines = []
    if "reward/delta" in scored:
        lines.append(f"  reward under the rm: baseline {scored['reward/baseline_mean']:.4f}, candidate "
                     f"{scored['reward/candidate_mean']:.4f}; candidate − baseline {scored['reward/delta']:+.4f} "
                     f"(95% CI {scored['reward/delta_ci_low']:+.4f} … {scored['reward/delta_ci_high']:+.4f})")
        if "reward/reference_mean" in scored:
            lines.append(f"  the rows' reference answers score {scored['reward/reference_mean']:.4f} under the same rm "
                         "(a candidate near that has little left to gain from it)")
    if "judge/win_rate" in scored:
        lines.append(f"  judge: candidate wins {scored['judge/win_rate']:.1%} (95% CI "
                     f"{scored['judge/win_rate_ci_low']:.1%} … {scored['judge/win_rate_ci_high']:.1%}; "
                     f"{scored['judge/wins']:.0f} wins, {scored['judge/losses']:.0f} losses, "
                     f"{scored['judge/ties']:.0f} ties)")
    return lines


def _mlflow_lines(result: LocalRunResult, cfg: PipelineConfig) -> list[str]:
    """Where to look in MLflow: for a local store, the command that serves it; then direct links."""
    uri = result.tracking_uri
    lines = [f"MLflow:     {uri}"]
    ui = uri.rstrip("/")
    if uri.startswith("sqlite:"):
        ui = "http://127.0.0.1:5000"
        lines.append(f"  serve it:  mlflow ui --backend-store-uri {uri} --port 5000")
    elif not uri.startswith("http"):
        return lines
    try:
        from mlflow import MlflowClient

        from kubetune.tracking.connection import http_limits

        with http_limits(5.0):  # no retries: a dead server must not hold up the summary of a failed run
            experiment = MlflowClient(uri).get_experiment_by_name(cfg.mlflow.experiment)
    except Exception:  # noqa: BLE001 — links are a convenience; the store may be gone or unreachable
        experiment = None
    # MLflow 3's UI opens in its GenAI mode (traces, judges) whatever the experiment's kind tag says;
    # `workflowType=machine_learning` switches it to model training (runs, model registry)
    mode = "?workflowType=machine_learning"
    if experiment is not None:
        lines.append(f"  runs:      {ui}/#/experiments/{experiment.experiment_id}/runs{mode}")
    if (result.find("register") or {}).get("version"):
        lines.append(f"  model:     {ui}/#/models/{cfg.promotion.registered_model}{mode}")
    return lines
