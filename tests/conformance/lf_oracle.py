"""LLaMA-Factory 0.9.5's own preprocessing of our conformance cases: the oracle kubetune's encoder is held to.

Run by LLaMA-Factory's venv (`tools/lf-venv/bin/python`), never imported by kubetune or its tests
(LF pins other library versions). Reads a JSON request on stdin and writes a JSON answer on stdout:

    request: {"tokenizer_dir": str, "today": "YYYY-MM-DD" (optional: the date LF's tool prompts write),
              "cases": [{"id", "template", "stage", "cutoff_len", "train_on_prompt", "mask_history",
              "enable_thinking", "tool_format", "rows": [{"prompt", "response", "system", "tools"}]}]}
    answer:  {"<case id>": {"rows": [{field: ids, ...}, ...]} or {"error": str}}

`prompt` / `response` are LF's aligned message lists (`{"role", "content"}`). Each case gets a
fresh tokenizer, fixed by LF's `get_template_and_fix_tokenizer`, and LF's own dataset processor
for its stage (sft: SupervisedDatasetProcessor, rm/dpo: PairwiseDatasetProcessor, ...).
"""

from __future__ import annotations

import copy
import datetime
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "ERROR")
# LLaMA-Factory imports torchaudio at module level only to decode audio inputs; no torchaudio build
# matches the venv's torch (see bench/lf_train.py), and text rows never reach it.
if importlib.util.find_spec("torchaudio") is None:
    _stand_in = types.ModuleType("torchaudio")
    _stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = _stand_in

from llamafactory.data import template as lf_templates  # noqa: E402
from llamafactory.data import tool_utils as lf_tool_utils  # noqa: E402
from llamafactory.data.processor import (  # noqa: E402
    FeedbackDatasetProcessor,
    PairwiseDatasetProcessor,
    PretrainDatasetProcessor,
    SupervisedDatasetProcessor,
    UnsupervisedDatasetProcessor,
)
from llamafactory.data.template import get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.hparams import DataArguments  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

PROCESSORS = {
    "sft": SupervisedDatasetProcessor,
    "rm": PairwiseDatasetProcessor,
    "dpo": PairwiseDatasetProcessor,
    "kto": FeedbackDatasetProcessor,
    "pt": PretrainDatasetProcessor,
    "ppo": UnsupervisedDatasetProcessor,
}
# The row fields each stage's rows are compared on.
FIELDS = {
    "sft": ("input_ids", "labels"),
    "rm": ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"),
    "dpo": ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"),
    "kto": ("input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tags"),
    "pt": ("input_ids",),
    "ppo": ("input_ids",),
}


def run_case(tokenizer, case: dict) -> dict:
    if case.get("dataset_level"):
        return run_dataset_case(tokenizer, case)
    data_args = DataArguments(
        template=case["template"],
        cutoff_len=case["cutoff_len"],
        train_on_prompt=case.get("train_on_prompt", False),
        mask_history=case.get("mask_history", False),
        enable_thinking=case.get("enable_thinking", True),
        tool_format=case.get("tool_format"),
    )
    # LF's set-up writes `tool_format` (and the thinking flags) into its registered template: a case gets
    # a copy, so that it changes no later case of the same template.
    name = case["template"]
    registered = lf_templates.TEMPLATES.get(name)
    if registered is not None:
        lf_templates.TEMPLATES[name] = copy.copy(registered)
    try:
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
    finally:
        if registered is not None:
            lf_templates.TEMPLATES[name] = registered
    if template.mm_plugin.__class__.__name__ != "BasePlugin":
        # A multimodal model's template (gemma3, llama4, qwen3_5, ...) used for text: without images its
        # plugin changes no message and only insists on the model's processor, which a text tokenizer
        # lacks; LF's base plugin stands in (the template's formats are what is compared).
        from llamafactory.data.mm_plugin import get_mm_plugin

        template = copy.copy(template)
        template.mm_plugin = get_mm_plugin(name="base")
    rows = case["rows"]
    examples = {
        "_prompt": [r["prompt"] for r in rows],
        "_response": [r["response"] for r in rows],
        "_system": [r.get("system", "") for r in rows],
        "_tools": [r.get("tools", "") for r in rows],
        "_images": [None] * len(rows),
        "_videos": [None] * len(rows),
        "_audios": [None] * len(rows),
    }
    stage = case["stage"]
    processor = PROCESSORS[stage](template=template, tokenizer=tokenizer, processor=None, data_args=data_args)
    out = processor.preprocess_dataset(examples)
    n = len(out[FIELDS[stage][0]])
    if n != len(rows):
        return {"error": f"LF kept {n} of {len(rows)} rows"}
    return {"rows": [{f: out[f][i] for f in FIELDS[stage]} for i in range(n)]}


