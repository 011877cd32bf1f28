"""What a stage returns: where its outputs are and what it measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """Attributes:
    output_dir: the stage's output directory.
    metrics: scalar results (train_loss, eval_loss, eval_perplexity, bleu-4, ...).
    files: named paths written (model, training_loss plot, predictions, ...).
    """

    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
