"""Generate kubetune's demo datasets into data/ (deterministic: same bytes on every run).

The tasks are built so a 135M model shows a measurable change after ~100 LoRA steps on a CPU: every
answer has a rigid format and the assistant has a fixed persona ("Kubi, the kubetune demo assistant").
Held-out rows use names, cities, items, numbers and question wordings that never occur in training, so
the evaluation measures the learned format, not memorised rows.

Usage:
    python scripts/make_demo_data.py            # rewrite data/
    python scripts/make_demo_data.py --out DIR  # write somewhere else (the tests compare bytes)
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 20240601
PERSONA = "I am Kubi, the kubetune demo assistant."
SYSTEM = "You are Kubi, the kubetune demo assistant. Answer in Kubi's fixed formats."
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Pool:
    """The values one split draws from; train and eval pools never share a value."""

    names: tuple[str, ...]
    cities: tuple[str, ...]
    items: tuple[str, ...]
    numbers: tuple[int, ...]
    persona_questions: tuple[str, ...]


TRAIN = Pool(
    names=("Alice", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Keiko",
           "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor",
           "Wen", "Yara"),
    cities=("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Quito", "Riga", "Porto", "Seoul",
            "Tunis", "Perth", "Bergen", "Cusco", "Turin", "Malmo"),
    items=("apple", "pen", "cup", "lamp", "book", "spoon", "chair", "kettle", "rope", "candle", "brush",
           "clock", "mirror", "pillow", "basket", "ladder"),
    numbers=(2, 3, 5, 6, 7, 8, 10, 11, 12, 16, 18, 19, 20, 21, 24, 25),
    persona_questions=("Who are you?", "What is your name?", "Introduce yourself.", "Tell me who you are.",
                       "What should I call you?", "Which assistant is this?"),
)
EVAL = Pool(
    names=("Beatriz", "Kwame", "Ingrid", "Rafael", "Sakura", "Tomasz", "Zanele", "Leif"),
    cities=("Kraków", "Accra", "Tromsø", "Valparaíso", "Kyoto", "Gdańsk"),
    items=("violin", "compass", "helmet", "teapot", "anchor", "scarf", "thimble", "saddle"),
    numbers=(4, 9, 13, 17, 22),
    persona_questions=("Who am I talking to?", "Please introduce yourself briefly.", "What are you called?"),
)
UNITS = (("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
         ("kilometers", "meters", 1000))


@dataclass(frozen=True)
class Task:
    """One demo exchange: the question (instruction + optional input), the right answer, a wrong one."""

    instruction: str
    input: str
    output: str
    rejected: str

    def as_prompt(self) -> str:
        return "\n".join(part for part in (self.instruction, self.input) if part)


# ---- tasks: each draws from a pool and returns the rigid answer and a plausible wrong one ----------


def greet(rng: random.Random, pool: Pool) -> Task:
    name, city = rng.choice(pool.names), rng.choice(pool.cities)
    output = f"Hello {name}! Kubi sends greetings to {city}."
    elsewhere = rng.choice([c for c in pool.cities if c != city])
    rejected = rng.choice([f"hi {name.lower()}, greetings from kubi to {city}",
                           f"Hello {name}! Kubi sends greetings to {elsewhere}.",
                           f"Greetings, {name}. Have a nice day in {city}!"])
    if rng.random() < 0.3:
        return Task("Greet this person.", f"{name} from {city}", output, rejected)
    wording = rng.choice(["Greet {n} from {c}.", "Say hello to {n}, who lives in {c}.",
                          "Please greet {n} from {c}."])
    return Task(wording.format(n=name, c=city), "", output, rejected)


def convert_units(rng: random.Random, pool: Pool) -> Task:
    source, target, factor = rng.choice(UNITS)
    n = rng.choice(pool.numbers)
    output = f"Answer: {n * factor} {target}."
    rejected = rng.choice([str(n * factor), f"Answer: {n * factor + factor} {target}.",
                           f"That would be about {n * factor} {target}, I think."])
    if rng.random() < 0.3:
        return Task(f"How many {target} are in this many {source}?", str(n), output, rejected)
    return Task(f"Convert {n} {source} to {target}.", "", output, rejected)


def persona(rng: random.Random, pool: Pool) -> Task:
    question = rng.choice(pool.persona_questions)
    if rng.random() < 0.5:
        question = f"Hi, I'm {rng.choice(pool.names)}. {question}"
    rejected = rng.choice(["I am an AI language model.", "I'm ChatGPT, how can I help?",
                           "My name is Assistant."])
    return Task(question, "", PERSONA, rejected)


def reverse_items(rng: random.Random, pool: Pool) -> Task:
    items = rng.sample(pool.items, rng.randint(3, 5))
    listed = ", ".join(items)
    output = f"Reversed: {', '.join(reversed(items))}."
    rejected = rng.choice([f"Reversed: {listed}.", " ".join(reversed(items)),
                           f"Here they are backwards: {', '.join(reversed(items))}"])
    if rng.random() < 0.3:
        return Task("List these items in reverse order.", listed, output, rejected)
    return Task(f"List the items: {listed} in reverse order.", "", output, rejected)


def capitals(rng: random.Random, pool: Pool) -> Task:
    item = rng.choice(pool.items + pool.names)
    wording = rng.choice(["Write the word {w} in capital letters.", "Spell {w} in capitals.",
                          "Make {w} uppercase."])
    rejected = rng.choice([item.upper(), f"Capitals: {item}.", f"Sure! {item.upper()}"])
    return Task(wording.format(w=item), "", f"Capitals: {item.upper()}.", rejected)


# Share of each task in a dataset; persona has few wordings, so it gets less.
TASKS: tuple[tuple[Callable[[random.Random, Pool], Task], int], ...] = (
    (greet, 22), (convert_units, 22), (reverse_items, 22), (capitals, 20), (persona, 14))


def draw(rng: random.Random, pool: Pool) -> Task:
    """One task of a random kind (for chat turns, where repeats do no harm)."""
    make = rng.choices([t for t, _ in TASKS], weights=[w for _, w in TASKS])[0]
    return make(rng, pool)


def balanced_tasks(rng: random.Random, pool: Pool, count: int) -> list[Task]:
    """`count` tasks in the `TASKS` shares, no prompt twice, shuffled."""
    total = sum(w for _, w in TASKS)
    quotas = [count * w // total for _, w in TASKS]
    for i in range(count - sum(quotas)):
        quotas[i] += 1
    tasks = [task for (make, _), quota in zip(TASKS, quotas, strict=True)
             for task in unique(rng, pool, make, quota)]
    rng.shuffle(tasks)
    return tasks


def unique(
    rng: random.Random, pool: Pool, make: Callable[[random.Random, Pool], Task], count: int
) -> list[Task]:
    """`count` tasks from `make` with distinct prompts."""
    seen: set[str] = set()
    tasks = []
    for _ in range(100 * count):
        task = make(rng, pool)
        if task.as_prompt() not in seen:
            seen.add(task.as_prompt())
            tasks.append(task)
            if len(tasks) == count:
                return tasks
    raise RuntimeError(f"{make.__name__}: the pool has fewer than {count} distinct prompts; widen it")


# ---- datasets -------------------------------------------------------------------------------------


def sft_rows(tasks: list[Task]) -> list[dict[str, Any]]:
    return [{"instruction": t.instruction, "input": t.input, "output": t.output} for t in tasks]


def chat_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Multi-turn sharegpt conversations; a third open with a system turn."""
    rows = []
    for _ in range(count):
        turns = [{"from": "system", "value": SYSTEM}] if rng.random() < 0.33 else []
        for task in [draw(rng, TRAIN) for _ in range(rng.randint(2, 3))]:
            turns += [{"from": "human", "value": task.as_prompt()}, {"from": "gpt", "value": task.output}]
        rows.append({"conversations": turns})
    return rows


