"""Dataset-level conformance: pt blocks, sft packing and KTO's KL pairs, whole datasets compared row by row.

LLaMA-Factory's side runs its loader's `_get_preprocessed_dataset` (batches of `preprocessing_batch_size`,
`cutoff_len` adjusted as its argument parser does; `lf_oracle.run_dataset_case`); ours runs the pipeline's
own encoder (`pipeline._Encoder`: `BatchEncoder`, then `dataset_rows.stage_rows`). A case's rows are
identical when every field compared is; a row count that differs counts the missing rows as different.

One deliberate difference is compared around: LF pads every packed sft row to cutoff_len (positions 0,
labels ignored), kubetune stores rows unpadded and the collator pads each batch to its longest row (no
token of compute is spent on padding a short batch to the cutoff; neat-packed padding is its own block
of positions either way). LF's trailing padding is stripped before comparing. And LF's plain-packed
rows restart `position_ids` per example while letting attention cross examples; kubetune's plain rows
keep one run of positions (the row reads as one document, as pt's blocks do), so plain packing compares
input_ids and labels, and neat packing its positions too.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any
from unittest import mock

from cases import TODAY
from cases_dataset import DATASET_VARIANTS, dataset_rows_for, lf_dataset_row, our_dataset_sample
from harness import CaseResult, _show

from kubetune.config import DataArguments
from kubetune.data import tool_formats
from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.pipeline import _Encoder
from kubetune.data.template_registry import get_template

# LF's option names that kubetune's DataArguments reads under the same name.
OPTIONS = ("cutoff_len", "packing", "neat_packing", "preprocessing_batch_size", "train_on_prompt", "enable_thinking")


def build_dataset_cases(templates: list[str]) -> list[dict[str, Any]]:
    cases = []
    for template in templates:
        for variant, stage, options in DATASET_VARIANTS:
            rows = [lf_dataset_row(r, stage, i) for i, r in enumerate(dataset_rows_for(stage))]
            cases.append({"id": f"{template}/{variant}", "template": template, "stage": stage, "rows": rows,
                          "dataset_level": True, **options})
    return cases


def run_ours_dataset(tokenizer: Any, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """kubetune's rows (or error) for each dataset-level case of one template, by case id."""
    tokenizer = copy.deepcopy(tokenizer)
    try:
        template = get_template(cases[0]["template"], tokenizer)
        template.fix_tokenizer(tokenizer)
    except ValueError as err:
        return {case["id"]: {"error": str(err)} for case in cases}
    out = {}
    today = datetime.strptime(TODAY, "%Y-%m-%d").strftime("%d %b %Y")  # llama3's tool prompt: LF's fixed date
    for case in cases:
        template.enable_thinking = case.get("enable_thinking", True)
        data = DataArguments(template=case["template"], **{k: case[k] for k in OPTIONS if k in case})
        samples = [our_dataset_sample(r, case["stage"], i) for i, r in enumerate(dataset_rows_for(case["stage"]))]
        try:
            encoder = _Encoder(tokenizer, template, data, case["stage"])
            with mock.patch.object(tool_formats, "today", lambda: today):
                out[case["id"]] = {"rows": encoder.encode_all(samples, for_eval=False)}
        except ValueError as err:
            out[case["id"]] = {"error": str(err)}
    return out


def lf_comparable(case: dict[str, Any], row: dict[str, Any]) -> dict[str, list]:
    """LF's row, in the fields and form kubetune's row is compared on (see the module's note)."""
    if case["stage"] == "pt":
        return {"input_ids": row["input_ids"]}
    if case["stage"] == "kto":
        return {f: row[f] for f in ("input_ids", "labels", "kl_input_ids", "kl_labels")} | {
            "kto_tag": [row["kto_tags"]]}
    if not (case.get("packing") or case.get("neat_packing")):
        return {f: row[f] for f in ("input_ids", "labels")}
    positions = row["position_ids"]
    end = len(positions)
    while end > 0 and positions[end - 1] == 0 and row["labels"][end - 1] == IGNORE_INDEX:
        end -= 1  # LF's padding to the cutoff: positions 0, nothing learnt
    out = {f: row[f][:end] for f in ("input_ids", "labels")}
    if case.get("neat_packing"):
        out["position_ids"] = positions[:end]
    return out


def ours_comparable(row: dict[str, Any], fields: list[str]) -> dict[str, list]:
    return {f: [row[f]] if f == "kto_tag" else list(row.get(f, [])) for f in fields}


def compare_dataset(case: dict[str, Any], lf: dict[str, Any], ours: dict[str, Any], tokenizer: Any = None
                    ) -> CaseResult:
    """Row-by-row agreement of one dataset-level case (the rows in their order: packing's order is LF's)."""
    template, variant = case["id"].split("/", 1)
    if "error" in lf:
        if "error" in ours:
            return CaseResult(template, variant, 1, 1)
        return CaseResult(template, variant, 0, 0, f"LF refuses: {lf['error']}")
    total = max(len(lf["rows"]), len(ours.get("rows", [])), 1)
    if "error" in ours:
        return CaseResult(template, variant, 0, total, f"kubetune refuses: {ours['error']}")
    identical, first = 0, ""
    if len(lf["rows"]) != len(ours["rows"]):
        first = f"LF made {len(lf['rows'])} rows, kubetune {len(ours['rows'])}"
    for i, (theirs, mine) in enumerate(zip(lf["rows"], ours["rows"], strict=False)):
        theirs = lf_comparable(case, theirs)
        mine = ours_comparable(mine, list(theirs))
        diffs = [f for f in theirs if theirs[f] != mine[f]]
        if not diffs:
            identical += 1
        elif not first:
            f = diffs[0]
            first = f"row {i} {f}:\n  LF:   {_show(theirs[f], tokenizer)}\n  ours: {_show(mine[f], tokenizer)}"
    if not lf["rows"] and not ours["rows"]:
        identical = 1  # both made no rows
    return CaseResult(template, variant, identical, total, first)
