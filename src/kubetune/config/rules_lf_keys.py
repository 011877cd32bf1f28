"""Rules for the vocabulary, RoPE, random-init, early-stopping and eval-metric keys.

Where LLaMA-Factory refuses a combination (resize_vocab on a quantised model), so do we; where it would
fail deep inside transformers (early stopping without evaluation, load_best_model_at_end with mismatched
save and eval schedules), we say so before any work; where it would silently do nothing (compute_accuracy
outside sft/pt), we refuse rather than mislead.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

# Stages whose recipe computes token accuracy (kubetune.stages.sft), as LLaMA-Factory's sft workflow does.
ACCURACY_STAGES = ("sft", "pt")


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem with `cfg`'s vocabulary, train_from_scratch, early-stopping and eval-metric keys."""
    return [*quantised_base(cfg), *early_stopping(cfg), *best_model(cfg), *accuracy(cfg), *ppo_trains_alone(cfg),
            *each_dataset(cfg)]


def quantised_base(cfg: RunConfig) -> list[Problem]:
    if cfg.model.quantization_bit is None:
        return []
    problems = []
    if cfg.model.resize_vocab:
        key = next((k for k in ("add_tokens", "add_special_tokens", "new_special_tokens_config")
                    if k in cfg.explicit), "resize_vocab")
        problems.append(Problem(key, getattr(cfg.model, key), cfg.origin(key),
                                "the embeddings of a quantised model cannot be resized (as in LLaMA-Factory)",
                                "remove quantization_bit, or add no tokens"))
    if cfg.model.train_from_scratch:
        problems.append(Problem("train_from_scratch", True, cfg.origin("train_from_scratch"),
                                "random weights are not quantised: quantization_bit applies to a checkpoint",
                                "remove quantization_bit (or train_from_scratch)"))
    return problems


def early_stopping(cfg: RunConfig) -> list[Problem]:
    t = cfg.train
    if t.early_stopping_steps is None:
        return []
    if t.eval_strategy == "no":
        return [Problem("early_stopping_steps", t.early_stopping_steps, cfg.origin("early_stopping_steps"),
                        "counts evaluations without improvement, but eval_strategy is no (none run in training)",
                        "set eval_strategy: steps (with eval_steps) or epoch, and eval_dataset or val_size")]
    return []


def best_model(cfg: RunConfig) -> list[Problem]:
    t = cfg.train
    if not t.load_best_model_at_end:
        return []
    if t.save_strategy != t.eval_strategy:
        return [Problem("load_best_model_at_end", True, cfg.origin("load_best_model_at_end"),
                        f"needs save_strategy equal to eval_strategy (they are {t.save_strategy} and "
                        f"{t.eval_strategy}): the best evaluation must have a checkpoint",
                        f"set save_strategy: {t.eval_strategy}" if t.eval_strategy != "no"
                        else "set eval_strategy and save_strategy to steps or epoch")]
    eval_steps = t.eval_steps or t.logging_steps
    if t.save_strategy == "steps" and t.save_steps % eval_steps:
        return [Problem("load_best_model_at_end", True, cfg.origin("load_best_model_at_end"),
                        f"needs save_steps ({t.save_steps}) to be a multiple of eval_steps ({eval_steps})",
                        f"set save_steps: {eval_steps * max(1, t.save_steps // eval_steps)}")]
    return []


def accuracy(cfg: RunConfig) -> list[Problem]:
    stage = cfg.method.stage
    if cfg.train.compute_accuracy and stage not in ACCURACY_STAGES:
        return [Problem("compute_accuracy", True, cfg.origin("compute_accuracy"),
                        f"token accuracy is computed by the sft and pt stages, not {stage}",
                        "remove it (rm reports eval_accuracy of its pairs by itself)" if stage == "rm"
                        else "remove it")]
    metric = (cfg.train.metric_for_best_model or "").removeprefix("eval_")
    if metric == "accuracy" and not cfg.train.compute_accuracy and stage in ACCURACY_STAGES:
        return [Problem("metric_for_best_model", cfg.train.metric_for_best_model,
                        cfg.origin("metric_for_best_model"), "eval_accuracy is reported only with compute_accuracy",
                        "set compute_accuracy: true, or metric_for_best_model: loss")]
    return []


def ppo_trains_alone(cfg: RunConfig) -> list[Problem]:
    """ppo's own loop has no Trainer evaluation nor LLaMA-Factory's tokens-per-second metric."""
    if cfg.method.stage != "ppo":
        return []
    keys = {"early_stopping_steps": cfg.train.early_stopping_steps is not None,
            "load_best_model_at_end": cfg.train.load_best_model_at_end,
            "include_effective_tokens_per_second": cfg.train.include_effective_tokens_per_second}
    return [Problem(key, True if key != "early_stopping_steps" else cfg.train.early_stopping_steps, cfg.origin(key),
                    "ppo trains in its own loop, without evaluations or this metric", "remove it")
            for key, on in keys.items() if on]


def each_dataset(cfg: RunConfig) -> list[Problem]:
    """eval_on_each_dataset: sft/pt only, needs eval_dataset names, and renames the metrics a best model reads."""
    if not cfg.data.eval_on_each_dataset:
        return []
    key, origin = "eval_on_each_dataset", cfg.origin("eval_on_each_dataset")
    if cfg.method.stage not in ACCURACY_STAGES:
        return [Problem(key, True, origin, f"evaluates each dataset in the sft and pt stages, not "
                        f"{cfg.method.stage} (not implemented yet)", "remove it")]
    if not cfg.data.eval_dataset:
        return [Problem(key, True, origin, "evaluates each eval_dataset on its own, but none is named "
                        "(a val_size split is one set)", "list the datasets in eval_dataset, or remove it")]
    t = cfg.train
    if (t.early_stopping_steps is not None or t.load_best_model_at_end) and t.metric_for_best_model is None:
        first = cfg.data.eval_dataset[0]
        return [Problem("metric_for_best_model", None, cfg.origin("metric_for_best_model"),
                        "with eval_on_each_dataset there is no single eval_loss to watch, only one per dataset",
                        f"name one, e.g. metric_for_best_model: {metric_name(first)}_loss")]
    return []


def metric_name(name: str) -> str:
    """The metric prefix transformers gives a dict eval dataset's key (`eval_<name>_loss`), with the
    characters a path-like dataset name holds (`/`, `.`) made safe for trackers (`data.eval_sets`)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
