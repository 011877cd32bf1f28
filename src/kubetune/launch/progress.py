"""Training progress for `kubetune run`'s console: a marked `progress` event per Trainer log.

See `kubetune.launch.console` for the side that reads them.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.launch.console import emit


class ProgressCallback(TrainerCallback):
    """Emit a `progress` event per Trainer log (main process only): step, total, loss, lr, eval loss, ETA.

    Args:
        step: the pipeline step's name, shown on each line.
    """

    def __init__(self, step: str) -> None:
        self.step = step
        self._start: float | None = None
        self._start_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self._start, self._start_step = time.monotonic(), state.global_step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_loss" in logs or self._start is None:
            return
        done = state.global_step - self._start_step
        elapsed = time.monotonic() - self._start
        eta = elapsed / done * max(state.max_steps - state.global_step, 0) if done > 0 else None
        shown = {k: logs[k] for k in ("loss", "learning_rate", "eval_loss", "reward/mean") if k in logs}
        emit("progress", step=self.step, current=state.global_step, total=state.max_steps,
             elapsed=round(elapsed, 1), eta=None if eta is None else round(eta, 1), **shown)
