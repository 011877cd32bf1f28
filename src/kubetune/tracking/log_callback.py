"""`trainer_log.jsonl`: one JSON line per Trainer log event, with progress, ETA and tokens/s.

The file is what `kubetune.plotting.plot_loss` and progress displays read, in LLaMA-Factory's
format (`current_steps`, `total_steps`, `loss`, `lr`, `percentage`, `remaining_time`, ...).

Throughput comes from `TrainerState.num_input_tokens_seen`, which transformers 5 maintains when
`TrainingArguments(include_num_input_tokens_seen="non_padding")` is set: the Trainer counts each
batch's `attention_mask` ones (gathered over all ranks) before the forward pass, so padding is not
counted and nothing here has to see the batches. With the default `"no"` the lines carry no
`throughput`/`total_tokens` and a warning says which argument to set.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.tracking import TRAINER_LOG
from kubetune.tracking.metric_values import metric_value, metric_values
from kubetune.tracking.throughput import TrainingPace, counts_tokens

logger = logging.getLogger(__name__)


# Not copied into a line: renamed (`lr`), superseded by `total_tokens`/`throughput` (the Trainer's own
# `train_tokens_per_second` averages over the whole call, not the last window), or not a metric.
_NOT_COPIED = {
    "learning_rate",
    "epoch",
    "num_input_tokens_seen",
    "total_flos",
    "train_runtime",
    "train_tokens_per_second",
}


def format_duration(seconds: float) -> str:
    """`h:mm:ss` for a number of seconds (fractions dropped), e.g. `0:01:05`."""
    return str(timedelta(seconds=int(seconds)))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to `path`, creating its folder; opened per write so tails see it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def keep_lines_up_to(path: Path, step: int) -> None:
    """Drop lines of `path` whose `current_steps` is above `step` (a resumed run writes them again).

    Args:
        path (`Path`):
            A `trainer_log.jsonl`; nothing happens if it does not exist.
        step (`int`):
            The last step whose lines are kept, i.e. the step the run resumes from.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            line_step = json.loads(line).get("current_steps")
        except (ValueError, AttributeError):
            continue  # a torn last line from a killed run
        # Lines without a step (run-level metrics) cannot be placed in the run: keep them.
        if line_step is None or line_step <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class JsonlLogCallback(TrainerCallback):
    """Append one JSON line per log event to `<output_dir>/trainer_log.jsonl` (main process only).

    Each line has `current_steps`, `total_steps`, `epoch`, `percentage`, `elapsed_time` and
    `remaining_time` (`h:mm:ss`, for this `train()` call), plus whatever was logged: `loss`,
    `eval_loss`, `lr`, `grad_norm`, and other metrics under their own names (e.g. TRL's
    `rewards/accuracies`; which values count is `kubetune.tracking.metric_values`). Training lines also
    get `throughput` (non-padding input tokens per second since the previous log event, so evaluation
    time is not counted; see `kubetune.tracking.throughput`) and `total_tokens`, when the Trainer counts
    tokens (see the module docstring).

    At train begin, lines after the current global step are dropped: a run resumed from a
    checkpoint continues the file, and a new run in a reused folder (step 0) starts it afresh.
    Trainer's end-of-training summary (`train_loss`, ...) is not written: it repeats the last step.

    Args:
        output_dir (`str` or `os.PathLike`):
            Folder for `trainer_log.jsonl`, normally the run's output folder.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.path = Path(output_dir) / TRAINER_LOG
        self._pace = TrainingPace()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._pace.start(state.global_step, state.num_input_tokens_seen)
        keep_lines_up_to(self.path, state.global_step)
        if not counts_tokens(args):
            logger.warning(
                "%s gets no tokens/s: set include_num_input_tokens_seen='non_padding' in TrainingArguments",
                self.path,
            )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Trainer's end-of-training summary (`train_loss`, averaged over the run) repeats the last step.
        if not state.is_world_process_zero or not logs or "train_loss" in logs:
            return
        tokens = state.num_input_tokens_seen if counts_tokens(args) else None
        training_line = "loss" in logs
        pace = self._pace.update(state.global_step, state.max_steps, tokens, training_line=training_line)
        record: dict[str, Any] = {"current_steps": state.global_step, "total_steps": state.max_steps}
        record.update(_metrics(logs))
        record.update(
            epoch=logs.get("epoch", state.epoch),
            percentage=round(100.0 * state.global_step / state.max_steps, 2) if state.max_steps else 0.0,
            elapsed_time=format_duration(pace.elapsed_s),
            remaining_time=format_duration(pace.remaining_s or 0.0),
        )
        if training_line and tokens is not None:
            if pace.tokens_per_s is not None:
                record["throughput"] = round(pace.tokens_per_s, 2)
            record["total_tokens"] = tokens
        append_jsonl(self.path, record)


def _metrics(logs: dict[str, Any]) -> dict[str, Any]:
    """Logged metrics for a line: `learning_rate` shortened to `lr`, counters left to the pace."""
    metrics = metric_values({k: v for k, v in logs.items() if k not in _NOT_COPIED})
    if (lr := metric_value(logs.get("learning_rate"))) is not None:
        metrics["lr"] = lr
    return metrics
