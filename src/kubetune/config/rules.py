"""Cross-field rules: combinations that each look fine alone but make no sense together.

Each rule returns the problems it finds; `check_rules` runs them all so a user sees every
problem at once. A rule here reads the config and nothing else: rules that consult the world
(datasets and their rows, templates, model and reward-model folders, output_dir, installed
kernels) are `kubetune.validate`'s preflight, run by each command before any work.
"""

from __future__ import annotations

from collections.abc import Callable

from kubetune.config import (
    rules_data,
    rules_distributed,
    rules_dpo,
    rules_fp8,
    rules_kto,
    rules_lf_keys,
    rules_optim,
    rules_peft,
    rules_ppo,
    rules_rm,
    rules_sft_loss,
)
from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

Rule = Callable[[RunConfig], list[Problem]]

# Keys whose feature a later piece of work implements. Setting one today must fail loudly,
# never be silently ignored: a user who asks for DoRA and gets plain LoRA is misled.
NOT_IMPLEMENTED: dict[str, str] = {
    "use_unsloth": "Unsloth kernels",
    "export_quantization_bit": "quantised export",
    "export_hub_model_id": "hub upload",
    "infer_backend": "the vLLM, SGLang and KTransformers inference engines",
}


def not_implemented(cfg: RunConfig) -> list[Problem]:
    problems = []
    flat = cfg.to_flat()
    for key in sorted(cfg.explicit & NOT_IMPLEMENTED.keys()):
        default = _default_of(key)
        if flat[key] != default:
            problems.append(Problem(key, flat[key], cfg.origin(key), f"not implemented yet "
                                    f"({NOT_IMPLEMENTED[key]})", f"remove it (default: {default!r})"))
    return problems


def _default_of(key: str) -> object:
    from kubetune.config.schema import GROUPS

    for model in GROUPS.values():
        if key in model.model_fields:
            return model.model_fields[key].default
    raise KeyError(key)


def quantization_needs_lora(cfg: RunConfig) -> list[Problem]:
    if cfg.model.quantization_bit is not None and cfg.method.finetuning_type not in ("lora", "oft"):  # oft: rules_peft
        return [Problem("quantization_bit", cfg.model.quantization_bit, cfg.origin("quantization_bit"),
                        f"a quantised base can only be trained with LoRA (finetuning_type is "
                        f"{cfg.method.finetuning_type})",
                        "set finetuning_type: lora (QLoRA), or remove quantization_bit")]
    return []


def history_vs_prompt(cfg: RunConfig) -> list[Problem]:
    if cfg.data.mask_history and cfg.data.train_on_prompt:
        return [Problem("mask_history", True, cfg.origin("mask_history"),
                        "cannot be combined with train_on_prompt: true (one trains less, the other more)",
                        "keep one of them")]
    return []


def tool_format_needs_a_template(cfg: RunConfig) -> list[Problem]:
    # Without `template` the tokenizer's own chat template writes the tools (kubetune renders it as it is).
    if cfg.data.tool_format is not None and cfg.data.template is None:
        return [Problem("tool_format", cfg.data.tool_format, cfg.origin("tool_format"),
                        "changes a named (or custom) template's tool format, and template is not set: the "
                        "tokenizer's own chat template writes tools its own way",
                        "set template (e.g. the model family's), or remove tool_format")]
    return []


def eval_needs_data(cfg: RunConfig) -> list[Problem]:
    has_eval = cfg.data.val_size > 0 or bool(cfg.data.eval_dataset)
    problems = []
    if cfg.train.eval_strategy != "no" and not has_eval:
        problems.append(Problem("eval_strategy", cfg.train.eval_strategy, cfg.origin("eval_strategy"),
                                "evaluation needs a validation set, but there is none",
                                "set val_size (e.g. 0.1) or eval_dataset, or eval_strategy: no"))
    if cfg.train.do_predict and not has_eval:
        problems.append(Problem("do_predict", True, cfg.origin("do_predict"),
                                "prediction needs held-out data, but there is none",
                                "set eval_dataset (or val_size)"))
    return problems


