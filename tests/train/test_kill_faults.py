"""Training killed at a seeded random point — mid-step or mid-checkpoint-write, by SIGKILL or SIGTERM — and rerun.

Each case runs `kubetune train` on the tiny model in a subprocess (`kill_child.py`: the real CLI, which sends
itself a real signal at the chosen point), then the same config again to the end, and compares the final
weights with a run never interrupted (the same seed, float32 on one CPU: every tensor equal within atol 1e-6,
rtol 0). The point is drawn from `random.Random(<stage>-<seed>)`: which optimiser step, or which checkpoint
and which of its files is being written when the signal lands.

- SIGTERM: the run saves a checkpoint after the step under way and exits 75; the rerun resumes from it.
- SIGKILL mid-step: the run dies; the rerun resumes from the last periodic checkpoint (`save_steps` 2).
- SIGKILL mid-checkpoint-write: the file being written is left half-written. The checkpoint must never be
  resumed from: the Trainer stages' folder still carries `checkpoint-is-incomplete.txt`
  (`kubetune.train.checkpoint_guard`), ppo's is a hidden temp folder not yet renamed (`kubetune.rl.checkpoint`).

data_lost (the chaos row) = tensors of the final weights that differ from the uninterrupted run's + resumed
checkpoints that were not complete (checked independently: every file loads, no marker). No stage of the
pipeline uploads checkpoints (they stay on the step's work volume; only export uploads), so there is no
mid-upload point to kill at here; the S3 fault tests cover uploads.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kubetune.config import load_config
from kubetune.stages import run_stage
from kubetune.train.arguments import INCOMPLETE_SENTINEL
from kubetune.train.preemption import PREEMPTED_EXIT_CODE

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAX_STEPS, SAVE_STEPS = 6, 2
SAVED_FILES = {"sft": ["optimizer.pt", "scheduler.pt", "rng_state.pth"]}
STAGES = {
    "sft": {"dataset": "kubi_sft", "max_samples": 16, "per_device_train_batch_size": 2},
    "rm": {"dataset": "kubi_pref", "max_samples": 8, "per_device_train_batch_size": 4},
    "dpo": {"dataset": "kubi_pref", "max_samples": 8, "per_device_train_batch_size": 4},
    "kto": {"dataset": "kubi_kto", "max_samples": 8, "per_device_train_batch_size": 4},
    "ppo": {"dataset": "kubi_sft", "max_samples": 8, "per_device_train_batch_size": 4, "cutoff_len": 48,
            "max_new_tokens": 4, "ppo_epochs": 1, "reward_model_type": "api", "top_p": 1.0, "temperature": 1.0},
}


def stage_keys(stage: str, model_dir: Path, out: Path, reward: Path) -> dict:
    keys = {
        "model_name_or_path": str(model_dir), "stage": stage, "finetuning_type": "lora", "lora_rank": 4,
        "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64, "output_dir": str(out),
        "learning_rate": 3e-2, "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "logging_steps": 1,
        "report_to": "none", "disable_tqdm": True, "gradient_checkpointing": False, "bf16": False,
        "save_on_sigterm_grace": 30, **STAGES[stage],
    }
    if stage == "ppo":
        keys["reward_model"] = str(reward)
    return keys


def kill_point(stage: str, seed: int, kind: str, signal_name: str) -> dict:
    """The seeded point: which optimiser step, or which checkpoint and file, the signal lands in."""
    rng = random.Random(f"{stage}-{seed}")
    if kind == "step":
        # after the first periodic checkpoint, so that a SIGKILL has one to resume from
        return {"kind": "step", "at": rng.randint(SAVE_STEPS + 1, MAX_STEPS), "signal": signal_name}
    # "state": the Trainer's trainer_state.json, the last file of its checkpoints (cut in half by a SIGKILL, it still
    # exists: only the incomplete-marker of checkpoint_guard tells it apart from a finished one)
    files = ["trainer_state.json"] if kind == "state" else SAVED_FILES.get(stage, ["optimizer.pt", "scheduler.pt",
                                                                                   "rng_state.pth"])
    return {"kind": "save", "at": rng.choice(range(SAVE_STEPS, MAX_STEPS, SAVE_STEPS)), "file": rng.choice(files),
            "signal": signal_name}


def complete(checkpoint: Path) -> bool:
    """Checked apart from the code under test: no marker, a state file, and every file loads."""
    if (checkpoint / INCOMPLETE_SENTINEL).exists():
        return False
    states = [checkpoint / name for name in ("trainer_state.json", "ppo_state.json") if (checkpoint / name).is_file()]
    if not states:
        return False
    try:
        for path in checkpoint.iterdir():
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                torch.load(path, weights_only=False)
    except Exception:  # noqa: BLE001 — any file that does not load makes the checkpoint incomplete
        return False
    return True


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(out.glob("*.safetensors")):  # the adapter, and a value head (rm, ppo)
        weights.update({f"{path.name}:{key}": value for key, value in load_file(path).items()})
    assert weights, f"no final weights in {out}"
    return weights


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each stage's uninterrupted run, made once per module (by the first case that needs it)."""
    return {"root": tmp_path_factory.mktemp("straight")}


