"""Helpers the stage tests share: reading a run's log, and killing a run mid-way like a pre-empted pod."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


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
