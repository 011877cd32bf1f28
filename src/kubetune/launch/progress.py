"""Training progress for `kubetune run`'s console: a marked `progress` event per Trainer log.

See `kubetune.launch.console` for the side that reads them.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.launch.console import emit
from kubetune.tracking.throughput import TrainingPace


class ProgressCallback(TrainerCallback):
    """Emit a `progress` event per Trainer log (main process only): step, total, loss, lr, eval loss, ETA.

    Elapsed time and ETA are `kubetune.tracking.throughput.TrainingPace`'s, as in `trainer_log.jsonl`.
    Nothing is shown before `train()` begins (an `evaluate()` alone has no progress to show).

    Args:
        step: the pipeline step's name, shown on each line.
    """

    def __init__(self, step: str) -> None:
        self.step = step
        self._pace = TrainingPace()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self._pace.start(state.global_step, state.num_input_tokens_seen)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_loss" in logs or not self._pace.started:
            return
        pace = self._pace.update(state.global_step, state.max_steps, None, training_line="loss" in logs)
        shown = {k: logs[k] for k in ("loss", "learning_rate", "eval_loss", "reward/mean") if k in logs}
        emit("progress", step=self.step, current=state.global_step, total=state.max_steps,
             elapsed=round(pace.elapsed_s, 1), eta=None if pace.remaining_s is None else round(pace.remaining_s, 1),
             **shown)
