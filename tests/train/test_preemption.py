"""Pre-emption (`save_on_sigterm_grace`): real `kubetune train` processes sent a real SIGTERM mid-run.

A pre-empted pod gets SIGTERM, then SIGKILL a grace period later. The run must finish its optimiser step,
save `checkpoint-N`, exit with code 75 (`PREEMPTED_EXIT_CODE`) without writing a final model, and the same
config run again must resume from N to the weights of a run never interrupted. A checkpoint a SIGKILL cut
short (no `trainer_state.json`, which the Trainer writes last, or still holding `checkpoint-is-incomplete.txt`,
which `kubetune.train.checkpoint_guard` removes only once every rank finished) is never resumed from. The fault
cases are rows of `make chaos` (random kill points, SIGKILL included: test_kill_faults.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import log_lines, start_train, wait_for_step
from transformers import TrainerCallback

from kubetune.config import load_config
from kubetune.stages import run_stage
from kubetune.train.arguments import last_complete_checkpoint
from kubetune.train.preemption import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_FILE,
    Preempted,
    PreemptionCallback,
    preemption_callbacks,
    released,
)

REPO = Path(__file__).resolve().parents[2]
GRACE = 30


def sft_keys(model_dir: Path, out: Path, **keys) -> dict:
    # save_steps past max_steps: the only checkpoint a run can leave is the pre-emption's
    return {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 16, "output_dir": str(out), "per_device_train_batch_size": 2, "learning_rate": 3e-2,
        "max_steps": 10, "logging_steps": 1, "save_steps": 1000, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False, "bf16": False, "save_on_sigterm_grace": GRACE, **keys,
    }


def preempt(proc, out: Path, at_step: int = 2) -> tuple[int, float]:  # noqa: ANN001
    """SIGTERM `proc` once `out` has logged `at_step`; its exit code and the seconds it took to exit."""
    wait_for_step(proc, out, at_step)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=GRACE + 15)
    return code, time.monotonic() - sent


def only_checkpoint(out: Path) -> Path:
    found = sorted(out.glob("checkpoint-*"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.chaos
@pytest.mark.slow  # 41-70 s measured on a loaded 2-core box: a process start-up and two 10-step runs
def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_to_the_uninterrupted_weights(
        chaos_row, tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    row = chaos_row("kubetune train SIGTERM at step 2, rerun (a later checkpoint cut short)")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    row.runs += 1
    proc = start_train(sft_keys(tiny_model_dir, resumed), tmp_path)
    code, seconds = preempt(proc, resumed)
    log = (tmp_path / "resumed.log").read_text()
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert seconds < GRACE, log[-3000:]
    assert "pre-empted (SIGTERM)" in log and "run the same command again to resume" in log
    checkpoint = only_checkpoint(resumed)
    step = int(checkpoint.name.split("-")[1])
    assert step >= 2 and json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert json.loads((resumed / PREEMPTED_FILE).read_text())["step"] == step
    assert not (resumed / "adapter_model.safetensors").exists()  # no final model from an unfinished run
    assert max(line["current_steps"] for line in log_lines(resumed)) == step  # it stopped after that step

    # a later checkpoint that a SIGKILL cut short: weights written, trainer_state.json (written last) not
    cut = resumed / f"checkpoint-{step + 1}"
    shutil.copytree(checkpoint, cut)
    (cut / "trainer_state.json").unlink()

    # the same config again (in this process: it spares a second start-up) resumes from `step`, not the cut one
    row.runs += 1
    run_stage(load_config(str(tmp_path / "resumed.yaml")))
    run_stage(load_config(None, sft_keys(tiny_model_dir, straight)))
    steps = [line["current_steps"] for line in log_lines(resumed)]
    assert steps == list(range(1, 11))  # continued after `step`, nothing repeated or lost
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # float32 on one CPU, the same seed and data order: equal up to last-bit rounding
    row.data_lost = sum(not torch.allclose(a[key], b[key], rtol=0, atol=1e-6) for key in a)
    assert row.data_lost == 0


@pytest.mark.chaos
def test_a_checkpoint_without_its_completion_marker_is_skipped(chaos_row, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    row = chaos_row("checkpoints cut short (no completion marker, or the incomplete sentinel) are skipped")
    for step, files in {2: ["trainer_state.json"], 4: ["ppo_state.json"], 6: ["adapter_model.safetensors"],
                        8: ["trainer_state.json", "checkpoint-is-incomplete.txt"]}.items():
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    row.runs += 2
    with caplog.at_level("WARNING"):
        first = last_complete_checkpoint(tmp_path)
    assert "checkpoint-8 is incomplete" in caplog.text and "checkpoint-6 is incomplete" in caplog.text
    shutil.rmtree(tmp_path / "checkpoint-4")
    second = last_complete_checkpoint(tmp_path)
    row.data_lost = (first != str(tmp_path / "checkpoint-4")) + (second != str(tmp_path / "checkpoint-2"))
    assert row.data_lost == 0, (first, second)


class SigtermAt(TrainerCallback):
    """Sends this very process a real SIGTERM at the end of step `n`, as the kubelet would."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.n:
            os.kill(os.getpid(), signal.SIGTERM)


