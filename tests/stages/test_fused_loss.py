"""The label-positions-only, chunked loss equals the model's own loss, gradients included."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from kubetune.stages.fused_loss import causal_lm_loss_sum, causal_lm_parts, linear_cross_entropy_sum


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
