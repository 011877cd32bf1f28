"""The ppo stage on two CPU ranks (real torchrun, gloo): the same training as one rank with twice the batch.

`FORCE_TORCHRUN=1 NPROC_PER_NODE=2 kubetune train` runs ppo in a subprocess; the stage run in this process
on one rank with the per-rank batch doubled is the reference. Sampling with top_k 1 is greedy, so both roll out the same
responses to the same prompts (each rank takes its half of every update's batch), and what differs is
only where the arithmetic happens: the score normalisation and the advantage whitening must be over all
ranks' rows (over one rank's two rows they would give other advantages, so other losses and weights), the
gradients averaged by DDP (a rank stepping on its own gradient shows in grad_norm and in the weights), the
KL controller fed the global KL, the held-out rewards gathered from both ranks. The 2-rank run accumulates
two micro-batches of one prompt per rank, so DDP's no_sync path runs too. Then a second 2-rank launch resumes
from the first one's mid-run checkpoint (one generator file per rank) and ends where it ended. (Greedy
rollouts draw nothing from the generators: that a resumed run restores them is the single-process resume
test's, tests/stages/test_ppo_stage.py, which samples.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import launch, log_lines

from kubetune.config import load_config
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]
LENGTH_REWARD = "def reward_func(prompts, responses):\n    return [len(r) / 10 for r in responses]\n"


def ppo_keys(model_dir: Path, out: Path, reward: Path, **keys) -> dict:
    return {
        "model_name_or_path": str(model_dir), "stage": "ppo", "finetuning_type": "lora", "lora_rank": 4,
        "lora_dropout": 0.0, "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml",
        "cutoff_len": 48, "max_samples": 13, "val_size": 5, "output_dir": str(out),
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "learning_rate": 1e-2, "max_steps": 4,
        "logging_steps": 1, "save_steps": 2, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False, "bf16": False, "ddp_timeout": 120, "max_new_tokens": 4,
        "do_sample": True, "top_k": 1, "ppo_epochs": 2, "ppo_score_norm": True, "ppo_whiten_rewards": True,
        "reward_model": str(reward), "reward_model_type": "api", "do_eval": True, "do_predict": True,
        "eval_strategy": "steps", "eval_steps": 2, **keys,
    }


def training_lines(out: Path) -> list[dict]:
    return [line for line in log_lines(out) if "loss" in line]


def assert_same_weights(a: Path, b: Path, rel: float) -> None:
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        moved = [k for k in wa if "lora_B" in k or k == "summary.weight"]  # zero (B) or random (head) at the start
        assert moved
        for key in moved:
            assert float((wa[key] - wb[key]).norm() / wa[key].norm()) < rel, (name, key)


def test_ppo_on_two_ranks_trains_like_one_rank_with_twice_the_batch_and_resumes(
        tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    reward = tmp_path / "length.py"
    reward.write_text(LENGTH_REWARD)
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    run_stage(load_config(None, ppo_keys(tiny_model_dir, one, reward, per_device_train_batch_size=4)))
    # each rank: 1 prompt per micro-batch, 2 micro-batches per optimiser step (DDP syncs at the second only)
    two_keys = ppo_keys(tiny_model_dir, two, reward, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    done = launch(two_keys, tmp_path)

    assert done.returncode == 0, done.stderr[-4000:]
    assert "ppo: world size 2 (2 ranks × 1 node), strategy ddp" in done.stderr
    assert "4 prompts (2 per rank)" in done.stderr
    assert done.stdout.count('"output_dir"') == 1, done.stdout  # the result is printed by rank 0 only
    summary = json.loads((two / "run_summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "nodes": 1, "ranks_per_node": 2, "strategy": "ddp"}

    a, b = training_lines(one), training_lines(two)
    assert [line["current_steps"] for line in b] == [1, 2, 3, 4]  # each update logged once
    for x, y in zip(a, b, strict=True):
        for key in ("reward/mean", "response_length", "objective/kl", "value/mean", "returns/mean"):
            assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-5), (key, x, y)  # the same rollouts
        for key in ("loss", "policy/loss", "value/loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=0.03, abs=1e-4), (key, x, y)
    assert any(abs(line["objective/kl"]) > 1e-4 for line in a)  # the policy left the reference
    assert_same_weights(one, two, rel=0.05)

    # held-out rewards of all 5 eval prompts (3 on rank 0, 2 on rank 1), during training and after it
    expected, measured = json.loads((one / "run_summary.json").read_text())["metrics"], summary["metrics"]
    for key in ("eval_reward_mean", "eval_response_length"):
        assert measured[key] == pytest.approx(expected[key], rel=1e-3), key
    evals = [[line["eval_reward_mean"] for line in log_lines(out) if "eval_reward_mean" in line] for out in (one, two)]
    assert len(evals[1]) == 2 and evals[1] == pytest.approx(evals[0], rel=1e-3)
    predictions = (two / "generated_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 5

    # a checkpoint written by two ranks resumes on two ranks: each rank's generators are in it
    checkpoint = two / "checkpoint-2"
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "ppo_state.json"} <= {
        p.name for p in checkpoint.iterdir()}
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    again = launch({**two_keys, "output_dir": str(resumed)}, tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resumed from" in again.stderr
    c = training_lines(resumed)
    assert [line["current_steps"] for line in c] == [3, 4]
    for x, y in zip(b[2:], c, strict=True):
        for key in ("reward/mean", "loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (key, x, y)
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        wa, wb = load_file(two / name), load_file(resumed / name)
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
