"""Preflight of a whole pipeline: every step the DAG will run, checked against the world at once."""

from __future__ import annotations

import functools
from collections.abc import Callable

from kubetune.config.errors import ConfigError, Problem
from kubetune.config.pipeline import PipelineConfig, step_problems
from kubetune.config.schema import RunConfig
from kubetune.validate.preflight import Command, preflight


def _command(step: str, run_cfg: RunConfig) -> Command:
    """What a step does with its config: evaluate evaluates, export exports, a stage trains (or evaluates)."""
    if step in ("evaluate", "export"):
        return "eval" if step == "evaluate" else "export"
    return "eval" if run_cfg.train.do_train is False else "train"


def preflight_pipeline(cfg: PipelineConfig) -> None:
    """Raise ConfigError listing what would stop any step of `cfg`'s DAG, each problem named by its step.

    Each step's config is built as that step builds it — the training stages, evaluate, export — and
    preflighted for what the step does; the promotion gate is checked against what evaluate measures.
    Writes nothing: output folders are placeholders (steps get theirs at run time, and overwrite).

    Args:
        cfg: a pipeline config `kubetune.config.pipeline.load_pipeline_config` accepted.
    """
    from kubetune.evaluate.metrics import GENERATION_METRICS

    measured = ("eval_loss", "eval_perplexity", *(f"predict_{k}" for k in GENERATION_METRICS))  # by evaluate

    def checked(step: str, build: Callable[[], RunConfig]) -> None:
        run_cfg = build()
        preflight(run_cfg, _command(step, run_cfg))

    problems = step_problems({step: functools.partial(checked, step, build)
                              for step, build in cfg.step_configs(placeholder_outputs=True).items()})
    if cfg.promotion.metric not in measured:
        problems.append(Problem("promotion.metric", cfg.promotion.metric, cfg.source or "pipeline config",
                                "is not measured by the evaluate step", f"use one of {', '.join(measured)}"))
    if problems:
        raise ConfigError(problems, cfg.source)
