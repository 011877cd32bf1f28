"""Rules for the PEFT variants: DoRA, rsLoRA, PiSSA, LoRA+, create_new_adapter, additional_target, and OFT.

Each rule names the key, what was expected and what to do. Where a combination is refused because a
library cannot do it (or does it wrongly without saying so), the comment says what we observed.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

# Keys that configure a new LoRA adapter or its training: meaningless for freeze/full.
LORA_ONLY = ("use_dora", "use_rslora", "pissa_init", "pissa_convert", "loraplus_lr_ratio", "create_new_adapter",
             "additional_target")
# Stages whose trainer builds the LoRA+ optimizer and the PiSSA conversion callback (kubetune.stages.sft).
TRAINER_HOOKED_STAGES = ("sft", "pt")
# LoRA-only keys that an OFT adapter reads too (LLaMA-Factory passes them to OFTConfig / its adapter loading).
ALSO_OFT = ("create_new_adapter", "additional_target")
OFT_KEYS = ("oft_rank", "oft_block_size", "oft_target", "module_dropout")
# Stages that train an OFT adapter (the others assume LoRA where they save, disable or merge their adapters).
OFT_STAGES = ("sft", "pt")


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem with the PEFT-variant keys of `cfg`."""
    problems = lora_only(cfg)
    problems += oft(cfg)
    problems += llama_pro(cfg)
    problems += loraplus(cfg)
    problems += pissa(cfg)
    problems += new_adapter(cfg)
    return problems


def _changed(cfg: RunConfig, key: str, value: object) -> bool:
    """Set by the user to something other than the default (a round-tripped config sets every key)."""
    return key in cfg.explicit and value != type(cfg.method).model_fields[key].default


def _flat_set(cfg: RunConfig) -> dict[str, object]:
    """The LoRA-variant keys whose value is not the default (False / None)."""
    m = cfg.method
    values = {"use_dora": m.use_dora, "use_rslora": m.use_rslora, "pissa_init": m.pissa_init,
              "pissa_convert": m.pissa_convert, "loraplus_lr_ratio": m.loraplus_lr_ratio,
              "create_new_adapter": m.create_new_adapter, "additional_target": m.additional_target}
    return {k: v for k, v in values.items() if v not in (False, None, [])}


def lora_only(cfg: RunConfig) -> list[Problem]:
    ft = cfg.method.finetuning_type
    if ft == "lora":
        return []
    problems = []
    for key, value in _flat_set(cfg).items():
        if ft == "oft" and key in ALSO_OFT:
            continue
        hint = f"set finetuning_type: lora, or remove {key}"
        if key == "additional_target":
            hint = ("for freeze, name extra modules in freeze_extra_modules" if ft == "freeze"
                    else "full fine-tuning trains every module already") + "; or set finetuning_type: lora"
        problems.append(Problem(key, value, cfg.origin(key),
                                f"only applies to LoRA adapters, but finetuning_type is {ft}", hint))
    return problems


def oft(cfg: RunConfig) -> list[Problem]:
    """OFT's keys only with finetuning_type: oft; exactly one of oft_rank and oft_block_size (r × block size is
    the layer's width, so PEFT takes one and derives the other); the stages and bases it runs on so far."""
    m = cfg.method
    if m.finetuning_type != "oft":
        return [Problem(key, getattr(m, key), cfg.origin(key), "has no effect without finetuning_type: oft",
                        f"set finetuning_type: oft, or remove {key}")
                for key in OFT_KEYS if _changed(cfg, key, getattr(m, key))]
    problems = []
    if (m.oft_rank > 0) == (m.oft_block_size > 0):
        problems.append(Problem("oft_rank", m.oft_rank, cfg.origin("oft_rank"),
                                f"OFT takes oft_rank or oft_block_size, exactly one non-zero (oft_block_size is "
                                f"{m.oft_block_size})", "set oft_rank: 0 to use oft_block_size (default 32), or "
                                "oft_block_size: 0 to use oft_rank"))
    if m.oft_target != ["all"] and _changed(cfg, "lora_target", m.lora_target) and m.lora_target != m.oft_target:
        problems.append(Problem("lora_target", m.lora_target, cfg.origin("lora_target"),
                                f"contradicts oft_target {m.oft_target} (with OFT, lora_target names OFT's modules "
                                "only when oft_target is unset, as in LLaMA-Factory)", "keep oft_target only"))
    if m.stage not in OFT_STAGES:
        problems.append(Problem("finetuning_type", "oft", cfg.origin("finetuning_type"),
                                f"OFT adapters are implemented for the sft and pt stages only, not {m.stage}",
                                "use finetuning_type: lora for this stage"))
    if cfg.model.quantization_bit is not None:
        problems.append(Problem("finetuning_type", "oft", cfg.origin("finetuning_type"),
                                "OFT on a quantised base is not implemented yet", "use finetuning_type: lora "
                                "(QLoRA), or remove quantization_bit"))
    return problems


def llama_pro(cfg: RunConfig) -> list[Problem]:
    """LLaMA Pro trains the added layers, so not with full fine-tuning (as in LLaMA-Factory), and their count is
    positive (whether it divides the model's layers is checked when the model is loaded)."""
    m = cfg.method
    if not m.use_llama_pro:
        return []
    if m.finetuning_type == "full":
        return [Problem("use_llama_pro", True, cfg.origin("use_llama_pro"),
                        "trains only the layers the expansion added, but finetuning_type full trains all",
                        "set finetuning_type: freeze (or lora), or remove use_llama_pro")]
    if m.freeze_trainable_layers < 0:
        return [Problem("freeze_trainable_layers", m.freeze_trainable_layers, cfg.origin("freeze_trainable_layers"),
                        "with use_llama_pro it is the number of layers the expansion added, so positive",
                        "set it to the num_expand of scripts/llama_pro.py (e.g. 8)")]
    return []


