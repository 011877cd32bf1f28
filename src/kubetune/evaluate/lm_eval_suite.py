"""lm-evaluation-harness tasks on the model a config names (base + adapters): `lm_eval_tasks`.

lm-eval does the work (its task YAMLs, prompts, few-shot sampling, metrics and standard errors); kubetune hands
it the model it loaded — the base with `adapter_name_or_path` merged in, in the run's dtype — and its tokenizer,
and flattens the results into `lm_eval/<task>/<metric>` metrics, each with its `_stderr`.

`lm_eval_include_path` adds a folder (or `s3://` prefix, downloaded first) of task YAMLs to lm-eval's own.
Relative `data_files` in those YAMLs are read from that folder: lm-eval runs with it as the working directory,
so a task folder copied to S3 with its data evaluates the same anywhere. lm-eval's built-in tasks are indexed
only when a task is not found in the include path (the index takes seconds; most need a hub).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.config import RunConfig

logger = logging.getLogger(__name__)


def task_names(tasks: str | list[str] | None) -> list[str]:
    """`lm_eval_tasks` as a list: a YAML list, or one comma-separated string (LLaMA-Factory's style)."""
    if not tasks:
        return []
    parts = tasks.split(",") if isinstance(tasks, str) else tasks
    return [part.strip() for part in parts if part.strip()]


def task_manager(include_path: Path | None, tasks: list[str]) -> Any:
    """lm-eval's TaskManager over `include_path`, with its built-in tasks only when some task needs them.

    Raises:
        ValueError: a task found nowhere (the include path's tasks are listed).
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(task in manager.all_tasks for task in tasks):
            return manager
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    missing = [task for task in tasks if task not in manager.all_tasks]
    if missing:
        where = f" or in {include_path}" if include_path else ""
        raise ValueError(f"lm_eval_tasks: {', '.join(missing)} not found among lm-eval's tasks{where}; "
                         f"check the names (a task YAML's `task:` key) or set lm_eval_include_path")
    return manager


def flatten(results: dict[str, Any]) -> dict[str, float]:
    """`{"lm_eval/<task>/<metric>": value, ".../<metric>_stderr": value}` from lm-eval's `results` section."""
    metrics: dict[str, float] = {}
    for task, values in results.items():
        for key, value in values.items():
            name, _, filter_name = key.partition(",")
            if not isinstance(value, int | float) or isinstance(value, bool) or name == "alias":
                continue
            suffix = "" if filter_name in ("", "none") else f"_{filter_name}"
            metrics[f"lm_eval/{task}/{name}{suffix}"] = float(value) if not math.isnan(value) else math.nan
    return metrics


@dataclass
class Prepared:
    """The tasks, their folder and lm-eval's TaskManager, ready before the model loads."""

    tasks: list[str]
    include: Path | None
    manager: Any


def prepare(cfg: RunConfig) -> Prepared:
    """Download the include path and find every task (`task_manager`), before any model is loaded."""
    tasks = task_names(cfg.benchmark.lm_eval_tasks)
    path = cfg.benchmark.lm_eval_include_path
    include = _local_folder(path) if path else None
    return Prepared(tasks, include, task_manager(include, tasks))


def run_lm_eval(cfg: RunConfig, prepared: Prepared, model: Any, tokenizer: Any) -> dict[str, Any]:
    """Evaluate `model` on the prepared tasks: {"metrics": flat metrics, "results": lm-eval's own, "n_samples"}."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    b = cfg.benchmark
    tasks, include, manager = prepared.tasks, prepared.include, prepared.manager
    if hasattr(model, "merge_and_unload"):  # lm-eval takes a transformers model; a merged LoRA scores the same
        model = model.merge_and_unload()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=b.lm_eval_batch_size)
    with contextlib.chdir(include) if include else contextlib.nullcontext():
        out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=b.lm_eval_num_fewshot, limit=b.lm_eval_limit,
                              task_manager=manager, random_seed=cfg.train.seed, numpy_random_seed=cfg.train.seed,
                              torch_random_seed=cfg.train.seed, fewshot_random_seed=cfg.train.seed,
                              bootstrap_iters=b.lm_eval_bootstrap_iters)
    metrics = flatten(out["results"])
    logger.info("lm-eval: %s", ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items()))
    return {"metrics": metrics, "results": out["results"], "n_samples": out.get("n-samples", {})}


def _local_folder(path: str) -> Path:
    from kubetune.storage import localize

    return Path(localize(path.rstrip("/") + "/" if path.startswith("s3://") else path)).resolve()
