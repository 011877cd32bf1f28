"""The preference losses as pure functions of sequence log-probabilities.

Every function takes per-sequence log-probabilities (one number per response: the sum, or for
IPO/ORPO/SimPO the mean, of the response tokens' log-probs), returns per-example losses and
the implicit rewards, and touches no model, so each is unit-tested on hand-computed numbers.
The formulas follow LLaMA-Factory (which follows the papers):

| loss | per pair (Δ = chosen − rejected) | reward of a response |
|---|---|---|
| sigmoid (DPO) | −(1−ε)·log σ(β·Δr) − ε·log σ(−β·Δr), r = log π − log π_ref | β·(log π − log π_ref) |
| hinge (SLiC) | max(0, 1 − β·Δr) | as DPO |
| ipo | (Δr̄ − 1/(2β))², r̄ on mean token log-probs | as DPO, on means |
| kto_pair | ½·[(1 − σ(β·(r_w − z_l))) + (1 − σ(β·(z_w − r_l)))], z = max(0, batch mean of r) | as DPO |
| + BCO (`pref_bco_weight` w) | (loss + w·[−log σ(β·r_w − δ) − log σ(δ − β·r_l)]) / (1 + w), δ running mean | as DPO |
| orpo | −c̄ + β·(−log σ(log odds(c̄) − log odds(r̄))), odds(p) = p/(1−p) | β·(mean log π) |
| simpo | −log σ(β·Δ(mean log π) − γ) | β·(mean log π) |
| kto | w_D·(1 − σ(β·(r − z))) if desirable, w_U·(1 − σ(β·(z − r))) if not; z = max(0, KL est.) | β·r |

ORPO's first term is its built-in SFT loss; SimPO's γ is written `simpo_gamma` and enters as γ/β
inside the bracket (LLaMA-Factory's form), i.e. the margin is γ on the β-scaled scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair")
"""Losses of log-ratios against a reference model."""
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
"""Losses of the policy's own likelihoods: no reference model is loaded for them."""
MEAN_LOGPS_LOSSES = ("ipo", "orpo", "simpo")
"""Losses computed on per-token mean log-probs (length-normalised), not sums."""
PAIRWISE_LOSSES = REFERENCE_LOSSES + REFERENCE_FREE_LOSSES


def sigmoid_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float,
                 label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al., 2023), with conservative-DPO label smoothing.

    Args:
        chosen_logratios: log π(y_w|x) − log π_ref(y_w|x) per pair, shape [B].
        rejected_logratios: the same for the rejected response, shape [B].
        beta: β, the inverse temperature of the implicit reward.
        label_smoothing: ε, the assumed fraction of pairs whose labels are flipped. Default 0.0 (plain DPO).
    """
    logits = beta * (chosen_logratios - rejected_logratios)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def hinge_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """SLiC's hinge on the DPO margin: zero once β·Δ exceeds 1. Arguments as `sigmoid_loss`."""
    return torch.relu(1 - beta * (chosen_logratios - rejected_logratios))


