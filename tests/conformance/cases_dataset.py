"""Our own dataset-level conformance data: rows whose tokens depend on their neighbours.

pt documents are concatenated and cut into blocks, sft examples are packed into rows, and a KTO row's
KL half is another row's response; all per preprocessing batch. So these cases compare whole datasets
(`harness_dataset`), not one row at a time. The documents are ours: longer and shorter than the short
cutoffs, so documents span blocks and each batch leaves a remainder.
"""

from __future__ import annotations

from typing import Any

from cases import LONG, SFT_ROWS, lf_row

from kubetune.data.schema import Message, Sample

PT_DOCS: list[str] = [
    "Kubi keeps a garden. Every morning it waters the tomatoes, counts the bees and writes the numbers down.",
    "Short one.",
    LONG,
    "Übung macht den Meister — practice makes the master. 東京 is Tokyo; naïve café is a phrase.",
    "Line one\nLine two\n\n  indented line three\n",
    "A recipe: boil water, add salt, add pasta, wait nine minutes, drain, and serve with butter.",
    "x",
    " ".join(f"Fact {i}: {i} squared is {i * i}." for i in range(1, 40)),
    "The end of the corpus, with a trailing space ",
]

# (case suffix, stage, options). Options are LLaMA-Factory's keys, as both sides read them.
DATASET_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("pt_blocks_32", "pt", {"cutoff_len": 32}),  # packing unset: blocks of cutoff_len
    ("pt_packing_true_32", "pt", {"cutoff_len": 32, "packing": True}),  # explicit: blocks of cutoff_len - 1
    ("pt_batches_of_3", "pt", {"cutoff_len": 32, "preprocessing_batch_size": 3}),  # a remainder per batch
    ("pt_unpacked_32", "pt", {"cutoff_len": 32, "packing": False}),  # each document cut on its own
    ("sft_packing_64", "sft", {"cutoff_len": 64, "packing": True, "preprocessing_batch_size": 4}),
    ("sft_neat_pack_64", "sft", {"cutoff_len": 64, "neat_packing": True}),
    ("neat_pack_prompt", "sft", {"cutoff_len": 128, "neat_packing": True, "train_on_prompt": True}),
    ("kto_batches_of_4", "kto", {"cutoff_len": 1024, "preprocessing_batch_size": 4}),
    ("kto_cutoff_40", "kto", {"cutoff_len": 40}),
]


def kto_tag(index: int) -> bool:
    """Desirable rows and undesirable ones, alternating (every third undesirable one in a row with the next)."""
    return index % 3 == 0


def dataset_rows_for(stage: str) -> list[dict[str, Any]]:
    """The neutral rows of a stage (`cases` form; pt: `{"text"}`)."""
    if stage == "pt":
        return [{"text": text} for text in PT_DOCS]
    return SFT_ROWS


def lf_dataset_row(row: dict[str, Any], stage: str, index: int) -> dict[str, Any]:
    """A row in LLaMA-Factory's aligned form, as its converter writes pt and KTO rows."""
    if stage == "pt":
        return {"prompt": [{"role": "user", "content": row["text"]}], "response": [], "system": "", "tools": ""}
    lf = lf_row(row, "sft")
    if stage == "kto":  # the response, and an empty one: first if desirable, second if not
        empty = {"role": "assistant", "content": ""}
        lf["response"] = lf["response"] + [empty] if kto_tag(index) else [empty] + lf["response"]
    return lf


def our_dataset_sample(row: dict[str, Any], stage: str, index: int) -> Sample:
    """The same row as kubetune's `Sample` (pt: the document in the response, as our converter puts it)."""
    if stage == "pt":
        return Sample(prompt=[], response=[Message("assistant", row["text"])], row=index, source="conformance")
    lf = lf_row(row, "sft")
    return Sample(
        prompt=[Message(m["role"], m["content"]) for m in lf["prompt"]],
        response=[Message(m["role"], m["content"]) for m in lf["response"]],
        system=lf["system"],
        tools=lf["tools"],
        kto_tag=kto_tag(index) if stage == "kto" else None,
        row=index,
        source="conformance",
    )
