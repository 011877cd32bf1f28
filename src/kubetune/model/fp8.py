"""`fp8: true`: train the model's linear layers with FP8 matrix multiplies (torchao's float8 training).

LLaMA-Factory hands FP8 to accelerate (`AORecipeKwargs`), which calls torchao's `convert_to_float8_training`
when the model is prepared. kubetune converts the same layers itself, right after the fine-tuning method is
applied (so LoRA's frozen base layers are converted too, as accelerate's prepare sees them), and keeps the
run's bf16 autocast around them:

- which layers: every `nn.Linear` whose name has none of embed / lm_head / output / classifier / score / v_head
  and whose two dimensions are multiples of 16 (FP8 kernels need them); a LoRA adapter's own matrices (and
  `modules_to_save` copies) stay in high precision — kubetune's choice: LLaMA-Factory's filter would convert
  them when the rank is a multiple of 16;
- the recipe: torchao's `rowwise` scaling (LLaMA-Factory's choice); with `fp8_enable_fsdp_float8_all_gather`,
  `tensorwise` with FP8 all-gather switched on, the one scaling torchao can all-gather in FP8 (LLaMA-Factory
  logs the flag and leaves rowwise, so there it changes nothing);
- where: a CUDA GPU with FP8 tensor cores (compute capability 8.9: Ada, Hopper and later). Anywhere else the
  run stops before loading the model. `KUBETUNE_FP8_EMULATE=1` runs torchao's emulation instead (FP8 casts,
  float matmuls): the same numerics on any device, slowly — to check a config on a CPU, and for our tests.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

EMULATE_ENV = "KUBETUNE_FP8_EMULATE"
# names of layers kept in high precision: the embeddings and the heads are the numerically fragile ends
_KEEP_HIGH_PRECISION = ("embed", "lm_head", "output", "classifier", "score", "v_head")
_FP8_CAPABILITY = (8, 9)


def emulated() -> bool:
    """True when `KUBETUNE_FP8_EMULATE=1` asks for torchao's emulated FP8 (any device, slow)."""
    return os.environ.get(EMULATE_ENV, "") == "1"


def require_fp8_device() -> None:
    """Raise, before any model is loaded, where FP8 training cannot run (no FP8 GPU, no torchao).

    Raises:
        RuntimeError: naming what is missing and what to do.
    """
    try:
        import torchao.float8  # noqa: F401
    except ImportError as err:
        raise RuntimeError("fp8: true needs torchao: pip install 'kubetune[fp8]' (or torchao==0.18.0)") from err
    if emulated():
        logger.warning("fp8: %s=1, so FP8 is emulated (FP8 casts, float matmuls): correct numbers, no speed-up",
                       EMULATE_ENV)
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            "fp8: true needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: NVIDIA Ada, Hopper or "
            f"later), and this machine has no CUDA GPU. Run the step on such a node, use bf16 instead, or set "
            f"{EMULATE_ENV}=1 to check the config with emulated FP8 (slow)")
    capability = torch.cuda.get_device_capability()
    if capability < _FP8_CAPABILITY:
        raise RuntimeError(
            f"fp8: true needs FP8 tensor cores (compute capability 8.9+: NVIDIA Ada, Hopper or later); "
            f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}. Use bf16 on this GPU")


def converts_to_fp8(module: torch.nn.Module, name: str) -> bool:
    """Whether `convert_linear_layers` turns this module into an FP8 linear layer."""
    if type(module) is not torch.nn.Linear:
        return False
    if any(part in name.lower() for part in _KEEP_HIGH_PRECISION):
        return False
    if "lora_" in name or "modules_to_save" in name:  # the adapter trains in high precision on the FP8 base
        return False
    out_features, in_features = module.weight.shape
    return in_features % 16 == 0 and out_features % 16 == 0


def convert_linear_layers(model: Any, *, all_gather: bool = False, emulate: bool = False) -> int:
    """Swap `model`'s eligible linear layers (`converts_to_fp8`) for torchao's `Float8Linear`, in place.

    Args:
        model: the model to train, after its fine-tuning method is applied.
        all_gather: `fp8_enable_fsdp_float8_all_gather`: tensorwise scaling with FP8 all-gather under FSDP2.
        emulate: torchao's emulation (FP8 casts, float matmuls), which runs on any device.

    Returns:
        How many layers were converted.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    recipe = "tensorwise" if all_gather else "rowwise"
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe),
                                 enable_fsdp_float8_all_gather=all_gather, emulate=emulate)
    eligible = [name for name, module in model.named_modules() if converts_to_fp8(module, name)]
    convert_to_float8_training(model, config=config, module_filter_fn=converts_to_fp8)
    logger.info("fp8: %d linear layers train with FP8 matmuls (%s scaling%s%s)", len(eligible), recipe,
                ", FP8 all-gather" if all_gather else "", ", emulated" if emulate else "")
    return len(eligible)
