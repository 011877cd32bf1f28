"""Rules of the dpo stage: ranking data, a loss with settings it reads, and a reference only where one is used.

`kubetune.config.rules.STAGE_RULES` runs `check` for `stage: dpo`. What needs the world — that the data
holds pairs, that a local ref_model and its adapters exist — is checked by `kubetune.validate`. The
helpers for the reference keys and the keys of other stages are shared with `rules_kto`.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import FinetuningArguments, RunConfig

# kubetune.losses.preference names these too; repeated so that validation never imports torch
REFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair")
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
REF_KEYS = ("ref_model", "ref_model_adapters", "ref_model_quantization_bit")
# Keys that only some stages read, and which: dpo and kto refuse the others' (`other_stage_keys`).
STAGE_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pref_loss", "dpo_label_smoothing", "simpo_gamma", "pref_bco_weight", "ld_alpha"), ("dpo",)),
    **dict.fromkeys(("pref_beta", "pref_ftx"), ("dpo", "kto")),
    **dict.fromkeys(("kto_chosen_weight", "kto_rejected_weight"), ("kto",)),
    **dict.fromkeys(REF_KEYS, ("dpo", "kto", "ppo")),
    **dict.fromkeys(("reward_model", "reward_model_adapters", "reward_model_quantization_bit",
                     "reward_model_type", "ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target",
                     "ppo_whiten_rewards", "kl_coef", "adaptive_kl", "gamma", "lam", "cliprange",
                     "cliprange_value", "vf_coef"), ("ppo",)),
}


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem of a dpo config (empty when it can run)."""
    reference = uses_reference(cfg)
    problems: list[Problem] = []
    problems += loss_choice(cfg)
    problems += loss_settings(cfg)
    problems += reference_keys(cfg, uses_reference=reference)
    problems += eval_only_reference(cfg, uses_reference=reference)
    problems += other_stage_keys(cfg)
    problems += prompt_handling(cfg)
    return problems


def uses_reference(cfg: RunConfig) -> bool:
    """Whether the stage's loss compares with a reference model: kto always, dpo for the reference losses."""
    return cfg.method.stage == "kto" or cfg.method.pref_loss in REFERENCE_LOSSES


# --- the loss ---


def loss_choice(cfg: RunConfig) -> list[Problem]:
    """`pref_bco_weight` adds to a reference loss (as in LLaMA-Factory), `ld_alpha` is a weight in [0, 1]."""
    m = cfg.method
    problems = []
    if m.pref_bco_weight < 0:
        problems.append(Problem("pref_bco_weight", m.pref_bco_weight, cfg.origin("pref_bco_weight"),
                                "must be 0 or more: it weights the BCO term against the preference loss",
                                "use 0 (off) or a positive weight"))
    elif m.pref_bco_weight > 0 and m.pref_loss not in REFERENCE_LOSSES:
        problems.append(Problem("pref_bco_weight", m.pref_bco_weight, cfg.origin("pref_bco_weight"),
                                f"BCO classifies log-ratios against a reference model, and pref_loss: {m.pref_loss} "
                                "has none", f"use pref_loss: {' / '.join(REFERENCE_LOSSES)}, or remove it"))
    if m.ld_alpha is not None and not 0 <= m.ld_alpha <= 1:
        problems.append(Problem("ld_alpha", m.ld_alpha, cfg.origin("ld_alpha"),
                                "must be in [0, 1]: it scales the log-probs of the tokens beyond the shorter "
                                "response (1 = plain DPO)", "the LD-DPO paper uses 0.2–0.8"))
    return problems