# Dataset-level cases also return what shows LF's packing: positions, and which tokens are padding.
DATASET_FIELDS = {"sft": ("input_ids", "labels", "position_ids", "attention_mask")}


def run_dataset_case(tokenizer, case: dict) -> dict:
    """A dataset-level case (pt blocks, sft packing, KTO's KL pairs) as LF's loader runs it: `DataArguments`
    adjusts `cutoff_len` for packing (`__post_init__`), the stage decides pt's default packing afterwards
    (`hparams.parser`, as `get_train_args` does), and `loader._get_preprocessed_dataset` maps the processor
    over batches of `preprocessing_batch_size` rows."""
    from datasets import Dataset
    from llamafactory.data.loader import _get_preprocessed_dataset

    stage = case["stage"]
    data_args = DataArguments(
        template=case["template"],
        cutoff_len=case["cutoff_len"],
        train_on_prompt=case.get("train_on_prompt", False),
        packing=case.get("packing"),
        neat_packing=case.get("neat_packing", False),
        preprocessing_batch_size=case.get("preprocessing_batch_size", 1000),
        enable_thinking=case.get("enable_thinking", True),
    )
    data_args.packing = data_args.packing if data_args.packing is not None else stage == "pt"
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    if template.mm_plugin.__class__.__name__ != "BasePlugin":  # as in run_case
        from llamafactory.data.mm_plugin import get_mm_plugin

        template = copy.copy(template)
        template.mm_plugin = get_mm_plugin(name="base")
    rows = case["rows"]
    dataset = Dataset.from_dict({
        "_prompt": [r["prompt"] for r in rows],
        "_response": [r["response"] for r in rows],
        "_system": [r.get("system", "") for r in rows],
        "_tools": [r.get("tools", "") for r in rows],
        "_images": [None] * len(rows),
        "_videos": [None] * len(rows),
        "_audios": [None] * len(rows),
    })
    training_args = types.SimpleNamespace(predict_with_generate=False, local_process_index=0, should_log=False)
    out = _get_preprocessed_dataset(dataset, data_args, training_args, stage, template, tokenizer)
    fields = DATASET_FIELDS.get(stage, FIELDS[stage])
    return {"rows": [{f: row[f] for f in fields if f in row} for row in out]}


def tokenizer_for_transformers4(model_dir: str, work: Path) -> str:
    """The tokenizer folder as transformers 4.x reads it: links to the same files, but a tokenizer_config.json
    naming `PreTrainedTokenizerFast` (same tokenizer.json) where transformers 5 wrote `TokenizersBackend`."""
    source = Path(model_dir)
    config = json.loads((source / "tokenizer_config.json").read_text())
    if config.get("tokenizer_class") != "TokenizersBackend":
        return model_dir
    for file in source.iterdir():
        if file.name != "tokenizer_config.json":
            (work / file.name).symlink_to(file.resolve())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (work / "tokenizer_config.json").write_text(json.dumps(config))
    return str(work)


def _fix_today(day: str) -> None:
    """LF's llama3 tool prompt writes `datetime.now()`'s date: make it `day` (YYYY-MM-DD)."""
    fixed = datetime.datetime.strptime(day, "%Y-%m-%d")

    class _Today(datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ARG003 - datetime.now's signature
            return fixed

    lf_tool_utils.datetime = _Today


def main() -> None:
    logging.disable(logging.WARNING)
    if sys.argv[1:] == ["--names"]:
        from llamafactory.data.template import TEMPLATES

        json.dump({name: t.mm_plugin.__class__.__name__ for name, t in TEMPLATES.items()}, sys.stdout)
        return
    request = json.load(sys.stdin)
    if request.get("today"):
        _fix_today(request["today"])
    with tempfile.TemporaryDirectory() as work:
        base = AutoTokenizer.from_pretrained(tokenizer_for_transformers4(request["tokenizer_dir"], Path(work)))
    answer = {}
    fixed = {}  # fixing a tokenizer changes it: one copy per template, fixed again (a no-op) by each case
    for case in request["cases"]:
        if case["template"] not in fixed:
            fixed[case["template"]] = copy.deepcopy(base)
        tokenizer = fixed[case["template"]]
        try:
            answer[case["id"]] = run_case(tokenizer, case)
        except Exception as err:  # noqa: BLE001 - reported per case, the other cases still run
            answer[case["id"]] = {"error": f"{type(err).__name__}: {err}"}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
