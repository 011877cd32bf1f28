"""Preflight: command-aware checks against the world (files, datasets, templates, kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.config import ConfigError, load_config
from kubetune.validate import preflight, world_problems

BASE = {"model_name_or_path": "some/model"}


def test_train_refuses_nonempty_output_dir_without_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    cfg = load_config(None, {"output_dir": str(out), "data_path": str(tmp_path / "d.json")}, base=BASE)
    (tmp_path / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    with pytest.raises(ConfigError, match="not empty and holds no checkpoint"):
        preflight(cfg, "train")
    (out / "checkpoint-5").mkdir()
    preflight(cfg, "train")  # a checkpoint means: resume
    assert (out / "notes.txt").read_text() == "precious"


def test_train_needs_dataset_and_output_dir() -> None:
    cfg = load_config(None, {}, base=BASE)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "train")
    assert {"dataset", "output_dir"} <= set(err.value.keys())


def test_unknown_dataset_and_template_are_caught_before_work(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "a.json"}}))
    (tmp_path / "a.json").write_text('[{"instruction": "a", "output": "b"}]')
    cfg = load_config(None, {"dataset": "alpaca_em", "dataset_dir": str(tmp_path), "template": "chatm1",
                             "output_dir": str(tmp_path / "o")}, base=BASE)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "train")
    text = str(err.value)
    assert "alpaca_en" in text  # did you mean
    assert "did you mean 'chatml'" in text


@pytest.mark.parametrize("template", ["qwen2_vl", "llava", "paligemma"])
def test_multimodal_template_is_refused_as_multimodal_not_unknown(tmp_path: Path, template: str) -> None:
    (tmp_path / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    cfg = load_config(None, {"data_path": str(tmp_path / "d.json"), "template": template,
                             "output_dir": str(tmp_path / "o")}, base=BASE)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "train")
    assert "multimodal models are not supported yet" in str(err.value)
    assert "unknown template" not in str(err.value)


def test_llamafactory_text_templates_pass(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    for template in ("qwen3_nothink", "smollm2", "deepseek3", "llama4", "phi4", "zephyr"):
        cfg = load_config(None, {"data_path": str(tmp_path / "d.json"), "template": template,
                                 "output_dir": str(tmp_path / "o")}, base=BASE)
        preflight(cfg, "train")


def test_missing_local_model_and_adapter(tmp_path: Path) -> None:
    cfg = load_config(None, {"model_name_or_path": str(tmp_path / "nope"), "adapter_name_or_path": str(tmp_path),
                             "export_dir": str(tmp_path / "e")})
    with pytest.raises(ConfigError) as err:
        preflight(cfg, "export")
    assert set(err.value.keys()) == {"model_name_or_path", "adapter_name_or_path"}


def test_export_refuses_quantised_base() -> None:
    cfg = load_config(None, {"quantization_bit": 4, "export_dir": "x"}, base=BASE)
    with pytest.raises(ConfigError, match="cannot merge an adapter into a quantised base"):
        preflight(cfg, "export")


# --- kernels (this machine has no GPU, no flash-attn and no liger-kernel) ---


def kernel_problems(**keys: object) -> dict[str, str]:
    cfg = load_config(None, keys, base=BASE)  # the config itself is fine: a GPU machine may run it
    return {p.key: p.message for p in world_problems(cfg, "chat")}


def test_fa2_without_flash_attn_is_refused_here() -> None:
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    assert "FlashAttention-2 is not installed" in kernel_problems(flash_attn="fa2")["flash_attn"]
    for choice in ("auto", "sdpa", "disabled"):
        assert "flash_attn" not in kernel_problems(flash_attn=choice)


def test_liger_kernel_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # whether or not liger-kernel is installed, on a CPU-only machine the answer says why it cannot run
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a))
    assert "no CUDA GPU" in kernel_problems(enable_liger_kernel=True)["enable_liger_kernel"]
    monkeypatch.undo()
    assert "GPU" in kernel_problems(enable_liger_kernel=True)["enable_liger_kernel"]


def test_a_problem_names_where_its_value_came_from(tmp_path: Path) -> None:
    # the template came from the command line, the model path from the file: each problem says so
    path = tmp_path / "run.yaml"
    path.write_text(f"model_name_or_path: {tmp_path / 'no-such-model'}\noutput_dir: {tmp_path / 'out'}\n"
                    f"data_path: {tmp_path / 'd.json'}\n")
    (tmp_path / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    cfg = load_config(path, ["template=no_such_template"])
    where = {p.key: p.origin for p in world_problems(cfg, "train")}
    assert where["template"] == "command line"
    assert where["model_name_or_path"] == str(path)
    assert "template = 'no_such_template' (from command line)" in str(ConfigError(world_problems(cfg, "train")))


def test_a_missing_key_is_missing_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model_name_or_path: some/model\n")
    where = {p.key: p.origin for p in world_problems(load_config(path), "export")}
    assert where["export_dir"] == str(path)  # not "defaults": the user adds it to this file
