"""PiSSA conversion: after training, write the adapter as plain LoRA that applies to the original base.

A PiSSA adapter starts from the top-r singular directions of each weight (A₀, B₀) and trains against the
residual base W − B₀A₀. To use it on the untouched W, PEFT rewrites it as a rank-2r LoRA adapter whose
product is BA − B₀A₀; for that it needs A₀, B₀, which this callback saves before the first step.

Layout (LLaMA-Factory's): `<output_dir>/pissa_init` (the initial adapter), `<output_dir>/pissa_converted`
(the adapter to export, chat with, or stack); `<output_dir>` itself keeps the PiSSA-form adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.config import FinetuningArguments

logger = logging.getLogger(__name__)


class PissaConvertCallback(TrainerCallback):
    """Save the initial PiSSA adapter at step 0 and the converted plain-LoRA adapter at the end.

    Args:
        output_dir: the run's output directory (`pissa_init/` and `pissa_converted/` go inside).
    """

    def __init__(self, output_dir: Path) -> None:
        self.init_dir = Path(output_dir) / "pissa_init"
        self.converted_dir = Path(output_dir) / "pissa_converted"

    def on_train_begin(self, args, state, control, model: Any = None, **kwargs: Any) -> None:  # noqa: ANN001
        if not args.should_save:
            return
        if state.global_step > 0:  # resumed: the weights are trained already, the first start saved A₀, B₀
            if not (self.init_dir / "adapter_config.json").is_file():
                raise RuntimeError(f"pissa_convert needs the initial adapter in {self.init_dir}, saved when the run "
                                   "started, but this resumed run has none: start over (overwrite_output_dir: true)")
            return
        _save_plain(model, self.init_dir)
        logger.info("PiSSA: initial adapter saved to %s", self.init_dir)

    def on_train_end(self, args, state, control, model: Any = None, **kwargs: Any) -> None:  # noqa: ANN001
        if not args.should_save:
            return
        _save_plain(model, self.converted_dir, path_initial_model_for_weight_conversion=str(self.init_dir))
        logger.info("PiSSA: converted to plain LoRA for the original base in %s", self.converted_dir)


def _save_plain(model: Any, path: Path, **kwargs: Any) -> None:
    """Save with `init_lora_weights: true`, so that loading it never re-runs the SVD on the base."""
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        model.save_pretrained(str(path), **kwargs)
    finally:
        config.init_lora_weights = init


def pissa_callbacks(method: FinetuningArguments, output_dir: Path) -> list[TrainerCallback]:
    """The callbacks a Trainer needs for `pissa_convert` (none otherwise)."""
    return [PissaConvertCallback(output_dir)] if method.pissa_init and method.pissa_convert else []
