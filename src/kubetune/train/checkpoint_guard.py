"""A Trainer checkpoint that a kill cut short is never resumed from: it carries a marker until every rank is done.

The Trainer's `_save_checkpoint` writes straight into `checkpoint-N`: the weights, the optimizer, scheduler and
each rank's generators, then `trainer_state.json` (rank 0, in place), then deletes old checkpoints beyond
`save_total_limit`. A SIGKILL in there can leave a `checkpoint-N` whose `trainer_state.json` exists but is cut
off, or is written while another rank's `rng_state_<r>.pth` is not yet; and a kill after the rotation but before
the new checkpoint is whole leaves no complete checkpoint at all.

`guard_checkpoints` wraps the save of a Trainer the way transformers' own just-in-time checkpoints do: rank 0
writes `checkpoint-is-incomplete.txt` into the folder before anything else (clearing what a cut-short save of
the same step left), the Trainer saves, the ranks meet, and only then does rank 0 remove the marker and
rotate old checkpoints. `last_complete_checkpoint` skips a folder that has the marker, so whichever instant a
kill lands in, the rerun resumes from a checkpoint every rank finished. (A temp folder renamed into place, as
ppo's own checkpoints do, is not possible here without rewriting `_save_checkpoint`: it derives the folder
from `output_dir` itself and reads the best checkpoint's folder next to it.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from kubetune.train.arguments import INCOMPLETE_SENTINEL


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def guard_checkpoints(trainer: Any) -> None:
    """Make `trainer`'s checkpoint saves marked incomplete until every rank finished them (see the module).

    Args:
        trainer: a transformers `Trainer` (its `_save_checkpoint` is wrapped on this instance only).
    """
    if getattr(trainer, "_kubetune_guarded", False):
        return
    save = trainer._save_checkpoint

    def guarded(model: Any, trial: Any) -> None:
        folder = Path(trainer._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        main = trainer.args.should_save
        if main:
            if folder.exists():  # what a cut-short save of this same step left: none of it is this save's
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            (folder / INCOMPLETE_SENTINEL).write_text("kubetune: this checkpoint's save has not finished\n")
        _barrier()  # no rank writes into the folder before the marker is in it
        limit = trainer.args.save_total_limit
        trainer.args.save_total_limit = None  # no rotation before the new checkpoint is whole
        try:
            save(model, trial)
        finally:
            trainer.args.save_total_limit = limit
        _barrier()  # every rank's files (its generators, its shard) are in
        if main:
            (folder / INCOMPLETE_SENTINEL).unlink()
            rotate_checkpoints(output_dir=str(folder.parent), save_total_limit=limit,
                               best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)

    trainer._save_checkpoint = guarded
    trainer._kubetune_guarded = True
