"""One module per training stage; each exposes `run(cfg, callbacks=None) -> StageResult`.

pt and sft share one recipe (only the data encoding differs), so `pt` runs `sft.run`.
"""

from __future__ import annotations

import importlib

from kubetune.config import RunConfig
from kubetune.model.auto_precision import resolve_bf16
from kubetune.train.result import StageResult


def run_stage(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run `cfg.method.stage` (validated to be implemented by the config rules).

    An unset `bf16` is decided here, on the device that trains (`model.auto_precision`).
    """
    resolve_bf16(cfg)
    module = "sft" if cfg.method.stage == "pt" else cfg.method.stage
    return importlib.import_module(f"kubetune.stages.{module}").run(cfg, callbacks=callbacks)
