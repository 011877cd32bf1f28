"""Three more optimisers of LLaMA-Factory's: Muon (`use_muon`), Adam-mini (`use_adam_mini`), APOLLO (`use_apollo`).

- Muon (Jordan et al., 2024): SGD-momentum whose update of each 2-D hidden weight is orthogonalised by a
  Newton–Schulz iteration. As in LLaMA-Factory, Muon takes every trainable 2-D parameter whose name has neither
  `embed` nor `lm_head`; AdamW takes the rest (embeddings, head, norms, biases); both at `learning_rate` with
  `weight_decay` on every parameter. Muon's part is torch's own `torch.optim.Muon` with
  `adjust_lr_fn="match_rms_adamw"` (lr × 0.2·√max(rows, cols), LLaMA-Factory's scaling); its momentum is an
  average where LLaMA-Factory's is a sum, a constant factor the orthogonalisation normalises away.
- Adam-mini (Zhang et al., 2024): Adam with one second-moment value per block (attention head, neuron, token)
  instead of per weight; the `adam-mini` package (`pip install kubetune[adam-mini]`), told the model's hidden
  size and head counts.
- APOLLO (Zhu et al., 2024): AdamW's moments in a random (or SVD) low-rank projection of each targeted linear
  weight's gradient, used only to scale the full gradient per channel or tensor; the `apollo-torch` package
  (`pip install kubetune[apollo]`). Groups and layer-wise mode as GaLore's (`memory_optimizers`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainingArguments

from kubetune.config import FinetuningArguments
from kubetune.model.optimizer_groups import decay_split, layerwise, linear_weights

logger = logging.getLogger(__name__)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon over the hidden matrices and AdamW over the other parameters, stepped as one optimizer.

    The Trainer, its learning-rate schedule and its checkpoints see one optimizer: `param_groups` are the two
    inner optimizers' own group dicts (so a schedule's rate reaches both), and `state_dict` holds both states.

    Args:
        muon_params: 2-D parameters for Muon.
        adamw_params: every other trainable parameter.
        lr: learning rate of both.
        weight_decay: decoupled weight decay of both.
        betas, eps: AdamW's.
    """

    def __init__(self, muon_params: list[torch.nn.Parameter], adamw_params: list[torch.nn.Parameter], *, lr: float,
                 weight_decay: float, betas: tuple[float, float], eps: float) -> None:
        self.inner: dict[str, torch.optim.Optimizer] = {}
        if muon_params:
            self.inner["muon"] = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay,
                                                  adjust_lr_fn="match_rms_adamw")
        if adamw_params:
            self.inner["adamw"] = torch.optim.AdamW(adamw_params, lr=lr, betas=betas, eps=eps,
                                                    weight_decay=weight_decay)
        groups = [group for optimizer in self.inner.values() for group in optimizer.param_groups]
        super().__init__(groups, {"lr": lr})  # adds the same group dicts, not copies

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.inner.values():
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.inner.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.inner.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, optimizer in self.inner.items():
            optimizer.load_state_dict(state_dict[name])


def is_muon_parameter(name: str, param: torch.nn.Parameter) -> bool:
    """LLaMA-Factory's split: a trainable 2-D weight that is not an embedding or the output head."""
    return param.requires_grad and param.ndim == 2 and "embed" not in name and "lm_head" not in name


def muon_optimizer(model: Any, args: TrainingArguments) -> MuonWithAdamW:
    """Muon over the 2-D hidden weights, AdamW over the rest (see the module docstring)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in trainable if is_muon_parameter(n, p)]
    adamw = [p for n, p in trainable if not is_muon_parameter(n, p)]
    logger.info("Muon on %d hidden matrices, AdamW on %d other tensors", len(muon), len(adamw))
    return MuonWithAdamW(muon, adamw, lr=args.learning_rate, weight_decay=args.weight_decay,
                         betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def adam_mini_optimizer(model: Any, args: TrainingArguments) -> torch.optim.Optimizer:
    """Adam-mini over the trainable parameters, with the model's hidden size and (key/value) head counts."""
    from adam_mini import Adam_mini

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    logger.info("Adam-mini (hidden size %s, %s heads, %s key/value heads)", config.hidden_size,
                config.num_attention_heads, getattr(config, "num_key_value_heads", None))
    return Adam_mini(named_parameters=model.named_parameters(), lr=args.learning_rate,
                     betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=args.weight_decay,
                     dim=config.hidden_size, n_heads=config.num_attention_heads,
                     n_kv_heads=getattr(config, "num_key_value_heads", None), verbose=False)


def apollo_optimizer(model: Any, args: TrainingArguments, method: FinetuningArguments) -> torch.optim.Optimizer:
    """APOLLO-AdamW over the targeted linear weights, its plain AdamW over the rest.

    Groups, in this order: `apollo` (rank, proj, proj_type, update_proj_gap, scale, scale_type), `decay`,
    `no_decay`; layer-wise: one optimizer per parameter behind `LayerWiseDummyOptimizer`, as GaLore's.
    `apollo_scale_front` goes to the optimizer itself, which is where apollo-torch reads it.
    """
    from apollo_torch import APOLLOAdamW
    from apollo_torch.random_projector import GradientProjector
    from apollo_torch.svd_projector import GaLoreProjector

    torch.serialization.add_safe_globals([GradientProjector, GaLoreProjector])  # resumed with weights_only=True
    targeted = linear_weights(model, method.apollo_target, "apollo_target")
    ids = {id(p) for p in targeted.values()}
    rest = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in ids}
    decay, no_decay = decay_split(model, rest)
    projection = {"rank": method.apollo_rank, "proj": method.apollo_proj, "proj_type": method.apollo_proj_type,
                  "update_proj_gap": method.apollo_update_interval, "scale": method.apollo_scale,
                  "scale_type": method.apollo_scale_type}
    groups = [g for g in (
        {"name": "apollo", "params": list(targeted.values()), "weight_decay": args.weight_decay, **projection},
        {"name": "decay", "params": decay, "weight_decay": args.weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}) if g["params"]]
    kwargs = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
              "scale_front": method.apollo_scale_front}
    logger.info("APOLLO rank %d (%s projection, every %d steps, scale %g per %s) on %d weights; AdamW on %d "
                "other tensors%s", method.apollo_rank, method.apollo_proj, method.apollo_update_interval,
                method.apollo_scale, method.apollo_scale_type, len(targeted), len(rest),
                ", layer-wise" if method.apollo_layerwise else "")
    if method.apollo_layerwise:
        return layerwise(groups, APOLLOAdamW, kwargs, args.learning_rate)
    return APOLLOAdamW(groups, **kwargs)