def kill_and_rerun(chaos_row, stage: str, seed: int, kind: str, signal_name: str, model_dir: Path, tmp_path: Path,
                   straight_runs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    point = kill_point(stage, seed, kind, signal_name)
    kind = "save" if kind == "state" else kind
    what = "mid-step" if kind == "step" else f"mid-checkpoint-write ({point['file']} of checkpoint-{point['at']})"
    row = chaos_row(f"{stage} {signal_name} {what}")
    row.detail = f"seed {seed}, {kind} {point['at']}"
    reward = tmp_path / "length.py"
    reward.write_text("def reward_func(prompts, responses):\n    return [len(r) / 10 for r in responses]\n")
    out = tmp_path / "killed"
    keys = stage_keys(stage, model_dir, out, reward)
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(keys))

    row.runs += 1
    env = {**os.environ, "KUBETUNE_KILL_SPEC": json.dumps(point)}
    env.pop("FORCE_TORCHRUN", None)
    killed = subprocess.run([sys.executable, str(HERE / "kill_child.py"), "train", str(config)], env=env,
                            capture_output=True, text=True, timeout=600)
    log = killed.stdout + killed.stderr
    assert "kill_child: sending" in log, log[-3000:]  # the point was reached
    expected = PREEMPTED_EXIT_CODE if signal_name == "SIGTERM" else -9
    assert killed.returncode == expected, log[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if kind == "save" and signal_name == "SIGKILL" and stage != "ppo":
        cut = out / f"checkpoint-{point['at']}"
        assert (cut / INCOMPLETE_SENTINEL).is_file(), sorted(p.name for p in cut.iterdir())
    if signal_name == "SIGTERM":
        assert checkpoints and complete(checkpoints[-1]), checkpoints  # the pre-emption's own checkpoint

    row.runs += 1  # the same config again (in this process: it spares a second start-up)
    caplog.clear()
    with caplog.at_level("INFO", logger="kubetune.train.arguments"):
        run_stage(load_config(str(config)))
    resumed = [r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("resuming from ")]
    picked_incomplete = sum(not complete(Path(path)) for path in resumed)
    if signal_name == "SIGTERM":
        assert resumed == [str(checkpoints[-1])]

    if stage not in straight_runs:
        straight = straight_runs["root"] / stage
        run_stage(load_config(None, stage_keys(stage, model_dir, straight, reward)))
        straight_runs[stage] = straight
    a, b = final_weights(straight_runs[stage]), final_weights(out)
    mismatched = [key for key in a.keys() | b.keys()
                  if key not in a or key not in b or not torch.allclose(a[key], b[key], rtol=0, atol=1e-6)]
    row.data_lost = len(mismatched) + picked_incomplete
    assert row.data_lost == 0, (mismatched[:5], resumed)


# make test: two sft kills (20-45 s each on a loaded 2-core box: one start-up, two short runs), each point drawn
# from its seed: the SIGKILL that cuts trainer_state.json in half, and a SIGTERM mid-step
@pytest.mark.chaos
@pytest.mark.parametrize(("seed", "kind", "signal_name"), [(4, "state", "SIGKILL"), (2, "step", "SIGTERM")])
def test_sft_killed_at_a_random_point_resumes_to_the_uninterrupted_weights(
        chaos_row, seed: int, kind: str, signal_name: str, tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
        straight_runs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    kill_and_rerun(chaos_row, "sft", seed, kind, signal_name, tiny_model_dir, tmp_path, straight_runs, caplog)


@pytest.mark.chaos
@pytest.mark.slow  # a process start-up and two runs per case: 30-60 s each on a loaded 2-core box
@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "kto", "ppo"])
@pytest.mark.parametrize(("seed", "kind", "signal_name"), [(11, "save", "SIGKILL"), (12, "save", "SIGTERM"),
                                                           (13, "step", "SIGKILL")])
def test_every_stage_killed_at_a_random_point_resumes_to_the_uninterrupted_weights(
        chaos_row, stage: str, seed: int, kind: str, signal_name: str, tiny_model_dir: Path, tmp_path: Path,
        cache_dir: Path, straight_runs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    kill_and_rerun(chaos_row, stage, seed, kind, signal_name, tiny_model_dir, tmp_path, straight_runs, caplog)
