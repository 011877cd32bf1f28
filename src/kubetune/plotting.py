"""Loss curves as PNGs (`training_loss.png`, `training_eval_loss.png`), raw and smoothed.

Figures are drawn on matplotlib's `Figure` directly, never through `pyplot`: no display is needed
and the process-wide backend (a notebook's, say) is left alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kubetune.tracking import TRAINER_LOG

logger = logging.getLogger(__name__)


def smoothing_weight(num_points: int) -> float:
    """EMA weight for a curve of `num_points`: ~0 for a few points, rising towards 0.9 for many.

    A sigmoid of the length (LLaMA-Factory's choice): short runs stay close to the raw values,
    long noisy runs get a smooth trend.

    Args:
        num_points (`int`):
            Number of values in the curve.
    """
    return 1.8 * (1.0 / (1.0 + math.exp(-0.05 * num_points)) - 0.5)


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with debiasing, as TensorBoard's scalar smoothing.

    `ema_t = weight * ema_{t-1} + (1 - weight) * x_t` starting from `ema_0 = 0`, reported as
    `ema_t / (1 - weight**t)` so the start is not dragged towards 0. Non-finite values are passed
    through and do not enter the average.

    Args:
        values (`Sequence[float]`):
            The raw curve.
        weight (`float`):
            Smoothing in [0, 1): 0 returns the values unchanged.

    Returns:
        `list[float]`: one smoothed value per input value.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    ema, count, smoothed = 0.0, 0, []
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        count += 1
        ema = weight * ema + (1.0 - weight) * value
        smoothed.append(ema / (1.0 - weight**count))
    return smoothed


def load_log_history(source: Iterable[dict[str, Any]] | str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Log entries from Trainer's `state.log_history`, a `trainer_log.jsonl`, or its folder.

    Args:
        source (`Iterable[dict]`, `str` or `os.PathLike`):
            The entries themselves, or a path to `trainer_log.jsonl` (or to the folder holding it).
    """
    if not isinstance(source, str | os.PathLike):
        return list(source)
    path = Path(source)
    if path.is_dir():
        path = path / TRAINER_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(entries: Iterable[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Steps and values of `key`; `step` is Trainer's name, `current_steps` the jsonl's."""
    steps, values = [], []
    for entry in entries:
        value = entry.get(key)
        step = entry.get("step", entry.get("current_steps"))
        if isinstance(value, int | float) and step is not None:
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def plot_loss(
    log_history: Iterable[dict[str, Any]] | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    keys: Sequence[str] = ("loss", "eval_loss"),
) -> list[Path]:
    """Write `training_<key>.png` for each key that was logged: the raw curve and its smoothing.

    Args:
        log_history (`Iterable[dict]`, `str` or `os.PathLike`):
            Trainer's `state.log_history`, or a path to `trainer_log.jsonl` (or its folder).
        output_dir (`str` or `os.PathLike`):
            Folder for the PNGs; created if missing.
        keys (`Sequence[str]`, *optional*, defaults to `("loss", "eval_loss")`):
            Logged values to plot, one figure each. `/` in a key becomes `_` in the file name.

    Returns:
        `list[Path]`: the files written; keys with no logged values are skipped (and logged).
    """
    entries = load_log_history(log_history)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in keys:
        steps, values = _series(entries, key)
        if not values:
            logger.info("no %r in the log history: skipping its plot", key)
            continue
        path = out / f"training_{key.replace('/', '_')}.png"
        _draw(steps, values, key, path)
        written.append(path)
    return written


def _draw(steps: list[float], values: list[float], key: str, path: Path) -> None:
    # imported here: matplotlib costs ~1 s, and every training process imports this module, plotting or not
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # A lone evaluation point is invisible as a line: give it a marker.
    marker = "o" if len(values) == 1 else None
    ax.plot(steps, values, color="#1f77b4", alpha=0.4, marker=marker, label="original")
    ax.plot(steps, smooth(values, smoothing_weight(len(values))), color="#1f77b4", label="smoothed")
    ax.set_title(f"training {key}")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend()
    fig.savefig(path, format="png", dpi=100)
