"""GAE, per-token rewards and whitening against values computed by hand."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from kubetune.rl.gae import compute_gae, masked_mean, masked_whiten, token_rewards


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value() -> None:
    advantages, returns = compute_gae(t([[0, 0, 1]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]]), gamma=1.0, lam=1.0)
    assert_close(advantages, t([[0.5, 0.5, 0.5]]))
    assert_close(returns, t([[1.0, 1.0, 1.0]]))


def test_gae_discounts_by_gamma_and_lambda() -> None:
    # δ2 = 2 + 0 − 1.5 = 0.5             A2 = 0.5
    # δ1 = 0 + 0.9·1.5 − 1.0 = 0.35      A1 = 0.35 + 0.9·0.8·0.5 = 0.71
    # δ0 = 1 + 0.9·1.0 − 0.5 = 1.4       A0 = 1.4 + 0.72·0.71 = 1.9112
    advantages, returns = compute_gae(t([[1, 0, 2]]), t([[0.5, 1.0, 1.5]]), t([[1, 1, 1]]), gamma=0.9, lam=0.8)
    assert_close(advantages, t([[1.9112, 0.71, 0.5]]))
    assert_close(returns, t([[2.4112, 1.71, 2.0]]))


def test_gae_ignores_whatever_sits_in_the_padding() -> None:
    # row 1 ends after two tokens: its third reward and value are junk and must not leak back
    # δ1 = 1 + 0 − 0.4 = 0.6 (V after the end is 0)    A1 = 0.6
    # δ0 = 0 + 0.4 − 0.2 = 0.2                          A0 = 0.2 + 0.5·0.6 = 0.5
    rewards, values = t([[0, 0, 1], [0, 1, 99]]), t([[0, 0, 0], [0.2, 0.4, 50]])
    advantages, returns = compute_gae(rewards, values, t([[1, 1, 1], [1, 1, 0]]), gamma=1.0, lam=0.5)
    assert_close(advantages[1], torch.tensor([0.5, 0.6, 0.0]))
    assert_close(returns[1], torch.tensor([0.7, 1.0, 0.0]))
    assert_close(advantages[0], torch.tensor([0.25, 0.5, 1.0]))  # λ = 0.5 halves what flows back per step


def test_gae_with_lambda_zero_is_one_step_td() -> None:
    rewards, values = t([[0.3, 0.0, 1.0]]), t([[0.1, 0.2, 0.4]])
    advantages, _ = compute_gae(rewards, values, t([[1, 1, 1]]), gamma=0.5, lam=0.0)
    assert_close(advantages, t([[0.3 + 0.5 * 0.2 - 0.1, 0.0 + 0.5 * 0.4 - 0.2, 1.0 - 0.4]]))


def test_token_rewards_penalise_kl_per_token_and_add_the_score_on_the_last_token() -> None:
    logprobs = t([[-1, -2, -3], [-1, -1, 0]])
    ref_logprobs = t([[-1.5, -2, -2], [-2, -1, 5]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert_close(kl, t([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]))
    assert_close(rewards, t([[-0.05, 0.0, 0.1 + 2.0], [-0.1, -1.0, 0.0]]))


def test_whitening_uses_only_unmasked_values() -> None:
    values, mask = t([[2, 4, 6, 100]]), t([[1, 1, 1, 0]])  # mean 4, unbiased variance 4
    assert_close(masked_whiten(values, mask), t([[-1, 0, 1, 0]]), atol=1e-6, rtol=0)
    # without the shift the spread is scaled but the mean stays (rewards keep their sign)
    assert_close(masked_whiten(values, mask, shift_mean=False), t([[3, 4, 5, 0]]), atol=1e-6, rtol=0)


def test_one_value_is_not_blown_up_by_a_zero_variance() -> None:
    values, mask = t([[5.0, 0.0]]), t([[1, 0]])
    assert_close(masked_whiten(values, mask), t([[0.0, 0.0]]))
    assert_close(masked_whiten(values, mask, shift_mean=False), t([[5.0, 0.0]]))


def test_masked_mean_survives_nan_in_the_padding() -> None:
    values = t([[1.0, 3.0, math.nan]])
    assert masked_mean(values, t([[1, 1, 0]])).item() == 2.0
    assert_close(masked_mean(t([[1, 3], [5, 7]]), t([[1, 0], [1, 1]]), dim=1), torch.tensor([1.0, 6.0]))
