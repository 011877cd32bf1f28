"""KTO's reference point z over two real gloo ranks: every rank gets the mean of all ranks' rows."""

from __future__ import annotations

import torch
from gloo_ranks import on_two_gloo_ranks

from kubetune.losses.preference import kto_kl_estimate

POLICY = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -6.0, -0.5]])  # rank 0's rows, rank 1's rows
REFERENCE = torch.tensor([[-4.0, -4.0, -4.0], [-2.5, -3.0, -1.0]])


def _estimate(rank: int) -> float:
    return float(kto_kl_estimate(POLICY[rank], REFERENCE[rank]))


def test_two_ranks_share_one_reference_point() -> None:
    results = on_two_gloo_ranks(_estimate)
    whole = float(kto_kl_estimate(POLICY.flatten(), REFERENCE.flatten()))  # one process, both ranks' rows
    assert whole > 0
    assert results[0] == results[1] == whole
    # each rank alone would have had its own: rank 1's rows alone average below 0, so its z would clamp to 0
    assert float(kto_kl_estimate(POLICY[1], REFERENCE[1])) == 0.0