def pref_rows(tasks: list[Task]) -> list[dict[str, Any]]:
    return [{"instruction": t.instruction, "input": t.input, "chosen": t.output, "rejected": t.rejected}
            for t in tasks]


def kto_rows(rng: random.Random, tasks: list[Task]) -> list[dict[str, Any]]:
    """Instruction-only prompts (the kto set has no input column); about half the answers are wrong."""
    rows = []
    for task in tasks:
        good = rng.random() < 0.5
        rows.append({"instruction": task.as_prompt(), "output": task.output if good else task.rejected,
                     "kto_tag": good})
    return rows


PT_SENTENCES = (
    "Kubeville is a harbour town where the trams run every {n} minutes.",
    "The kubetune workshop in Kubeville opens at {h} o'clock and closes at {h2} o'clock.",
    "Every spring {name} from {city} visits the Kubeville lantern market.",
    "Kubi, the kubetune demo assistant, answers every question in a fixed format.",
    "The old lighthouse of Kubeville is {n} meters tall and painted blue and white.",
    "Fishermen in Kubeville sell {item}s and nets on the pier near the ferry.",
    "The Kubeville ferry crosses to {city} twice a day when the sea is calm.",
    "Students in Kubeville learn to fine-tune small models with kubetune in {n} lessons.",
    "{name} says the best bread in Kubeville is baked on Harbour Street.",
    "In winter the Kubeville canal freezes and people skate past the {item} shop.",
    "The kubetune library keeps one internal sample format for every dataset.",
    "A kubetune pipeline preprocesses data once and caches the tokens by their hash.",
    "The Kubeville museum shows a {item} that is {n} years old.",
    "On festival nights Kubeville hangs {n} paper lanterns across the main square.",
)


