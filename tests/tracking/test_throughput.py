"""One metric rule and one pace (elapsed, ETA, tokens/s) behind the jsonl log, MLflow and the console.

The callbacks run here on hand-made Trainer states and a fake clock: what is checked is that the three
displays agree, and on what (a real Trainer run is `test_log_callback.py`'s and `test_mlflow_tracker.py`'s).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from transformers import TrainerControl, TrainerState

from kubetune.launch.console import MARK
from kubetune.launch.progress import ProgressCallback
from kubetune.tracking.log_callback import JsonlLogCallback
from kubetune.tracking.metric_values import metric_value, metric_values
from kubetune.tracking.mlflow_callback import MLflowMetricsCallback
from kubetune.tracking.throughput import TrainingPace, counts_tokens


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingTracker:
    """Stands in for an `MLflowTracker`: keeps what `log_metrics` got, after the tracker's own filter."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.logged.append(({k: float(v) for k, v in metric_values(metrics).items()}, step))


COUNTING = SimpleNamespace(include_num_input_tokens_seen="non_padding")


def _state(step: int, tokens: int, max_steps: int = 10) -> TrainerState:
    state = TrainerState(global_step=step, max_steps=max_steps)
    state.num_input_tokens_seen = tokens
    return state


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (3, 3), (np.float32(0.25), 0.25), (np.float64(1.5), 1.5), (np.int64(7), 7), (np.float16(2), 2.0),
     (True, None), (np.bool_(False), None), ("0.5", None), (None, None), ([1.0], None)],
)
def test_a_metric_is_any_real_number_but_a_bool(value: Any, expected: Any) -> None:
    number = metric_value(value)
    assert number == expected
    assert number is None or type(number) in (int, float)  # plain Python numbers: json.dumps writes them


def test_nan_and_infinity_are_kept() -> None:
    kept = metric_values({"loss": float("nan"), "grad_norm": np.float32("inf"), "done": True})
    assert set(kept) == {"loss", "grad_norm"} and math.isnan(kept["loss"]) and math.isinf(kept["grad_norm"])


def test_the_jsonl_log_and_mlflow_keep_the_same_metrics(tmp_path: Path) -> None:
    # TRL logs numpy scalars (np.float32 means): the jsonl log used to drop them while MLflow kept them.
    logs = {"loss": np.float32(0.75), "rewards/margins": np.float64(0.5), "num_tokens": np.int64(64),
            "grad_norm": float("nan"), "use_liger": True, "note": "text", "epoch": 0.5}
    jsonl, tracker = JsonlLogCallback(tmp_path), RecordingTracker()
    mlflow = MLflowMetricsCallback(tracker)  # type: ignore[arg-type]
    args = SimpleNamespace(include_num_input_tokens_seen="no")
    for callback in (jsonl, mlflow):
        callback.on_log(args, _state(3, 0), TrainerControl(), logs=logs)  # type: ignore[arg-type]

    (line,) = [json.loads(text) for text in (tmp_path / "trainer_log.jsonl").read_text().splitlines()]
    (logged, step), = tracker.logged
    assert step == 3
    assert {"loss", "rewards/margins", "num_tokens", "grad_norm"} <= set(line)
    assert "use_liger" not in line and "note" not in line
    assert set(logged) == {"loss", "rewards/margins", "num_tokens", "grad_norm", "epoch"}
    for key in ("loss", "rewards/margins", "num_tokens"):
        assert line[key] == pytest.approx(logged[key])


def test_pace_extrapolates_this_calls_own_steps() -> None:
    clock = FakeClock()
    pace = TrainingPace(clock)
    pace.start(step=4, tokens_seen=0)  # resumed from checkpoint-4: the 4 earlier steps took no time here
    clock.now += 10.0
    now = pace.update(step=6, max_steps=10, tokens_seen=None, training_line=True)
    assert now.elapsed_s == 10.0 and now.remaining_s == pytest.approx(20.0)  # 5 s a step, 4 steps left
    assert now.tokens_per_s is None  # tokens not counted: no made-up rate


def test_an_evaluation_does_not_lower_the_training_rate() -> None:
    clock = FakeClock()
    pace = TrainingPace(clock)
    pace.start(step=0, tokens_seen=0)
    clock.now += 2.0
    assert pace.update(2, 10, 400, training_line=True).tokens_per_s == pytest.approx(200.0)
    clock.now += 30.0  # a long evaluation: it trains no tokens
    assert pace.update(2, 10, 400, training_line=False).tokens_per_s is None
    clock.now += 2.0
    assert pace.update(4, 10, 800, training_line=True).tokens_per_s == pytest.approx(200.0)


def test_pace_starts_at_its_first_event_without_train_begin() -> None:
    clock = FakeClock()
    pace = TrainingPace(clock)
    assert not pace.started
    first = pace.update(0, 0, None, training_line=False)  # trainer.evaluate() alone
    assert pace.started and first.elapsed_s == 0.0 and first.remaining_s is None


def test_every_display_shows_the_same_pace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    tracker = RecordingTracker()
    callbacks: list[Any] = [JsonlLogCallback(tmp_path), MLflowMetricsCallback(tracker),  # type: ignore[arg-type]
                            ProgressCallback("sft")]
    for callback in callbacks:
        callback._pace = TrainingPace(clock)  # one clock for all three, so their numbers can be compared
        callback.on_train_begin(COUNTING, _state(0, 0), TrainerControl())
    events = [(2.0, _state(2, 400), {"loss": 1.0}), (30.0, _state(2, 400), {"eval_loss": 0.9}),
              (2.0, _state(4, 800), {"loss": 0.8})]
    for seconds, state, logs in events:
        clock.now += seconds
        for callback in callbacks:
            callback.on_log(COUNTING, state, TrainerControl(), logs=logs)

    lines = [json.loads(text) for text in (tmp_path / "trainer_log.jsonl").read_text().splitlines()]
    throughput = [metrics["throughput"] for metrics, _ in tracker.logged if "throughput" in metrics]
    assert [line.get("throughput") for line in lines] == [200.0, None, 200.0]
    assert throughput == [200.0, 200.0]  # MLflow's window spanned the evaluation: 400/32 s
    progress = [json.loads(text.removeprefix(MARK)) for text in capsys.readouterr().out.splitlines()]
    assert [event["eta"] for event in progress] == [8.0, 128.0, 51.0]
    assert [line["remaining_time"] for line in lines] == ["0:00:08", "0:02:08", "0:00:51"]
    assert lines[-1]["elapsed_time"] == "0:00:34" and progress[-1]["elapsed"] == 34.0


def test_token_counting_is_off_for_no_and_false() -> None:
    assert counts_tokens(COUNTING) and counts_tokens(SimpleNamespace(include_num_input_tokens_seen="all"))
    assert not counts_tokens(SimpleNamespace(include_num_input_tokens_seen="no"))
    assert not counts_tokens(SimpleNamespace(include_num_input_tokens_seen=False))
