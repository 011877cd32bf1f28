"""Each finetuning type trains what it should and nothing else, and the loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune.config import load_config
from kubetune.model.adapters import linear_module_names, prepare_for_training
from kubetune.model.loader import count_parameters, load_base_model


def _setup(model_dir: Path, **keys):
    cfg = load_config(None, {"model_name_or_path": str(model_dir), **keys})
    model = load_base_model(cfg.model, path=str(model_dir))
    model = prepare_for_training(model, cfg.model, cfg.method, gradient_checkpointing=True)
    return cfg, model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def _train_steps(model, steps: int = 12, lr: float = 3e-2) -> list[float]:
    """A memorisable batch: the same two sequences every step."""
    torch.manual_seed(0)
    batch = torch.randint(5, 200, (2, 24))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _changed(before, after, name_filter) -> tuple[set[str], set[str]]:
    changed = {n for n in after if name_filter(n) and not torch.equal(before[n], after[n])}
    same = {n for n in after if name_filter(n) and torch.equal(before[n], after[n])}
    return changed, same


def test_lora_all_targets_every_linear_layer_but_the_head(tiny_model_dir: Path) -> None:
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir)})
    names = linear_module_names(load_base_model(cfg.model, path=str(tiny_model_dir)))
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_lora_trains_only_the_adapter(tiny_model_dir: Path) -> None:
    _, model = _setup(tiny_model_dir, finetuning_type="lora", lora_rank=4)
    before = _snapshot(model)
    losses = _train_steps(model)
    after = _snapshot(model)
    assert losses[-1] < losses[0] - 0.1  # a random tiny model moves slowly through a frozen head
    changed, _ = _changed(before, after, lambda n: "lora_B" in n)
    assert changed, "LoRA B matrices must move"
    base_changed, _ = _changed(before, after, lambda n: "lora_" not in n)
    assert not base_changed, f"frozen base weights moved: {sorted(base_changed)[:3]}"
    trainable, total = count_parameters(model)
    assert 0 < trainable < total * 0.2


def test_freeze_trains_only_the_last_layers(tiny_model_dir: Path) -> None:
    _, model = _setup(tiny_model_dir, finetuning_type="freeze", freeze_trainable_layers=1)
    before = _snapshot(model)
    losses = _train_steps(model)
    after = _snapshot(model)
    assert losses[-1] < losses[0]
    changed, _ = _changed(before, after, lambda n: ".layers.1." in n)
    _, same = _changed(before, after, lambda n: ".layers.0." in n or "embed" in n)
    assert changed and len(same) == len([n for n in after if ".layers.0." in n or "embed" in n])


def test_freeze_first_layers_and_named_modules(tiny_model_dir: Path) -> None:
    _, model = _setup(tiny_model_dir, finetuning_type="freeze", freeze_trainable_layers=-1,
                      freeze_trainable_modules="mlp", freeze_extra_modules="norm")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all((".layers.0.mlp." in n) or n == "model.norm.weight" for n in trainable)
    assert "model.norm.weight" in trainable


def test_full_trains_everything(tiny_model_dir: Path) -> None:
    _, model = _setup(tiny_model_dir, finetuning_type="full")
    before = _snapshot(model)
    losses = _train_steps(model, lr=1e-3)
    after = _snapshot(model)
    assert losses[-1] < losses[0]
    changed, same = _changed(before, after, lambda n: True)
    assert not same, f"unchanged under full fine-tuning: {sorted(same)[:3]}"


def test_qlora_runs_on_cpu_and_trains_the_adapter(tiny_model_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    _, model = _setup(tiny_model_dir, finetuning_type="lora", quantization_bit=4, lora_rank=4)
    linear4 = [m for m in model.modules() if m.__class__.__name__ == "Linear4bit"]
    assert linear4, "the base must be quantised to 4 bits"
    before = _snapshot(model)
    losses = _train_steps(model)
    after = _snapshot(model)
    assert losses[-1] < losses[0] - 0.1  # a random tiny model moves slowly through a frozen head
    assert _changed(before, after, lambda n: "lora_B" in n)[0]


def test_lora_alpha_defaults_to_twice_the_rank() -> None:
    from kubetune.config import FinetuningArguments
    from kubetune.model.adapters import lora_config

    assert lora_config(None, FinetuningArguments(lora_rank=32, lora_target=["q_proj"])).lora_alpha == 64
    assert lora_config(None, FinetuningArguments(lora_rank=32, lora_alpha=7, lora_target=["q_proj"])).lora_alpha == 7
