"""LD-DPO's length desensitisation (`ld_alpha`): the tokens of a response beyond its pair's shorter length count
α times.

For a pair whose responses have n_w and n_l labelled tokens, the first min(n_w, n_l) positions of each response
(counted from its first labelled token, as LLaMA-Factory counts them) keep their full log-prob, the rest are scaled
by α ∈ [0, 1]: a longer response cannot win on its extra tokens alone. LLaMA-Factory applies it to the policy's
log-probs only, not the reference's; so does the dpo stage.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ld_token_weights(sequence: Tensor, column: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """Each scored token's weight: 1 within its pair's shared length, `alpha` beyond it.

    Args:
        sequence: [N] the sequence each scored token belongs to; sequences 0..S/2−1 are the chosen responses,
            S/2..S−1 the rejected ones, in the same pair order.
        column: [N] each token's position in its row (a sequence is contiguous in its row).
        counts: [S] labelled tokens per sequence (unclamped).
        alpha: `ld_alpha`.
    """
    half = counts.numel() // 2
    shared = torch.minimum(counts[:half], counts[half:]).repeat(2)
    first = torch.full_like(counts, torch.iinfo(counts.dtype).max).scatter_reduce(0, sequence, column, "amin")
    offset = column - first[sequence]
    inside = offset < shared[sequence]
    return torch.where(inside, 1.0, float(alpha))
