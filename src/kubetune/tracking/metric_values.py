"""Which logged values are metrics, and as what: the one rule for the jsonl log, MLflow and a step's results.

The jsonl log and the MLflow callback used to disagree: one kept only Python `int`/`float` (dropping the
numpy scalars TRL logs, e.g. `np.float32` means), the other every real number. The rule here keeps
everything that is a measurement and loses nothing.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["metric_value", "metric_values"]


def metric_value(value: Any) -> int | float | None:
    """`value` as a plain Python number when it is a metric, else `None`.

    A metric is any real number but a bool: Python ints and floats, and numpy scalars (`np.float32`,
    `np.int64`, ...). NaN and infinities are kept: a NaN loss is news, not noise. Integers come back as
    `int`, other reals as `float`, so `json.dumps` can write them (it refuses numpy scalars). Bools (to
    Python, `True` is an `int`) are flags, not measurements; strings, lists, tensors and `None` are not
    metrics either.

    Args:
        value (`Any`):
            One value of a Trainer log event or a stage's results.

    Returns:
        `int`, `float` or `None`: the number, or `None` when `value` is no metric.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def metric_values(values: Mapping[str, Any]) -> dict[str, int | float]:
    """The metrics among `values` (see `metric_value`), as plain Python numbers, in their order.

    Args:
        values (`Mapping[str, Any]`):
            Name → value, e.g. a Trainer's `logs` or a stage's `metrics`.

    Returns:
        `dict[str, int | float]`: name → number, without the values that are no metrics.
    """
    kept: dict[str, int | float] = {}
    for name, value in values.items():
        number = metric_value(value)
        if number is not None:
            kept[name] = number
    return kept
