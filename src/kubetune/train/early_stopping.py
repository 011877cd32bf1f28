"""`early_stopping_steps`: stop training once the eval metric has stopped improving.

LLaMA-Factory adds transformers' `EarlyStoppingCallback` with `early_stopping_patience=early_stopping_steps`
to every stage's trainer: after each evaluation that does not beat the best `metric_for_best_model` so far,
a counter grows; at `early_stopping_steps` the run stops (the model and metrics are saved as usual).
transformers needs `metric_for_best_model`; kubetune defaults it to the eval loss (`training_arguments`).
"""

from __future__ import annotations

from transformers import EarlyStoppingCallback, TrainerCallback

from kubetune.config import RunConfig


def early_stopping_callbacks(cfg: RunConfig) -> list[TrainerCallback]:
    """[EarlyStoppingCallback(patience=early_stopping_steps)] when it is set, else []."""
    steps = cfg.train.early_stopping_steps
    return [] if steps is None else [EarlyStoppingCallback(early_stopping_patience=steps)]
