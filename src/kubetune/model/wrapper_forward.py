"""Run a loss computed from a model's parts as the forward pass of its distributed wrapper.

The fused losses (`kubetune.losses.causal_lm`) call the backbone and read the output head's
weight themselves, so the full-vocabulary logits are never built. Under DistributedDataParallel
(and DeepSpeed's engine) that bypasses the wrapper's forward, and a backward that follows no
wrapper forward is not all-reduced: each rank would step on its own gradient while the logged
(gathered) loss looked right. `forward_through_wrapper` runs the computation *as* the wrapped
module's forward, through the wrapper's own `__call__`, so its hooks run as for any forward.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from torch import nn

T = TypeVar("T")


def forward_through_wrapper(model: nn.Module, compute: Callable[[], T]) -> T:
    """`compute()`, called from inside `model`'s forward when `model` is a DDP/DeepSpeed wrapper.

    Args:
        model: the module the Trainer trains: a wrapper with `.module` (DDP, DeepSpeedEngine) or the
            model itself (one process, FSDP2's in-place sharding), when `compute()` runs directly.
        compute: the loss computation; it closes over its batch and the unwrapped model's parts.
    """
    wrapped = _wrapped_module(model)
    if wrapped is None:
        return compute()
    # An instance attribute shadows the class's forward for this one call; the wrapper calls
    # `self.module(...)`, which runs the module's hooks and then this. Accelerate may have put its own
    # instance forward there already (its mixed-precision autocast wrapper): it comes back afterwards.
    previous = wrapped.__dict__.get("forward")
    wrapped.forward = lambda *args, **kwargs: compute()
    try:
        return model()
    finally:
        if previous is None:
            del wrapped.forward
        else:
            wrapped.forward = previous


def _wrapped_module(model: nn.Module) -> nn.Module | None:
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.module
    deepspeed = sys.modules.get("deepspeed")  # not imported: no engine can wrap the model (and importing costs seconds)
    if deepspeed is None:
        return None
    return model.module if isinstance(model, deepspeed.DeepSpeedEngine) else None
