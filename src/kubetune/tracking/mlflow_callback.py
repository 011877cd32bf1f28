"""`MLflowMetricsCallback`: a Trainer's log events into an `MLflowTracker` (see `kubetune.tracking.stage_run`).

Its own module so that importing the tracker does not import transformers: the pipeline's light steps
track without a Trainer, and transformers (with peft) takes seconds to import.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.tracking.stage_run import MLflowTracker, _is_number


class MLflowMetricsCallback(TrainerCallback):
    """Log every Trainer log event to an `MLflowTracker` at `state.global_step` (main process only).

    That is each training line (`loss`, `learning_rate`, `grad_norm`, TRL's `rewards/*`, `kl`, ...), each
    evaluation (`eval_*`) and the end-of-training summary, under the Trainer's own names; non-numeric values
    are skipped. Training lines also get `throughput` (non-padding input tokens per second since the previous
    training line) when the Trainer counts tokens (`include_num_input_tokens_seen`).

    Args:
        tracker (`MLflowTracker`):
            Where the metrics go.
    """

    def __init__(self, tracker: MLflowTracker) -> None:
        self.tracker = tracker
        self._window: tuple[float, int] | None = None  # (time, tokens seen) at the previous training line

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._window = (time.monotonic(), state.num_input_tokens_seen)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        metrics = {key: value for key, value in logs.items() if _is_number(value)}
        if "loss" in logs and args.include_num_input_tokens_seen not in ("no", False):
            metrics.update(self._throughput(state))
        self.tracker.log_metrics(metrics, step=state.global_step)

    def _throughput(self, state: TrainerState) -> dict[str, float]:
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        since, tokens_then = self._window or (now, tokens)
        self._window = (now, tokens)
        return {"throughput": (tokens - tokens_then) / (now - since)} if now > since else {}
