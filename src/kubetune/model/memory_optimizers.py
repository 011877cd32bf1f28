"""Memory-saving optimisers for full fine-tuning: GaLore and BAdam (APOLLO, Adam-mini, Muon: `extra_optimizers`).

GaLore (Zhao et al., 2024) keeps Adam's moments in a low-rank projection of each targeted weight's
gradient (`galore_rank`), re-taking the projection by SVD every `galore_update_interval` steps; the
update is projected back and scaled by `galore_scale`. Weights it does not target (norms, embeddings,
the head) get plain AdamW. With `galore_layerwise` every parameter has its own optimizer, stepped by a
hook as soon as its gradient is ready, so the full set of gradients never exists at once.

BAdam (Luo et al., 2024) is block-coordinate Adam: `badam_mode: layer` trains one decoder layer at a
time and moves on every `badam_switch_interval` steps (order: `badam_switch_mode`); `ratio` updates a
`badam_update_ratio` share of every weight through sparse gradients.

Both come from their authors' packages (`galore-torch`, `badam`); this module builds their parameter
groups the way LLaMA-Factory does, and `custom_optimizer` picks between them and LoRA+.
"""

from __future__ import annotations

import logging
import warnings
from types import MethodType
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, get_scheduler

from kubetune.config import FinetuningArguments
from kubetune.model.loraplus import loraplus_optimizer
from kubetune.model.optimizer_groups import decay_split, layerwise, linear_weights

logger = logging.getLogger(__name__)

# `optim` → the galore_torch class with the same update rule
GALORE_OPTIMIZERS = {
    "adamw_torch": "GaLoreAdamW", "adamw_torch_fused": "GaLoreAdamW",
    "adamw_8bit": "GaLoreAdamW8bit", "adamw_bnb_8bit": "GaLoreAdamW8bit",
    "adafactor": "GaLoreAdafactor",
}


def custom_optimizer(model: Any, args: TrainingArguments, method: FinetuningArguments) -> torch.optim.Optimizer | None:
    """The optimizer `method` asks for (GaLore, APOLLO, BAdam, Adam-mini, Muon or LoRA+), or None for the
    Trainer's own. The rules let at most one be chosen.

    Pass it as `Trainer(optimizers=(custom_optimizer(...), None))`, then call `attach(trainer, method)`.

    Args:
        model: the model to train, after `prepare_for_training`.
        args: the TrainingArguments (`optim`, `learning_rate`, `weight_decay`, Adam's betas and ε).
        method: finetuning arguments (`use_galore`, `use_apollo`, `use_badam`, `use_adam_mini`, `use_muon`,
            `loraplus_lr_ratio` and their settings).
    """
    from kubetune.model import extra_optimizers

    if method.use_galore:
        return galore_optimizer(model, args, method)
    if method.use_apollo:
        return extra_optimizers.apollo_optimizer(model, args, method)
    if method.use_badam:
        return badam_optimizer(model, args, method)
    if method.use_adam_mini:
        return extra_optimizers.adam_mini_optimizer(model, args)
    if method.use_muon:
        return extra_optimizers.muon_optimizer(model, args)
    return loraplus_optimizer(model, args, method)


def attach(trainer: Trainer, method: FinetuningArguments) -> None:
    """Adjust a built Trainer (before `train`) to the optimizer `custom_optimizer` gave it.

    - Layer-wise GaLore: each parameter's optimizer needs its own learning-rate schedule, stepped by a hook
      after its optimizer. transformers means to do this in `get_scheduler`, but in 5.23 the Trainer hands it
      the accelerate-wrapped optimizer (so it never does: every rate stays constant) and its
      `LayerWiseDummyScheduler` fails on torch 2.13 (`zip(strict=True)`); we build the schedules here. The
      Trainer's own schedule on the dummy optimizer then only reports the same rate for logging.
    - BAdam ratio mode leaves sparse gradients, whose norm torch's `clip_grad_norm_` cannot take (no sparse
      `linalg_vector_norm`); badam ships a clip that can.
    """
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    layerwise = trainer.optimizer
    if isinstance(layerwise, LayerWiseDummyOptimizer):
        create_scheduler = trainer.create_scheduler

        def per_parameter_schedules(num_training_steps: int, optimizer: Any = None) -> Any:
            args = trainer.args
            schedules = {param: get_scheduler(args.lr_scheduler_type, optimizer=per_param,
                                              num_warmup_steps=args.get_warmup_steps(num_training_steps),
                                              num_training_steps=num_training_steps,
                                              scheduler_specific_kwargs=args.lr_scheduler_kwargs)
                         for param, per_param in layerwise.optimizer_dict.items()}
            for param in schedules:  # registered after the optimizer's hook, so it runs after that step
                param.register_post_accumulate_grad_hook(lambda p: schedules[p].step())
            return create_scheduler(num_training_steps, optimizer)

        trainer.create_scheduler = per_parameter_schedules  # type: ignore[method-assign]
    if method.use_badam and method.badam_mode == "ratio" and trainer.args.max_grad_norm > 0:
        from badam import clip_grad_norm_old_version

        trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)


def galore_parameters(model: Any, method: FinetuningArguments) -> dict[str, torch.nn.Parameter]:
    """The trainable 2-D weights of the linear layers `galore_target` names (`all`: every linear but the head).

    Raises:
        ValueError: when the targets match no linear layer of this model.
    """
    return linear_weights(model, method.galore_target, "galore_target")