def val_size_shape(cfg: RunConfig) -> list[Problem]:
    size = cfg.data.val_size
    if size >= 1 and size != int(size):
        return [Problem("val_size", size, cfg.origin("val_size"),
                        "a value ≥ 1 is a row count and must be a whole number",
                        "use a fraction below 1 (e.g. 0.1) or a count (e.g. 50)")]
    return []


def packing_flags(cfg: RunConfig) -> list[Problem]:
    if cfg.data.neat_packing and cfg.data.packing is False:
        return [Problem("neat_packing", True, cfg.origin("neat_packing"),
                        "needs packing, but packing is false", "remove packing: false, or neat_packing")]
    if cfg.data.neat_packing and cfg.method.stage == "pt":
        # as LLaMA-Factory: pt's documents are cut into blocks that span them, so there are no examples to
        # keep apart
        return [Problem("neat_packing", True, cfg.origin("neat_packing"),
                        "is for sft only: pt concatenates its documents and cuts blocks across them",
                        "remove neat_packing (pt packs by default)")]
    return []


def length_grouping(cfg: RunConfig) -> list[Problem]:
    if cfg.train.group_by_length and cfg.method.stage not in ("sft", "pt"):
        return [Problem("group_by_length", True, cfg.origin("group_by_length"),
                        f"groups sft/pt rows only; the {cfg.method.stage} stage batches its own rows",
                        "remove group_by_length")]
    return []


def shuffling(cfg: RunConfig) -> list[Problem]:
    if not cfg.train.disable_shuffling:
        return []
    if cfg.method.stage == "ppo":
        return [Problem("disable_shuffling", True, cfg.origin("disable_shuffling"),
                        "ppo draws its own seeded prompt order, epoch after epoch", "remove disable_shuffling")]
    if cfg.train.group_by_length:
        return [Problem("disable_shuffling", True, cfg.origin("disable_shuffling"),
                        "contradicts group_by_length, which reorders rows by length", "keep one of them")]
    return []


def precision(cfg: RunConfig) -> list[Problem]:
    t = cfg.train
    chosen = [name for name in ("bf16", "fp16", "pure_bf16") if getattr(t, name)]
    if len(chosen) > 1:
        return [Problem(chosen[1], True, cfg.origin(chosen[1]),
                        f"only one precision can be chosen, got {', '.join(chosen)}", "keep one")]
    return []


def warmup(cfg: RunConfig) -> list[Problem]:
    if cfg.train.warmup_steps > 0 and cfg.train.warmup_ratio > 0:
        return [Problem("warmup_ratio", cfg.train.warmup_ratio, cfg.origin("warmup_ratio"),
                        "both warmup_steps and warmup_ratio are set", "keep one of them")]
    return []


# The rules of one stage: which data it needs, which models, which of its settings go together.
STAGE_RULES: dict[str, Rule] = {
    "rm": rules_rm.check, "dpo": rules_dpo.check, "kto": rules_kto.check, "ppo": rules_ppo.check,
}


def stage_specific(cfg: RunConfig) -> list[Problem]:
    """The rules of `cfg`'s stage (`STAGE_RULES`; pt and sft have none of their own)."""
    rule = STAGE_RULES.get(cfg.method.stage)
    return rule(cfg) if rule else []


RULES: list[Rule] = [
    not_implemented, stage_specific, rules_data.check, rules_peft.check, rules_optim.check, rules_sft_loss.check,
    rules_fp8.check, rules_distributed.check, quantization_needs_lora, history_vs_prompt, tool_format_needs_a_template,
    eval_needs_data, val_size_shape, packing_flags, length_grouping,
    shuffling, precision, warmup, rules_lf_keys.check,
]


def check_rules(cfg: RunConfig) -> list[Problem]:
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(rule(cfg))
    return problems