def positive_beta(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    problems = []
    if m.pref_beta <= 0:
        problems.append(Problem("pref_beta", m.pref_beta, cfg.origin("pref_beta"),
                                "must be positive: it scales the implicit reward (and IPO divides by it)",
                                "the usual range is 0.05–0.5 (default 0.1)"))
    if m.pref_ftx < 0:
        problems.append(Problem("pref_ftx", m.pref_ftx, cfg.origin("pref_ftx"),
                                "must be 0 or more: it weights an SFT term on the preferred response",
                                "use 0 (off) or a positive weight"))
    return problems


def loss_settings(cfg: RunConfig) -> list[Problem]:
    """β and the SFT weight; label smoothing and γ only with the loss that reads them, and in range."""
    m = cfg.method
    problems = positive_beta(cfg)
    if "dpo_label_smoothing" in cfg.explicit and m.pref_loss != "sigmoid":
        problems.append(Problem("dpo_label_smoothing", m.dpo_label_smoothing, cfg.origin("dpo_label_smoothing"),
                                f"only the sigmoid (DPO) loss uses label smoothing, not pref_loss: {m.pref_loss}",
                                "remove it, or set pref_loss: sigmoid"))
    elif not 0 <= m.dpo_label_smoothing < 0.5:
        problems.append(Problem("dpo_label_smoothing", m.dpo_label_smoothing, cfg.origin("dpo_label_smoothing"),
                                "must be in [0, 0.5): it is the assumed share of pairs with flipped labels",
                                "e.g. 0.1 (conservative DPO), or 0 for plain DPO"))
    if "simpo_gamma" in cfg.explicit and m.pref_loss != "simpo":
        problems.append(Problem("simpo_gamma", m.simpo_gamma, cfg.origin("simpo_gamma"),
                                f"only pref_loss: simpo uses a target reward margin, not {m.pref_loss}",
                                "remove it, or set pref_loss: simpo"))
    elif m.simpo_gamma < 0:
        problems.append(Problem("simpo_gamma", m.simpo_gamma, cfg.origin("simpo_gamma"),
                                "the target reward margin must be 0 or more", "the SimPO paper uses 0.5–1.6"))
    return problems


# --- the reference model (shared with kto) ---


def reference_keys(cfg: RunConfig, *, uses_reference: bool) -> list[Problem]:
    """`ref_model*` only where a reference is used; adapters and quantisation only with a ref_model (whose
    folders `kubetune.validate` checks)."""
    m = cfg.method
    given = [key for key in REF_KEYS if getattr(m, key) is not None]
    if not uses_reference:
        return [Problem(key, getattr(m, key), cfg.origin(key),
                        f"pref_loss: {m.pref_loss} uses no reference model (its loss compares the policy's own "
                        "likelihoods of the chosen and rejected responses), so none is loaded", "remove it")
                for key in given]
    problems = []
    if m.ref_model is None:
        for key in ("ref_model_adapters", "ref_model_quantization_bit"):
            if getattr(m, key) is not None:
                problems.append(Problem(key, getattr(m, key), cfg.origin(key),
                                        "applies to ref_model, but no ref_model is set (LoRA uses the policy with its "
                                        "adapter disabled as the reference; freeze/full a frozen copy of the base)",
                                        "set ref_model (e.g. the base model), or remove it"))
        return problems
    if m.ref_model_quantization_bit not in (None, 4, 8):
        problems.append(Problem("ref_model_quantization_bit", m.ref_model_quantization_bit,
                                cfg.origin("ref_model_quantization_bit"), "must be 4 or 8", "use 4 or 8"))
    return problems


def eval_only_reference(cfg: RunConfig, *, uses_reference: bool) -> list[Problem]:
    """Evaluating a full/freeze model against a copy of itself would give every reward 0."""
    m = cfg.method
    if cfg.train.do_train is False and uses_reference and m.finetuning_type != "lora" and m.ref_model is None:
        return [Problem("ref_model", None, cfg.origin("ref_model"),
                        f"evaluating a {m.finetuning_type} model without ref_model compares it with a copy of itself: "
                        "every reward would be 0",
                        "set ref_model to the model it was trained from (e.g. the sft output_dir or the base)")]
    return []


# --- keys and flags this stage does not read (shared with kto) ---


def other_stage_keys(cfg: RunConfig) -> list[Problem]:
    """A key that only another stage reads would be silently ignored: refuse it."""
    stage = cfg.method.stage
    problems = []
    for key in sorted(cfg.explicit & STAGE_ONLY_KEYS.keys()):
        stages = STAGE_ONLY_KEYS[key]
        if stage not in stages and getattr(cfg.method, key) != FinetuningArguments.model_fields[key].default:
            problems.append(Problem(key, getattr(cfg.method, key), cfg.origin(key),
                                    f"only the {'/'.join(stages)} stage reads it, not {stage}",
                                    f"remove it (in a pipeline file, put it under stages.{stages[0]})"))
    return problems


def prompt_handling(cfg: RunConfig) -> list[Problem]:
    """Preference rows are not packed across batches, and their prompt is never trained: flags saying
    otherwise are refused. dpo reads `packing` as padding-free batches (each batch's sequences share
    rows, each seeing only itself; on by default where the model allows) and `packing: false` turns it off."""
    problems = []
    keys = ("neat_packing", "train_on_prompt") if cfg.method.stage == "dpo" else (
        "packing", "neat_packing", "train_on_prompt")
    for key in keys:
        if getattr(cfg.data, key):
            what = "never packed" if key != "train_on_prompt" else "scored on the response only (the prompt is masked)"
            problems.append(Problem(key, True, cfg.origin(key),
                                    f"{cfg.method.stage} rows are {what}", f"remove {key}"))
    return problems
