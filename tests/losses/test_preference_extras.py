"""kto_pair, the BCO term with its running baseline, and LD-DPO's length desensitisation: each changes the loss as
its formula says (LLaMA-Factory 0.9.5's dpo trainer, with TRL's paired KTO)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from kubetune.losses.causal_lm import sequence_logps_fused
from kubetune.losses.logps import sequence_logps
from kubetune.losses.preference import RunningMean, kto_pair_loss, pairwise_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def test_kto_pair_is_the_mean_of_trls_chosen_and_rejected_terms() -> None:
    chosen, rejected, beta = t(0.5, -1.0, 2.0), t(-0.5, 0.3, 1.0), 0.7  # log-ratios
    chosen_kl, rejected_kl = max(chosen.mean().item(), 0.0), max(rejected.mean().item(), 0.0)
    trl = torch.cat([1 - torch.sigmoid(beta * (chosen - rejected_kl)),
                     1 - torch.sigmoid(beta * (chosen_kl - rejected))])
    torch.testing.assert_close(kto_pair_loss(chosen, rejected, beta).mean(), trl.mean())
    losses, chosen_rewards, _ = pairwise_loss("kto_pair", chosen - 3, rejected - 3, t(-3, -3, -3), t(-3, -3, -3),
                                              beta=beta)
    torch.testing.assert_close(losses.mean(), trl.mean())
    torch.testing.assert_close(chosen_rewards, beta * chosen)


def test_running_mean_is_the_mean_of_every_batch_mean() -> None:
    running = RunningMean()
    assert running.update(t(2.0)).item() == pytest.approx(2.0)
    assert running.update(t(-1.0)).item() == pytest.approx(0.5)
    assert running.update(t(5.0)).item() == pytest.approx(2.0)


def test_bco_term_is_added_and_reweighted_with_the_running_baseline() -> None:
    beta, w = 0.5, 0.25
    policy_c, policy_r, ref_c, ref_r = t(-1.0, -2.0), t(-3.0, -1.5), t(-1.5, -2.0), t(-2.0, -2.0)
    baseline = RunningMean()
    baseline.update(t(0.4))  # an earlier batch
    losses, _, _ = pairwise_loss("sigmoid", policy_c, policy_r, ref_c, ref_r, beta=beta, bco_weight=w,
                                 bco_baseline=baseline)
    chosen, rejected = policy_c - ref_c, policy_r - ref_r
    delta = (0.4 + torch.cat([beta * chosen, beta * rejected]).mean().item()) / 2
    dpo = -F.logsigmoid(beta * (chosen - rejected))
    bco = -F.logsigmoid(beta * chosen - delta) - F.logsigmoid(-(beta * rejected - delta))
    torch.testing.assert_close(losses, (dpo + w * bco) / (1 + w))
    assert baseline.mean == pytest.approx(delta)
    with pytest.raises(ValueError, match="running reward baseline"):
        pairwise_loss("sigmoid", policy_c, policy_r, ref_c, ref_r, beta=beta, bco_weight=w)


def _lf_ld_logps(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """LLaMA-Factory's get_batch_logps with ld_alpha, written out: the first min(len_w, len_l) positions from each
    response's first label count fully, the rest α times."""
    labels, logits = labels[:, 1:].clone(), logits[:, :-1]
    mask = labels != -100
    labels[~mask] = 0
    per_token = logits.log_softmax(-1).gather(2, labels[..., None]).squeeze(2)
    lengths = mask.sum(-1)
    half = len(labels) // 2
    shared = torch.minimum(lengths[:half], lengths[half:]).repeat(2)
    public = mask.int().argmax(1) + shared
    front = torch.arange(labels.shape[1])[None] < public[:, None]
    return (per_token * (front & mask)).sum(-1) + alpha * (per_token * (~front & mask)).sum(-1)


def test_ld_alpha_scales_the_tokens_beyond_the_shorter_response() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 11)
    labels = torch.randint(0, 11, (4, 9))
    labels[:, :3] = -100  # prompts
    labels[0, 7:] = -100  # chosen 0: 4 scored tokens; rejected 0 (row 2): 6
    labels[3, 5:] = -100  # rejected 1 (row 3): 2 scored tokens; chosen 1: 6
    full, _ = sequence_logps(logits, labels)
    ld, counts = sequence_logps(logits, labels, ld_alpha=0.3)
    torch.testing.assert_close(ld, _lf_ld_logps(logits, labels, 0.3))
    assert counts.tolist() == [4, 6, 6, 2]
    assert ld[0] == full[0] and ld[3] == full[3]  # the shorter of each pair is untouched
    assert ld[1] > full[1] and ld[2] > full[2]  # the longer loses (1 − α) of its negative tail
    torch.testing.assert_close(sequence_logps(logits, labels, ld_alpha=1.0)[0], full)


def test_fused_log_probs_apply_ld_alpha_as_the_logits_path(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    input_ids = torch.randint(3, 1000, (4, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[0, 8:] = -100
    labels[3, 6:] = -100
    attention_mask = torch.ones_like(input_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    with torch.no_grad():
        fused, _, _ = sequence_logps_fused(model, batch, ld_alpha=0.5)
        expected = _lf_ld_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels, 0.5)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert not math.isclose(fused[1].item(), sequence_logps_fused(model, batch)[0][1].item(), abs_tol=1e-3)
