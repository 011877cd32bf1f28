"""Read a multiple-choice benchmark in MMLU's layout, the layout LLaMA-Factory's `eval` task folders hold.

    <task_dir>/<name>/mapping.json           {"<subject>": {"name": "<shown name>", "category": "<category>"}, ...}
    <task_dir>/<name>/dev/<subject>_dev.csv  solved examples for few-shot prompts
    <task_dir>/<name>/val/<subject>_val.csv  the validation split
    <task_dir>/<name>/test/<subject>_test.csv

Each CSV has no header; a row is question, the choices (A, B, C, D; any number from 2 to 26 columns), and the
answer letter last. `task: mmlu_test` reads `mmlu/` and its test split (`validation` or `val` for val/).
"""

from __future__ import annotations

import csv
import json
import string
from dataclasses import dataclass
from pathlib import Path

SPLIT_FOLDERS = {"test": "test", "validation": "val", "val": "val", "dev": "dev", "train": "dev"}


class BenchmarkDataError(ValueError):
    """A benchmark folder problem a person can fix: the message names the file, the row and what to do."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]  # in letter order: A, B, ...
    answer: str  # the right letter

    @property
    def letters(self) -> str:
        return string.ascii_uppercase[:len(self.choices)]


@dataclass(frozen=True)
class Subject:
    """A subject's questions in the split asked for, and its dev examples."""

    key: str
    name: str
    category: str
    questions: list[Question]
    dev: list[Question]


def split_task(task: str) -> tuple[str, str]:
    """`mmlu_test` → ("mmlu", "test"); the split is after the last underscore (names may hold underscores)."""
    name, _, split = task.rpartition("_")
    if not name or split not in SPLIT_FOLDERS:
        raise BenchmarkDataError(f"task = {task!r}: expected <benchmark>_<split> with split one of "
                                 f"{', '.join(sorted(SPLIT_FOLDERS))}, e.g. mmlu_test")
    return name, split


def read_benchmark(task_dir: str | Path, task: str) -> list[Subject]:
    """Every subject of `task` (mapping.json order), each with its questions and dev examples.

    Raises:
        BenchmarkDataError: a missing folder, mapping or CSV file, or a malformed row (file and line named).
    """
    name, split = split_task(task)
    root = Path(task_dir) / name
    mapping_path = root / "mapping.json"
    if not mapping_path.is_file():
        raise BenchmarkDataError(f"task = {task!r}: {mapping_path} does not exist; task_dir ({task_dir}) must hold "
                                 f"a folder {name}/ with mapping.json and dev/, val/, test/ CSV folders")
    try:
        mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BenchmarkDataError(f"{mapping_path}: not valid JSON ({err})") from err
    if not isinstance(mapping, dict) or not mapping:
        raise BenchmarkDataError(f"{mapping_path}: expected an object of subject → {{name, category}}")
    subjects = []
    for key, info in mapping.items():
        if not (isinstance(info, dict) and isinstance(info.get("name"), str) and isinstance(info.get("category"),
                                                                                             str)):
            raise BenchmarkDataError(f"{mapping_path}: subject {key!r} needs a \"name\" and a \"category\" string")
        folder = SPLIT_FOLDERS[split]
        subjects.append(Subject(key, info["name"], info["category"],
                                read_questions(root / folder / f"{key}_{folder}.csv"),
                                read_questions(root / "dev" / f"{key}_dev.csv")))
    return subjects


def read_questions(path: Path) -> list[Question]:
    """The questions of one headerless CSV file (question, choices..., answer letter)."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path} does not exist: every subject of mapping.json needs its CSV file here")
    questions = []
    with path.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 4:
                raise BenchmarkDataError(f"{path}:{line}: expected question, at least two choices and the answer "
                                         f"letter; got {len(row)} column(s)")
            question = Question(row[0], tuple(row[1:-1]), row[-1].strip())
            if question.answer not in question.letters:
                raise BenchmarkDataError(f"{path}:{line}: the answer {question.answer!r} is not one of the choice "
                                         f"letters {', '.join(question.letters)}")
            questions.append(question)
    return questions
