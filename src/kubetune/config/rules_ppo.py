"""Rules of the ppo stage: a reward source it can use, prompt data, and settings its loop honours.

`kubetune.config.rules.STAGE_RULES` runs `check` for `stage: ppo`. What the reward_model names — a
URL, a Python function, an rm output folder with its value head — and whether the data is prompts
is checked by `kubetune.validate`, which reads them.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

REWARD_HINT = ("set reward_model to an rm run's output_dir (e.g. saves/smollm2-135m/lora/rm — run "
               "`kubetune train examples/rm_lora.yaml` first), or, with reward_model_type: api, to an http(s):// "
               "scoring URL or a Python reward function (rewards.py:my_func)")
UNSUPPORTED_SCHEDULERS = ("reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem of a ppo config (empty when it can run)."""
    problems: list[Problem] = []
    for rule in (reward_model, reference_keys, no_packing, sampling, optimisation):
        problems.extend(rule(cfg))
    return problems


def reward_model(cfg: RunConfig) -> list[Problem]:
    """A reward source is required, and the keys beside it must fit its type."""
    m = cfg.method
    if not m.reward_model:
        return [Problem("reward_model", None, cfg.origin("reward_model"), "the ppo stage needs a reward model",
                        REWARD_HINT)]
    if m.reward_model_type == "api":
        if m.reward_model_quantization_bit is not None:
            return [Problem("reward_model_quantization_bit", m.reward_model_quantization_bit,
                            cfg.origin("reward_model_quantization_bit"),
                            "has no effect with reward_model_type: api (no model is loaded)", "remove it")]
        return []
    if m.reward_model_adapters:
        return [Problem("reward_model_adapters", m.reward_model_adapters, cfg.origin("reward_model_adapters"),
                        "not supported: an rm run's output_dir holds its adapter and value head together",
                        "remove it and point reward_model at the rm output_dir")]
    return []


def reference_keys(cfg: RunConfig) -> list[Problem]:
    """`ref_model` (+ adapters, quantisation) as for dpo: adapters and quantisation only beside a ref_model."""
    from kubetune.config.rules_dpo import reference_keys as preference_reference_keys

    return preference_reference_keys(cfg, uses_reference=True)


def no_packing(cfg: RunConfig) -> list[Problem]:
    """PPO generates from one prompt at a time (that its data is prompts, not pairs, is read by preflight)."""
    if cfg.data.packing or cfg.data.neat_packing:
        key = "packing" if cfg.data.packing else "neat_packing"
        return [Problem(key, True, cfg.origin(key), "PPO prompts are generated from one at a time, never packed",
                        f"remove {key}")]
    return []


def sampling(cfg: RunConfig) -> list[Problem]:
    """Rollouts must be samples from the policy: PPO's ratios and KL are computed for them."""
    g = cfg.generation
    problems = []
    if cfg.train.do_train is not False and not g.do_sample:
        problems.append(Problem("do_sample", False, cfg.origin("do_sample"),
                                "PPO learns from sampled responses; greedy decoding would give every prompt one "
                                "fixed response", "set do_sample: true (temperature, top_p, top_k shape the sampling)"))
    if g.num_beams > 1:
        problems.append(Problem("num_beams", g.num_beams, cfg.origin("num_beams"),
                                "beam search does not sample from the policy", "set num_beams: 1"))
    return problems


def optimisation(cfg: RunConfig) -> list[Problem]:
    m, t = cfg.method, cfg.train
    problems = []
    for key in ("ppo_epochs", "ppo_buffer_size"):
        if getattr(m, key) < 1:
            problems.append(Problem(key, getattr(m, key), cfg.origin(key), "must be at least 1", ""))
    if m.adaptive_kl and m.ppo_target <= 0:
        problems.append(Problem("ppo_target", m.ppo_target, cfg.origin("ppo_target"),
                                "the adaptive KL controller needs a positive target KL",
                                "set ppo_target > 0 (default 6), or adaptive_kl: false for a fixed kl_coef"))
    if t.optim not in ("adamw_torch", "adamw_torch_fused"):
        problems.append(Problem("optim", t.optim, cfg.origin("optim"), "the ppo stage optimises with AdamW",
                                "use adamw_torch (or adamw_torch_fused on a GPU)"))
    if t.fp16:
        problems.append(Problem("fp16", True, cfg.origin("fp16"),
                                "not supported by the ppo stage (it has no loss scaler)", "use bf16: true"))
    if t.lr_scheduler_type in UNSUPPORTED_SCHEDULERS:
        problems.append(Problem("lr_scheduler_type", t.lr_scheduler_type, cfg.origin("lr_scheduler_type"),
                                "not supported by the ppo stage", "use linear, cosine, constant or "
                                "constant_with_warmup"))
    return problems