# every stage's smallest run; the Trainer stages share the pre-emption path (train.recipe), ppo has its own loop
STAGES = {
    # by epochs (3 steps each), evaluated and saved at each epoch's end, the best checkpoint kept alone: stopped
    # in the second, that epoch ends without an evaluation, and the Trainer keeps the pre-emption checkpoint
    "sft": {"max_steps": -1, "num_train_epochs": 2, "save_strategy": "epoch", "eval_strategy": "epoch",
            "val_size": 4, "load_best_model_at_end": True, "save_total_limit": 1},
    "rm": {"dataset": "kubi_pref", "max_samples": 8},
    "dpo": {"dataset": "kubi_pref", "max_samples": 8},
    "kto": {"dataset": "kubi_kto", "max_samples": 8},
    "ppo": {"dataset": "kubi_sft", "max_samples": 8, "cutoff_len": 48, "max_new_tokens": 4, "ppo_epochs": 1,
            "reward_model_type": "api", "top_p": 1.0, "temperature": 1.0},
}
MARKER = {"ppo": "ppo_state.json"}
SIGTERM_AT = {"sft": 4}


@pytest.mark.chaos
@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_saves_the_step_it_was_pre_empted_at(
        chaos_row, stage: str, tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    row = chaos_row(f"{stage}: SIGTERM (in-process) saves the step it came at")
    out = tmp_path / stage
    reward = tmp_path / "length.py"
    reward.write_text("def reward_func(prompts, responses):\n    return [len(r) / 10 for r in responses]\n")
    keys = {**sft_keys(tiny_model_dir, out, stage=stage, max_steps=3, per_device_train_batch_size=4), **STAGES[stage]}
    if stage == "ppo":
        keys["reward_model"] = str(reward)
    before, at = signal.getsignal(signal.SIGTERM), SIGTERM_AT.get(stage, 1)
    row.runs += 1
    with pytest.raises(Preempted, match="run the same command again to resume") as stopped:
        run_stage(load_config(None, keys), callbacks=[SigtermAt(at)])
    row.data_lost = at - stopped.value.step  # optimiser steps done but not in the checkpoint
    assert stopped.value.step == at and stopped.value.checkpoint == out / f"checkpoint-{at}"
    assert (out / f"checkpoint-{at}" / MARKER.get(stage, "trainer_state.json")).is_file()
    assert not (out / "run_summary.json").exists()  # the stage did not finish
    lines = log_lines(out)
    assert [line["current_steps"] for line in lines if "loss" in line] == list(range(1, at + 1))
    assert not [line for line in lines if "eval_loss" in line and line["current_steps"] == at]  # no eval after it
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is handed back
    if stage == "ppo":  # the Trainer stages resume from checkpoint-N as sft does (above); ppo has its own loop
        row.runs += 1
        run_stage(load_config(None, keys))
        assert [line["current_steps"] for line in log_lines(out)] == [1, 2, 3]  # 2 and 3 resumed


def test_save_on_sigterm_grace_zero_adds_no_handler(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert preemption_callbacks(load_config(None, sft_keys(tiny_model_dir, tmp_path, save_on_sigterm_grace=0))) == []
    [callback] = preemption_callbacks(load_config(None, sft_keys(tiny_model_dir, tmp_path)))
    assert isinstance(callback, PreemptionCallback) and callback.grace == GRACE


def test_sigterm_is_handed_back_when_training_ends_with_an_exception() -> None:
    callback, before = PreemptionCallback(GRACE), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), released([callback]):
        callback.on_train_begin(None, None, None)
        assert signal.getsignal(signal.SIGTERM) == callback._on_sigterm
        raise KeyboardInterrupt  # on_train_end never comes
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_log_says_when_the_grace_passes_before_the_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    callback = PreemptionCallback(0.2)
    with caplog.at_level("WARNING"), released([callback]):
        callback.on_train_begin(None, None, None)
        os.kill(os.getpid(), signal.SIGTERM)  # caught: this test goes on
        deadline = time.monotonic() + 10
        while "has passed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert callback.signalled_at is not None
    assert "save_on_sigterm_grace (0.2s) has passed and the pre-emption checkpoint is not complete" in caplog.text


@pytest.mark.chaos
@pytest.mark.slow  # two ranks start up: 41-50 s measured here
def test_sigterm_to_a_two_rank_launch_saves_one_step_on_both_ranks(chaos_row, tiny_model_dir: Path, tmp_path: Path,
                                                                   cache_dir: Path) -> None:
    row = chaos_row("kubetune train on 2 ranks SIGTERM mid-run")
    row.runs += 1
    out = tmp_path / "ranks"
    proc = start_train(sft_keys(tiny_model_dir, out, ddp_timeout=120), tmp_path, nproc=2)
    code, seconds = preempt(proc, out)
    log = (tmp_path / "ranks.log").read_text()
    assert code == PREEMPTED_EXIT_CODE, log[-4000:]
    assert seconds < GRACE, log[-4000:]
    checkpoint = only_checkpoint(out)
    step = int(checkpoint.name.split("-")[1])
    # each rank wrote its own generators into the same checkpoint: both stopped after the same step
    row.data_lost = sum(not (checkpoint / f"rng_state_{rank}.pth").is_file() for rank in (0, 1))
    assert row.data_lost == 0
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert not (out / "adapter_model.safetensors").exists()
