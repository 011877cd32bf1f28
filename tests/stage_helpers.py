"""Helpers the stage tests share: reading a run's log, killing a run mid-way like a pre-empted pod, and
launching `kubetune train` on several CPU ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from transformers import TrainerCallback

LAUNCH_TIMEOUT = 420  # seconds: two ranks import torch and transformers on two cores


def log_lines(out: Path) -> list[dict]:
    """The run's `trainer_log.jsonl`, one dict per logged step."""
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


class StopAfter(TrainerCallback):
    """Simulates a pre-empted pod: the process dies right after step (PPO: update) `n`, after its checkpoint."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.n:
            raise KeyboardInterrupt("simulated kill")


def launch(keys: dict, tmp_path: Path, *, nproc: int = 2, script: Path | None = None) -> subprocess.CompletedProcess:
    """`kubetune train cfg.yaml` under FORCE_TORCHRUN=1 (or torchrun of `script`), in a subprocess."""
    config = tmp_path / f"{Path(keys['output_dir']).name}.yaml"
    config.write_text(yaml.safe_dump(keys))
    env = {**os.environ, "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(nproc)}
    if script is None:
        command = [sys.executable, "-m", "kubetune.cli", "train", str(config)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", str(script),
                   str(config)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def start_train(keys: dict, tmp_path: Path, *, nproc: int | None = None) -> subprocess.Popen:
    """`kubetune train cfg.yaml` started in a subprocess and not waited for (its stderr in `<output_dir>.log`),
    for tests that signal it; `nproc` ranks under FORCE_TORCHRUN=1, or one process without torchrun."""
    config = tmp_path / f"{Path(keys['output_dir']).name}.yaml"
    config.write_text(yaml.safe_dump(keys))
    env = {**os.environ}
    if nproc is not None:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(nproc))
    with (tmp_path / f"{Path(keys['output_dir']).name}.log").open("w") as log:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "kubetune.cli", "train", str(config)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = LAUNCH_TIMEOUT) -> None:
    """Wait until the run into `out` has logged `step` (trainer_log.jsonl); fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    log = out / "trainer_log.jsonl"
    while time.monotonic() < deadline:
        if log.is_file() and any(json.loads(line).get("current_steps", 0) >= step
                                 for line in log.read_text().splitlines() if line.endswith("}")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit code {proc.returncode}) before logging step {step}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no step {step} logged within {timeout}s")
