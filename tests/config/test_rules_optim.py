"""Config rules of GaLore, BAdam and the kernel switches: each broken combination is reported with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def cfg(**keys):
    return load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft",
                              "dataset_dir": str(REPO / "data"), "finetuning_type": "full", **keys})


def problems(**keys) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        cfg(**keys)
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


@pytest.mark.parametrize("keys", [
    {"use_galore": True},
    {"use_galore": True, "galore_target": "q_proj,v_proj", "galore_rank": 32, "galore_update_interval": 100,
     "galore_scale": 0.25, "galore_proj_type": "right", "stage": "pt"},
    {"use_galore": True, "galore_layerwise": True, "optim": "adafactor"},
    {"use_badam": True},
    {"use_badam": True, "badam_mode": "layer", "badam_start_block": 3, "badam_switch_mode": "descending",
     "badam_switch_interval": 10, "badam_verbose": 1, "pure_bf16": True},
    {"use_badam": True, "badam_mode": "ratio", "badam_update_ratio": 0.1, "badam_mask_mode": "scatter"},
])
def test_valid_optimizer_configs_load(keys: dict) -> None:
    c = cfg(**keys)
    assert all(getattr(c.method, k, getattr(c.train, k, None)) == v for k, v in keys.items()
               if k not in ("galore_target",))


def test_galore_and_badam_are_implemented_now() -> None:
    from kubetune.config.rules import NOT_IMPLEMENTED

    assert not [k for k in NOT_IMPLEMENTED if "galore" in k or "badam" in k]


def test_galore_and_badam_exclude_each_other() -> None:
    assert "only one can run" in problems(use_galore=True, use_badam=True)["use_badam"]


@pytest.mark.parametrize("key", ["use_galore", "use_badam"])
@pytest.mark.parametrize("finetuning_type", ["lora", "freeze"])
def test_memory_optimizers_need_full_finetuning(key: str, finetuning_type: str) -> None:
    found = problems(**{key: True, "finetuning_type": finetuning_type})[key]
    assert f"finetuning_type is {finetuning_type}" in found and "full fine-tuning" in found


@pytest.mark.parametrize("key", ["use_galore", "use_badam"])
@pytest.mark.parametrize("stage,extra", [("rm", {"dataset": "kubi_pref"}), ("dpo", {"dataset": "kubi_pref"}),
                                         ("kto", {"dataset": "kubi_kto"})])
def test_memory_optimizers_only_in_sft_and_pt(key: str, stage: str, extra: dict) -> None:
    found = problems(**{key: True, "stage": stage, **extra})
    assert f"sft and pt stages only, not {stage}" in found[key]


@pytest.mark.parametrize("key,value", [("galore_rank", 8), ("galore_layerwise", True), ("galore_target", "q_proj")])
def test_galore_keys_without_use_galore(key: str, value: object) -> None:
    assert "without use_galore: true" in problems(**{key: value})[key]


@pytest.mark.parametrize("key,value", [("badam_mode", "ratio"), ("badam_switch_interval", 10)])
def test_badam_keys_without_use_badam(key: str, value: object) -> None:
    assert "without use_badam: true" in problems(**{key: value})[key]


@pytest.mark.parametrize("key,value", [("galore_rank", 0), ("galore_update_interval", -1), ("galore_scale", 0)])
def test_galore_numbers_must_be_positive(key: str, value: object) -> None:
    assert "greater than 0" in problems(use_galore=True, **{key: value})[key]


def test_galore_refuses_optimizers_without_a_projected_version() -> None:
    assert "no projected version" in problems(use_galore=True, optim="sgd")["optim"]


def test_layerwise_galore_refuses_gradient_accumulation() -> None:
    found = problems(use_galore=True, galore_layerwise=True, gradient_accumulation_steps=4)["galore_layerwise"]
    assert "cannot accumulate" in found and "gradient_accumulation_steps: 1" in found
    cfg(use_galore=True, gradient_accumulation_steps=4)  # plain GaLore accumulates as usual


def test_layerwise_galore_refuses_an_explicit_max_grad_norm() -> None:
    assert "cannot be clipped" in problems(use_galore=True, galore_layerwise=True, max_grad_norm=0.5)["max_grad_norm"]
    cfg(use_galore=True, galore_layerwise=True, max_grad_norm=0)


@pytest.mark.parametrize("keys,key,expected", [
    ({"badam_switch_interval": 0}, "badam_switch_interval", "at least 1"),
    ({"badam_update_ratio": 0, "badam_mode": "ratio"}, "badam_update_ratio", "(0, 1]"),
    ({"badam_update_ratio": 1.5, "badam_mode": "ratio"}, "badam_update_ratio", "(0, 1]"),
    ({"badam_start_block": -1}, "badam_start_block", "layer index"),
    ({"badam_verbose": 3}, "badam_verbose", "0, 1 or 2"),
    ({"badam_update_ratio": 0.1}, "badam_update_ratio", "only applies to badam_mode: ratio"),
    ({"badam_mask_mode": "scatter"}, "badam_mask_mode", "only applies to badam_mode: ratio"),
    ({"badam_mode": "ratio", "badam_switch_mode": "random"}, "badam_switch_mode", "only applies to badam_mode: layer"),
    ({"badam_mode": "ratio", "badam_start_block": 1}, "badam_start_block", "only applies to badam_mode: layer"),
    ({"badam_mode": "ratio", "gradient_accumulation_steps": 2}, "gradient_accumulation_steps", "cannot accumulate"),
    ({"badam_mode": "ratio", "weight_decay": 0.01}, "weight_decay", "without weight decay"),
    ({"badam_mode": "ratio", "optim": "adafactor"}, "optim", "would be ignored"),
])
def test_badam_settings(keys: dict, key: str, expected: str) -> None:
    assert expected in problems(use_badam=True, **keys)[key]


def test_badam_layer_mode_accumulates_gradients() -> None:
    cfg(use_badam=True, gradient_accumulation_steps=4, weight_decay=0.01, optim="adamw_torch")


def test_memory_optimizers_with_a_quantised_base_need_lora() -> None:
    found = problems(use_galore=True, quantization_bit=4)
    assert "quantization_bit" in found


# --- kernels and precision (whether the kernels are installed here is preflight's: tests/validate) ---


def test_liger_kernel_reaches_the_trainer_arguments(tmp_path: Path) -> None:
    from kubetune.train.arguments import training_arguments

    # the config is accepted on any machine (preflight says where it cannot run)
    assert training_arguments(cfg(enable_liger_kernel=True), tmp_path).use_liger_kernel is True
    assert training_arguments(cfg(), tmp_path).use_liger_kernel is False


@pytest.mark.parametrize("keys", [{"bf16": True, "fp16": True}, {"bf16": True, "pure_bf16": True}])
def test_one_precision_at_a_time(keys: dict) -> None:
    assert "only one precision" in "".join(problems(**keys).values())


def test_precision_switches_load() -> None:
    for key in ("bf16", "fp16", "pure_bf16", "upcast_layernorm"):
        cfg(**{key: True})


@pytest.mark.parametrize("name", ["sft_galore", "sft_badam"])
def test_examples_validate(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.cli import main

    monkeypatch.chdir(REPO)
    assert main(["validate", f"examples/{name}.yaml", f"output_dir={tmp_path / 'o'}"]) == 0, capsys.readouterr().err