def ipo_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al., 2023): regress the margin onto 1/(2β) instead of pushing it to infinity.

    Args:
        chosen_logratios, rejected_logratios: log-ratios of *mean* token log-probs, shape [B].
        beta: β (the paper's τ): a smaller β asks for a larger margin.
    """
    return (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2


def kto_pair_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """Paired KTO (eqn 7 of the HALOs report), as TRL had it before moving KTO to a trainer of its own.

    Each half's reference point is the other half's mean log-ratio, clamped at 0 (the KL estimate). TRL returned
    the 2B chosen and rejected terms; their mean is the mean over pairs of the two terms' average, which is what
    this returns per pair (so BCO and the SFT term add per pair as for the other losses).

    Args:
        chosen_logratios, rejected_logratios: log π − log π_ref per pair, shape [B].
        beta: β.
    """
    chosen_kl = chosen_logratios.mean().clamp(min=0)
    rejected_kl = rejected_logratios.mean().clamp(min=0)
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl))
    rejected_losses = 1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios))
    return (chosen_losses + rejected_losses) / 2


def bco_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, delta: Tensor | float) -> Tensor:
    """BCO (Jung et al., 2024): each response classified against the reward baseline δ, per pair.

    Args:
        chosen_logratios, rejected_logratios: log π − log π_ref per pair, shape [B].
        beta: β.
        delta: δ, the running mean of the rewards (`RunningMean`).
    """
    return -F.logsigmoid(beta * chosen_logratios - delta) - F.logsigmoid(-(beta * rejected_logratios - delta))


class RunningMean:
    """The mean of every value seen so far (across ranks): BCO's reward baseline δ.

    LLaMA-Factory keeps it with TRL 0.x's `RunningMoments`, fed each batch's mean reward (chosen and rejected
    together, detached); TRL 1.x has dropped it, so it is kept here: after k updates δ is the mean of the k batch
    means (under torch.distributed, of every rank's). It is not saved in checkpoints (as in LLaMA-Factory), so a
    resumed run starts it afresh.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 0.0

    @torch.no_grad()
    def update(self, value: Tensor) -> Tensor:
        """Add one value (a scalar tensor, this rank's) and return the new mean as a tensor on its device."""
        total = torch.stack([value.detach().float().sum(), value.new_tensor(float(value.numel()), dtype=torch.float)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        batch_sum, batch_count = total.tolist()
        self.count += batch_count
        self.mean += (batch_sum / batch_count - self.mean) * batch_count / self.count
        return value.new_tensor(self.mean, dtype=torch.float)


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float) -> Tensor:
    """ORPO (Hong et al., 2024): SFT on the chosen response plus β × a log-odds-ratio penalty.

    Args:
        chosen_logps: mean token log-prob of the chosen response under the policy, shape [B] (≤ 0).
        rejected_logps: the same for the rejected response.
        beta: λ of the paper, the weight of the odds-ratio term.
    """
    # log odds(p) = log p − log(1 − p); log1p(−exp(x)) is the stable log(1 − p) for x = log p < 0.
    # A response the model reproduces exactly (x → 0) would make it −inf: keep x just below 0.
    chosen, rejected = chosen_logps.clamp(max=-1e-6), rejected_logps.clamp(max=-1e-6)
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    return -chosen_logps - beta * F.logsigmoid(log_odds)


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (Meng et al., 2024): a length-normalised, reference-free margin loss.

    Args:
        chosen_logps, rejected_logps: mean token log-probs under the policy, shape [B].
        beta: β, the reward scale.
        gamma: γ (`simpo_gamma`), the target reward margin.
    """
    return -F.logsigmoid(beta * (chosen_logps - rejected_logps - gamma / beta))


def pairwise_loss(loss_type: str, chosen_logps: Tensor, rejected_logps: Tensor,
                  ref_chosen_logps: Tensor | None = None, ref_rejected_logps: Tensor | None = None, *,
                  beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                  bco_weight: float = 0.0, bco_baseline: RunningMean | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """One of the pairwise losses, with the rewards it implies.

    Args:
        loss_type: `sigmoid`, `hinge`, `ipo`, `kto_pair`, `orpo` or `simpo` (`pref_loss`).
        chosen_logps, rejected_logps: policy log-probs per pair, shape [B]; sums, or means for
            the losses in `MEAN_LOGPS_LOSSES`.
        ref_chosen_logps, ref_rejected_logps: the reference model's, in the same form; required by
            the losses in `REFERENCE_LOSSES`, ignored by the others. Default None.
        beta: β (`pref_beta`).
        label_smoothing: ε of the sigmoid loss (`dpo_label_smoothing`). Default 0.0.
        simpo_gamma: γ of the simpo loss. Default 0.5.
        bco_weight: w (`pref_bco_weight`): a reference loss becomes (loss + w·BCO) / (1 + w). Default 0.0 (off).
        bco_baseline: BCO's δ, updated with this batch's mean reward (evaluation batches too, as in
            LLaMA-Factory); required when `bco_weight` > 0. Default None.

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]); the rewards are detached.
    """
    if loss_type in REFERENCE_LOSSES:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"pref_loss {loss_type!r} needs reference log-probs")
        chosen_ratios, rejected_ratios = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
        if loss_type == "sigmoid":
            losses = sigmoid_loss(chosen_ratios, rejected_ratios, beta, label_smoothing)
        elif loss_type == "hinge":
            losses = hinge_loss(chosen_ratios, rejected_ratios, beta)
        elif loss_type == "kto_pair":
            losses = kto_pair_loss(chosen_ratios, rejected_ratios, beta)
        else:
            losses = ipo_loss(chosen_ratios, rejected_ratios, beta)
        chosen_rewards, rejected_rewards = beta * chosen_ratios.detach(), beta * rejected_ratios.detach()
        if bco_weight > 0:
            if bco_baseline is None:
                raise ValueError("pref_bco_weight needs the running reward baseline (RunningMean)")
            delta = bco_baseline.update(torch.cat([chosen_rewards, rejected_rewards]).mean())
            bco = bco_loss(chosen_ratios, rejected_ratios, beta, delta.to(chosen_ratios.device))
            losses = (losses + bco_weight * bco) / (1 + bco_weight)
        return losses, chosen_rewards, rejected_rewards
    if loss_type == "orpo":
        losses = orpo_loss(chosen_logps, rejected_logps, beta)
    elif loss_type == "simpo":
        losses = simpo_loss(chosen_logps, rejected_logps, beta, simpo_gamma)
    else:
        raise ValueError(f"unknown pref_loss {loss_type!r}; expected one of {', '.join(PAIRWISE_LOSSES)}")
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z: the batch mean of log π/π_ref on mismatched (prompt, response) pairs.

    Clamped at 0 (a KL divergence is never negative) and detached: KTO treats it as a constant. Under
    torch.distributed the batch is every rank's rows (one all-reduce), so two ranks of b rows compute
    the z of one rank with 2b, as TRL gathers it too.

    Args:
        policy_kl_logps, ref_kl_logps: summed log-probs of the KL partner rows, shape [B].
    """
    gap = (policy_kl_logps - ref_kl_logps).detach().float()
    total = torch.stack([gap.sum(), gap.new_tensor(float(gap.numel()))])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).clamp(min=0).to(policy_kl_logps.dtype)


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor | float, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """KTO (Ethayarajh et al., 2024) on unpaired responses.

    Args:
        policy_logps, ref_logps: summed response log-probs, shape [B].
        desirable: bool [B], True where the response is desirable (`kto_tag`).
        kl: z, from `kto_kl_estimate`.
        beta: β (`pref_beta`).
        desirable_weight: λ_D (`kto_chosen_weight`). Default 1.0.
        undesirable_weight: λ_U (`kto_rejected_weight`). Default 1.0.

    Returns:
        (losses [B], rewards [B] = β·(log π − log π_ref), detached).
    """
    logratios = policy_logps - ref_logps
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(desirable.bool(), desirable_losses, undesirable_losses)
    return losses, beta * logratios.detach()


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """The reward model's loss: the Bradley–Terry negative log-likelihood that chosen beats rejected,
    −log σ(r_chosen − r_rejected), averaged over pairs."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
