"""Before training starts: can `output_dir` be written, and does its disk have room for the run's checkpoints?

Without this, a read-only volume or a full disk shows up at the first checkpoint — `save_steps` (often an hour)
into the run, as an `OSError` from deep inside the Trainer — and the hour is lost. `check_output_dir` creates the
folder and a probe file in it, and compares the free space (`shutil.disk_usage`) with the estimate of what the
run writes: the checkpoints kept at once (`save_total_limit`, else at least one) and the final model, each sized
by `kubetune.estimate.checkpoint_bytes` (trainable weights × their bytes, plus AdamW's two moments). Where the
estimate cannot be made here (the model's config is not readable yet), only the write is checked.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from kubetune.config import RunConfig
from kubetune.config.errors import ConfigError, Problem

logger = logging.getLogger(__name__)
GIB = 1024**3


def _problem(cfg: RunConfig, message: str, hint: str) -> ConfigError:
    source = cfg.source or "config"
    return ConfigError([Problem("output_dir", cfg.train.output_dir, source, message, hint)], cfg.source)


def needed_bytes(cfg: RunConfig) -> tuple[float, str] | None:
    """What the run writes into output_dir at most at once, by the estimate, and how it was counted; None if the
    estimate cannot be made here."""
    from kubetune.estimate import checkpoint_bytes, estimate_config

    try:
        est, _ = estimate_config(cfg, cuda_context=0.0)
    except Exception as err:  # noqa: BLE001 — any unreadable model config: the space check is skipped, not the run
        logger.info("output_dir free-space check skipped: the model's size cannot be estimated here (%s)", err)
        return None
    t = cfg.train
    one = checkpoint_bytes(est, cfg.method.finetuning_type, save_only_model=bool(t.save_only_model))
    final = checkpoint_bytes(est, cfg.method.finetuning_type, save_only_model=True)
    kept = 0 if t.save_strategy == "no" else max(1, t.save_total_limit or 1)
    return kept * one + final, (f"{kept} checkpoint{'s' if kept != 1 else ''} of {one / GIB:.2f} GiB "
                                f"(save_total_limit {t.save_total_limit}) and the final model of {final / GIB:.2f} GiB")


def check_output_dir(cfg: RunConfig, out: Path) -> None:
    """Create `out`, write a probe file in it, and check its disk has room for the run's checkpoints (see module).

    Args:
        cfg: the run config (what is trained, and how checkpoints are kept).
        out: the output folder.

    Raises:
        ConfigError: naming output_dir, when it cannot be created or written, or its disk has less free space
            than the estimate of what the run writes.
    """
    probe = out / f".kubetune-write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"kubetune")
        probe.unlink()
    except OSError as err:
        raise _problem(cfg, f"cannot be written ({err.strerror or err}): training would fail at its first "
                       "checkpoint", "choose a writable output_dir, or mount its volume read-write") from err
    if cfg.train.do_train is False:
        return
    need = needed_bytes(cfg)
    if need is None:
        return
    needed, how = need
    free = shutil.disk_usage(out).free
    if free < needed:
        raise _problem(cfg, f"has {free / GIB:.2f} GiB free, and the run writes about {needed / GIB:.2f} GiB into "
                       f"it by the estimate ({how}): it would run out of space mid-run",
                       "free space, choose an output_dir on a larger volume, lower save_total_limit, or set "
                       "save_only_model: true (checkpoints without the optimizer state)")
    logger.info("output_dir %s: %.2f GiB free, about %.2f GiB needed (%s)", out, free / GIB, needed / GIB, how)
