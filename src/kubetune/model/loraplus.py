"""LoRA+ (Hayou et al., 2024): train each adapter's B matrix with a larger learning rate than its A.

`loraplus_lr_ratio` multiplies the learning rate of B; LoRA adapters on embedding layers get their own
`loraplus_lr_embedding`. The grouping follows LLaMA-Factory (and PEFT's `create_loraplus_optimizer`):
1-D trainable tensors (DoRA magnitudes, norms saved via `additional_target`) go with B; any other
trainable tensor (A matrices, full `additional_target` weights) keeps the base learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from kubetune.config import FinetuningArguments

# parameter groups, in the order the optimizer holds them
GROUPS = ("lora_A", "lora_A_no_decay", "lora_B", "lora_B_no_decay", "embedding")


def loraplus_group(name: str, param: torch.Tensor) -> str:
    """The LoRA+ group of one trainable parameter, by its name and shape."""
    if "lora_embedding_" in name:
        return "embedding"
    if "lora_B" in name or param.ndim == 1:
        return "lora_B"
    return "lora_A"


def loraplus_optimizer(model: Any, args: TrainingArguments,
                       method: FinetuningArguments) -> torch.optim.Optimizer | None:
    """The optimizer for a LoRA+ run, or None (the Trainer then builds its usual one).

    Pass it to a Trainer as `optimizers=(loraplus_optimizer(...), None)`; the Trainer still builds the
    learning-rate schedule, which scales every group's rate by the same factor.

    Args:
        model: the model to train (a PeftModel); only parameters with requires_grad are optimised.
        args: the TrainingArguments: `optim` picks the optimizer class, `learning_rate` is A's rate,
            `weight_decay` applies as the Trainer would (not to biases and norms).
        method: finetuning arguments; `loraplus_lr_ratio` None means no LoRA+.
    """
    if method.loraplus_lr_ratio is None:
        return None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        return None
    decay = set(Trainer.get_decay_parameter_names(None, model))  # does not read self
    lr = args.learning_rate
    rates = {"lora_A": lr, "lora_B": lr * method.loraplus_lr_ratio, "embedding": method.loraplus_lr_embedding}
    groups: dict[str, dict[str, Any]] = {}
    for name, param in params.items():
        kind = loraplus_group(name, param)
        decays = name in decay
        key = kind if decays or kind == "embedding" else f"{kind}_no_decay"
        group = groups.setdefault(key, {"params": [], "name": key, "lr": rates[kind],
                                        "weight_decay": args.weight_decay if decays else 0.0})
        group["params"].append(param)
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs.pop("lr", None)
    ordered = [groups[k] for k in GROUPS if k in groups]  # a fixed order keeps resumed optimizer states aligned
    return optimizer_cls(ordered, lr=lr, **kwargs)
