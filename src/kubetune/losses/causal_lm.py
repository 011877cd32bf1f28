"""Causal-LM loss without full-vocabulary logits: only label positions, a chunk at a time.

The usual path computes `lm_head` on every position of the batch (batch × length × vocab
floats — 400 MB for 4 × 512 tokens of a 49k vocabulary), upcasts it, takes a log-softmax and
keeps all of it for the backward pass, although prompt and padding positions are never
learnt. Here the backbone's hidden states are gathered at the positions that have a label,
and the head, the cross-entropy and its gradient are computed together a chunk of rows at a
time; only the gradient with respect to the hidden states (rows × hidden) is kept for the
backward pass. The result is the same sum of per-token losses, in float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from kubetune.data.encode import IGNORE_INDEX
from kubetune.losses.logps import CHUNK_ROWS, mean_response_logits, sequence_logps, token_logps
from kubetune.model.wrapper_forward import forward_through_wrapper

# Config attributes that make a model's logits more than `lm_head(hidden)`.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_router_logits")


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), with the gradient computed in the forward pass."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_rows: int) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = targets[start:start + chunk_rows]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if need_hidden or need_weight:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                probs[torch.arange(len(y), device=y.device), y] -= 1.0  # d CE / d logits
                probs = probs.to(weight.dtype)
                if need_hidden:
                    grad_hidden[start:start + chunk_rows] = probs @ weight
                if need_weight:
                    grad_weight += (probs.t() @ h.to(weight.dtype)).float()
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.has = (need_hidden, need_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple:
        saved = list(ctx.saved_tensors)
        grad_hidden = grad_weight = None
        if ctx.has[0]:
            grad_hidden = saved.pop(0)
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if ctx.has[1]:
            grad_weight = (saved.pop(0) * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Sum over rows of cross-entropy(hidden @ weight.T, targets), never holding all logits.

    Args:
        hidden: (rows, hidden) states at the positions to learn.
        weight: (vocab, hidden) output-head weight.
        targets: (rows,) token ids to predict.
        chunk_rows: rows of logits computed at once. Default `CHUNK_ROWS`.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph: an all-masked batch still backprops
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows)


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The backbone and output head of a plain causal LM (through a PEFT wrapper), or None.

    None when the logits are not just `head(backbone(x))` (soft-capping, logit scales, MoE
    router losses, a head with a bias): such models keep the usual loss path.
    """
    inner = model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if any(getattr(config, name, None) for name in _LOGIT_TRANSFORMS):
        return None
    backbone = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if backbone is None or backbone is inner or not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    if type(head) is not nn.Linear:  # a LoRA- or quantisation-wrapped head computes more than weight @ x
        return None
    if _is_sharded(head.weight):  # read outside the module's forward, a sharded weight is only this rank's slice
        return None
    return backbone, head


def _is_sharded(weight: torch.Tensor) -> bool:
    """A parameter DeepSpeed ZeRO-3 partitions (`ds_id`), FSDP2 shards (a DTensor) or FSDP1 flattens into its
    shard (`_fsdp_flattened`)."""
    from torch.distributed.tensor import DTensor

    return hasattr(weight, "ds_id") or isinstance(weight, DTensor) or bool(getattr(weight, "_fsdp_flattened", False))


def causal_lm_loss_sum(backbone: nn.Module, head: nn.Linear, inputs: dict[str, torch.Tensor]) -> tuple[
        torch.Tensor, int]:
    """(sum of per-token losses, number of learnt tokens) of a causal-LM batch.

    Args:
        backbone: the decoder that returns `last_hidden_state`.
        head: the output projection (weight only).
        inputs: the collator's batch: `input_ids`, `labels` and `attention_mask` or `position_ids`.
    """
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = backbone(**model_inputs, use_cache=False).last_hidden_state
    targets = labels[..., 1:]
    keep = targets != IGNORE_INDEX
    return linear_cross_entropy_sum(hidden[..., :-1, :][keep], head.weight, targets[keep]), int(keep.sum())


def _chunk_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor]:
    logits = (hidden @ weight.t()).float()  # the caller chunks already: score this chunk in one go
    return token_logps(logits, targets, chunk_rows=max(1, logits.shape[0])), logits.mean(-1).detach()


