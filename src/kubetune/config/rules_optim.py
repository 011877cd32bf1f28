"""Rules for the optimisers kubetune builds itself: GaLore, APOLLO, BAdam (`kubetune.model.memory_optimizers`),
Adam-mini and Muon (`kubetune.model.extra_optimizers`).

Each replaces the Trainer's optimizer, so at most one is chosen (nor with LoRA+, which builds its own); GaLore,
APOLLO and BAdam are for full fine-tuning; all exist only where the trainer builds its optimizer through
`custom_optimizer` (the sft recipe, which pt shares). That the APOLLO and Adam-mini packages are installed is
`kubetune.validate.machine`'s check.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import FinetuningArguments, RunConfig

# Stages whose trainer takes the optimizer from kubetune.model.memory_optimizers.custom_optimizer.
OPTIMIZER_HOOKED_STAGES = ("sft", "pt")
# `optim` values GaLore has a projected version of (galore_torch: AdamW, 8-bit AdamW, Adafactor).
GALORE_OPTIMS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit", "adafactor")
GALORE_KEYS = tuple(k for k in FinetuningArguments.model_fields if k.startswith("galore_"))
BADAM_KEYS = tuple(k for k in FinetuningArguments.model_fields if k.startswith("badam_"))
APOLLO_KEYS = tuple(k for k in FinetuningArguments.model_fields if k.startswith("apollo_"))
# Each switch, its name, and whether it is an optimizer of full fine-tuning only.
OPTIMIZER_SWITCHES = (("use_galore", "GaLore", True), ("use_apollo", "APOLLO", True), ("use_badam", "BAdam", True),
                      ("use_adam_mini", "Adam-mini", False), ("use_muon", "Muon", False))
# BAdam keys that only one of its modes reads.
BADAM_LAYER_ONLY = ("badam_start_block", "badam_switch_mode")
BADAM_RATIO_ONLY = ("badam_update_ratio", "badam_mask_mode")


def _changed(cfg: RunConfig, key: str) -> bool:
    """Set by the user to something other than the default (a round-tripped config sets every key)."""
    group = cfg.method if key in FinetuningArguments.model_fields else cfg.train
    return key in cfg.explicit and getattr(group, key) != type(group).model_fields[key].default


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem with the optimizer keys of `cfg` (GaLore, APOLLO, BAdam, Adam-mini, Muon)."""
    return which_optimizer(cfg) + galore(cfg) + apollo(cfg) + badam(cfg)


