"""lm-evaluation-harness on the model a config names, with a task YAML of ours over a local file.

lm-eval's own scoring is checked against an independent reading of its multiple-choice rule: each choice's
summed log-probability as the continuation of `doc_to_text` (after lm-eval's one-space target delimiter), the
highest one chosen; accuracy is the mean, its standard error the sample standard deviation over √n."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.config import load_config
from kubetune.evaluate.lm_eval_suite import flatten, task_manager
from kubetune.evaluate.suites import run_suites

pytest.importorskip("lm_eval")
TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"


def by_hand(model_dir: Path) -> list[bool]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    right = []
    for line in (TASKS / "kubi_choice.jsonl").read_text().splitlines():
        doc = json.loads(line)
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            n_context = len(tokenizer.encode(context, add_special_tokens=False))
            ids = tokenizer.encode(context + " " + choice, add_special_tokens=False)
            with torch.no_grad():
                logprobs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids))))
        right.append(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return right


def test_lm_eval_scores_our_task_on_the_model_as_its_rule_says(tiny_model_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the task's relative data file must be found from its own folder
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "template": "chatml",
                             "lm_eval_tasks": "kubi_choice", "lm_eval_include_path": str(TASKS),
                             "lm_eval_batch_size": 3})
    result = run_suites(cfg)["lm_eval"]
    right = by_hand(tiny_model_dir)
    n, acc = len(right), sum(right) / len(right)
    metrics = result["metrics"]
    assert metrics["lm_eval/kubi_choice/acc"] == pytest.approx(acc)
    stderr = math.sqrt(sum((r - acc) ** 2 for r in right) / (n - 1) / n)
    assert metrics["lm_eval/kubi_choice/acc_stderr"] == pytest.approx(stderr)
    assert result["n_samples"]["kubi_choice"]["effective"] == n


def test_limit_and_missing_tasks(tiny_model_dir: Path) -> None:
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "template": "chatml",
                             "lm_eval_tasks": ["kubi_choice"], "lm_eval_include_path": str(TASKS), "lm_eval_limit": 2})
    assert run_suites(cfg)["lm_eval"]["n_samples"]["kubi_choice"]["effective"] == 2
    with pytest.raises(ValueError, match=r"kubi_nothing not found among lm-eval's tasks or in .*lm_eval_tasks"):
        task_manager(TASKS, ["kubi_nothing"])


def test_flatten_names_metrics_by_task_and_filter() -> None:
    flat = flatten({"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict": 1.0}})
    assert flat == {"lm_eval/t/acc": 0.5, "lm_eval/t/acc_stderr": 0.1, "lm_eval/t/exact_match_strict": 1.0}


def test_kubetune_eval_prints_lm_evals_table_or_json(tiny_model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ntemplate: chatml\nlm_eval_tasks: [kubi_choice]\n"
                      f"lm_eval_include_path: {TASKS}\nlm_eval_limit: 4\n")
    assert main(["eval", str(config), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["lm_eval"]["metrics"]
    assert set(metrics) >= {"lm_eval/kubi_choice/acc", "lm_eval/kubi_choice/acc_stderr"}
    assert main(["eval", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "lm-eval:"
    acc, stderr = metrics["lm_eval/kubi_choice/acc"], metrics["lm_eval/kubi_choice/acc_stderr"]
    assert f"  lm_eval/kubi_choice/acc: {acc:.4f} ± {stderr:.4f}" in table
    assert not [line for line in table if "_stderr:" in line]  # each stderr sits beside its metric
