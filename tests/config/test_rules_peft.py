"""Config rules of the PEFT variants: each broken combination is reported with its key, and valid ones load."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def cfg(**keys):
    return load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft",
                              "dataset_dir": str(REPO / "data"), **keys})


def problems(**keys) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        cfg(**keys)
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


@pytest.mark.parametrize("keys", [
    {"use_dora": True}, {"use_rslora": True, "lora_rank": 64}, {"pissa_init": True, "pissa_iter": -1},
    {"pissa_init": True, "pissa_convert": True}, {"loraplus_lr_ratio": 16, "loraplus_lr_embedding": 1e-5},
    {"use_dora": True, "quantization_bit": 4}, {"additional_target": "embed_tokens,lm_head"},
    {"use_dora": True, "use_rslora": True, "loraplus_lr_ratio": 8, "stage": "pt"},
    {"pissa_init": True, "stage": "dpo", "ref_model": "some/model", "dataset": "kubi_pref"},
    {"pissa_init": True, "stage": "dpo", "pref_loss": "simpo", "dataset": "kubi_pref"},
])
def test_valid_variants_load(keys: dict) -> None:
    c = cfg(**keys)
    assert all(getattr(c.method, k, None) == v or getattr(c.model, k, None) == v for k, v in keys.items()
               if k not in ("additional_target", "lora_rank", "dataset"))


@pytest.mark.parametrize("key,value", [
    ("use_dora", True), ("use_rslora", True), ("pissa_init", True), ("loraplus_lr_ratio", 16.0),
    ("additional_target", "embed_tokens"),
])
@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_lora_variants_need_finetuning_type_lora(key: str, value: object, finetuning_type: str) -> None:
    found = problems(**{key: value, "finetuning_type": finetuning_type})
    assert f"finetuning_type is {finetuning_type}" in found[key] and "finetuning_type: lora" in found[key]


def test_additional_target_points_freeze_users_to_freeze_extra_modules() -> None:
    assert "freeze_extra_modules" in problems(finetuning_type="freeze", additional_target="norm")["additional_target"]


@pytest.mark.parametrize("ratio", [0, -2.0])
def test_loraplus_ratio_must_be_positive(ratio: float) -> None:
    assert "positive" in problems(loraplus_lr_ratio=ratio)["loraplus_lr_ratio"]


def test_loraplus_embedding_rate_needs_the_ratio_and_must_not_be_negative() -> None:
    assert "without loraplus_lr_ratio" in problems(loraplus_lr_embedding=1e-5)["loraplus_lr_embedding"]
    assert "negative" in problems(loraplus_lr_ratio=4, loraplus_lr_embedding=-1.0)["loraplus_lr_embedding"]


def test_loraplus_is_refused_where_the_stage_does_not_build_its_optimizer() -> None:
    found = problems(stage="rm", loraplus_lr_ratio=16, dataset="kubi_pairwise")
    assert "not implemented for stage rm" in found["loraplus_lr_ratio"]


def test_pissa_rules() -> None:
    assert "without pissa_init" in problems(pissa_iter=4)["pissa_iter"]
    assert "-1 (full SVD)" in problems(pissa_init=True, pissa_iter=-3)["pissa_iter"]
    assert "pissa_init is not set" in problems(pissa_convert=True)["pissa_convert"]
    assert "quantization_bit is 4" in problems(pissa_init=True, quantization_bit=4)["pissa_init"]
    assert "DoRA" in problems(pissa_init=True, pissa_convert=True, use_dora=True)["pissa_convert"]
    assert "residual base" in problems(pissa_init=True, stage="kto")["pissa_init"]
    assert "ref_model" in problems(pissa_init=True, stage="dpo")["pissa_init"]
    assert "not implemented for stage rm" in problems(pissa_init=True, pissa_convert=True, stage="rm",
                                                      dataset="kubi_pairwise")["pissa_convert"]


def test_create_new_adapter_needs_an_unquantised_loaded_adapter() -> None:
    assert "adapter_name_or_path is not set" in problems(create_new_adapter=True)["create_new_adapter"]
    found = problems(create_new_adapter=True, adapter_name_or_path="a", quantization_bit=4)
    assert "quantised base" in found["create_new_adapter"]
    cfg(create_new_adapter=True, adapter_name_or_path="a,b")


def test_every_problem_is_reported_at_once() -> None:
    found = problems(finetuning_type="full", use_dora=True, loraplus_lr_ratio=-1, pissa_convert=True)
    assert found.keys() == {"use_dora", "loraplus_lr_ratio", "pissa_convert"}