def galore_optimizer(model: Any, args: TrainingArguments, method: FinetuningArguments) -> torch.optim.Optimizer:
    """GaLore over the targeted weights, plain AdamW (or the chosen `optim`) over the rest.

    Groups, in this order: `galore` (with rank, update_proj_gap, scale and proj_type), `decay`, `no_decay`.
    Layer-wise: one optimizer per parameter, stepped from a post-accumulate-grad hook, behind transformers'
    `LayerWiseDummyOptimizer` (the Trainer then builds one learning-rate schedule per parameter too).
    """
    import galore_torch
    from galore_torch.galore_projector import GaLoreProjector

    # The optimizer state holds a GaLoreProjector per weight; the Trainer resumes with torch.load(weights_only=True),
    # which refuses any class not allow-listed (measured: resuming a GaLore checkpoint fails without this).
    torch.serialization.add_safe_globals([GaLoreProjector])
    optimizer_cls = getattr(galore_torch, GALORE_OPTIMIZERS[args.optim])
    kwargs: dict[str, Any] = {"lr": args.learning_rate}
    if optimizer_cls is galore_torch.GaLoreAdafactor:
        kwargs.update(scale_parameter=False, relative_step=False)
    else:
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    if optimizer_cls is galore_torch.GaLoreAdamW:
        kwargs["no_deprecation_warning"] = True  # the class is transformers' old AdamW plus projection

    galore = galore_parameters(model, method)
    galore_ids = {id(p) for p in galore.values()}
    rest = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in galore_ids}
    decay, no_decay = decay_split(model, rest)
    projection = {"rank": method.galore_rank, "update_proj_gap": method.galore_update_interval,
                  "scale": method.galore_scale, "proj_type": method.galore_proj_type}
    groups = [
        {"name": "galore", "params": list(galore.values()), "weight_decay": args.weight_decay, **projection},
        {"name": "decay", "params": decay, "weight_decay": args.weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    logger.info("GaLore rank %d (every %d steps, scale %g, %s) on %d weights; AdamW on %d other tensors%s",
                method.galore_rank, method.galore_update_interval, method.galore_scale, method.galore_proj_type,
                len(galore), len(rest), ", layer-wise" if method.galore_layerwise else "")
    if not method.galore_layerwise:
        return optimizer_cls(groups, **kwargs)
    return layerwise(groups, optimizer_cls, kwargs, args.learning_rate)


def badam_optimizer(model: Any, args: TrainingArguments, method: FinetuningArguments) -> torch.optim.Optimizer:
    """BAdam's BlockOptimizer (`layer` mode) or BlockOptimizerRatio (`ratio` mode) over the trainable parameters.

    Layer mode: blocks are the decoder layers (embeddings, final norm and head stay frozen, as in BAdam);
    the base optimizer is the one `optim` names. Ratio mode: BAdam's own sparse Adam (no weight decay).
    """
    from badam import BlockOptimizer, BlockOptimizerRatio

    named = list(model.named_parameters())
    params = {n: p for n, p in named if p.requires_grad}
    decay, no_decay = decay_split(model, params)
    # BlockOptimizer reads the weight decay of the first group: the decayed one goes first
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    if method.badam_mode == "ratio":
        logger.info("BAdam ratio mode: %.0f%% of each weight per block, switching every %d steps (%s masks)",
                    100 * method.badam_update_ratio, method.badam_switch_interval, method.badam_mask_mode)
        return BlockOptimizerRatio(
            param_groups=groups, named_parameters_list=named, update_ratio=method.badam_update_ratio,
            switch_every=method.badam_switch_interval, mask_mode=method.badam_mask_mode,
            verbose=method.badam_verbose, include_embedding=False,
            # with tied embeddings there is no separate head to freeze (BAdam would fail looking for one)
            include_lm_head=not any("lm_head" in n for n, _ in named),
            lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)

    blocks = model.config.get_text_config().num_hidden_layers
    start = method.badam_start_block
    if start is None and method.badam_switch_mode == "fixed":
        start = 0  # BlockOptimizer has no default block for `fixed`
    if start is not None and not 0 <= start < blocks:
        raise ValueError(f"badam_start_block {start} is not a layer of this model (it has {blocks}: 0-{blocks - 1})")
    if getattr(model, "_require_grads_hook", None) is not None:
        # With non-reentrant checkpointing the embeddings' output need not require grad, and without it
        # backward stops at the active block instead of running down to the embeddings.
        model.disable_input_require_grads()
    with warnings.catch_warnings():
        # float32 weights are the norm on CPU; on a GPU use pure_bf16 to get BAdam's memory saving
        warnings.filterwarnings("ignore", message="BAdam expect model to be loaded in fp16/bf16")
        optimizer = BlockOptimizer(
            base_optimizer=optimizer_cls(groups, **kwargs), named_parameters_list=named,
            switch_block_every=method.badam_switch_interval, start_block=start,
            switch_mode=method.badam_switch_mode, verbose=method.badam_verbose)
    # badam 1.4 switches when (steps taken + 1) is a multiple of the interval, which gives the first block one
    # step fewer than the others (measured: interval 2 trains layers 0, 1, 1, 0). Counting from -1 gives every
    # block exactly badam_switch_interval steps.
    optimizer.global_step = -1
    logger.info("BAdam layer mode: %d blocks, %s order, switching every %d steps", optimizer.block_num,
                method.badam_switch_mode, method.badam_switch_interval)
    return optimizer
