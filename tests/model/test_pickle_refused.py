"""Pickle-only checkpoints are refused unless `allow_pickle: true`; `trust_remote_code` is off unless set, loudly on.

A model folder whose weights are only `pytorch_model.bin` (a pickle: unpickling can run code) is refused at
validation for a local folder and at load time for any other (an s3:// folder once fetched), naming the file
and the key. The pickle here is a real one: `torch.save` of the tiny model's state dict, as `pytorch_model.bin` is.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from kubetune.config import load_config
from kubetune.model.loader import ModelLoadError, load_base_model, load_tokenizer
from kubetune.model.pickle_files import pickle_only_weights
from kubetune.validate.rules import stage_problems


@pytest.fixture(scope="module")
def pickle_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model re-saved with its weights as a pickle only (pytorch_model.bin, no safetensors)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("pickle-model")
    for name in tiny_model_dir.iterdir():
        if name.suffix != ".safetensors":
            shutil.copy(name, folder / name.name)
    # transformers 5 writes safetensors only; a pytorch_model.bin is torch.save of the state dict
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def _cfg(model: str, **keys):
    return load_config(None, {"model_name_or_path": model, "template": "chatml", **keys})


@pytest.mark.chaos
def test_a_pickle_only_model_is_refused_unless_allowed(chaos_row, pickle_model_dir: Path, tiny_model_dir: Path) -> None:
    row = chaos_row("Pickle-only model folder (pytorch_model.bin) without allow_pickle")
    row.detail = "data lost = pickles unpickled without allow_pickle"
    unpickled = 0
    # validation (a local folder): the key, the file, and what to do
    row.runs += 1
    problems = stage_problems(_cfg(str(pickle_model_dir)))
    refused = [p for p in problems if p.key == "model_name_or_path"]
    assert len(refused) == 1 and "pytorch_model.bin" in refused[0].message and "allow_pickle: true" in refused[0].hint
    # load time, whatever validation said (an s3:// model is only a folder once fetched: `path` is that folder)
    for name in (str(pickle_model_dir), "s3://models/tiny"):
        row.runs += 1
        try:
            load_base_model(_cfg(name).model, path=str(pickle_model_dir))
            unpickled += 1
        except ModelLoadError as err:
            assert "pytorch_model.bin" in str(err) and "allow_pickle: true" in str(err)
    row.data_lost = unpickled
    assert row.data_lost == 0
    # allowed: it loads, and the weights are the tiny model's own
    allowed = _cfg(str(pickle_model_dir), allow_pickle=True)
    assert not [p for p in stage_problems(allowed) if p.key == "model_name_or_path"]
    model = load_base_model(allowed.model)
    reference = load_base_model(_cfg(str(tiny_model_dir)).model)  # safetensors: never refused
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_which_folders_count_as_pickle_only(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert pickle_only_weights(tmp_path) == tmp_path / "pytorch_model.bin"
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert pickle_only_weights(tmp_path) is None  # safetensors beside it: transformers reads those
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "pytorch_model-00001-of-00002.bin").write_bytes(b"x")
    assert pickle_only_weights(sharded) == sharded / "pytorch_model-00001-of-00002.bin"
    assert pickle_only_weights(tmp_path / "missing") is None
    assert pickle_only_weights("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id: checked at load


def test_a_pickle_reference_model_is_refused_at_validation(pickle_model_dir: Path, tiny_model_dir: Path) -> None:
    cfg = _cfg(str(tiny_model_dir), stage="dpo", ref_model=str(pickle_model_dir), dataset="x")
    assert [p.key for p in stage_problems(cfg) if "pickle" in p.message] == ["ref_model"]


def test_trust_remote_code_is_off_unless_set_and_loud_when_on(tiny_model_dir: Path, caplog) -> None:
    assert _cfg(str(tiny_model_dir)).model.trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="kubetune.model.loader"):
        load_tokenizer(_cfg(str(tiny_model_dir)).model)
    assert not [r for r in caplog.records if "trust_remote_code" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="kubetune.model.loader"):
        load_tokenizer(_cfg(str(tiny_model_dir), trust_remote_code=True).model)
    loud = [r for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(loud) == 1 and loud[0].levelno == logging.WARNING and str(tiny_model_dir) in loud[0].getMessage()