def token_logps_fused(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      chunk_rows: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log p(target) under `hidden @ weight.T`, and each row's mean logit (detached).

    Unlike the summed loss above, the caller weighs rows differently (a DPO loss scales each
    sequence by its own sigmoid), so the gradient cannot be folded in ahead of time. With
    gradients on, each chunk is checkpointed: only its inputs are kept, and its logits are
    computed again in the backward pass (under the same autocast), one chunk at a time.

    Args:
        hidden: (rows, hidden) states at the positions to score.
        weight: (vocab, hidden) output-head weight.
        targets: (rows,) token ids.
        chunk_rows: rows of logits computed at once. Default `CHUNK_ROWS`.
    """
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, hidden.shape[0], chunk_rows):
        args = (hidden[start:start + chunk_rows], weight, targets[start:start + chunk_rows])
        parts.append(torch.utils.checkpoint.checkpoint(_chunk_token_logps, *args, use_reentrant=False)
                     if grad else _chunk_token_logps(*args))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32) + hidden.sum() * 0.0  # keeps the graph
        return empty, empty.detach()
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def sequence_logps_fused(model: nn.Module, batch: dict[str, torch.Tensor], ld_alpha: float | None = None) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Per sequence: summed log-probs of the labelled tokens, their count, and their mean logit.

    The same numbers as running the model and reducing its [B, T, V] logits, without holding
    them: the head runs only at labelled positions (`token_logps_fused`). None when the model is not a
    plain `head(backbone(x))` (see `causal_lm_parts`); the caller then uses the logits path.

    Args:
        model: a causal LM, possibly PEFT-wrapped (its active adapters apply).
        batch: `input_ids` and `labels` ([R, T], `IGNORE_INDEX` where not scored), with either
            `attention_mask` (one sequence per row) or neat-packed rows: `position_ids` restarting
            at 0 for each sequence and `sequence_index` (which sequence each token belongs to,
            -1 for padding).
        ld_alpha: LD-DPO's weight of the tokens beyond a pair's shared length (`length_desensitised`): the
            sequences are then S/2 chosen followed by S/2 rejected. Default None (every token counts fully).

    Returns:
        (logps [S] float32, token counts [S] (at least 1), mean logits [S] detached), S being the
        number of sequences (rows, or `sequence_index.max() + 1`); or None.
    """
    parts = causal_lm_parts(model)
    if parts is None:
        return None
    backbone, head = parts
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    per_token, mean_logit = token_logps_fused(hidden[:, :-1][keep], head.weight, targets[keep])
    if "sequence_index" in batch:
        sequence = batch["sequence_index"][:, 1:][keep]  # the sequence of each predicted token
        count = int(batch["sequence_index"].max()) + 1
    else:
        sequence, count = keep.nonzero()[:, 0], batch["input_ids"].shape[0]
    device = per_token.device
    counts = torch.zeros(count, dtype=torch.long, device=device).index_add(0, sequence, torch.ones_like(sequence))
    if ld_alpha is not None:
        from kubetune.losses.length_desensitised import ld_token_weights

        per_token = per_token * ld_token_weights(sequence, keep.nonzero()[:, 1], counts, ld_alpha)
    logps = torch.zeros(count, dtype=per_token.dtype, device=device).index_add(0, sequence, per_token)
    counts = counts.clamp(min=1)
    mean_logits = torch.zeros(count, dtype=torch.float32, device=device).index_add(0, sequence, mean_logit)
    return logps, counts, mean_logits / counts


def scored_logps(model: nn.Module, batch: dict[str, torch.Tensor], ld_alpha: float | None = None) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of each sequence's labelled tokens, their count, and their mean logit (detached).

    Runs the output head only at labelled positions when the model allows it
    (`sequence_logps_fused`, which also reads neat-packed batches), else through the model's
    logits (one sequence per row). Call it under the trainer's autocast: the fused path calls the
    backbone directly.

    Args:
        model: the policy or a reference model (possibly wrapped for distributed training).
        batch: `input_ids`, `labels` and `attention_mask`, or a packed batch (`PairwiseCollator(pack_to=...)`).
        ld_alpha: LD-DPO's length desensitisation of a batch of pairs (see `sequence_logps_fused`). Default None.
    """
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    if causal_lm_parts(inner) is not None:
        return forward_through_wrapper(model, lambda: sequence_logps_fused(inner, batch, ld_alpha))
    if "sequence_index" in batch:
        raise ValueError("packed pairs need the fused log-probs path; this model computes more than head(hidden)")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps, counts = sequence_logps(logits, batch["labels"], ld_alpha)
    return logps, counts, mean_response_logits(logits, batch["labels"])
