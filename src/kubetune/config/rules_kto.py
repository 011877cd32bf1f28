"""Rules of the kto stage: weights that make sense, a usable reference.

`kubetune.config.rules.STAGE_RULES` runs `check` for `stage: kto`. KTO always compares with a
reference model, so the `ref_model*` keys follow the dpo rules for reference losses. That the data is
single responses with a kto_tag is read from the data by `kubetune.validate`.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.rules_dpo import (
    eval_only_reference,
    other_stage_keys,
    positive_beta,
    prompt_handling,
    reference_keys,
)
from kubetune.config.schema import RunConfig


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem of a kto config (empty when it can run)."""
    problems: list[Problem] = []
    problems += positive_beta(cfg)
    problems += class_weights(cfg)
    problems += reference_keys(cfg, uses_reference=True)
    problems += eval_only_reference(cfg, uses_reference=True)
    problems += other_stage_keys(cfg)
    problems += prompt_handling(cfg)
    return problems


def class_weights(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    problems = []
    for key in ("kto_chosen_weight", "kto_rejected_weight"):
        if getattr(m, key) < 0:
            problems.append(Problem(key, getattr(m, key), cfg.origin(key), "a class weight must be 0 or more",
                                    "the KTO paper balances λ_D·n_D / λ_U·n_U to 1–4/3 (default 1.0 each)"))
    if m.kto_chosen_weight == 0 and m.kto_rejected_weight == 0:
        problems.append(Problem("kto_rejected_weight", 0.0, cfg.origin("kto_rejected_weight"),
                                "with both class weights 0 there is nothing to learn", "use positive weights"))
    return problems