def loraplus(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    problems = []
    ratio = m.loraplus_lr_ratio
    if ratio is not None and not ratio > 0:
        problems.append(Problem("loraplus_lr_ratio", ratio, cfg.origin("loraplus_lr_ratio"),
                                "must be a positive number (B's learning rate = learning_rate × ratio)",
                                "use e.g. 16 (the LoRA+ paper's choice), or remove it for plain LoRA"))
    if ratio is not None and cfg.method.stage not in TRAINER_HOOKED_STAGES:
        problems.append(Problem("loraplus_lr_ratio", ratio, cfg.origin("loraplus_lr_ratio"),
                                f"LoRA+ is not implemented for stage {cfg.method.stage} yet (only sft and pt)",
                                "remove it for this stage"))
    if _changed(cfg, "loraplus_lr_embedding", m.loraplus_lr_embedding):
        if ratio is None:
            problems.append(Problem("loraplus_lr_embedding", m.loraplus_lr_embedding,
                                    cfg.origin("loraplus_lr_embedding"),
                                    "has no effect without loraplus_lr_ratio",
                                    "set loraplus_lr_ratio (e.g. 16), or remove loraplus_lr_embedding"))
        elif m.loraplus_lr_embedding < 0:
            problems.append(Problem("loraplus_lr_embedding", m.loraplus_lr_embedding,
                                    cfg.origin("loraplus_lr_embedding"),
                                    "a learning rate cannot be negative", "use e.g. 1e-6 (the default)"))
    return problems


def pissa(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    problems = []
    if _changed(cfg, "pissa_iter", m.pissa_iter) and not m.pissa_init:
        problems.append(Problem("pissa_iter", m.pissa_iter, cfg.origin("pissa_iter"),
                                "has no effect without pissa_init: true", "set pissa_init: true, or remove pissa_iter"))
    if m.pissa_iter < -1:
        problems.append(Problem("pissa_iter", m.pissa_iter, cfg.origin("pissa_iter"),
                                "must be -1 (full SVD) or a number of fast-SVD iterations ≥ 0",
                                "use 16 (the default) or -1"))
    if m.pissa_convert and not m.pissa_init:
        problems.append(Problem("pissa_convert", True, cfg.origin("pissa_convert"),
                                "converts a PiSSA adapter, but pissa_init is not set",
                                "set pissa_init: true, or remove pissa_convert"))
    if not m.pissa_init:
        return problems
    if cfg.model.quantization_bit is not None:
        # PEFT's PiSSA takes an SVD of each base weight and writes the residual back: it refuses 4/8-bit weights.
        problems.append(Problem("pissa_init", True, cfg.origin("pissa_init"),
                                f"PiSSA needs the base weights in float to take their SVD, but quantization_bit is "
                                f"{cfg.model.quantization_bit}",
                                "remove quantization_bit (train PiSSA on the unquantised base), or pissa_init"))
    if m.pissa_convert and m.use_dora:
        # Measured: PEFT 0.21 converts a DoRA+PiSSA adapter without error, but the result misses the trained
        # model's logits by ~0.14 on a tiny Llama (plain PiSSA: ~3e-7).
        problems.append(Problem("pissa_convert", True, cfg.origin("pissa_convert"),
                                "PiSSA conversion is not exact for DoRA adapters (the magnitudes depend on the base)",
                                "remove use_dora or pissa_convert"))
    if m.pissa_convert and m.stage not in TRAINER_HOOKED_STAGES:
        problems.append(Problem("pissa_convert", True, cfg.origin("pissa_convert"),
                                f"PiSSA conversion is not implemented for stage {m.stage} yet (only sft and pt)",
                                "remove pissa_convert for this stage"))
    if _reference_is_disabled_adapter(cfg):
        problems.append(Problem("pissa_init", True, cfg.origin("pissa_init"),
                                f"the {m.stage} reference is the policy with its adapter disabled, which under PiSSA "
                                "is the residual base, not the original model",
                                "set ref_model to the base model, or remove pissa_init"))
    return problems


def _reference_is_disabled_adapter(cfg: RunConfig) -> bool:
    m = cfg.method
    if m.finetuning_type != "lora":
        return False
    if m.stage == "ppo" or m.stage == "kto" or (m.stage == "dpo" and m.pref_loss not in ("orpo", "simpo")):
        return not m.ref_model
    if m.stage in ("sft", "pt") and m.use_asft_loss:  # ASFT's reference
        return not m.ref_model
    return False


def new_adapter(cfg: RunConfig) -> list[Problem]:
    if not cfg.method.create_new_adapter:
        return []
    adapters = cfg.model.adapter_name_or_path
    if not adapters:
        return [Problem("create_new_adapter", True, cfg.origin("create_new_adapter"),
                        "stacks a new adapter on loaded ones, but adapter_name_or_path is not set",
                        "set adapter_name_or_path to the adapter(s) to build on, or remove create_new_adapter")]
    if cfg.model.quantization_bit is not None:
        return [Problem("create_new_adapter", True, cfg.origin("create_new_adapter"),
                        "the loaded adapter would have to be merged into a quantised base, which rounds it away",
                        "export the merged model first (kubetune export) and quantise that, or remove "
                        "create_new_adapter to keep training the loaded adapter")]
    return []
