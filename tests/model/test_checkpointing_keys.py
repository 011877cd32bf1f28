"""LLaMA-Factory's checkpointing keys reach the model: `disable_gradient_checkpointing`, `use_reentrant_gc`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune.config import load_config
from kubetune.model.policy import load_policy


def _policy(model_dir: Path, **keys):
    cfg = load_config(None, {"model_name_or_path": str(model_dir), **keys})
    return load_policy(cfg, str(model_dir), trainable=True)[0]


def _checkpoint_kwargs(model) -> list[dict]:
    return [m._gradient_checkpointing_func.keywords for m in model.modules()
            if getattr(m, "gradient_checkpointing", False) and hasattr(m, "_gradient_checkpointing_func")]


def test_disable_gradient_checkpointing_switches_recomputation_off(tiny_model_dir: Path) -> None:
    assert _checkpoint_kwargs(_policy(tiny_model_dir))  # on by default
    assert _checkpoint_kwargs(_policy(tiny_model_dir, disable_gradient_checkpointing=True)) == []


@pytest.mark.parametrize("reentrant", [True, False])
def test_use_reentrant_gc_picks_the_checkpoint_variant_and_lora_still_learns(tiny_model_dir: Path,
                                                                             reentrant: bool) -> None:
    model = _policy(tiny_model_dir, use_reentrant_gc=reentrant)
    kwargs = _checkpoint_kwargs(model)
    assert kwargs and all(k == {"use_reentrant": reentrant} for k in kwargs)
    model.train()
    batch = torch.randint(5, 200, (2, 16))
    model(input_ids=batch, labels=batch).loss.backward()
    # reentrant checkpointing drops the gradients of frozen-input layers unless the inputs require grad
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # lora_A gets none: B starts at 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
