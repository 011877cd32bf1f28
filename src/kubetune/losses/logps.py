"""Token log-probabilities: the one implementation every stage scores tokens with.

sft's fused loss path scores label positions from hidden states (`causal_lm.token_logps_fused`),
dpo/kto/rm sequences from a model's logits (`sequence_logps`), PPO its sampled responses
(`kubetune.rl.rollout`): all of them reduce logits to log p(target) here, in float32, a chunk of
rows at a time so that the float copy and the log-sum-exp's temporary never span the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kubetune.data.encode import IGNORE_INDEX

CHUNK_ROWS = 1024
"""Rows of logits upcast at once: 1024 × 49k vocabulary × 4 bytes ≈ 200 MB at most."""


def token_logps(logits: Tensor, targets: Tensor, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """log softmax(logits)[target] at every position, in float32.

    Args:
        logits: [..., V] scores (any dtype; upcast a chunk at a time).
        targets: [...] token ids, valid everywhere (mask ignored positions afterwards).
        chunk_rows: positions upcast at once. Default `CHUNK_ROWS`.

    Returns:
        [...] float32 log-probabilities, differentiable with respect to `logits`.
    """
    if logits.shape[0] == 0:
        return logits.sum(-1).float()  # nothing to score: an empty result of the right shape that keeps the graph
    if logits.dim() > 2:  # one leading row at a time: a slice of it is a view, its flattening no copy
        return torch.stack([token_logps(row, target, chunk_rows) for row, target in zip(logits, targets, strict=True)])
    parts = []
    for start in range(0, logits.shape[0], chunk_rows):
        chunk = logits[start:start + chunk_rows].float()
        parts.append(chunk.gather(-1, targets[start:start + chunk_rows, None]).squeeze(-1) - chunk.logsumexp(-1))
    return torch.cat(parts)


def sequence_logps(logits: Tensor, labels: Tensor, ld_alpha: float | None = None) -> tuple[Tensor, Tensor]:
    """Sum of the log-probs of the labelled tokens of each row, and how many there are.

    Args:
        logits: [B, T, V] model outputs.
        labels: [B, T] token ids, `IGNORE_INDEX` (-100) where not scored (prompt, padding).
        ld_alpha: LD-DPO's weight of the tokens beyond a pair's shared length (`length_desensitised`); the rows
            are then B/2 chosen followed by B/2 rejected. Default None (every token counts fully).

    Returns:
        (logps [B], token counts [B], at least 1 so a mean never divides by zero).
    """
    logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
    mask = labels != IGNORE_INDEX
    logps = token_logps(logits, labels.masked_fill(~mask, 0))
    weights = mask.to(logps.dtype)
    if ld_alpha is not None:
        from kubetune.losses.length_desensitised import ld_token_weights

        row, column = mask.nonzero(as_tuple=True)
        weights = weights.index_put((row, column), ld_token_weights(row, column, mask.sum(-1), ld_alpha))
    return (logps * weights).sum(-1), mask.sum(-1).clamp(min=1)


def mean_response_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean logit (over the vocabulary and the labelled tokens) of each row, detached: [B]."""
    mask = labels[:, 1:] != IGNORE_INDEX
    per_token = logits[:, :-1].detach().float().mean(-1)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
