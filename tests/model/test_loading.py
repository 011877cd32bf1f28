"""Model loading from a GGUF file and from the embedded id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune.config import load_config
from kubetune.model.embedded import embedded_gguf
from kubetune.model.loader import ModelLoadError, load_base_model, load_tokenizer, resolve_model_path


def test_embedded_id_resolves_to_the_converted_copy(smollm2_dir: Path) -> None:
    cfg = load_config(None, {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert resolve_model_path(cfg.model) == str(smollm2_dir)


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(None, {"model_name_or_path": str(tmp_path / "nope")})
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(cfg.model)


@pytest.mark.slow
def test_gguf_file_loads_the_same_weights_as_the_converted_copy(smollm2_dir: Path) -> None:
    gguf = embedded_gguf()
    assert gguf is not None
    cfg = load_config(None, {"model_name_or_path": str(gguf.parent), "gguf_file": gguf.name})
    from_gguf = load_base_model(cfg.model).eval()
    converted = load_base_model(load_config(None, {"model_name_or_path": str(smollm2_dir)}).model).eval()
    tokenizer = load_tokenizer(cfg.model)
    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids).logits, converted(ids).logits)


def test_a_quantised_base_loads_onto_this_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP each rank quantises its copy on its own GPU (`LOCAL_RANK`), not all on GPU 0: accelerate refuses
    to train a 4/8-bit model on another device than it was loaded on. No GPU here: the choice alone is checked."""
    from kubetune.model.loader import quantised_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quantised_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert quantised_device() == "cuda:0"  # one process, no launcher
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert quantised_device() == "cuda:3"
