"""The label-positions-only, chunked loss equals the model's own loss, gradients included."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from kubetune.losses.causal_lm import causal_lm_loss_sum, causal_lm_parts, linear_cross_entropy_sum


def test_chunked_linear_cross_entropy_matches_full_logits() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (300,))
    (linear_cross_entropy_sum(hidden, weight, targets, chunk_rows=64) / 300).backward()
    fused = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (reference / 300).backward()
    assert torch.allclose(linear_cross_entropy_sum(hidden, weight, targets, 64), reference, rtol=1e-5)
    torch.testing.assert_close(fused[0], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[1], weight.grad, rtol=1e-4, atol=1e-6)


def test_causal_lm_loss_equals_the_models_own(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    input_ids = torch.randint(3, 1000, (2, 12))
    labels = input_ids.clone()
    labels[:, :5] = -100  # a prompt
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # padding
    labels[1, 9:] = -100
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    parts = causal_lm_parts(model)
    assert parts is not None
    loss_sum, learnt = causal_lm_loss_sum(*parts, batch)
    assert learnt == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(loss_sum / learnt, model(**batch).loss, rtol=1e-5, atol=1e-6)


def test_fused_sequence_logps_equal_the_logits_path_with_gradients(tiny_model_dir: Path) -> None:
    """DPO/KTO's per-sequence log-probs without [B, T, V] logits: same values, same LoRA gradients,
    and an all-prompt row scores 0 (nothing learnt) instead of failing."""
    from peft import LoraConfig, get_peft_model

    from kubetune.losses.causal_lm import sequence_logps_fused
    from kubetune.losses.logps import mean_response_logits, sequence_logps

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    input_ids = torch.randint(3, 1000, (3, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[1, 7:] = -100
    labels[2] = -100  # a row with nothing to score
    lora = [p for p in model.parameters() if p.requires_grad]

    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    logps, counts, mean_logits = sequence_logps_fused(model, batch)
    weights = torch.tensor([1.0, -2.0, 3.0])  # rows weighted differently, as a DPO loss does
    fused_grads = torch.autograd.grad((logps * weights).sum(), lora)

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    expected, expected_counts = sequence_logps(logits, labels)
    expected_grads = torch.autograd.grad((expected * weights).sum(), lora)

    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    assert logps[2] == 0 and counts.tolist() == expected_counts.tolist()
    torch.testing.assert_close(mean_logits, mean_response_logits(logits, labels), rtol=1e-5, atol=1e-5)
    assert not mean_logits.requires_grad
    for got, want in zip(fused_grads, expected_grads, strict=True):
        # float32 sums in another order: within 1e-6 on one CPU, 1.7e-6 apart on an AMD EPYC
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in fused_grads)


def test_packed_pairs_score_as_padded_pairs(tiny_model_dir: Path) -> None:
    """Padding-free DPO batches: the 2B sequences share rows (each sees only itself) and give the same
    per-sequence log-probs and gradients as one padded sequence per row."""
    from peft import LoraConfig, get_peft_model

    from kubetune.data.collator import PairwiseCollator
    from kubetune.losses.causal_lm import sequence_logps_fused

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    lora = [p for p in model.parameters() if p.requires_grad]

    def row(n: int, prompt: int) -> tuple[list[int], list[int]]:
        ids = torch.randint(3, 1000, (n,)).tolist()
        return ids, [-100] * prompt + ids[prompt:]

    features = []
    for chosen_n, rejected_n in ((12, 5), (7, 20), (9, 9)):
        c, cl = row(chosen_n, 3)
        r, rl = row(rejected_n, 3)
        features.append({"chosen_input_ids": c, "chosen_labels": cl, "rejected_input_ids": r, "rejected_labels": rl})
    padded = PairwiseCollator(pad_token_id=0)(features)
    packed = PairwiseCollator(pad_token_id=0, pack_to=24)(features)
    assert packed["input_ids"].shape[0] < 6 and packed["input_ids"].shape[1] <= 24  # fewer rows, none over 24
    assert sorted(set(packed["sequence_index"].flatten().tolist())) == [-1, 0, 1, 2, 3, 4, 5]

    weights = torch.tensor([1.0, 2.0, -1.0, 0.5, -3.0, 1.5])
    results = []
    for batch in (padded, packed):
        logps, counts, mean_logits = sequence_logps_fused(model, batch)
        grads = torch.autograd.grad((logps * weights).sum(), lora)
        results.append((logps.detach(), counts, mean_logits, grads))
    (a, ca, ma, ga), (b, cb, mb, gb) = results
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)
    assert cb.tolist() == ca.tolist()
    torch.testing.assert_close(mb, ma, rtol=1e-5, atol=1e-5)
    for got, want in zip(gb, ga, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    single = PairwiseCollator(pad_token_id=0, pack_to=24, one_row=True)(features)
    assert single["input_ids"].shape[0] == 1
