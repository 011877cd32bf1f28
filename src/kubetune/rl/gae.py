"""Per-token rewards, generalised advantage estimation and whitening over masked response tokens.

Every tensor here is `[batch, response_len]` with a `mask` of the same shape: 1 on response tokens
(up to and including the first stop token), 0 on the right padding after it. Padded positions
never leak into a statistic or into an earlier token's advantage.

References: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation"; Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (the
per-token KL penalty with the score added on the last token).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SumOver = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                sum_over: SumOver | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over everything, or along `dim`); 0 where nothing is unmasked.

    Args:
        values: any shape.
        mask: same shape, 0/1 (bool or float).
        dim: reduce along this dimension only (default None: over all elements).
        sum_over: sums a tensor over the data-parallel ranks (`Ranks.sum`), making the mean one over
            every rank's values; None = this process's values only. Only with `dim=None`.
    """
    # where, not multiply: a NaN at a padded position must not turn the sum into NaN
    kept = torch.where(mask.bool(), values, 0.0)
    weights = mask.to(values.dtype)
    if dim is None:
        total = torch.stack([kept.sum(), weights.sum()])
        if sum_over is not None:
            total = sum_over(total)
        return total[0] / total[1].clamp(min=1.0)
    return kept.sum(dim) / weights.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               sum_over: SumOver | None = None) -> torch.Tensor:
    """Variance of the unmasked values (Bessel-corrected by default; 0 for fewer than two values).

    Args:
        values: any shape.
        mask: same shape, 0/1.
        unbiased: divide by n - 1 instead of n (default True).
        sum_over: as in `masked_mean`: the variance of every rank's values.
    """
    mean = masked_mean(values, mask, sum_over=sum_over)
    var = masked_mean((values - mean) ** 2, mask, sum_over=sum_over)
    count = mask.to(values.dtype).sum()
    if sum_over is not None:
        count = sum_over(count)
    if count < 2:
        return torch.zeros_like(var)
    return var * count / (count - 1) if unbiased else var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8, sum_over: SumOver | None = None) -> torch.Tensor:
    """Scale the unmasked values to unit variance (and zero mean when `shift_mean`); padding stays 0.

    Fewer than two unmasked values have no variance: they are returned unchanged (with the mean
    removed when `shift_mean`).

    Args:
        values: any shape.
        mask: same shape, 0/1.
        shift_mean: subtract the mean (default True). Rewards are whitened without the shift, so
            their sign (better or worse than nothing) survives; advantages with it.
        eps: added to the variance before the square root (default 1e-8).
        sum_over: as in `masked_mean`: whiten with the mean and variance of every rank's values, so
            N ranks scale their rows as one process holding all of them would.
    """
    mean = masked_mean(values, mask, sum_over=sum_over)
    count = mask.to(values.dtype).sum()
    if sum_over is not None:
        count = sum_over(count)
    if count < 2:
        whitened = values - mean if shift_mean else values
    else:
        whitened = (values - mean) * torch.rsqrt(masked_var(values, mask, sum_over=sum_over) + eps)
        if not shift_mean:
            whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward of each response token: −kl_coef·KL on every token, plus the score on the last one.

    The KL estimate per token is `logprob − ref_logprob` of the sampled token (unbiased for the
    sequence KL when summed over a sampled response).

    Args:
        scores: `[batch]` one scalar per response (reward model, API or rule).
        logprobs: `[batch, len]` log-probs of the sampled tokens under the policy that sampled them.
        ref_logprobs: `[batch, len]` the same under the reference model.
        mask: `[batch, len]` response mask (right-padded).
        kl_coef: the KL penalty coefficient (from the KL controller).

    Returns:
        (rewards `[batch, len]`, per-token KL `[batch, len]`), both 0 on padding.
    """
    kl = torch.where(mask.bool(), logprobs - ref_logprobs, 0.0)
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))
    return torch.where(mask.bool(), rewards, 0.0), kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns, computed backwards over each response.

        δ_t = r_t + γ·V_{t+1} − V_t        (V after the last response token is 0: the episode ended)
        A_t = δ_t + γ·λ·A_{t+1}
        R_t = A_t + V_t                    (the value target)

    Args:
        rewards: `[batch, len]` per-token rewards (`token_rewards`).
        values: `[batch, len]` the critic's values of the states before each response token.
        mask: `[batch, len]` response mask (right-padded).
        gamma: discount factor γ in [0, 1].
        lam: GAE λ in [0, 1]: 0 = one-step TD (low variance, biased), 1 = Monte-Carlo returns.

    Returns:
        (advantages, returns), each `[batch, len]`, 0 on padding. Advantages are not whitened here.
    """
    keep = mask.bool()
    rewards = torch.where(keep, rewards, 0.0)
    values = torch.where(keep, values, 0.0)
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = torch.where(keep[:, t], running, 0.0)  # padding carries nothing back
        advantages[:, t] = running
    returns = torch.where(keep, advantages + values, 0.0)
    return advantages, returns
