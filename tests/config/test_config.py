"""Config: parsing, aliases, overrides, and one test per validation rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.config import ConfigError, load_config

BASE = {"model_name_or_path": "some/model"}


def problems(overrides, base=BASE) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, base=base)
    return {p.key: f"{p.message} {p.hint}" for p in err.value.problems}


def test_yaml_file_and_both_override_spellings(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "lora_rank": 8, "dataset": "a, b", "learning_rate": "1e-4"}))
    cfg = load_config(path, ["lora_rank=32", "--learning_rate", "3e-4", "--do_train", "--cutoff_len=128"])
    assert cfg.method.lora_rank == 32
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.train.do_train is True
    assert cfg.data.cutoff_len == 128
    assert cfg.data.dataset == ["a", "b"]
    assert cfg.method.lora_alpha is None  # unset: the adapter gets 2 × rank (tests/model/test_finetuning_types.py)
    assert cfg.source == str(path)


def test_json_config_file_via_config_file_flag(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**BASE, "lora_alpha": 7}))
    cfg = load_config(None, ["--config_file", str(path)])
    assert cfg.method.lora_alpha == 7


def test_aliases_of_simpler_scripts() -> None:
    cfg = load_config(None, {"use_qlora": True, "lora_r": 4, "lora_target_modules": "q_proj,v_proj",
                             "data_path": "x.jsonl"}, base=BASE)
    assert (cfg.method.finetuning_type, cfg.model.quantization_bit) == ("lora", 4)
    assert cfg.method.lora_rank == 4
    assert cfg.method.lora_target == ["q_proj", "v_proj"]
    assert cfg.data.data_path == "x.jsonl"
    cfg = load_config(None, {"finetuning_type": "qlora"}, base=BASE)
    assert (cfg.method.finetuning_type, cfg.model.quantization_bit) == ("lora", 4)
    cfg = load_config(None, {"finetuning_type": "qlora", "quantization_bit": 8}, base=BASE)
    assert cfg.model.quantization_bit == 8  # an explicit bit width wins over the implied 4


def test_every_problem_reported_at_once_with_origin_and_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "lerning_rate": 1e-4, "lora_rank": "big"}))
    with pytest.raises(ConfigError) as err:
        load_config(path, ["finetuning_type=medium"])
    text = str(err.value)
    assert "3 problems" in text
    assert "did you mean 'learning_rate'" in text
    assert f"lora_rank = 'big' (from {path})" in text
    assert "finetuning_type = 'medium' (from command line)" in text and "'lora'" in text


def test_missing_model_is_reported() -> None:
    assert "model_name_or_path" in problems({}, base={})


def test_unknown_key_without_close_match_points_to_keys_command() -> None:
    assert "kubetune keys" in problems({"zzz_qqq": 1})["zzz_qqq"]


@pytest.mark.parametrize(("overrides", "key", "fragment"), [
    ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit", "only be trained with LoRA"),
    ({"finetuning_type": "freeze", "quantization_bit": 8}, "quantization_bit", "only be trained with LoRA"),
    ({"mask_history": True, "train_on_prompt": True}, "mask_history", "cannot be combined"),
    ({"eval_strategy": "steps"}, "eval_strategy", "needs a validation set"),
    ({"do_predict": True}, "do_predict", "held-out data"),
    ({"val_size": 2.5}, "val_size", "whole number"),
    ({"neat_packing": True, "packing": False}, "neat_packing", "needs packing"),
    ({"stage": "pt", "neat_packing": True}, "neat_packing", "is for sft only"),
    ({"bf16": True, "fp16": True}, "fp16", "only one precision"),
    ({"warmup_steps": 10, "warmup_ratio": 0.1}, "warmup_ratio", "both"),
    ({"freeze_trainable_layers": 0}, "freeze_trainable_layers", "must not be 0"),
    ({"quantization_bit": 3}, "quantization_bit", "expected"),
    ({"lora_rank": 0}, "lora_rank", "greater than 0"),
])
def test_cross_field_and_value_rules(overrides: dict, key: str, fragment: str) -> None:
    found = problems(overrides)
    assert key in found, found
    assert fragment in found[key]


@pytest.mark.parametrize("key,value", [
    ("use_unsloth", True), ("export_hub_model_id", "me/model"),
])
def test_later_features_fail_loudly_not_silently(key: str, value: object) -> None:
    assert "not implemented yet" in problems({key: value})[key]


def test_setting_a_later_key_to_its_default_is_harmless() -> None:
    cfg = load_config(None, {"use_dora": False, "pref_beta": 0.1}, base=BASE)
    assert cfg.method.use_dora is False


def test_valid_eval_setups_pass() -> None:
    load_config(None, {"eval_strategy": "steps", "val_size": 0.1}, base=BASE)
    load_config(None, {"do_predict": True, "eval_dataset": "x"}, base=BASE)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rank: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_flat_form() -> None:
    cfg = load_config(None, {"lora_rank": 16, "dataset": "a,b", "report_to": "none"}, base=BASE)
    again = load_config(None, {k: v for k, v in cfg.to_flat().items()})
    assert again.to_flat() == cfg.to_flat()


def test_load_in_4bit_flag_for_chat() -> None:
    assert load_config(None, ["model_name_or_path=x", "--load_in_4bit"]).model.quantization_bit == 4
    assert load_config(None, ["model_name_or_path=x", "--load_in_8bit"]).model.quantization_bit == 8
