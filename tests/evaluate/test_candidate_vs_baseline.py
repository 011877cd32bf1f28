"""The evaluate step's comparison, wired end to end on the tiny model: both sides evaluated on the same rows, a
judge (a stand-in endpoint in this test, preferring the longer answer) and a reward model (the tiny model with a
random value head, saved as a full rm) scoring both sides' answers, everything in one metrics dict and report.

The candidate is the tiny model with a LoRA adapter trained for a few steps; the baseline is the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_judge import fake_judge
from transformers import AutoModelForCausalLM

from kubetune.config.pipeline import load_pipeline_config
from kubetune.data.setup import tokenizer_and_template
from kubetune.evaluate.candidate_vs_baseline import Baseline, compare, read_predictions
from kubetune.evaluate.reward_gap import templated_scorer
from kubetune.model.reward import RewardModelInfo, load_reward_model, save_reward_model
from kubetune.model.value_head import ModelWithValueHead
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


def _pipeline(model_dir: Path, evaluation: dict):
    return load_pipeline_config(text=yaml.safe_dump({
        "name": "tiny", "pipeline": "sft", "model_name_or_path": str(model_dir), "finetuning_type": "lora",
        "lora_rank": 4, "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48,
        "max_samples": 6, "disable_tqdm": True, "do_sample": False, "max_new_tokens": 6, "report_to": "none",
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": 5e-2, "max_steps": 4,
                           "per_device_train_batch_size": 2, "save_strategy": "no"}},
        "evaluation": {"eval_dataset": "kubi_sft_eval", **evaluation},
        "promotion": {"metric": "eval_loss", "greater_is_better": False}}))


def run_eval(run_cfg, side):  # noqa: ANN001  the step's own evaluation, as runtime.evaluate does it
    result = run_stage(run_cfg)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    return metrics, read_predictions(Path(run_cfg.train.output_dir) / "generated_predictions.jsonl")


def test_both_sides_judged_and_rewarded_on_the_same_rows(tiny_model_dir: Path, tmp_path: Path,
                                                        cache_dir: Path) -> None:
    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    save_reward_model(ModelWithValueHead(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), rm_dir,
                      RewardModelInfo(str(tiny_model_dir), "full"))
    trained = tmp_path / "sft"
    with fake_judge(lambda a, b: "A" if len(a) >= len(b) else "B") as (url, seen):
        cfg = _pipeline(tiny_model_dir, {"judge_model": url, "reward_model": str(rm_dir),
                                         "reward_model_type": "full"})
        run_stage(cfg.stage_config("sft", output_dir=str(trained)))
        candidate = cfg.eval_config(str(trained), output_dir=str(tmp_path / "eval" / "candidate"))
        result = compare(cfg, candidate, Baseline("base model"), run_eval)
    m = result.metrics
    assert m["baseline/eval_loss"] != m["eval_loss"] and m["delta/eval_loss"] == pytest.approx(
        m["eval_loss"] - m["baseline/eval_loss"])
    n = len(result.samples)
    assert n == 6 and len(seen) == 2 * n  # every prompt judged in both orders
    assert m["judge/wins"] + m["judge/losses"] + m["judge/ties"] == n
    longer = sum(len(s["candidate"]) > len(s["baseline"]) for s in result.samples)
    shorter = sum(len(s["candidate"]) < len(s["baseline"]) for s in result.samples)
    assert (m["judge/wins"], m["judge/losses"]) == (longer, shorter)
    assert m["reward/delta"] == pytest.approx(m["reward/candidate_mean"] - m["reward/baseline_mean"])
    assert m["reward/delta_ci_low"] <= m["reward/delta"] <= m["reward/delta_ci_high"]
    # the rows' reference answers (the first max_samples rows' outputs), scored by the same rm
    rows = json.loads((REPO / "data" / "kubi_sft_eval.json").read_text())[:n]
    assert [s["label"] for s in result.samples] == [row["output"] for row in rows]
    tokenizer, template = tokenizer_and_template(candidate, str(tiny_model_dir))
    rm = load_reward_model(str(rm_dir), base_model_args=candidate.model, reward_model_type="full")
    score = templated_scorer(rm, tokenizer, template)
    labels = score([s["prompt"] for s in result.samples], [s["label"] for s in result.samples])
    assert m["reward/reference_mean"] == pytest.approx(sum(labels) / n)
    assert m["reward/reference_mean"] not in (m["reward/candidate_mean"], m["reward/baseline_mean"])
    assert result.report.metrics["eval_loss"] == (m["eval_loss"], m["baseline/eval_loss"])
    assert len(result.report.samples) == 5
