"""What a stage returns, and the run_summary.json it leaves next to its outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.train.world import World, current_world

SUMMARY_FILE = "run_summary.json"


@dataclass
class StageResult:
    """Attributes:
    output_dir: the stage's output directory.
    metrics: scalar results (train_loss, eval_loss, eval_perplexity, bleu-4, ...).
    files: named paths written (model, training_loss plot, predictions, ...).
    layout: how batches were laid out and which attention kernel each model ran
        (`kubetune.train.layout.Layout.as_dict`); empty when the stage has no such choice.
    """

    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)


def finish(out: Path, metrics: dict[str, float], files: dict[str, str],
           layout: dict[str, Any] | None = None, world: World | None = None) -> StageResult:
    """Write `<out>/run_summary.json` (metrics, files, layout, distributed) and return the StageResult.

    Only the main process writes it; every rank returns the StageResult.

    Args:
        out: the stage's output directory.
        metrics: everything the stage measured.
        files: named paths it wrote.
        layout: `Layout.as_dict()` of the stage's batches. Default None = not recorded.
        world: the processes that ran the stage (`Steps.world`). Default None = this process's.
    """
    world = world or current_world()
    summary: dict[str, Any] = {"metrics": metrics, "files": files, "distributed": world.as_dict()}
    if layout:
        summary["layout"] = layout
    if world.is_main:
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return StageResult(output_dir=out, metrics=metrics, files=files, layout=dict(layout or {}))