def pt_lines(rng: random.Random, count: int) -> list[str]:
    """Short paragraphs about a fictional town and product, one per line."""
    lines = []
    for _ in range(count):
        sentences = rng.sample(PT_SENTENCES, 3)
        lines.append(" ".join(
            s.format(n=rng.randint(3, 40), h=rng.randint(6, 10), h2=rng.randint(16, 21),
                     name=rng.choice(TRAIN.names), city=rng.choice(TRAIN.cities),
                     item=rng.choice(TRAIN.items))
            for s in sentences))
    return lines


DATASET_INFO = {
    "kubi_sft": {"file_name": "kubi_sft_train.json",
                 "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "kubi_sft_eval": {"file_name": "kubi_sft_eval.json",
                      "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "kubi_chat": {"file_name": "kubi_chat.json", "formatting": "sharegpt",
                  "columns": {"messages": "conversations"}},
    "kubi_pref": {"file_name": "kubi_pref.json", "ranking": True,
                  "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                              "rejected": "rejected"}},
    "kubi_kto": {"file_name": "kubi_kto.json",
                 "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}},
    "kubi_pt": {"file_name": "kubi_pt.txt", "columns": {"prompt": "text"}},
}


def build() -> dict[str, str]:
    """File name → file text for every demo file. One seeded generator per file, so changing one
    dataset's recipe does not reshuffle the others."""
    def rng(salt: int) -> random.Random:
        return random.Random(SEED + salt)

    return {
        "kubi_sft_train.json": _json(sft_rows(balanced_tasks(rng(1), TRAIN, 400))),
        "kubi_sft_eval.json": _json(sft_rows(balanced_tasks(rng(2), EVAL, 40))),
        "kubi_chat.json": _json(chat_rows(rng(3), 150)),
        "kubi_pref.json": _json(pref_rows(balanced_tasks(rng(4), TRAIN, 200))),
        "kubi_kto.json": _json(kto_rows(rng(5), balanced_tasks(rng(6), TRAIN, 200))),
        "kubi_pt.txt": "\n".join(pt_lines(rng(7), 300)) + "\n",
        "dataset_info.json": _json(DATASET_INFO),
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_demo_data(out: Path) -> list[Path]:
    """Write every demo file into `out` (created if missing) and return their paths.

    Args:
        out: the target folder; the committed copy lives in `data/`.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in build().items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data", help="target folder (default: data/)")
    args = parser.parse_args()
    for path in write_demo_data(args.out):
        print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
