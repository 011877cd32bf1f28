"""`kubetune eval` with benchmark keys: load the model once, then run the multiple-choice task (`task`) and the
lm-eval tasks (`lm_eval_tasks`) that the config names. Inputs are read (and task names checked) before the model
loads, so a typo costs seconds."""

from __future__ import annotations

from typing import Any

from kubetune.config import RunConfig


def wants_suites(cfg: RunConfig) -> bool:
    """The config names a benchmark: `task` or `lm_eval_tasks`."""
    return bool(cfg.benchmark.task or cfg.benchmark.lm_eval_tasks)


def run_suites(cfg: RunConfig) -> dict[str, Any]:
    """{"benchmark": score_task's result (with `task`), "lm_eval": run_lm_eval's (with `lm_eval_tasks`)}."""
    from kubetune.data.setup import tokenizer_and_template
    from kubetune.evaluate import benchmark, lm_eval_suite
    from kubetune.model.adapters import prepare_for_training
    from kubetune.model.loader import load_base_model, resolve_model_path

    b = cfg.benchmark
    subjects = None
    if b.task:
        benchmark.check_save_dir(cfg)
        subjects = benchmark.read_task(cfg)
    manager = lm_eval_suite.prepare(cfg) if b.lm_eval_tasks else None
    path = resolve_model_path(cfg.model)
    tokenizer, template = tokenizer_and_template(cfg, path)
    model = load_base_model(cfg.model, path=path, tokenizer=tokenizer)
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=False, gradient_checkpointing=False)
    model.eval()
    result: dict[str, Any] = {}
    if subjects is not None:
        result["benchmark"] = benchmark.score_task(cfg, subjects, model, tokenizer, template)
    if manager is not None:
        result["lm_eval"] = lm_eval_suite.run_lm_eval(cfg, manager, model, tokenizer)
    return result
