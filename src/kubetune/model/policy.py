"""The model a stage trains (or evaluates): the base, loaded once, with the config's fine-tuning method applied."""

from __future__ import annotations

from typing import Any

import torch
from transformers import set_seed

from kubetune.config import RunConfig
from kubetune.model.adapters import prepare_for_training
from kubetune.model.fp8 import convert_linear_layers, emulated, require_fp8_device
from kubetune.model.loader import load_base_model, weight_dtype


def load_policy(cfg: RunConfig, model_path: str, *, trainable: bool, gradient_checkpointing: bool | None = None,
                tokenizer: Any | None = None) -> tuple[Any, torch.dtype]:
    """Load the base from `model_path` and apply `finetuning_type` (LoRA / freeze / full, adapters, quantisation).

    The seed is set first: adapter (and later value-head) initialisation draws from the global RNG,
    so the same seed gives the same run (and the same random weights with `train_from_scratch`).
    `rope_scaling` is sized for `cutoff_len`, as LLaMA-Factory does for every training run. With `fp8`, the
    device is checked first and the linear layers are converted last (`kubetune.model.fp8`).

    Args:
        cfg: the run config (model, method, seed, precision).
        model_path: the resolved `model_name_or_path` (`kubetune.data.setup.StageData.model_path`).
        trainable: make the fine-tuned parameters trainable (LoRA keeps its last adapter unmerged).
        gradient_checkpointing: enable activation checkpointing; None = `trainable and
            cfg.train.gradient_checkpointing`.
        tokenizer: the stage's tokenizer, which `resize_vocab` sizes the embeddings to; None loads the model's
            (with the config's new tokens).

    Returns:
        (the model, its weight dtype: a LoRA base is 16-bit under bf16/fp16, see `weight_dtype`).
    """
    fp8 = trainable and cfg.train.fp8
    if fp8:
        require_fp8_device()  # before the model loads: a node without FP8 tensor cores stops here
    dtype = weight_dtype(cfg)
    set_seed(cfg.train.seed)
    model = load_base_model(cfg.model, dtype=dtype, path=model_path, model_max_length=cfg.data.cutoff_len,
                            from_scratch=cfg.model.train_from_scratch, tokenizer=tokenizer)
    if gradient_checkpointing is None:
        gradient_checkpointing = trainable and cfg.train.gradient_checkpointing
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=trainable,
                                 gradient_checkpointing=gradient_checkpointing)
    if fp8:
        convert_linear_layers(model, all_gather=cfg.train.fp8_enable_fsdp_float8_all_gather, emulate=emulated())
    return model, dtype


def load_preference_policy(cfg: RunConfig, model_path: str, *, train: bool) -> Any:
    """The policy of a dpo or kto stage: `load_policy`, dropout off, frozen when only evaluated.

    LoRA keeps its (last) adapter unmerged even to evaluate: the reference is then the policy with
    that adapter disabled (`kubetune.model.reference`). Dropout is off because the log-ratios must
    compare policy and reference on the same footing (TRL and LLaMA-Factory do the same).

    Args:
        cfg: the run config.
        model_path: the resolved `model_name_or_path`.
        train: the stage trains (else the policy is frozen and put in eval mode).
    """
    from kubetune.model.reference import disable_dropout

    lora = cfg.method.finetuning_type == "lora"
    model, _ = load_policy(cfg, model_path, trainable=train or lora,
                           gradient_checkpointing=train and cfg.train.gradient_checkpointing)
    if not train:
        model.requires_grad_(False)
        model.eval()
    disable_dropout(model)
    return model
