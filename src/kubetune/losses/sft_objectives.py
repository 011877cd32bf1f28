"""SFT's re-weighted token losses: DFT, EAFT and ASFT (LLaMA-Factory's `use_dft_loss`, `use_eaft_loss`,
`use_asft_loss`).

For a learnt token with logits z, target y and cross-entropy CE = logsumexp(z) − z[y], sg() a stop-gradient:

- DFT (Dynamic Fine-Tuning): CE · sg(p(y)), p = softmax(z): tokens the model already finds likely count more,
  which turns SFT's gradient into a policy-gradient-like update.
- EAFT (entropy-adaptive): CE · sg((H / 3)^α), H the entropy of the softmax over the 20 largest logits (an
  approximation of the full entropy; 3 is LLaMA-Factory's normaliser): tokens where the model is unsure count more.
- ASFT (anchored): DFT + α · KL(q ‖ p), q the reference model's distribution at the same position, which keeps
  the policy near where it started.

The per-token terms are summed over the learnt tokens and divided like the plain loss (by the learnt tokens of the
accumulated batch), so they are LLaMA-Factory's numbers for one device without accumulation. As in the fused
cross-entropy, logits are computed only at labelled positions, a chunk of rows at a time; each chunk is
checkpointed (its logits are computed again in the backward pass), so no [batch, length, vocab] tensor is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from kubetune.data.encode import IGNORE_INDEX
from kubetune.losses.causal_lm import causal_lm_parts
from kubetune.losses.logps import CHUNK_ROWS

# EAFT's entropy is that of the renormalised top-k distribution, with this k, divided by this scale.
EAFT_TOP_K = 20
EAFT_ENTROPY_SCALE = 3.0


@dataclass(frozen=True)
class SftObjective:
    """Which re-weighted token loss an sft/pt run trains with.

    Attributes:
        name: "dft", "eaft" or "asft".
        alpha: EAFT's exponent (`eaft_alpha`) or ASFT's KL weight (`asft_alpha`); unused by DFT.
    """

    name: Literal["dft", "eaft", "asft"]
    alpha: float = 0.0

    @property
    def needs_reference(self) -> bool:
        """ASFT's KL term compares with a frozen reference model."""
        return self.name == "asft"

    def token_losses(self, logits: Tensor, targets: Tensor, ref_logits: Tensor | None = None) -> Tensor:
        """Each row's loss term, in float32.

        Args:
            logits: (rows, vocab) policy logits at learnt positions.
            targets: (rows,) the token each row should predict.
            ref_logits: (rows, vocab) the reference's logits at the same positions (ASFT only).
        """
        logits = logits.float()
        ce = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)
        if self.name == "eaft":
            return ce * eaft_weights(logits.detach(), self.alpha)
        dft = ce * torch.exp(-ce.detach())  # CE · sg(p(y))
        if self.name == "dft":
            return dft
        if ref_logits is None:
            raise ValueError("the ASFT loss needs the reference model's logits")
        kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(ref_logits.float(), dim=-1),
                      reduction="none", log_target=True).sum(-1)  # KL(q ‖ p) per row
        return dft + self.alpha * kl


def eaft_weights(logits: Tensor, alpha: float) -> Tensor:
    """EAFT's per-row weight (H_top-k / 3)^α from detached (rows, vocab) logits."""
    top = torch.topk(logits, k=min(EAFT_TOP_K, logits.shape[-1]), dim=-1).values
    log_p = top - torch.logsumexp(top, dim=-1, keepdim=True)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return torch.pow(entropy / EAFT_ENTROPY_SCALE, alpha)


def sft_objective(method: object) -> SftObjective | None:
    """The objective the finetuning keys ask for; None for plain cross-entropy.

    Args:
        method: `cfg.method` (`use_dft_loss`, `use_eaft_loss` + `eaft_alpha`, `use_asft_loss` + `asft_alpha`).
            LLaMA-Factory checks them in the order DFT, EAFT, ASFT; the rules refuse more than one.
    """
    if getattr(method, "use_dft_loss", False):
        return SftObjective("dft")
    if getattr(method, "use_eaft_loss", False):
        return SftObjective("eaft", float(method.eaft_alpha))
    if getattr(method, "use_asft_loss", False):
        return SftObjective("asft", float(method.asft_alpha))
    return None


