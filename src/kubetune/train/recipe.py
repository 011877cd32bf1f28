"""What every Trainer-based stage does alike after its set-up: report dropped rows, train and save."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune.config import RunConfig
from kubetune.data.pipeline import TokenizedData
from kubetune.plotting import plot_loss
from kubetune.train.arguments import find_resume_checkpoint


def write_bad_rows(out: Path, data: TokenizedData, files: dict[str, str]) -> None:
    """Write the dropped rows' report (row numbers and reasons) next to the outputs, if any were dropped."""
    if data.report:
        (out / "bad_rows.txt").write_text(data.report + "\n")
        files["bad_rows"] = str(out / "bad_rows.txt")


def train_and_save(trainer: Any, cfg: RunConfig, data: TokenizedData, out: Path, *, tokenizer: Any | None = None,
                   plotted: Sequence[str] = ("loss", "eval_loss")) -> tuple[dict[str, float], dict[str, str]]:
    """Train (resuming from the last checkpoint in `out`), then save the model, state, metrics and loss plots.

    Args:
        trainer: a transformers `Trainer`.
        cfg: the run config (resume and plot settings).
        data: the tokenised data (its cache hit and preprocessing time are reported with the train metrics).
        out: the output folder.
        tokenizer: saved next to the model; None when `trainer.save_model` saves it already.
        plotted: log keys to plot when `plot_loss` is on.

    Returns:
        (metrics prefixed `train_`, files written by name).
    """
    result = trainer.train(resume_from_checkpoint=find_resume_checkpoint(cfg, out))
    trainer.save_model(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    trainer.save_state()
    train_metrics = {**result.metrics, "tokenized_cache_hit": float(data.cache_hit), "preprocess_seconds": data.seconds}
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    metrics = {k if k.startswith("train") else f"train_{k}": v for k, v in train_metrics.items()}
    files = {"model": str(out)}
    if cfg.train.plot_loss:
        for path in plot_loss(trainer.state.log_history, out, keys=plotted):
            files[path.stem] = str(path)
    return metrics, files