def which_optimizer(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    problems = []
    chosen = [(key, name) for key, name, _ in OPTIMIZER_SWITCHES if getattr(m, key)]
    if len(chosen) > 1:
        names = " and ".join(name for _, name in chosen)
        problems.append(Problem(chosen[1][0], True, cfg.origin(chosen[1][0]),
                                f"{names} are different optimizers; only one can run",
                                f"keep one of {', '.join(key for key, _ in chosen)}"))
    with_lora = [(key, name) for key, name, full_only in OPTIMIZER_SWITCHES if getattr(m, key) and not full_only]
    if with_lora and m.loraplus_lr_ratio is not None:  # the full-only ones are refused with LoRA already
        problems.append(Problem("loraplus_lr_ratio", m.loraplus_lr_ratio, cfg.origin("loraplus_lr_ratio"),
                                f"LoRA+ builds its own AdamW, so {with_lora[0][1]} would not run",
                                f"remove loraplus_lr_ratio or {with_lora[0][0]}"))
    sharded = "deepspeed" if cfg.train.deepspeed else ("fsdp" if cfg.train.fsdp_options else None)
    for key, name, full_only in OPTIMIZER_SWITCHES:
        if not getattr(m, key):
            continue
        if sharded and key in ("use_apollo", "use_adam_mini", "use_muon"):
            # Muon and APOLLO read each weight's whole gradient matrix, which DeepSpeed/FSDP split across ranks
            why = ("reads each weight's whole gradient matrix, which DeepSpeed/FSDP split across ranks"
                   if key != "use_adam_mini" else "has not been run with DeepSpeed/FSDP in kubetune yet")
            problems.append(Problem(key, True, cfg.origin(key), f"{name} {why}",
                                    f"train with plain data parallelism (remove {sharded}), or remove {key}"))
        if full_only and m.finetuning_type != "full":
            hint = ("LoRA already trains few parameters: remove " + key if m.finetuning_type == "lora"
                    else f"set finetuning_type: full, or remove {key}")
            problems.append(Problem(key, True, cfg.origin(key),
                                    f"{name} is an optimizer for full fine-tuning, but finetuning_type is "
                                    f"{m.finetuning_type}", hint))
        if m.stage not in OPTIMIZER_HOOKED_STAGES:
            problems.append(Problem(key, True, cfg.origin(key),
                                    f"{name} is implemented for the sft and pt stages only, not {m.stage}",
                                    f"remove {key} for this stage"))
    return problems


def _unused(cfg: RunConfig, keys: tuple[str, ...], why: str, hint: str) -> list[Problem]:
    return [Problem(k, getattr(cfg.method, k), cfg.origin(k), why, hint.format(key=k))
            for k in keys if _changed(cfg, k)]


def galore(cfg: RunConfig) -> list[Problem]:
    m, t = cfg.method, cfg.train
    if not m.use_galore:
        return _unused(cfg, GALORE_KEYS, "has no effect without use_galore: true",
                       "set use_galore: true, or remove {key}")
    problems = []
    for key, value in (("galore_rank", m.galore_rank), ("galore_update_interval", m.galore_update_interval),
                       ("galore_scale", m.galore_scale)):
        if not value > 0:
            problems.append(Problem(key, value, cfg.origin(key), "must be greater than 0",
                                    f"use the default ({FinetuningArguments.model_fields[key].default})"))
    if t.optim not in GALORE_OPTIMS:
        problems.append(Problem("optim", t.optim, cfg.origin("optim"),
                                "GaLore has no projected version of this optimizer",
                                f"use one of {', '.join(GALORE_OPTIMS)}"))
    if m.galore_layerwise and t.gradient_accumulation_steps > 1:
        # each parameter's optimizer steps from a hook in backward: every micro-batch would be a step
        problems.append(Problem("galore_layerwise", True, cfg.origin("galore_layerwise"),
                                f"layer-wise GaLore steps during each backward pass, so it cannot accumulate "
                                f"gradients (gradient_accumulation_steps is {t.gradient_accumulation_steps})",
                                "set gradient_accumulation_steps: 1 (raise per_device_train_batch_size instead), "
                                "or remove galore_layerwise"))
    if m.galore_layerwise and _changed(cfg, "max_grad_norm") and t.max_grad_norm > 0:
        problems.append(Problem("max_grad_norm", t.max_grad_norm, cfg.origin("max_grad_norm"),
                                "layer-wise GaLore applies each gradient before the whole gradient exists, so "
                                "it cannot be clipped by its norm", "remove max_grad_norm, or galore_layerwise"))
    return problems


def apollo(cfg: RunConfig) -> list[Problem]:
    """APOLLO's settings, as LLaMA-Factory takes them: AdamW only, positive rank/interval/scale, and layer-wise
    mode without accumulation or clipping (as GaLore's)."""
    m, t = cfg.method, cfg.train
    if not m.use_apollo:
        return _unused(cfg, APOLLO_KEYS, "has no effect without use_apollo: true",
                       "set use_apollo: true, or remove {key}")
    problems = []
    for key in ("apollo_rank", "apollo_update_interval", "apollo_scale"):
        if not getattr(m, key) > 0:
            problems.append(Problem(key, getattr(m, key), cfg.origin(key), "must be greater than 0",
                                    f"use the default ({FinetuningArguments.model_fields[key].default})"))
    if t.optim != "adamw_torch":
        problems.append(Problem("optim", t.optim, cfg.origin("optim"),
                                "APOLLO is a version of AdamW only (as in LLaMA-Factory)", "use optim: adamw_torch"))
    if m.apollo_layerwise and t.gradient_accumulation_steps > 1:
        problems.append(Problem("apollo_layerwise", True, cfg.origin("apollo_layerwise"),
                                "layer-wise APOLLO steps during each backward pass, so it cannot accumulate gradients "
                                f"(gradient_accumulation_steps is {t.gradient_accumulation_steps})",
                                "set gradient_accumulation_steps: 1, or remove apollo_layerwise"))
    if m.apollo_layerwise and _changed(cfg, "max_grad_norm") and t.max_grad_norm > 0:
        problems.append(Problem("max_grad_norm", t.max_grad_norm, cfg.origin("max_grad_norm"),
                                "layer-wise APOLLO applies each gradient before the whole gradient exists, so "
                                "it cannot be clipped by its norm", "remove max_grad_norm, or apollo_layerwise"))
    return problems


def badam(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    if not m.use_badam:
        return _unused(cfg, BADAM_KEYS, "has no effect without use_badam: true",
                       "set use_badam: true, or remove {key}")
    problems = []
    if m.badam_switch_interval < 1:
        problems.append(Problem("badam_switch_interval", m.badam_switch_interval,
                                cfg.origin("badam_switch_interval"),
                                "must be at least 1 (optimizer steps per block)", "use e.g. 50 (the default)"))
    if not 0 < m.badam_update_ratio <= 1:
        problems.append(Problem("badam_update_ratio", m.badam_update_ratio, cfg.origin("badam_update_ratio"),
                                "must be a share of each weight in (0, 1]", "use e.g. 0.05 (the default)"))
    if m.badam_start_block is not None and m.badam_start_block < 0:
        problems.append(Problem("badam_start_block", m.badam_start_block, cfg.origin("badam_start_block"),
                                "must be a layer index (0 = the first decoder layer)",
                                "use 0, or remove it to start where badam_switch_mode begins"))
    if m.badam_verbose not in (0, 1, 2):
        problems.append(Problem("badam_verbose", m.badam_verbose, cfg.origin("badam_verbose"),
                                "must be 0, 1 or 2", "use 0 (quiet) or 1"))
    other = "ratio" if m.badam_mode == "layer" else "layer"
    problems += _unused(cfg, BADAM_RATIO_ONLY if m.badam_mode == "layer" else BADAM_LAYER_ONLY,
                        f"only applies to badam_mode: {other}, but badam_mode is {m.badam_mode}",
                        f"set badam_mode: {other}, or remove {{key}}")
    if m.badam_mode == "ratio" and cfg.train.gradient_accumulation_steps > 1:
        # badam's gradient hook sparsifies each micro-batch's gradient and, on the last step of a block, moves
        # the mask between micro-batches: one step would then mix two masks and mismatch the Adam state.
        problems.append(Problem("gradient_accumulation_steps", cfg.train.gradient_accumulation_steps,
                                cfg.origin("gradient_accumulation_steps"),
                                "BAdam's ratio mode masks gradients per backward pass and cannot accumulate them",
                                "set gradient_accumulation_steps: 1 (raise per_device_train_batch_size), "
                                "or use badam_mode: layer"))
    if m.badam_mode == "ratio" and _changed(cfg, "weight_decay") and cfg.train.weight_decay > 0:
        problems.append(Problem("weight_decay", cfg.train.weight_decay, cfg.origin("weight_decay"),
                                "BAdam's ratio mode runs a sparse Adam without weight decay",
                                "remove weight_decay, or use badam_mode: layer"))
    if m.badam_mode == "ratio" and _changed(cfg, "optim"):
        problems.append(Problem("optim", cfg.train.optim, cfg.origin("optim"),
                                "BAdam's ratio mode runs its own sparse Adam, so optim would be ignored",
                                "remove optim, or use badam_mode: layer (which wraps the optim you name)"))
    return problems