def _reference_logits(ref: Tensor | None, ref_weight: Tensor | None) -> Tensor | None:
    """The reference's logits from `label_rows`' pair: hidden states through its head, or logits as they are."""
    if ref is None or ref_weight is None:
        return ref
    return ref @ ref_weight.t()


def _chunk_loss(objective: SftObjective, hidden: Tensor, weight: Tensor, targets: Tensor,
                ref: Tensor | None, ref_weight: Tensor | None) -> Tensor:
    return objective.token_losses(hidden @ weight.t(), targets, _reference_logits(ref, ref_weight)).sum()


def objective_loss_sum(objective: SftObjective, hidden: Tensor, weight: Tensor, targets: Tensor,
                       ref_rows: tuple[Tensor, Tensor | None] | None = None,
                       chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """Sum over rows of the objective's token loss under `hidden @ weight.T`, a checkpointed chunk at a time.

    Args:
        objective: the re-weighted loss.
        hidden: (rows, hidden) policy states at the learnt positions.
        weight: (vocab, hidden) the policy's output-head weight.
        targets: (rows,) token ids to predict.
        ref_rows: ASFT's reference at the same rows: (hidden states, head weight), or (logits, None).
        chunk_rows: rows of logits computed at once. Default `CHUNK_ROWS`.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph: an all-masked batch still backprops
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        ref, ref_weight = (None, None) if ref_rows is None else (ref_rows[0][rows], ref_rows[1])
        args = (objective, hidden[rows], weight, targets[rows], ref, ref_weight)
        total = total + (torch.utils.checkpoint.checkpoint(_chunk_loss, *args, use_reentrant=False)
                         if grad else _chunk_loss(*args))
    return total


def label_positions(inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(keep mask over the shifted positions [B, T-1], targets at them) of a causal-LM batch."""
    targets = inputs["labels"][..., 1:]
    keep = targets != IGNORE_INDEX
    return keep, targets[keep]


def model_inputs(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The keys a causal LM's forward reads from a collated batch."""
    return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}


def label_rows(model: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """`model`'s rows at the learnt positions: (hidden states, head weight) for a plain `head(backbone(x))`
    causal LM, else (logits, None).

    Args:
        model: a causal LM, possibly PEFT-wrapped (unwrapped from any DDP/DeepSpeed wrapper).
        inputs: the collated batch (`labels` says which positions are learnt).
    """
    keep, _ = label_positions(inputs)
    parts = causal_lm_parts(model)
    if parts is None:
        logits = model(**model_inputs(inputs), use_cache=False).logits
        return logits[..., :-1, :][keep], None
    backbone, head = parts
    hidden = backbone(**model_inputs(inputs), use_cache=False).last_hidden_state
    return hidden[..., :-1, :][keep], head.weight


def sft_objective_loss_sum(objective: SftObjective, model: nn.Module, inputs: dict[str, Tensor],
                           ref_rows: tuple[Tensor, Tensor | None] | None = None) -> tuple[Tensor, int]:
    """(sum of the objective's token losses, number of learnt tokens) of a causal-LM batch.

    Args:
        objective: the re-weighted loss.
        model: the policy (unwrapped).
        inputs: the collator's batch.
        ref_rows: the reference's `label_rows` of the same batch (ASFT), computed without gradients.
    """
    keep, targets = label_positions(inputs)
    rows, weight = label_rows(model, inputs)
    if weight is None:  # the model's own logits: no head to chunk through
        ref_logits = None if ref_rows is None else _reference_logits(*ref_rows)
        return objective.token_losses(rows, targets, ref_logits).sum(), int(keep.sum())
    return objective_loss_sum(objective, rows, weight, targets, ref_rows), int(keep.sum())
