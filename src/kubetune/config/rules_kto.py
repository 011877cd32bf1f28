"""Rules of the kto stage: single-response data with a kto_tag, weights that make sense, a usable reference.

`kubetune.config.rules.STAGE_RULES` runs `check` for `stage: kto`. KTO always compares with a
reference model, so the `ref_model*` keys follow the dpo rules for reference losses.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.rules_dpo import (
    eval_only_reference,
    first_row,
    other_stage_keys,
    positive_beta,
    prompt_handling,
    reference_keys,
    resolved,
)
from kubetune.config.schema import RunConfig

KTO_DATA_HINT = ('give every row a true/false kto_tag and name its column in dataset_info.json ("columns": '
                 '{"kto_tag": "<column>"}, as kubi_kto does)')


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem of a kto config (empty when it can run)."""
    problems: list[Problem] = []
    problems += kto_data(cfg)
    problems += positive_beta(cfg)
    problems += class_weights(cfg)
    problems += reference_keys(cfg, uses_reference=True)
    problems += eval_only_reference(cfg, uses_reference=True)
    problems += other_stage_keys(cfg)
    problems += prompt_handling(cfg)
    return problems


def kto_data(cfg: RunConfig) -> list[Problem]:
    """kto reads one response per row and its kto_tag: not ranking pairs, not untagged sft data."""
    problems = []
    for key in ("dataset", "eval_dataset"):
        ranking, untagged = [], []
        for attr in resolved(cfg, key):
            row = None if attr.ranking else first_row(attr, cfg.data.dataset_dir)
            column = attr.columns.kto_tag or "kto_tag"  # the converter's default column name
            if attr.ranking or (attr.formatting == "auto" and row is not None and {"chosen", "rejected"} <= row.keys()):
                ranking.append(attr.name)
            elif row is not None and column not in row:
                untagged.append(f"{attr.name} (no {column!r} column)")
        value = ",".join(getattr(cfg.data, key) or [cfg.data.data_path or ""])
        if ranking:
            problems.append(Problem(key, value, cfg.origin(key),
                                    f"{', '.join(ranking)} is ranking (chosen/rejected) data, but the kto stage reads "
                                    "one response per row labelled desirable or not",
                                    f"use stage: dpo for pairs, or kto data (e.g. kubi_kto): {KTO_DATA_HINT}"))
        if untagged:
            problems.append(Problem(key, value, cfg.origin(key),
                                    f"{', '.join(untagged)}: the kto stage needs to know whether each response is "
                                    "desirable", KTO_DATA_HINT))
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
