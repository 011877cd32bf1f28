"""Rules of the rm (reward model) stage; `kubetune.config.rules` runs `check` before any work starts.

- the data must be ranking data (each row a prompt with a chosen and a rejected response);
- pairs are never packed, so asking for packing is a mistake worth saying;
- evaluating without training (`kubetune eval`) needs a trained reward model to load.

A quantised base with freeze/full training is refused by the global rules already.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig


def check(cfg: RunConfig) -> list[Problem]:
    """Every rm-specific problem in `cfg` (empty if none).

    Args:
        cfg: the config, with `stage: rm`.
    """
    return [*ranking_data(cfg), *no_packing(cfg), *trained_model_to_evaluate(cfg)]


def ranking_data(cfg: RunConfig) -> list[Problem]:
    """Registered datasets must have `"ranking": true`.

    Names that do not resolve are skipped (preflight reports them with a "did you mean"), and so are
    files named by path: whether their rows hold chosen/rejected is decided when they are read.
    """
    from kubetune.data.registry import DataError, resolve_datasets

    problems = []
    for key in ("dataset", "eval_dataset"):
        for name in getattr(cfg.data, key) or []:
            try:
                (attr,) = resolve_datasets([name], cfg.data.dataset_dir)
            except DataError:
                continue
            if attr.formatting != "auto" and not attr.ranking:
                problems.append(Problem(
                    key, name, cfg.origin(key),
                    f"the rm stage trains on ranking data (a prompt with a chosen and a rejected response), but "
                    f"{attr.origin} does not mark {name!r} as ranking",
                    'use a ranking dataset (e.g. kubi_pref), or set "ranking": true in its entry if its rows '
                    "hold chosen and rejected columns"))
    return problems


def no_packing(cfg: RunConfig) -> list[Problem]:
    problems = []
    for key in ("packing", "neat_packing"):
        if getattr(cfg.data, key):
            problems.append(Problem(key, True, cfg.origin(key),
                                    "the rm stage scores whole chosen/rejected sequences; packing is for pt and sft",
                                    f"remove {key}"))
    return problems


def trained_model_to_evaluate(cfg: RunConfig) -> list[Problem]:
    """With `do_train: false` a reward model must already exist where `kubetune.stages.rm` looks for it."""
    if cfg.train.do_train is not False:
        return []
    locations = [*(cfg.model.adapter_name_or_path or []), cfg.model.model_name_or_path, cfg.train.output_dir or ""]
    if any(loc.startswith("s3://") for loc in locations):
        return []  # fetched at run time; the stage says so if no value head comes with it
    from kubetune.model.reward import find_trained_reward_model  # imports torch: only for evaluate-only configs

    if find_trained_reward_model(cfg.model, cfg.train.output_dir) is not None:
        return []
    key = "adapter_name_or_path"
    return [Problem(key, cfg.model.adapter_name_or_path, cfg.origin(key),
                    "evaluating a reward model (do_train: false) needs a trained one, but none of "
                    "adapter_name_or_path, output_dir and model_name_or_path holds value_head.safetensors",
                    "train it first (kubetune train <rm config>), or set adapter_name_or_path to an rm output_dir "
                    "(full/freeze reward models: model_name_or_path)")]
