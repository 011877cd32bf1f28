"""How stages report: a small `Tracker` interface, a local implementation, and the jsonl callback.

A stage receives a `Tracker` and calls `log_params` once, `log_metrics` for results, and passes
`callback()` to its Trainer. `LocalTracker` writes files next to the run's outputs; an MLflow
tracker implements the same three methods.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import TrainerCallback

# Not imported here: `log_callback` imports transformers (seconds, with peft), which the pipeline's light
# steps that only talk to MLflow never need. `JsonlLogCallback` is loaded on first use (`__getattr__`).
TRAINER_LOG = "trainer_log.jsonl"

PARAMS_FILE = "params.json"

__all__ = ["PARAMS_FILE", "TRAINER_LOG", "JsonlLogCallback", "LocalTracker", "Tracker"]


@runtime_checkable
class Tracker(Protocol):
    """Where a stage reports parameters, metrics, and Trainer progress."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record run parameters (config values); later calls add to or overwrite earlier keys."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record numeric results, optionally at a training step."""
        ...

    def callback(self) -> TrainerCallback | None:
        """A callback that reports Trainer log events, or `None` if this tracker needs none."""
        ...


def _is_main_process() -> bool:
    # torchrun sets RANK; every rank runs the stage, only one should write the files.
    return int(os.environ.get("RANK", "0")) == 0


class LocalTracker:
    """A `Tracker` writing into a folder: `params.json` and `trainer_log.jsonl`.

    Only the main process (`RANK` 0 or unset) writes.

    Args:
        output_dir (`str` or `os.PathLike`):
            The run's output folder.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Merge `params` into `params.json` (values JSON can't hold are written as strings)."""
        if not _is_main_process():
            return
        path = self.output_dir / PARAMS_FILE
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(params)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{PARAMS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n")
        os.replace(tmp, path)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append `metrics` as one line of `trainer_log.jsonl`, with `current_steps` = `step`."""
        if _is_main_process():
            from kubetune.tracking.log_callback import append_jsonl

            append_jsonl(self.output_dir / TRAINER_LOG, {"current_steps": step, **metrics})

    def callback(self) -> TrainerCallback:
        """A `JsonlLogCallback` writing to the same `trainer_log.jsonl`."""
        from kubetune.tracking.log_callback import JsonlLogCallback

        return JsonlLogCallback(self.output_dir)


def __getattr__(name: str) -> Any:
    if name == "JsonlLogCallback":
        from kubetune.tracking.log_callback import JsonlLogCallback

        return JsonlLogCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
