"""The benchmark's instruction data: 400 alpaca rows of mixed lengths, the same bytes on every machine.

Lengths are drawn from a fixed-seed mixture (half short, a third medium, the rest long enough
to be truncated at a 512-token cutoff), so padding to the longest row in a batch wastes what
it wastes in real instruction sets. The text is sentences from a small word list: it
tokenises like English and the model can learn its regularities, so loss falls.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATASET = "bench_alpaca"
ROWS = 400

_WORDS = str.split(
    "the model data train loss token batch memory step rate layer adapter weight value query cluster "
    "pipeline stage config report metric score answer question summary detail reason example result "
    "method system user assistant output input number list table chart file folder server network "
    "quick small large simple clear careful useful common recent early final second third several "
    "learn write read check build measure compare explain describe improve reduce increase choose keep "
    "because while after before when where which often always never usually sometimes together"
)
_TOPICS = ("gardening", "databases", "cooking", "astronomy", "cycling", "music theory", "budgeting",
           "chemistry", "hiking", "poetry", "networking", "painting", "statistics", "sailing")
_ASKS = ("Explain {t} to a beginner.", "Write a short note about {t}.", "List the key ideas of {t}.",
         "Summarise the following text about {t}.", "Answer the question about {t}.",
         "Describe a common mistake in {t} and how to avoid it.")


def _sentence(rng: random.Random, topic: str) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    words.insert(rng.randrange(len(words)), topic)
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, topic: str, words: int) -> str:
    parts: list[str] = []
    count = 0
    while count < words:
        sentence = _sentence(rng, topic)
        parts.append(sentence)
        count += sentence.count(" ") + 1
    return " ".join(parts)


def make_rows(rows: int = ROWS, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows (`instruction`, `input`, `output`) with a deterministic mix of lengths.

    Args:
        rows: how many rows. Default 400.
        seed: the generator's seed. Default 0.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        topic = rng.choice(_TOPICS)
        kind = rng.random()
        if kind < 0.5:  # short: ~30-120 tokens
            context, answer = 0, rng.randint(15, 70)
        elif kind < 0.83:  # medium: ~120-350 tokens
            context, answer = rng.choice((0, rng.randint(20, 90))), rng.randint(70, 200)
        else:  # long: ~350-700 tokens, often cut at 512
            context, answer = rng.randint(60, 220), rng.randint(150, 330)
        out.append({
            "instruction": rng.choice(_ASKS).format(t=topic),
            "input": _text(rng, topic, context) if context else "",
            "output": _text(rng, topic, answer),
        })
    return out


def write_dataset(folder: Path, rows: int = ROWS, seed: int = 0) -> Path:
    """Write `bench_alpaca.json` and a `dataset_info.json` naming it into `folder`; return `folder`.

    Rewrites the files only when their content changes, so the tokenised-data cache (keyed by
    the data bytes) stays valid between benchmark runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        f"{DATASET}.json": json.dumps(make_rows(rows, seed), indent=1) + "\n",
        "dataset_info.json": json.dumps({DATASET: {"file_name": f"{DATASET}.json"}}, indent=2) + "\n",
    }
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return folder
