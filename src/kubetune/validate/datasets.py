"""World rules about a stage's data: is it the kind of data the stage learns from?

Each rule resolves the stage's datasets and, for files named by path, looks at their first row.
Names that do not resolve are skipped here: `kubetune.validate.preflight` reports them once, with
the registry's reason and a "did you mean".
"""

from __future__ import annotations

from typing import Any

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig
from kubetune.data.readers import first_row
from kubetune.data.registry import DataError, DatasetAttr, resolve_datasets

DATA_KEYS = ("dataset", "eval_dataset")
KTO_DATA_HINT = ('give every row a true/false kto_tag and name its column in dataset_info.json ("columns": '
                 '{"kto_tag": "<column>"}, as kubi_kto does)')


def resolved(cfg: RunConfig, key: str) -> list[DatasetAttr]:
    """The datasets of `dataset` (with `data_path`) or `eval_dataset`; [] when they do not resolve.

    Args:
        cfg: the run config.
        key: "dataset" or "eval_dataset".
    """
    names = getattr(cfg.data, key)
    data_path = cfg.data.data_path if key == "dataset" else None
    try:
        return resolve_datasets(names, cfg.data.dataset_dir, data_path) if names or data_path else []
    except DataError:
        return []  # preflight reports a dataset that does not resolve, with the reason


def peek(attr: DatasetAttr, dataset_dir: str) -> dict[str, Any] | None:
    """The first object row of a local data file (None: remote, a folder, no such row, unreadable).

    Args:
        attr: the resolved dataset.
        dataset_dir: the folder its relative file_name is in (a dataset named by path keeps its own path).
    """
    if attr.is_remote:
        return None
    path = attr.local_path(dataset_dir)
    return first_row(path) if path.is_file() else None


def _is_pairs(row: dict[str, Any] | None) -> bool:
    return row is not None and {"chosen", "rejected"} <= row.keys()


def _value(cfg: RunConfig, key: str) -> str:
    return ",".join(getattr(cfg.data, key) or [cfg.data.data_path or ""])


def rm_ranking_data(cfg: RunConfig) -> list[Problem]:
    """rm: registered datasets must have `"ranking": true`.

    Files named by path are skipped: whether their rows hold chosen/rejected is decided when they are read.
    """
    problems = []
    for key in DATA_KEYS:
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


def dpo_pairs(cfg: RunConfig) -> list[Problem]:
    """dpo learns from pairs: every dataset must be ranking data (`"ranking": true`, or chosen/rejected columns)."""
    problems = []
    for key in DATA_KEYS:
        not_ranking = []
        for attr in resolved(cfg, key):
            if attr.ranking:
                continue
            if attr.formatting == "auto":  # named by path: ranking when its rows have chosen and rejected
                row = peek(attr, cfg.data.dataset_dir)
                if row is None or _is_pairs(row):
                    continue
            not_ranking.append(attr.name)
        if not_ranking:
            problems.append(Problem(
                key, _value(cfg, key), cfg.origin(key),
                f"{', '.join(not_ranking)} has no chosen/rejected pairs, but the dpo stage learns from a preferred "
                "and a dispreferred response to each prompt",
                'use ranking data (e.g. kubi_pref): in dataset_info.json set "ranking": true and its chosen/rejected '
                "columns; data with one response and a kto_tag fits stage: kto"))
    return problems


def kto_tagged_responses(cfg: RunConfig) -> list[Problem]:
    """kto reads one response per row and its kto_tag: not ranking pairs, not untagged sft data."""
    problems = []
    for key in DATA_KEYS:
        ranking, untagged = [], []
        for attr in resolved(cfg, key):
            row = None if attr.ranking else peek(attr, cfg.data.dataset_dir)
            column = attr.columns.kto_tag or "kto_tag"  # the converter's default column name
            if attr.ranking or (attr.formatting == "auto" and _is_pairs(row)):
                ranking.append(attr.name)
            elif row is not None and column not in row:
                untagged.append(f"{attr.name} (no {column!r} column)")
        if ranking:
            problems.append(Problem(key, _value(cfg, key), cfg.origin(key),
                                    f"{', '.join(ranking)} is ranking (chosen/rejected) data, but the kto stage reads "
                                    "one response per row labelled desirable or not",
                                    f"use stage: dpo for pairs, or kto data (e.g. kubi_kto): {KTO_DATA_HINT}"))
        if untagged:
            problems.append(Problem(key, _value(cfg, key), cfg.origin(key),
                                    f"{', '.join(untagged)}: the kto stage needs to know whether each response is "
                                    "desirable", KTO_DATA_HINT))
    return problems


def ppo_prompts(cfg: RunConfig) -> list[Problem]:
    """PPO reads prompts from sft-format data: ranking (preference) data is for rm/dpo."""
    problems = []
    for key in DATA_KEYS:
        names = getattr(cfg.data, key)
        try:
            attrs = resolve_datasets(names, cfg.data.dataset_dir) if names else []
        except DataError:
            continue
        ranking = [a.name for a in attrs if a.ranking]
        if ranking:
            problems.append(Problem(key, ",".join(names or []), cfg.origin(key),
                                    f"{', '.join(ranking)} is ranking (chosen/rejected) data; the ppo stage samples "
                                    "its own responses to prompts", "use sft-format data (e.g. kubi_sft)"))
    return problems
