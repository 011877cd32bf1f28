"""The DPO benchmark's preference data: 200 alpaca ranking rows of mixed lengths, the same bytes on every machine.

Each row is an instruction (sometimes with context), a `chosen` answer on the instruction's topic
and a `rejected` answer that drifts to another topic, so there is something to prefer. Lengths
come from a fixed-seed mixture (half short, a third medium, the rest long enough that prompt +
response passes a 512-token cutoff), with chosen and rejected drawn independently, so padding a
batch of pairs to its longest sequence wastes what it wastes in real preference sets.

Prompts stay well under half the cutoff (≤ ~200 tokens with the chat template): then kubetune's
truncation (prompt and the longer response share the budget, `infer_seqlen`) and TRL's
(`keep_start`: cut prompt + response at `max_length`) keep exactly the same tokens, and the two
tools train on identical sequences.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.data import _ASKS, _TOPICS, _text

DATASET = "bench_pref"
ROWS = 200

# How the rows map onto kubetune's (LLaMA-Factory's) alpaca ranking format.
DATASET_INFO = {
    "file_name": f"{DATASET}.json",
    "ranking": True,
    "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
}


def make_pairs(rows: int = ROWS, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca ranking rows (`instruction`, `input`, `chosen`, `rejected`) with a deterministic mix of lengths.

    Args:
        rows: how many pairs. Default 200.
        seed: the generator's seed. Default 0.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        topic = rng.choice(_TOPICS)
        other = rng.choice([t for t in _TOPICS if t != topic])
        kind = rng.random()
        if kind < 0.5:  # short: responses ~20-90 tokens
            context, low, high = 0, 15, 70
        elif kind < 0.83:  # medium: ~90-260 tokens
            context, low, high = rng.choice((0, rng.randint(20, 80))), 70, 200
        else:  # long: prompt + response past 512 tokens, so the response is cut
            context, low, high = rng.randint(60, 120), 300, 420
        out.append({
            "instruction": rng.choice(_ASKS).format(t=topic),
            "input": _text(rng, topic, context) if context else "",
            "chosen": _text(rng, topic, rng.randint(low, high)),
            "rejected": _text(rng, other, rng.randint(low, high)),
        })
    return out


def write_dataset(folder: Path, rows: int = ROWS, seed: int = 0) -> Path:
    """Write `bench_pref.json` into `folder` and add its entry to `folder/dataset_info.json`; return `folder`.

    Other entries of an existing `dataset_info.json` are kept, so the SFT data (`bench.data`) may share
    the folder when it is written first (its `write_dataset` rewrites `dataset_info.json` whole).
    Files are rewritten only when their content changes, so the tokenised-data cache (keyed by the
    data bytes) stays valid between benchmark runs.

    Args:
        folder: the data folder (created if missing).
        rows: how many pairs. Default 200.
        seed: the generator's seed. Default 0.
    """
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info[DATASET] = DATASET_INFO
    files = {
        f"{DATASET}.json": json.dumps(make_pairs(rows, seed), indent=1) + "\n",
        "dataset_info.json": json.dumps(info, indent=2) + "\n",
    }
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return folder
