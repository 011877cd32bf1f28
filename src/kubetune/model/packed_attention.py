"""SDPA for packed rows, one sequence at a time: what FlashAttention-2's varlen path does on GPUs.

A packed row holds several sequences whose position ids restart at 0. transformers keeps them
apart under sdpa with a block-diagonal mask over the whole row, so the kernel scores all T×T
pairs of the row and, given a mask, cannot take its causal fast path. Cutting the row where the
positions restart and running SDPA with `is_causal=True` on each sequence computes only what a
sequence alone would: Σ nᵢ²/2 scores instead of T². That also makes a single row with no
padding at all (`DataCollatorForSupervised(flatten_packed=True)`) the cheapest batch layout.

Anything that is not a packed row (padded batches, generation with a KV cache) goes to
transformers' own sdpa unchanged. `can_use(model)` says whether a loaded model can switch over,
`switch(model)` does it; `kubetune.train.layout` decides when.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

NAME = "kubetune_packed_sdpa"
"""The attention implementation's name in transformers' `AttentionInterface`."""


def packed_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """An `AttentionInterface` function: per-sequence causal SDPA on packed rows, else transformers' sdpa.

    Args:
        module: the attention layer (for `num_key_value_groups`).
        query: [B, H, T, D]; key, value: [B, H_kv, T, D].
        attention_mask: the mask transformers built; unused for packed rows (their position ids say more).
        dropout: attention dropout probability.
        scaling: the softmax scale.
        **kwargs: the layer's keyword arguments; `position_ids` [B or 1, T] marks the packed sequences.

    Returns:
        ([B, T, H, D] attention output, None), as transformers' attention functions return.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = packed_spans(kwargs.get("position_ids"), query.shape[2], key.shape[2])
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    rows = []
    for b, row_spans in enumerate(spans):
        parts = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                                dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
                 for s, e in row_spans]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def packed_spans(position_ids: torch.Tensor | None, q_length: int,
                 kv_length: int) -> list[list[tuple[int, int]]] | None:
    """[(start, end) of each sequence] per row, or None when the batch holds no packed row.

    A sequence starts wherever a position is not the previous one plus one. Batches without
    a restart inside any row (padded batches, whose positions are one arange), and decoding
    with a cache (queries shorter than keys) return None.
    """
    if position_ids is None or q_length != kv_length or q_length < 2 or position_ids.shape[-1] != q_length:
        return None
    breaks = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(breaks.any()):
        return None
    spans = []
    for row in breaks.cpu().tolist():
        starts = [0] + [t + 1 for t, cut in enumerate(row) if cut]
        spans.append(list(zip(starts, [*starts[1:], q_length], strict=True)))
    return spans


def register() -> None:
    """Make `NAME` known to transformers (idempotent): the attention function and sdpa's mask function."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def can_use(model: nn.Module) -> bool:
    """Whether `switch` would move this model to `NAME`: it runs transformers' sdpa, and its code takes
    attention functions by name (`is_backend_compatible`). Changes nothing.

    Models on another kernel (FlashAttention-2 has its own varlen path; eager is asked for on purpose)
    and models whose code does not dispatch attention by name keep theirs.
    """
    inner = _inner(model)
    config = getattr(inner, "config", None)
    if config is None or config._attn_implementation != "sdpa" or not hasattr(inner, "set_attn_implementation"):
        return False
    # both of transformers' own tests: the class dispatches attention by name, and may switch it once loaded
    compatible = getattr(type(inner), "is_backend_compatible", None)
    switchable = getattr(type(inner), "_can_set_attn_implementation", None)
    return bool(compatible and compatible() and (switchable is None or switchable()))


def switch(model: nn.Module) -> None:
    """Run `model`'s attention through `NAME` (call after `can_use`; `kubetune.train.layout.apply` does)."""
    register()
    inner = _inner(model)
    inner.set_attn_implementation(NAME)
    if inner.config._attn_implementation != NAME:
        raise RuntimeError(f"{type(inner).__name__} did not take the {NAME} attention (it reports "
                           f"{inner.config._attn_implementation!r}); set packing: false to avoid packed rows")
