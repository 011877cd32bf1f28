"""The preference losses, log-probs and batches, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune.data.collator import KTOCollator, PairwiseCollator
from kubetune.losses.logps import sequence_logps
from kubetune.losses.preference import (
    hinge_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_loss,
    pairwise_loss,
    sigmoid_loss,
    simpo_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_is_ln2_at_zero_margin_and_smooths_labels() -> None:
    assert sigmoid_loss(t(0.0), t(0.0), beta=0.1).item() == pytest.approx(math.log(2), abs=1e-12)
    # margin Δ = 1 − (−1) = 2, β = 0.5 → βΔ = 1; ε = 0.1: −0.9·logσ(1) − 0.1·logσ(−1)
    expected = -0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0)
    assert expected == pytest.approx(0.41326, abs=1e-5)
    assert sigmoid_loss(t(1.0), t(-1.0), beta=0.5, label_smoothing=0.1).item() == pytest.approx(expected, abs=1e-12)
    # without smoothing a larger margin always lowers the loss; with it the loss has a minimum
    assert sigmoid_loss(t(5.0), t(-5.0), beta=1.0).item() < 1e-4
    assert sigmoid_loss(t(5.0), t(-5.0), beta=1.0, label_smoothing=0.1).item() > 0.9


def test_hinge_hand_computed() -> None:
    # β = 0.1, Δ = 2 → max(0, 1 − 0.2) = 0.8; Δ = 20 → 0; Δ = −3 → 1.3
    assert hinge_loss(t(1.0, 10.0, -1.0), t(-1.0, -10.0, 2.0), beta=0.1).tolist() == pytest.approx([0.8, 0.0, 1.3])


def test_ipo_hand_computed() -> None:
    # β = 0.1 → target margin 1/(2β) = 5: (2 − 5)² = 9, (5 − 5)² = 0, (−1 − 5)² = 36
    assert ipo_loss(t(1.0, 3.0, -0.5), t(-1.0, -2.0, 0.5), beta=0.1).tolist() == pytest.approx([9.0, 0.0, 36.0])


def test_orpo_hand_computed() -> None:
    # mean log-probs c = −0.5, r = −1.0: log odds(p) = log p − log(1 − p)
    c, r, beta = -0.5, -1.0, 0.1
    log_odds = (c - math.log(1 - math.exp(c))) - (r - math.log(1 - math.exp(r)))
    assert log_odds == pytest.approx(0.97407, abs=1e-5)
    expected = -c + beta * -log_sigmoid(log_odds)  # SFT term + λ·odds-ratio term
    assert expected == pytest.approx(0.53203, abs=1e-5)
    assert orpo_loss(t(c), t(r), beta).item() == pytest.approx(expected, abs=1e-12)
    # a response the model reproduces exactly (log p = 0) gives a finite loss, not inf/nan
    assert torch.isfinite(orpo_loss(t(0.0), t(-1.0), beta)).all()


def test_simpo_hand_computed() -> None:
    # β = 2, γ = 0.5: −logσ(β·(c − r) − γ) = −logσ(2·0.5 − 0.5) = log(1 + e^−0.5)
    assert simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5).item() == pytest.approx(math.log1p(math.exp(-0.5)))
    # with γ = 0 and equal likelihoods it is ln 2, like DPO at the start
    assert simpo_loss(t(-1.0), t(-1.0), beta=2.0, gamma=0.0).item() == pytest.approx(math.log(2))


def test_pairwise_loss_rewards_and_reference_use() -> None:
    losses, chosen, rejected = pairwise_loss("sigmoid", t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)
    assert losses.item() == pytest.approx(-log_sigmoid(0.2))
    # reference-free losses reward the policy's own (mean) log-probs and ignore any reference
    _, chosen, rejected = pairwise_loss("simpo", t(-0.5), t(-1.0), beta=2.0, simpo_gamma=0.5)
    assert (chosen.item(), rejected.item()) == pytest.approx((-1.0, -2.0))
    with pytest.raises(ValueError, match="needs reference"):
        pairwise_loss("hinge", t(-1.0), t(-2.0), beta=0.1)
    with pytest.raises(ValueError, match="unknown pref_loss"):
        pairwise_loss("bogus", t(-1.0), t(-2.0), beta=0.1)


def test_kto_hand_computed() -> None:
    policy, ref = t(-10.0, -10.0, -9.0), t(-11.0, -9.0, -9.0)  # log-ratios 1, −1, 0
    desirable = torch.tensor([True, False, True])
    kl = kto_kl_estimate(t(-5.0, -7.0), t(-5.5, -7.5))  # mean(0.5, 0.5) = 0.5
    assert kl.item() == pytest.approx(0.5)
    assert kto_kl_estimate(t(-6.0), t(-5.0)).item() == 0.0  # clamped: a KL is never negative
    losses, rewards = kto_loss(policy, ref, desirable, kl, beta=0.1, desirable_weight=2.0, undesirable_weight=1.0)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = [2.0 * (1 - sigmoid(0.1 * (1 - 0.5))),   # desirable: λ_D·(1 − σ(β(r − z)))
                1.0 * (1 - sigmoid(0.1 * (0.5 + 1))),   # undesirable: λ_U·(1 − σ(β(z − r)))
                2.0 * (1 - sigmoid(0.1 * (0 - 0.5)))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert rewards.tolist() == pytest.approx([0.1, -0.1, 0.0])


def test_sequence_logps_sums_only_labelled_tokens() -> None:
    vocab = 5
    logits = torch.randn(2, 4, vocab)
    labels = torch.tensor([[-100, 2, 3, -100], [-100, -100, 1, 4]])
    logps, counts = sequence_logps(logits, labels)
    log_probs = logits.log_softmax(-1)
    # position t predicts token t + 1
    expected = [log_probs[0, 0, 2] + log_probs[0, 1, 3], log_probs[1, 1, 1] + log_probs[1, 2, 4]]
    assert logps.tolist() == pytest.approx([e.item() for e in expected], abs=1e-5)
    assert counts.tolist() == [2, 2]


def test_pairwise_collator_stacks_chosen_then_rejected() -> None:
    rows = [{"chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3],
             "rejected_input_ids": [1, 2], "rejected_labels": [-100, 2]},
            {"chosen_input_ids": [4, 5], "chosen_labels": [-100, 5],
             "rejected_input_ids": [4, 6, 7, 8], "rejected_labels": [-100, 6, 7, 8]}]
    batch = PairwiseCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [1, 2, 0, 0], [4, 6, 7, 8]]
    assert batch["labels"].tolist()[1] == [-100, 5, -100, -100]
    assert batch["attention_mask"].tolist()[2] == [1, 1, 0, 0]


def test_kto_collator_pads_rows_and_kl_partners_to_one_width() -> None:
    rows = [{"input_ids": [1, 2], "labels": [-100, 2], "kto_tag": True, "kl_input_ids": [1, 9, 9, 9],
             "kl_labels": [-100, 9, 9, 9]},
            {"input_ids": [3, 4, 5], "labels": [-100, 4, 5], "kto_tag": False, "kl_input_ids": [3, 2],
             "kl_labels": [-100, 2]}]
    batch = KTOCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape == batch["kl_input_ids"].shape == (2, 4)
    assert batch["kl_input_ids"].tolist() == [[1, 9, 9, 9], [3, 2, 0, 0]]
    assert batch["kl_attention_mask"].tolist()[1] == [1, 1, 0, 0]
    assert batch["kto_tag"].tolist() == [True, False]
