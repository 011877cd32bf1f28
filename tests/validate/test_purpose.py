"""`kubetune validate` checks a config as what its keys say it is for, as LLaMA-Factory tells its jobs apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.cli import main
from kubetune.config import load_config
from kubetune.validate import purpose


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_merge_config_validates_as_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # LLaMA-Factory's examples/merge_lora layout: no dataset, no output_dir, an adapter and export_dir
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    cfg = _write(tmp_path / "merge.yaml", f"model_name_or_path: some/model\nadapter_name_or_path: {adapter}\n"
                 "template: qwen3\ntrust_remote_code: true\nexport_dir: output/merged\nexport_size: 5\n"
                 "export_device: cpu\nexport_legacy_format: false\n")
    assert main(["validate", str(cfg)]) == 0, capsys.readouterr().err
    assert "OK — export to output/merged" in capsys.readouterr().out
    # checked as an export: a quantised base is refused, as `kubetune export` would
    assert main(["validate", str(cfg), "quantization_bit=4"]) == 2
    assert "cannot merge an adapter into a quantised base" in capsys.readouterr().err


def test_inference_config_validates_as_chat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "infer.yaml", "model_name_or_path: some/model\ntemplate: qwen3\n"
                 "infer_backend: huggingface\ntrust_remote_code: true\n")
    assert main(["validate", str(cfg)]) == 0, capsys.readouterr().err
    assert "OK — chat" in capsys.readouterr().out


def test_what_each_config_is_for() -> None:
    base = {"model_name_or_path": "m"}
    assert purpose(load_config(None, {}, base=base)) == "train"
    assert purpose(load_config(None, {"export_dir": "x"}, base=base)) == "export"
    assert purpose(load_config(None, {"infer_backend": "huggingface"}, base=base)) == "chat"
    # a stage says it trains, whatever else it holds
    assert purpose(load_config(None, {"infer_backend": "huggingface", "stage": "sft"}, base=base)) == "train"
    # a config written back out (`to_flat`, as pipeline steps do) names every key; it is still what it was
    flat = load_config(None, {"dataset": "d"}, base=base).to_flat()
    assert purpose(load_config(None, flat)) == "train"
    assert purpose(load_config(None, {"do_train": False, "do_predict": True, "eval_dataset": "d"},
                               base=base)) == "eval"


def test_a_training_config_is_still_checked_as_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "train.yaml", "model_name_or_path: some/model\nstage: sft\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "training needs data" in err and "output_dir" in err


def test_predict_config_without_a_training_dataset_is_an_eval(tmp_path: Path) -> None:
    # LLaMA-Factory's nlg_eval predict config: do_predict, an eval_dataset, do_train left at its false default
    cfg = load_config(None, {"do_predict": True, "eval_dataset": "d"}, base={"model_name_or_path": "m"})
    assert purpose(cfg) == "eval"
    cfg = load_config(None, {"do_predict": True, "eval_dataset": "d", "dataset": "t"}, base={"model_name_or_path": "m"})
    assert purpose(cfg) == "train"  # a dataset to train on: train, then predict


def test_keys_lists_the_refused_llama_factory_keys_with_their_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    assert "use_reentrant_gc" in out
    assert any("use_swanlab" in line and "SwanLab tracking: not supported" in line for line in out.splitlines())
    assert any(line.lstrip().startswith("use_muon") and "orthogonalised momentum" in line for line in out.splitlines())
