"""Elapsed time, ETA and tokens/s of a Trainer's `train()` call: one computation for every display of them.

The jsonl log (`log_callback.JsonlLogCallback`), the MLflow metrics (`mlflow_callback.MLflowMetricsCallback`)
and the console's progress lines (`kubetune.launch.progress.ProgressCallback`) each keep a `TrainingPace`
fed by the same Trainer log events, so they show the same numbers by the same definitions:

- the ETA extrapolates from this call's own pace (a run resumed from a checkpoint spent no time on the
  steps before it): `elapsed / steps done * steps left`;
- tokens/s is the non-padding input tokens the Trainer counted since the previous log event, over the time
  since then. Every event (an evaluation's too) starts a new window, so evaluation time, which trains no
  tokens, does not lower the training rate.

Nothing here imports transformers: callers pass the numbers of `TrainerState`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Pace", "TrainingPace", "counts_tokens"]


def counts_tokens(args: Any) -> bool:
    """Whether the Trainer counts input tokens (`TrainingArguments.include_num_input_tokens_seen` is on).

    Args:
        args (`TrainingArguments`):
            The Trainer's arguments; `"no"` (the default) and `False` mean tokens are not counted.
    """
    return getattr(args, "include_num_input_tokens_seen", "no") not in ("no", False)


@dataclass(frozen=True)
class Pace:
    """Where a `train()` call stands at one log event.

    Attributes:
        elapsed_s (`float`): seconds since the call began.
        remaining_s (`float` or `None`): the ETA in seconds; `None` until this call has done a step.
        tokens_per_s (`float` or `None`): input tokens per second since the previous log event; `None` when
            the event is no training line, tokens are not counted, or no time has passed.
    """

    elapsed_s: float
    remaining_s: float | None
    tokens_per_s: float | None


class TrainingPace:
    """The pace of one `train()` call, updated at each Trainer log event (see the module docstring).

    Args:
        clock (`Callable[[], float]`, *optional*, defaults to `time.monotonic`):
            Seconds from a fixed point; tests pass a fake one.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start: float | None = None
        self._start_step = 0
        self._window: tuple[float, int] = (0.0, 0)  # (time, tokens seen) at the previous log event

    @property
    def started(self) -> bool:
        """Whether `start` (or a first `update`) has set the clock going."""
        return self._start is not None

    def start(self, step: int, tokens_seen: int) -> None:
        """Begin timing at the call's first step (`on_train_begin`).

        Args:
            step (`int`):
                `TrainerState.global_step` at the start: 0, or the checkpoint's step on a resumed run.
            tokens_seen (`int`):
                `TrainerState.num_input_tokens_seen` at the start.
        """
        self._start = self._clock()
        self._start_step = step
        self._window = (self._start, tokens_seen)

    def update(self, step: int, max_steps: int, tokens_seen: int | None, *, training_line: bool) -> Pace:
        """The pace at a log event; starts the clock if `start` was not called (e.g. `evaluate()` alone).

        Args:
            step (`int`):
                `TrainerState.global_step` now.
            max_steps (`int`):
                `TrainerState.max_steps`.
            tokens_seen (`int` or `None`):
                `TrainerState.num_input_tokens_seen` now, or `None` when the Trainer does not count tokens
                (see `counts_tokens`).
            training_line (`bool`):
                Whether the event is a training line (it has a `loss`), the only kind that gets a rate.

        Returns:
            `Pace`: elapsed time, ETA and tokens/s.
        """
        if self._start is None:
            self.start(step, tokens_seen or 0)
        now = self._clock()
        elapsed = now - (self._start if self._start is not None else now)
        done = step - self._start_step
        remaining = elapsed / done * max(max_steps - step, 0) if done > 0 else None
        since, tokens_then = self._window
        rate = None
        if training_line and tokens_seen is not None and now > since:
            rate = (tokens_seen - tokens_then) / (now - since)
        self._window = (now, tokens_seen if tokens_seen is not None else tokens_then)
        return Pace(elapsed_s=elapsed, remaining_s=remaining, tokens_per_s=rate)
