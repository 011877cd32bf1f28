"""`upcast_layernorm`: keep normalisation layers in float32 while the rest of the model is 16-bit.

A norm divides by a root-mean-square that bfloat16 rounds coarsely; LLaMA-Factory keeps norm weights in
float32 for that reason. We also run the norm itself in float32 (its input is cast up by a pre-hook) and
hand the next layer its input's dtype back (a post-hook), so 16-bit linear layers still get 16-bit inputs.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def is_norm(module: torch.nn.Module) -> bool:
    """A LayerNorm or a model's own RMSNorm class (`LlamaRMSNorm`, `Qwen2RMSNorm`, ...)."""
    return isinstance(module, torch.nn.LayerNorm | torch.nn.RMSNorm) or module.__class__.__name__.endswith("Norm")


def upcast_layernorms(model: torch.nn.Module) -> int:
    """Store every norm's parameters in float32 and compute the norm in float32; returns how many norms.

    Args:
        model: the model to change in place (any dtype; a float32 model is left as it was, in effect).
    """
    count = 0
    for module in model.modules():
        if not is_norm(module) or not any(True for _ in module.parameters(recurse=False)):
            continue
        module.to(torch.float32)
        module.register_forward_pre_hook(_inputs_to_float32, with_kwargs=True)
        module.register_forward_hook(_output_to_input_dtype, with_kwargs=True)
        count += 1
    logger.info("upcast_layernorm: %d norm layers kept in float32", count)
    return count


def _first_float(values: Any) -> torch.dtype | None:
    for value in values:
        if torch.is_tensor(value) and value.is_floating_point():
            return value.dtype
    return None


def _inputs_to_float32(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    module._kt_input_dtype = _first_float([*args, *kwargs.values()])  # type: ignore[assignment]

    def up(value: Any) -> Any:
        return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

    return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}


def _output_to_input_dtype(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    dtype = getattr(module, "_kt_input_dtype", None)
    if dtype is None or not torch.is_tensor(output):
        return output
    return output.to(dtype)
