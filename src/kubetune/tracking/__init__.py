"""How a stage's training is recorded: the jsonl log beside its outputs, and MLflow runs.

A stage reports through Trainer callbacks, not through an interface of its own: `JsonlLogCallback`
(`log_callback`) writes `trainer_log.jsonl` into the run's output folder, and on a pipeline the step adds
the callbacks of its MLflow run (`pipeline_tracking.stage_tracking`, which opens a
`stage_run.MLflowTracker` and logs the stage's config and final metrics into it). Both callbacks, and
the console's progress lines (`kubetune.launch.progress`), take which values are metrics from
`metric_values`, and elapsed time, ETA and tokens/s from `throughput.TrainingPace`.

The MLflow side is split by job: `connection` (where to track, the client, request limits), `parent_run`
(the pipeline's parent run), `stage_run` (a stage's nested run), `offline` (the outage buffer and its
replay), `registry` (model versions and promotion), `pipeline_tracking` (what the pipeline's steps call).
"""

from __future__ import annotations

from typing import Any

# Not imported here: `log_callback` imports transformers (seconds, with peft), which the pipeline's light
# steps that only talk to MLflow never need. `JsonlLogCallback` is loaded on first use (`__getattr__`).
TRAINER_LOG = "trainer_log.jsonl"

__all__ = ["TRAINER_LOG", "JsonlLogCallback"]


def __getattr__(name: str) -> Any:
    if name == "JsonlLogCallback":
        from kubetune.tracking.log_callback import JsonlLogCallback

        return JsonlLogCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
