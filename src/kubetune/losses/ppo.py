"""PPO's clipped surrogate objectives and the statistics logged with them.

All inputs are `[batch, response_len]` with a 0/1 `mask` over the response tokens; every mean is a
masked mean over tokens. Reference: Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(policy loss); the value clipping follows OpenAI's baselines and the RLHF implementations built
on it (Ziegler et al. 2019; TRL's original PPOTrainer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kubetune.rl.gae import masked_mean


@dataclass
class PolicyLoss:
    """Attributes:
    loss: the clipped surrogate loss (to minimise).
    clipfrac: fraction of tokens where the clipped term was the active one.
    approx_kl: ½·mean((log π − log π_old)²), how far this minibatch moved from the rollout policy.
    ratio: mean probability ratio π/π_old.
    """

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    ratio: torch.Tensor


@dataclass
class ValueLoss:
    """Attributes:
    loss: ½·mean(max((V − R)², (V_clipped − R)²)).
    clipfrac: fraction of tokens where the clipped prediction gave the larger error.
    """

    loss: torch.Tensor
    clipfrac: torch.Tensor


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float) -> PolicyLoss:
    """PPO-clip: mean over tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = π(a|s)/π_old(a|s).

    Args:
        logprobs: log π of the sampled tokens under the policy being trained (with grad).
        old_logprobs: the same under the policy that sampled them (no grad).
        advantages: per-token advantages (whitened).
        mask: response mask.
        cliprange: ε (`cliprange`, default 0.2).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approx_kl, mean_ratio)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float) -> ValueLoss:
    """Value loss with the prediction kept within ±`cliprange_value` of the rollout's value.

    Args:
        values: the critic's predictions being trained (with grad).
        old_values: its predictions during the rollout (no grad).
        returns: the value targets from GAE.
        mask: response mask.
        cliprange_value: how far a prediction may move per update (`cliprange_value`, default 0.2).
    """
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    error = (values - returns) ** 2
    error_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((error_clipped > error).float(), mask)
    return ValueLoss(loss, clipfrac)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: logsumexp(z) − Σ softmax(z)·z.

    Args:
        logits: `[..., vocab]`.

    Returns:
        `[...]` entropies in nats.
    """
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
