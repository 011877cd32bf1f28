"""The stage recipes, one module each; every one exposes `run(cfg, callbacks=None) -> StageResult`.

pt and sft share one recipe (only the data encoding differs), so `pt` runs `sft.run`. Inside a Kubeflow
Trainer TrainJob that takes progress reports, every recipe also gets the callback that writes them into the
job's status (`kubetune.tracking.trainjob_status`): `kubetune train`, a pipeline step and each node's ranks alike.
"""

from __future__ import annotations

from collections.abc import Callable

from kubetune.config import RunConfig
from kubetune.model.auto_precision import with_bf16_decided
from kubetune.model.deepspeed_unwrap import defer_deepspeed_import
from kubetune.stages import dpo, kto, ppo, rm, sft
from kubetune.tracking.trainjob_status import trainjob_status_callbacks
from kubetune.train.early_stopping import early_stopping_callbacks
from kubetune.train.preemption import preemption_callbacks
from kubetune.train.result import StageResult

RECIPES: dict[str, Callable[..., StageResult]] = {
    "pt": sft.run, "sft": sft.run, "rm": rm.run, "dpo": dpo.run, "kto": kto.run, "ppo": ppo.run,
}


def run_stage(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run `cfg.method.stage`'s recipe.

    An unset `bf16` is decided here, on the device that trains (`model.auto_precision`), and
    `early_stopping_steps` adds its callback to every recipe, as LLaMA-Factory's tuner does, and
    `save_on_sigterm_grace` its pre-emption callback (`kubetune.train.preemption`).
    """
    defer_deepspeed_import()  # a run without a DeepSpeed config never imports it (model.deepspeed_unwrap)
    return RECIPES[cfg.method.stage](with_bf16_decided(cfg), callbacks=[
        *(callbacks or []), *trainjob_status_callbacks(), *early_stopping_callbacks(cfg), *preemption_callbacks(cfg)])
