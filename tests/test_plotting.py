"""Loss plots: smoothing values by hand, and real PNGs from Trainer history or trainer_log.jsonl."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from matplotlib.image import imread

from kubetune.plotting import plot_loss, smooth, smoothing_weight

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    height, width, _ = imread(path).shape  # decodes the whole image: a truncated file fails here
    assert (width, height) == (640, 480)


def test_smooth_matches_hand_computed_debiased_ema() -> None:
    # weight 0.5: ema = 0.5, 1.25, 2.125; debiased by 1 - 0.5^t = 0.5, 0.75, 0.875.
    assert smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 5 / 3, 17 / 7])
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 7 / 3])


def test_smooth_edge_cases() -> None:
    assert smooth([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]
    assert smooth([], 0.6) == []
    # Debiasing keeps a constant curve constant from the first point (no ramp up from 0).
    assert smooth([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)
    # A non-finite value passes through and does not poison later points.
    out = smooth([1.0, math.nan, 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx(smooth([1.0, 3.0], 0.5)[1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        smooth([1.0], 1.0)


def test_smoothing_weight_grows_with_length() -> None:
    weights = [smoothing_weight(n) for n in (1, 10, 100, 1000)]
    assert weights == sorted(weights)
    assert 0 < weights[0] < 0.05 and 0.85 < weights[-1] <= 0.9


def test_plot_loss_from_trainer_log_history(tmp_path: Path) -> None:
    history = [
        {"loss": 2.0 - 0.1 * s, "learning_rate": 1e-4, "epoch": s / 10, "step": s} for s in range(1, 11)
    ]
    history += [{"eval_loss": 1.5, "step": 5}, {"eval_loss": 1.2, "step": 10}]
    history.append({"train_loss": 1.6, "train_runtime": 3.0, "step": 10})  # Trainer's final summary

    written = plot_loss(history, tmp_path / "plots")

    assert written == [
        tmp_path / "plots" / "training_loss.png",
        tmp_path / "plots" / "training_eval_loss.png",
    ]
    for path in written:
        _assert_png(path)


def test_plot_loss_from_jsonl_skips_missing_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "trainer_log.jsonl"
    log.write_text(
        "".join(json.dumps({"current_steps": s, "total_steps": 3, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    )

    with caplog.at_level(logging.INFO, logger="kubetune.plotting"):
        written = plot_loss(log, tmp_path, keys=("loss", "eval_loss", "rewards/accuracies"))

    assert written == [tmp_path / "training_loss.png"]
    _assert_png(written[0])
    assert "eval_loss" in caplog.text and "rewards/accuracies" in caplog.text
    # A folder holding trainer_log.jsonl works too, and a single point still plots.
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "trainer_log.jsonl").write_text('{"current_steps": 7, "eval_loss": 0.5}\n')
    assert plot_loss(tmp_path / "one", tmp_path / "one", keys=("eval_loss",)) == [
        tmp_path / "one" / "training_eval_loss.png"
    ]
