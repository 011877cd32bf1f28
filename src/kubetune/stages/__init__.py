"""One module per training stage; each exposes `run(cfg) -> StageResult`."""

from __future__ import annotations

from kubetune.config import RunConfig
from kubetune.stages.result import StageResult


def run_stage(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run `cfg.method.stage`. pt and sft share one recipe: only the data encoding differs."""
    if cfg.method.stage in ("sft", "pt"):
        from kubetune.stages import sft

        return sft.run(cfg, callbacks=callbacks)
    raise NotImplementedError(f"stage {cfg.method.stage!r} is not implemented yet")
