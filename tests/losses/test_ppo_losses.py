"""PPO's clipped policy and value losses against values computed by hand."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from kubetune.losses.ppo import clipped_policy_loss, clipped_value_loss, entropy_from_logits


def test_clipped_policy_loss_takes_the_pessimistic_term() -> None:
    # ratios 1.5, 0.5, 1.1 (old log-probs 0); a 4th, masked token carries junk
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 100.0]])).requires_grad_()
    old = torch.zeros(1, 4)
    advantages = torch.tensor([[1.0, 1.0, -1.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = clipped_policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # token 0: max(−1.5, −1.2) = −1.2 (clipped); token 1: max(−0.5, −0.8) = −0.5; token 2: max(1.1, 1.1) = 1.1
    assert math.isclose(out.loss.item(), (-1.2 - 0.5 + 1.1) / 3, rel_tol=1e-6)
    assert math.isclose(out.clipfrac.item(), 1 / 3, rel_tol=1e-6)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert math.isclose(out.approx_kl.item(), expected_kl, rel_tol=1e-5)
    assert math.isclose(out.ratio.item(), (1.5 + 0.5 + 1.1) / 3, rel_tol=1e-6)
    out.loss.backward()
    # d/dlogπ of −A·ρ is −A·ρ; the clipped token (outside the trust region) gets no gradient
    assert_close(logprobs.grad, torch.tensor([[0.0, -0.5 / 3, 1.1 / 3, 0.0]]))


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage() -> None:
    advantages = torch.tensor([[0.5, -2.0, 1.0]])
    out = clipped_policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), advantages, torch.ones(1, 3), cliprange=0.2)
    assert math.isclose(out.loss.item(), 0.5 / 3, rel_tol=1e-6)
    assert out.clipfrac.item() == 0.0 and out.approx_kl.item() == 0.0


def test_clipped_value_loss() -> None:
    values = torch.tensor([[1.0, 0.0, 7.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = clipped_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: clipped 0.7 → max((1−2)², (0.7−2)²) = 1.69; token 1: clipped 0.3 → max(0, 0.09) = 0.09
    assert math.isclose(out.loss.item(), 0.5 * (1.69 + 0.09) / 2, rel_tol=1e-6)
    assert out.clipfrac.item() == 1.0
    out.loss.backward()
    assert_close(values.grad, torch.zeros(1, 3))  # both active terms are clipped: no gradient flows


def test_value_loss_inside_the_clip_range_is_half_the_squared_error() -> None:
    values = torch.tensor([[0.6, 0.45]])
    out = clipped_value_loss(values, torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), 0.2)
    assert math.isclose(out.loss.item(), 0.5 * (0.4**2 + 0.45**2) / 2, rel_tol=1e-6)
    assert out.clipfrac.item() == 0.0


def test_entropy_from_logits() -> None:
    entropy = entropy_from_logits(torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    assert_close(entropy, torch.tensor([math.log(4), 0.0]), atol=1e-5, rtol=0)
