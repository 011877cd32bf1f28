"""Run LLaMA-Factory 0.9.5 (the oracle, in its own venv) and kubetune on the same rows; compare them row by row.

One LF subprocess answers every case (template x variant) at once, so the whole comparison costs one
LF start-up. A case is identical when every row's ids and labels are; both refusing a case (e.g.
`train_on_prompt` with an `efficient_eos` template) counts as agreeing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

from cases import TODAY, VARIANTS, lf_row, our_sample, rows_for

from kubetune.data import tool_formats
from kubetune.data.encode import BatchEncoder
from kubetune.data.template_registry import get_template

ROOT = Path(__file__).resolve().parents[2]
LF_PYTHON = ROOT / "tools" / "lf-venv" / "bin" / "python"
ORACLE = Path(__file__).with_name("lf_oracle.py")
CACHE = ROOT / ".cache" / "conformance"


def lf_available() -> bool:
    """Whether LLaMA-Factory's venv is installed (`make bench` or `make conformance` installs it)."""
    if not LF_PYTHON.exists():
        return False
    return LF_PYTHON.with_name("llamafactory-cli").exists()


@dataclass
class CaseResult:
    """How one template x variant compared: identical rows out of all, and the first difference."""

    template: str
    variant: str
    identical: int
    total: int
    first_difference: str = ""


def build_cases(templates: list[str]) -> list[dict[str, Any]]:
    cases = []
    for template in templates:
        for variant, stage, options in VARIANTS:
            rows = [lf_row(r, stage) for r in rows_for(stage, options.get("row_set"))]
            cases.append({"id": f"{template}/{variant}", "template": template, "stage": stage, "rows": rows, **options})
    return cases


def run_lf(tokenizer_dir: Path, cases: list[dict[str, Any]], timeout: int = 1200) -> dict[str, Any]:
    """LF's rows for every case, from one subprocess; kept in a cache keyed by the request and the oracle,
    since LF's answer for the same request never changes."""
    request = json.dumps({"tokenizer_dir": str(tokenizer_dir), "cases": cases, "today": TODAY}, sort_keys=True)
    key = hashlib.sha256((request + ORACLE.read_text() + str(LF_PYTHON.resolve())).encode()).hexdigest()[:24]
    cached = CACHE / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    done = subprocess.run(
        [str(LF_PYTHON), str(ORACLE)], input=request, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"the LLaMA-Factory oracle failed:\n{done.stderr[-3000:]}")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(done.stdout)
    return json.loads(done.stdout)


def run_ours(tokenizer: Any, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """kubetune's rows (or error) for each case of one template, by case id.

    Args:
        tokenizer: the unfixed tokenizer; a copy is fixed for the template.
        cases: cases of one template, as `build_cases` wrote them.
    """
    tokenizer = copy.deepcopy(tokenizer)
    try:
        template = get_template(cases[0]["template"], tokenizer)
        template.fix_tokenizer(tokenizer)
    except ValueError as err:
        return {case["id"]: {"error": str(err)} for case in cases}
    out = {}
    today = datetime.strptime(TODAY, "%Y-%m-%d").strftime("%d %b %Y")
    for case in cases:
        template.enable_thinking = case.get("enable_thinking", True)
        samples = [our_sample(r, case["stage"], i) for i, r in enumerate(rows_for(case["stage"], case.get("row_set")))]
        try:
            # the config's tool_format, as `data.setup.tokenizer_and_template` applies it
            case_template = template.with_tool_format(case["tool_format"]) if case.get("tool_format") else template
            encoder = BatchEncoder(case_template, tokenizer, case["stage"], case["cutoff_len"],
                                   train_on_prompt=case.get("train_on_prompt", False),
                                   mask_history=case.get("mask_history", False))
            with mock.patch.object(tool_formats, "today", lambda: today):
                out[case["id"]] = {"rows": encoder.encode(samples, [None] * len(samples), for_eval=False)}
        except ValueError as err:
            out[case["id"]] = {"error": str(err)}
    return out


def compare(case: dict[str, Any], lf: dict[str, Any], ours: dict[str, Any], tokenizer: Any = None) -> CaseResult:
    """Row-by-row agreement of one case. LF refusing a case that kubetune encodes makes it not comparable
    (`total` 0, the reason in `first_difference`); kubetune refusing what LF encodes is a difference."""
    template, variant = case["id"].split("/", 1)
    total = len(case["rows"])
    if "error" in lf:
        if "error" in ours:
            return CaseResult(template, variant, total, total)
        return CaseResult(template, variant, 0, 0, f"LF refuses: {lf['error']}")
    if "error" in ours:
        return CaseResult(template, variant, 0, total, f"kubetune refuses: {ours['error']}")
    identical, first = 0, ""
    for i, (theirs, mine) in enumerate(zip(lf["rows"], ours["rows"], strict=True)):
        diffs = [f for f in theirs if list(theirs[f]) != list(mine[f])]
        if not diffs:
            identical += 1
        elif not first:
            f = diffs[0]
            first = f"row {i} {f}:\n  LF:   {_show(theirs[f], tokenizer)}\n  ours: {_show(mine[f], tokenizer)}"
    return CaseResult(template, variant, identical, total, first)


def _show(ids: list[int], tokenizer: Any) -> str:
    if tokenizer is None or any(i < 0 for i in ids):
        return str(ids)
    return repr(tokenizer.decode(ids))


def compare_all(tokenizer_dir: Path, templates: list[str]) -> list[CaseResult]:
    """Every template x variant, compared."""
    from harness_dataset import build_dataset_cases, compare_dataset, run_ours_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cases = build_cases(templates)
    dataset_cases = build_dataset_cases(templates)  # pt blocks, sft packing, KTO's KL pairs (harness_dataset)
    lf = run_lf(tokenizer_dir, cases + dataset_cases)
    ours: dict[str, Any] = {}
    for template in templates:
        ours.update(run_ours(tokenizer, [c for c in cases if c["template"] == template]))
        ours.update(run_ours_dataset(tokenizer, [c for c in dataset_cases if c["template"] == template]))
    return ([compare(case, lf[case["id"]], ours[case["id"]], tokenizer) for case in cases]
            + [compare_dataset(case, lf[case["id"]], ours[case["id"]], tokenizer) for case in dataset_cases])


def lf_template_plugins() -> dict[str, str]:
    """LLaMA-Factory's template names, each with its multimodal plugin's class (`BasePlugin` = text only)."""
    done = subprocess.run([str(LF_PYTHON), str(ORACLE), "--names"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the LLaMA-Factory oracle failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)
