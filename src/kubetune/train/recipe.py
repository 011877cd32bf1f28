"""What every recipe does alike around its set-up: decide its steps, report dropped rows, train and save, evaluate."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from kubetune.config import RunConfig
from kubetune.data.pipeline import TokenizedData
from kubetune.plotting import plot_loss
from kubetune.train.arguments import find_resume_checkpoint
from kubetune.train.checkpoint_guard import guard_checkpoints
from kubetune.train.disk_space import check_output_dir
from kubetune.train.preemption import raise_if_preempted, released
from kubetune.train.strategy import strategy_name
from kubetune.train.world import World, current_world

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Steps:
    """Which of a stage's steps run, from `do_train` / `do_eval` / `eval_strategy` / `do_predict`.

    Attributes:
        out: the output directory (created by `start`).
        train: train (`do_train`, on unless false).
        eval: evaluate held-out rows (`do_eval`, or an `eval_strategy` other than "no").
        predict: generate (or score) for held-out rows (`do_predict`).
        needs_eval_split: build the held-out split (`TrainArguments.needs_eval_split`).
        world: the processes running the stage (`kubetune.train.world`).
    """

    out: Path
    train: bool
    eval: bool
    predict: bool
    needs_eval_split: bool
    world: World = World()

    @property
    def generates(self) -> bool:
        """Generate predictions here: `predict`, on the main process only (one file, written once).

        Generation is not sharded over ranks; the others skip it rather than each generating all rows.
        """
        return self.predict and self.world.is_main


def start(cfg: RunConfig) -> Steps:
    """Create the output directory (checked writable, with room for the checkpoints: `check_output_dir`), decide
    which steps run (`Steps`), and log the world that runs them."""
    out = Path(cfg.train.output_dir or "outputs")
    t = cfg.train
    world = current_world(strategy_name(cfg))
    if world.is_main:  # a read-only or too small output_dir fails now, not at the first checkpoint an hour in
        check_output_dir(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        logger.info("%s: %s", cfg.method.stage, world.describe())
    return Steps(out=out, train=t.do_train is not False, eval=t.evaluates, predict=bool(t.do_predict),
                 needs_eval_split=t.needs_eval_split, world=world)


def write_bad_rows(out: Path, data: TokenizedData, files: dict[str, str]) -> None:
    """Write the dropped rows' report (row numbers and reasons) next to the outputs, if any were dropped."""
    if data.report and current_world().is_main:
        (out / "bad_rows.txt").write_text(data.report + "\n")
        files["bad_rows"] = str(out / "bad_rows.txt")


def train_and_save(trainer: Any, cfg: RunConfig, data: TokenizedData, out: Path, *, tokenizer: Any | None = None,
                   plotted: Sequence[str] = ("loss", "eval_loss")) -> tuple[dict[str, float], dict[str, str]]:
    """Train (resuming from the last checkpoint in `out`), then save the model, state, metrics and loss plots.

    Raises:
        Preempted: a SIGTERM stopped training after a checkpoint (`kubetune.train.preemption`); nothing else is
            saved, so the output folder never holds a final model the run did not finish.

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
    guard_checkpoints(trainer)  # a checkpoint a kill cut short is marked so and never resumed from
    with released(trainer.callback_handler.callbacks):
        result = trainer.train(resume_from_checkpoint=find_resume_checkpoint(cfg, out))
    raise_if_preempted(trainer.callback_handler.callbacks)  # a checkpoint, not a final model: the rerun resumes
    trainer.save_model(str(out))  # the Trainer saves on the main process only
    main = trainer.is_world_process_zero()
    if tokenizer is not None and main:
        tokenizer.save_pretrained(str(out))
    trainer.save_state()
    train_metrics = {**result.metrics, "tokenized_cache_hit": float(data.cache_hit), "preprocess_seconds": data.seconds}
    if cfg.train.include_effective_tokens_per_second:
        train_metrics["effective_tokens_per_sec"] = effective_tokens_per_second(data.train, result.metrics)
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    metrics = {k if k.startswith("train") else f"train_{k}": v for k, v in train_metrics.items()}
    files = {"model": str(out)}
    if cfg.train.plot_loss and main:
        for path in plot_loss(trainer.state.log_history, out, keys=plotted):
            files[path.stem] = str(path)
    return metrics, files


def effective_tokens_per_second(rows: Any, metrics: dict[str, float]) -> float:
    """`include_effective_tokens_per_second`: the training rows' tokens times the epochs run, over the train
    runtime, per process — LLaMA-Factory's number.

    A row's tokens are its `input_ids` (sft, pt, kto), or its `chosen_input_ids` and `rejected_input_ids`
    (rm, dpo); padding is never counted, as rows are stored unpadded.

    Args:
        rows: the training split (a `datasets.Dataset`).
        metrics: the Trainer's train metrics (`epoch`, `train_runtime`).
    """
    columns = [c for c in ("input_ids", "chosen_input_ids", "rejected_input_ids") if c in rows.column_names]
    if "input_ids" in columns:
        columns = ["input_ids"]
    # summed in Arrow: the rows stay memory-mapped instead of becoming Python lists (a selection's table holds
    # every row, its indices say which: flattened first)
    table = (rows.flatten_indices() if getattr(rows, "_indices", None) is not None else rows).data
    tokens = sum(pc.sum(pc.list_value_length(table.column(column))).as_py() or 0 for column in columns)
    world = current_world().size
    return tokens * metrics.get("epoch", 0.0) / max(metrics.get("train_runtime", 0.0), 1e-9) / world


def evaluate(trainer: Any, eval_set: Any, derived: Callable[[dict[str, float]], dict[str, float]] | None = None
             ) -> dict[str, float]:
    """Evaluate held-out rows; log the metrics and write eval_results.json.

    Args:
        trainer: a transformers `Trainer`.
        eval_set: the held-out split, or {name: split} to evaluate each (`eval_on_each_dataset`: metrics
            `eval_<name>_loss`, ...).
        derived: adds metrics computed from the Trainer's (sft: `eval_perplexity` from `eval_loss`). Default None.
    """
    if isinstance(eval_set, dict):
        metrics = {}
        for name, split in eval_set.items():
            metrics.update(trainer.evaluate(split, metric_key_prefix=f"eval_{name}"))
    else:
        metrics = trainer.evaluate(eval_set)
    if derived is not None:
        metrics.update(derived(metrics))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics
