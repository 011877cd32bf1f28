"""PPO's global reductions over two real gloo ranks: each rank's half computes what one process over all rows does."""

from __future__ import annotations

import pytest
import torch
from gloo_ranks import on_two_gloo_ranks

from kubetune.rl.gae import masked_mean, masked_whiten
from kubetune.rl.ranks import Ranks

VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, -1.0, 0.0, 0.0], [9.0, 8.0, 7.0, 6.0], [0.5, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])  # ranks hold rows 0-1 and 2-3


def _reductions(rank: int) -> dict:
    ranks = Ranks(size=2, rank=rank)
    rows = ranks.share(list(range(4)))
    values, mask = VALUES[rows], MASK[rows]
    return {
        "rows": rows,
        "whitened": masked_whiten(values, mask, sum_over=ranks.sum),
        "scaled": masked_whiten(values, mask, shift_mean=False, sum_over=ranks.sum),
        "mean": float(masked_mean(values, mask, sum_over=ranks.sum)),
        "gathered": ranks.gather(values[:, 0]),
        "lists": ranks.gather_lists([f"r{rank}"] * (rank + 1)),  # lists of different lengths
        "stats": ranks.mean_of({"loss": float(rank), "kl": 2.0 * rank}),
        "broadcast": ranks.broadcast(f"from {rank}"),
    }


def test_two_ranks_whiten_gather_and_average_as_one_process_over_all_rows() -> None:
    results = on_two_gloo_ranks(_reductions)
    r0, r1 = results[0], results[1]
    assert (r0["rows"], r1["rows"]) == ([0, 1], [2, 3])
    torch.testing.assert_close(torch.cat([r0["whitened"], r1["whitened"]]), masked_whiten(VALUES, MASK))
    torch.testing.assert_close(torch.cat([r0["scaled"], r1["scaled"]]), masked_whiten(VALUES, MASK, shift_mean=False))
    assert r0["mean"] == r1["mean"] == pytest.approx(float(masked_mean(VALUES, MASK)))
    # a rank whitening its own rows alone gives other advantages: the global reduction matters here
    assert not torch.allclose(r0["whitened"], masked_whiten(VALUES[:2], MASK[:2]))
    torch.testing.assert_close(r0["gathered"], VALUES[:, 0])
    torch.testing.assert_close(r1["gathered"], VALUES[:, 0])
    assert r0["lists"] == r1["lists"] == ["r0", "r1", "r1"]
    assert r0["stats"] == r1["stats"] == {"loss": 0.5, "kl": 1.0}
    assert r0["broadcast"] == r1["broadcast"] == "from 0"


def test_one_process_is_the_identity() -> None:
    ranks = Ranks()
    assert ranks.share([1, 2, 3]) == [1, 2, 3]
    assert ranks.gather(VALUES) is VALUES and ranks.mean_of({"x": 1.0}) == {"x": 1.0}
    torch.testing.assert_close(masked_whiten(VALUES, MASK, sum_over=ranks.sum), masked_whiten(VALUES, MASK))
    with pytest.raises(ValueError, match="do not split evenly over 2 ranks"):
        Ranks(size=2).share([1, 2, 3])
