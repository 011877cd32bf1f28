"""Decide which parameters train: a LoRA adapter, the last few layers (freeze), or everything.

Loaded adapters (`adapter_name_or_path`) are merged into the base in order, except the last
one when training LoRA: that one keeps training, as a user resuming an adapter expects.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training

from kubetune.config import FinetuningArguments, ModelArguments
from kubetune.model.loader import count_parameters

logger = logging.getLogger(__name__)

_HEADS = ("lm_head", "score", "v_head", "output_layer")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of every linear layer except the output head (`lora_target: all`)."""
    names: set[str] = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or "Linear" in module.__class__.__name__
        short = full_name.split(".")[-1]
        if is_linear and short not in _HEADS and "lora_" not in full_name:
            names.add(short)
    return sorted(names)


def prepare_for_training(model: Any, model_args: ModelArguments, method: FinetuningArguments,
                         *, gradient_checkpointing: bool, is_trainable: bool = True) -> Any:
    """Apply `finetuning_type` to a loaded base and return the model to train (or run).

    Args:
        model: the base model from `load_base_model`.
        model_args: for `adapter_name_or_path` and quantisation.
        method: finetuning arguments.
        gradient_checkpointing: recompute activations in backward (less memory, ~30% more compute).
        is_trainable: False for evaluation/prediction: adapters are loaded frozen.
    """
    quantized = model_args.quantization_bit is not None
    if is_trainable and quantized:
        # casts norms to float32 and enables input grads so checkpointing works through frozen 4-bit layers
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif is_trainable and gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if is_trainable and gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and breaks recomputation

    if method.finetuning_type == "lora":
        model = _apply_lora(model, model_args, method, is_trainable)
    elif model_args.adapter_name_or_path:
        raise ValueError("adapter_name_or_path needs finetuning_type: lora")
    elif not is_trainable:
        model.requires_grad_(False)
    elif method.finetuning_type == "freeze":
        _apply_freeze(model, method)
    else:  # full
        model.requires_grad_(True)

    if is_trainable:
        trainable, total = count_parameters(model)
        logger.info("trainable params: %s || all params: %s || trainable%%: %.4f",
                    f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    else:
        model.eval()
    return model


def _apply_lora(model: Any, model_args: ModelArguments, method: FinetuningArguments, is_trainable: bool) -> Any:
    adapters = list(model_args.adapter_name_or_path or [])
    if model_args.quantization_bit is not None and adapters:
        # Merging into a quantised base would round the adapter away, so it stays a separate module.
        if len(adapters) > 1:
            raise ValueError("a quantised base can carry only one adapter: merge the others first "
                             "(`kubetune export` on the unquantised base)")
        return PeftModel.from_pretrained(model, adapters[0], is_trainable=is_trainable)
    for path in adapters if not is_trainable else adapters[:-1]:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        logger.info("merged adapter %s into the base", path)
    if not is_trainable:
        model.requires_grad_(False)
        return model
    if adapters:
        logger.info("continuing to train adapter %s", adapters[-1])
        return PeftModel.from_pretrained(model, adapters[-1], is_trainable=True)

    targets = method.lora_target
    if targets == ["all"]:
        targets = linear_module_names(model)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method.lora_rank,
        lora_alpha=method.lora_alpha or 2 * method.lora_rank,
        lora_dropout=method.lora_dropout,
        target_modules=targets,
        modules_to_save=method.additional_target,
    )
    model = get_peft_model(model, config)
    logger.info("LoRA r=%d alpha=%d on %s", config.r, config.lora_alpha, ", ".join(sorted(targets)))
    return model


def _apply_freeze(model: Any, method: FinetuningArguments) -> None:
    """Train the last (or first) n decoder layers, optionally only some of their modules."""
    num_layers = model.config.num_hidden_layers
    n = method.freeze_trainable_layers
    layer_ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    modules = method.freeze_trainable_modules
    extra = method.freeze_extra_modules or []
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    trained: set[str] = set()
    for name, param in model.named_parameters():
        match = layer_re.search(name)
        in_layer = match is not None and int(match.group(1)) in layer_ids
        wanted = in_layer and (modules == ["all"] or any(f".{m}." in name for m in modules))
        wanted = wanted or (match is None and any(f"{m}." in name or name.startswith(m) for m in extra))
        param.requires_grad_(wanted)
        if wanted:
            trained.add(name)
    if not trained:
        raise ValueError(f"freeze: no parameter matched layers {list(layer_ids)} and modules {modules}")
    logger.info("freeze: training layers %s (modules: %s; extra: %s)", list(layer_ids), modules, extra or "none")
