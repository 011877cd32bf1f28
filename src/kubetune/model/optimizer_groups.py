"""Parameter groups the optimisers kubetune builds share: the weight-decay split, targeted linear weights, and
one optimizer per parameter (layer-wise GaLore and APOLLO)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from kubetune.model.adapters import linear_module_names


def decay_split(model: Any, params: dict[str, torch.nn.Parameter]) -> tuple[list, list]:
    """(decayed, not decayed) parameters, as the Trainer splits them (no decay on biases and norms)."""
    decay = set(Trainer.get_decay_parameter_names(None, model))  # does not read self
    return ([p for n, p in params.items() if n in decay], [p for n, p in params.items() if n not in decay])


def _matches(module_name: str, targets: list[str]) -> bool:
    """A target names a module (`q_proj`), a parent (`mlp`) or a dotted path (`layers.0.mlp`)."""
    dotted = f".{module_name}."
    return any(f".{t}." in dotted for t in targets)


def linear_weights(model: Any, target: list[str], key: str) -> dict[str, torch.nn.Parameter]:
    """The trainable weights of the linear layers `target` names (`all`: every linear but the head).

    Raises:
        ValueError: naming `key`, when the targets match no linear layer of this model.
    """
    targets = linear_module_names(model) if target == ["all"] else target
    found: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _matches(name, targets) and module.weight.requires_grad:
            found[f"{name}.weight"] = module.weight
    if not found:
        raise ValueError(f"{key} {target} matches no linear layer of this model; "
                         f"its linear layers are {', '.join(linear_module_names(model))}")
    return found


def layerwise(groups: list[dict], optimizer_cls: type, kwargs: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """One `optimizer_cls` per parameter (with its group's settings), stepped from a post-accumulate-grad hook,
    behind transformers' `LayerWiseDummyOptimizer` (`attach` gives each its learning-rate schedule)."""
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    per_param: dict[torch.nn.Parameter, torch.optim.Optimizer] = {}
    for group in groups:
        for param in group["params"]:
            per_param[param] = optimizer_cls([{**group, "params": [param]}], **kwargs)

    def step_now(param: torch.nn.Parameter) -> None:
        # runs once per backward: each micro-batch would step (hence no gradient accumulation, see rules_optim)
        if param.grad is not None:
            per_param[param].step()
            per_param[param].zero_grad(set_to_none=True)

    for param in per_param:
        param.register_post_accumulate_grad_hook(step_now)
    return LayerWiseDummyOptimizer(optimizer_dict=per_param, lr=lr)
