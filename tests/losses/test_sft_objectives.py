"""DFT, EAFT and ASFT: the fused, chunked loss equals LLaMA-Factory's formula on full logits, gradients included,
and differs from plain cross-entropy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from kubetune.config import ConfigError, load_config
from kubetune.losses.sft_objectives import SftObjective, objective_loss_sum, sft_objective, sft_objective_loss_sum
from kubetune.model.reference import Reference

REPO = Path(__file__).resolve().parents[2]


def _direct(name: str, alpha: float, logits: torch.Tensor, targets: torch.Tensor,
            ref_logits: torch.Tensor | None = None) -> torch.Tensor:
    """LLaMA-Factory 0.9.5's trainer_utils formulas, written out on full (rows, vocab) logits: mean over rows."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    if name == "eaft":
        with torch.no_grad():
            top = torch.topk(logits, k=20, dim=-1).values
            log_p = top - torch.logsumexp(top, dim=-1, keepdim=True)
            weight = (-(log_p.exp() * log_p).sum(-1) / 3.0) ** alpha
        return (ce * weight).mean()
    dft = (ce * torch.exp(-ce).detach()).mean()
    if name == "dft":
        return dft
    kl = F.kl_div(F.log_softmax(logits, -1), F.softmax(ref_logits, -1), reduction="none").sum(-1)
    return dft + alpha * kl.mean()


@pytest.mark.parametrize(("name", "alpha"), [("dft", 0.0), ("eaft", 1.0), ("eaft", 0.5), ("asft", 0.1),
                                             ("asft", 2.0)])
def test_chunked_objective_matches_the_formula_with_gradients(name: str, alpha: float) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(70, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (70,))
    ref_hidden, ref_weight = torch.randn(70, 16), torch.randn(50, 16)
    objective = SftObjective(name, alpha)
    ref_rows = (ref_hidden, ref_weight) if name == "asft" else None

    fused = objective_loss_sum(objective, hidden, weight, targets, ref_rows, chunk_rows=16) / 70
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    direct = _direct(name, alpha, hidden @ weight.t(), targets, ref_hidden @ ref_weight.t())
    direct_grads = torch.autograd.grad(direct, (hidden, weight))

    torch.testing.assert_close(fused, direct, rtol=1e-5, atol=1e-6)
    for got, want in zip(fused_grads, direct_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    plain = F.cross_entropy(hidden @ weight.t(), targets)
    assert abs(fused.item() - plain.item()) > 1e-3


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    input_ids = torch.randint(3, 1000, (2, 12))
    labels = input_ids.clone()
    labels[:, :5] = -100
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels[1, 9:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _shifted_logits(model, batch):  # noqa: ANN001, ANN202
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return logits[:, :-1][keep], targets[keep]


@pytest.mark.parametrize("name", ["dft", "eaft"])
def test_model_loss_equals_the_formula_and_not_cross_entropy(tiny_model_dir: Path, name: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = _batch()
    loss_sum, learnt = sft_objective_loss_sum(SftObjective(name, 1.0), model, batch)
    logits, targets = _shifted_logits(model, batch)
    torch.testing.assert_close(loss_sum / learnt, _direct(name, 1.0, logits.float(), targets), rtol=1e-5, atol=1e-6)
    assert abs((loss_sum / learnt).item() - model(**batch).loss.item()) > 1e-3


def test_asft_reference_is_the_policy_without_its_adapter(tiny_model_dir: Path) -> None:
    """LoRA without ref_model: the KL term compares with the base (adapter disabled); a fresh LoRA adapter
    with non-zero B moves the policy away, so the KL is positive and the loss is DFT + α·KL."""
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    batch = _batch()
    objective = SftObjective("asft", 0.5)
    ref_rows = Reference(None).label_rows(policy, batch)
    loss_sum, learnt = sft_objective_loss_sum(objective, policy, batch, ref_rows)
    logits, targets = _shifted_logits(policy, batch)
    with policy.disable_adapter(), torch.no_grad():
        ref_logits, _ = _shifted_logits(policy, batch)
    expected = _direct("asft", 0.5, logits.float(), targets, ref_logits.float())
    torch.testing.assert_close(loss_sum / learnt, expected, rtol=1e-5, atol=1e-6)
    dft = _direct("dft", 0.0, logits.float(), targets)
    assert (loss_sum / learnt).item() > dft.item() + 1e-4  # the KL term is there


def _cfg(**keys):
    return load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft",
                              "dataset_dir": str(REPO / "data"), **keys})


def _problems(**keys) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        _cfg(**keys)
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


def test_config_picks_the_objective_and_its_alpha() -> None:
    assert sft_objective(_cfg().method) is None
    assert sft_objective(_cfg(use_dft_loss=True).method) == SftObjective("dft")
    assert sft_objective(_cfg(use_eaft_loss=True, eaft_alpha=0.5).method) == SftObjective("eaft", 0.5)
    assert sft_objective(_cfg(use_asft_loss=True, asft_alpha=0.3, ref_model="base/model").method) == SftObjective(
        "asft", 0.3)


def test_sft_loss_rules() -> None:
    assert "only one sft loss" in _problems(use_dft_loss=True, use_eaft_loss=True)["use_eaft_loss"]
    assert "has no effect without use_eaft_loss" in _problems(eaft_alpha=2.0)["eaft_alpha"]
    assert "has no effect without use_asft_loss" in _problems(use_dft_loss=True, asft_alpha=0.2)["asft_alpha"]
    assert "trains its own loss" in _problems(use_dft_loss=True, stage="dpo", dataset="kubi_dpo")["use_dft_loss"]
    assert "only for use_asft_loss" in _problems(ref_model="base/model")["ref_model"]
    assert "no ref_model is set" in _problems(use_asft_loss=True, ref_model_adapters="a")["ref_model_adapters"]
    assert "greater than or equal to 0" in _problems(use_eaft_loss=True, eaft_alpha=-1.0)["eaft_alpha"]
