"""Helpers the stage tests share: reading a run's log, killing a run mid-way like a pre-empted pod, and
launching `kubetune train` on several CPU ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
