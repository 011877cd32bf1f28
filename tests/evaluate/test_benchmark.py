"""The multiple-choice benchmark (`kubetune eval` with `task`) against an independent reading of the same rule.

The independent reading writes each prompt as one chatml string by hand (the shots and the question, LLaMA-Factory's
layout), tokenises it whole, runs the model once per question and takes the highest logit among the letter tokens.
kubetune's scorer builds the same conversation through its template encoder and scores in padded batches: the
letters chosen, and so the accuracies per subject and category, must be the same. The benchmark folder is ours.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.config import ConfigError, load_config
from kubetune.evaluate.benchmark_data import BenchmarkDataError, read_benchmark
from kubetune.evaluate.suites import run_suites

SUBJECTS = {
    "arithmetic": {"name": "arithmetic", "category": "STEM"},
    "rivers": {"name": "rivers of the world", "category": "Other"},
    "calendar": {"name": "the calendar", "category": "Other"},
}
ROWS = {
    "arithmetic": [["What is 2 + 3?", "4", "5", "6", "7", "B"], ["What is 9 - 4?", "5", "3", "6", "2", "A"],
                   ["What is 3 × 3?", "6", "12", "9", "8", "C"], ["What is 10 / 2?", "2", "4", "8", "5", "D"],
                   ["What is 7 + 6?", "13", "12", "14", "11", "A"]],
    "rivers": [["Which river flows through Cairo?", "Amazon", "Nile", "Danube", "Volga", "B"],
               ["Which river flows through Vienna?", "Thames", "Seine", "Danube", "Tiber", "C"],
               ["Which river flows through Paris?", "Seine", "Rhine", "Po", "Ebro", "A"]],
    "calendar": [["How many days has a leap year?", "365", "364", "366", "360", "C"],
                 ["Which month has 28 or 29 days?", "March", "February", "April", "June", "B"],
                 ["How many months have 31 days?", "5", "6", "8", "7", "D"],
                 ["Which day follows Friday?", "Saturday", "Sunday", "Monday", "Thursday", "A"]],
}


def write_task(root: Path, name: str = "quiz") -> Path:
    task = root / name
    for split, folder in (("dev", "dev"), ("test", "test"), ("val", "val")):
        (task / folder).mkdir(parents=True)
        for subject, rows in ROWS.items():
            chosen = rows[:3] if split == "dev" else rows[1:] if split == "test" else rows[:2]
            with (task / folder / f"{subject}_{folder}.csv").open("w", newline="") as f:
                csv.writer(f).writerows(chosen)
    (task / "mapping.json").write_text(json.dumps(SUBJECTS))
    return root


def by_hand(model, tokenizer, subject: str, n_shot: int, lang: str) -> list[str]:  # noqa: ANN001
    """The rule, read independently: one chatml string per question, the letter with the highest logit."""
    cue, head = ("\nAnswer:", "The following are multiple choice questions (with answers) about {}.\n\n") \
        if lang == "en" else ("\n答案：", "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n\n")
    letters = [tokenizer.encode(x, add_special_tokens=False)[-1] for x in "ABCD"]

    def turn(row: list[str]) -> str:
        return row[0] + "".join(f"\n{x}. {c}" for x, c in zip("ABCD", row[1:5], strict=True)) + cue

    picks = []
    for row in ROWS[subject][1:]:
        shots = ROWS[subject][:3][:n_shot]
        users = [turn(r) for r in [*shots, row]]
        users[0] = head.format(SUBJECTS[subject]["name"]) + users[0]
        text = "".join(f"<|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n{r[5]}<|im_end|>\n"
                       for u, r in zip(users[:-1], shots, strict=True))
        text += f"<|im_start|>user\n{users[-1]}<|im_end|>\n<|im_start|>assistant\n"
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        picks.append("ABCD"[int(logits[letters].argmax())])
    return picks


def _cfg(model_dir: Path, task_dir: Path, **keys):
    return load_config(None, {"model_name_or_path": str(model_dir), "template": "chatml", "task": "quiz_test",
                              "task_dir": str(task_dir), "batch_size": 2, "disable_tqdm": True, **keys})


@pytest.mark.parametrize(("n_shot", "lang"), [(0, "en"), (2, "en"), (1, "zh")])
def test_letters_and_accuracies_match_an_independent_reading(tiny_model_dir: Path, tmp_path: Path, n_shot: int,
                                                            lang: str) -> None:
    task_dir = write_task(tmp_path / "bench")
    result = run_suites(_cfg(tiny_model_dir, task_dir, n_shot=n_shot, lang=lang))["benchmark"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = {s: by_hand(model, tokenizer, s, n_shot, lang) for s in ROWS}
    assert {s: v["answers"] for s, v in result["subjects"].items()} == expected
    right = {s: [a == r[5] for a, r in zip(expected[s], ROWS[s][1:], strict=True)] for s in ROWS}
    other = right["rivers"] + right["calendar"]
    assert result["categories"]["STEM"] == pytest.approx(100 * sum(right["arithmetic"]) / 4)
    assert result["categories"]["Other"] == pytest.approx(100 * sum(other) / len(other))
    everything = [m for marks in right.values() for m in marks]
    assert result["categories"]["Average"] == pytest.approx(100 * sum(everything) / len(everything))
    assert result["questions"] == 9 and list(result["categories"])[0] == "Average"


def test_save_dir_holds_every_answer_and_the_category_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    task_dir = write_task(tmp_path / "bench")
    result = run_suites(_cfg(tiny_model_dir, task_dir, n_shot=1, save_dir=str(tmp_path / "results")))["benchmark"]
    answers = json.loads((tmp_path / "results" / "results.json").read_text())
    assert answers["rivers"] == {"0": result["subjects"]["rivers"]["answers"][0],
                                 "1": result["subjects"]["rivers"]["answers"][1]}
    log = (tmp_path / "results" / "results.log").read_text().splitlines()
    assert log[0] == f"{'Average':>15}: {result['categories']['Average']:.2f}"
    assert [line.split(":")[0].strip() for line in log] == ["Average", "STEM", "Other"]


def test_a_bad_task_folder_names_the_file_and_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    task_dir = write_task(tmp_path / "bench")
    (task_dir / "quiz" / "test" / "rivers_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,d,E\n")
    with pytest.raises(BenchmarkDataError, match=r"quiz/test/rivers_test.csv:2: the answer 'E' is not one of"):
        read_benchmark(task_dir, "quiz_test")
    task_dir = write_task(tmp_path / "bench2")
    (task_dir / "quiz" / "dev" / "calendar_dev.csv").unlink()
    with pytest.raises(ConfigError, match=r"calendar_dev.csv does not exist"):
        from kubetune.validate.preflight import preflight
        preflight(_cfg(tiny_model_dir, task_dir), "benchmark")
    with pytest.raises(BenchmarkDataError, match=r"expected <benchmark>_<split>"):
        read_benchmark(task_dir, "quiz")


def test_kubetune_eval_prints_the_table_or_json(tiny_model_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    task_dir = write_task(tmp_path / "bench")
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ntemplate: chatml\ntask: quiz_validation\n"
                      f"task_dir: {task_dir}\nn_shot: 1\ndisable_tqdm: true\n")
    run = subprocess.run([sys.executable, "-m", "kubetune.cli", "eval", str(config), "--json"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["benchmark"]
    assert result["task"] == "quiz_validation" and result["questions"] == 6  # val/: two rows per subject
    # without --json: a table a person reads, one line per category, the same numbers
    from kubetune.cli import main

    assert main(["eval", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "quiz_validation: 6 questions, 1-shot, lang en"
    rows = {line.split(":")[0].strip(): float(line.split(":")[1]) for line in table[2:]}
    assert rows == {name: pytest.approx(value, abs=0.005) for name, value in result["categories"].items()}
