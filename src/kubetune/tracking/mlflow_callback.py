"""`MLflowMetricsCallback`: a Trainer's log events into an `MLflowTracker` (see `kubetune.tracking.stage_run`).

Its own module so that importing the tracker does not import transformers: the pipeline's light steps
track without a Trainer, and transformers (with peft) takes seconds to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.tracking.metric_values import metric_values
from kubetune.tracking.throughput import TrainingPace, counts_tokens

if TYPE_CHECKING:  # a type only: stage_run imports this module (lazily) for MLflowTracker.callback
    from kubetune.tracking.stage_run import MLflowTracker


class MLflowMetricsCallback(TrainerCallback):
    """Log every Trainer log event to an `MLflowTracker` at `state.global_step` (main process only).

    That is each training line (`loss`, `learning_rate`, `grad_norm`, TRL's `rewards/*`, `kl`, ...), each
    evaluation (`eval_*`) and the end-of-training summary, under the Trainer's own names; values that are no
    metrics are skipped (`kubetune.tracking.metric_values`). Training lines also get `throughput`
    (non-padding input tokens per second since the previous log event, as in `trainer_log.jsonl`; see
    `kubetune.tracking.throughput`) when the Trainer counts tokens (`include_num_input_tokens_seen`).

    Args:
        tracker (`MLflowTracker`):
            Where the metrics go.
    """

    def __init__(self, tracker: MLflowTracker) -> None:
        self.tracker = tracker
        self._pace = TrainingPace()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._pace.start(state.global_step, state.num_input_tokens_seen)

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
        tokens = state.num_input_tokens_seen if counts_tokens(args) else None
        pace = self._pace.update(state.global_step, state.max_steps, tokens, training_line="loss" in logs)
        metrics = metric_values(logs)
        if pace.tokens_per_s is not None:
            metrics["throughput"] = pace.tokens_per_s
        self.tracker.log_metrics(metrics, step=state.global_step)
