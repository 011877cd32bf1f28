"""The ppo stage's rules — the config's (kubetune.config.rules_ppo) and the world's (kubetune.validate:
its reward source, its data): one test per rule, each with a config that breaks it and one that passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.config import ConfigError, load_config
from kubetune.validate import preflight
from kubetune.validate.rules import stage_problems

REPO = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000/score"


def ppo(**keys):
    base = {"model_name_or_path": "some/model", "stage": "ppo", "dataset": "kubi_sft",
            "dataset_dir": str(REPO / "data"), "reward_model": URL, "reward_model_type": "api"}
    return {**base, **keys}


def problems(**keys) -> dict[str, str]:
    """{key: message} of the config's problems, or else of the ppo world rules' ({} when it can run)."""
    try:
        found = stage_problems(load_config(None, ppo(**keys)))
    except ConfigError as err:
        found = err.problems
    return {p.key: f"{p.message} {p.hint}" for p in found}


def rm_dir(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "rm"
    folder.mkdir(exist_ok=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def test_a_valid_ppo_config_loads() -> None:
    cfg = load_config(None, ppo())
    assert cfg.method.stage == "ppo" and cfg.method.reward_model == URL


def test_reward_model_is_required() -> None:
    found = problems(reward_model=None)
    assert list(found) == ["reward_model"] and "rm_lora.yaml" in found["reward_model"]


def test_api_reward_must_be_a_url_or_a_python_function(tmp_path: Path) -> None:
    assert "Python function" in problems(reward_model="not a reference")["reward_model"]
    assert "not found" in problems(reward_model=str(tmp_path / "missing.py"))["reward_model"]
    (tmp_path / "rules.py").write_text("def reward_func(p, r):\n    return [0.0] * len(r)\n")
    assert problems(reward_model=f"{tmp_path / 'rules.py'}:reward_func") == {}
    assert problems(reward_model="my_pkg.rewards:score") == {}  # imported when the stage runs


def test_api_reward_has_no_model_to_quantise() -> None:
    assert "no effect" in problems(reward_model_quantization_bit=4)["reward_model_quantization_bit"]


def test_a_url_needs_reward_model_type_api() -> None:
    assert "reward_model_type: api" in problems(reward_model_type="lora")["reward_model"]


def test_reward_model_adapters_are_refused(tmp_path: Path) -> None:
    folder = rm_dir(tmp_path, "adapter_config.json", "value_head.safetensors")
    found = problems(reward_model=str(folder), reward_model_type="lora", reward_model_adapters="x")
    assert list(found) == ["reward_model_adapters"]


def test_lora_reward_model_needs_an_rm_output_dir(tmp_path: Path) -> None:
    missing = problems(reward_model=str(tmp_path / "nope"), reward_model_type="lora")
    assert "no such directory" in missing["reward_model"]
    folder = rm_dir(tmp_path, "adapter_config.json")
    assert "value_head.safetensors" in problems(reward_model=str(folder), reward_model_type="lora")["reward_model"]
    rm_dir(tmp_path, "value_head.safetensors")
    assert problems(reward_model=str(folder), reward_model_type="lora") == {}
    assert problems(reward_model="s3://bucket/rm", reward_model_type="lora") == {}  # checked when fetched


def test_reward_model_type_mismatch_gets_a_hint(tmp_path: Path) -> None:
    lora = rm_dir(tmp_path, "adapter_config.json", "value_head.safetensors")
    assert "set reward_model_type: lora" in problems(reward_model=str(lora), reward_model_type="full")["reward_model"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "value_head.safetensors").write_text("")
    assert "set reward_model_type: full" in problems(reward_model=str(full), reward_model_type="lora")["reward_model"]
    assert problems(reward_model=str(full), reward_model_type="full") == {}


def test_a_separate_reference_model_takes_dpo_s_rules() -> None:
    assert problems(ref_model="some/ref", ref_model_quantization_bit=4) == {}  # LLaMA-Factory's PPO loads it
    found = problems(ref_model="some/ref", ref_model_quantization_bit=3)
    assert "must be 4 or 8" in found["ref_model_quantization_bit"]
    assert "no ref_model is set" in problems(ref_model_adapters="saves/sft")["ref_model_adapters"]


def test_ranking_data_is_not_prompt_data() -> None:
    assert "ranking" in problems(dataset="kubi_pref")["dataset"]
    assert "ranking" in problems(eval_dataset="kubi_pref")["eval_dataset"]
    assert problems(dataset="no_such_dataset") == {}  # left to preflight's own message, with a "did you mean"


def test_prompts_are_never_packed() -> None:
    assert "never packed" in problems(packing=True)["packing"]
    assert "never packed" in problems(neat_packing=True)["neat_packing"]


def test_rollouts_must_be_sampled() -> None:
    assert "do_sample: true" in problems(do_sample=False)["do_sample"]
    assert problems(do_sample=False, do_train=False) == {}  # greedy evaluation is fine
    assert "num_beams: 1" in problems(num_beams=4)["num_beams"]


def test_ppo_sizes_and_kl_target() -> None:
    found = problems(ppo_epochs=0, ppo_buffer_size=0, ppo_target=0.0)
    assert set(found) == {"ppo_epochs", "ppo_buffer_size", "ppo_target"}
    assert problems(ppo_target=0.0, adaptive_kl=False) == {}  # a fixed kl_coef needs no target


def test_optimiser_precision_and_schedule_the_loop_supports() -> None:
    assert "AdamW" in problems(optim="sgd")["optim"]
    assert problems(optim="adamw_torch_fused") == {}
    assert "bf16" in problems(fp16=True)["fp16"]
    assert "not supported" in problems(lr_scheduler_type="reduce_lr_on_plateau")["lr_scheduler_type"]


def test_the_example_config_only_waits_for_the_rm_run(tmp_path: Path) -> None:
    example = REPO / "examples" / "ppo_lora.yaml"
    keys = yaml.safe_load(example.read_text())
    rm = Path(keys["reward_model"])
    if not (REPO / rm).is_dir():  # before `kubetune train examples/rm_lora.yaml`: the one problem is the rm folder
        with pytest.raises(ConfigError) as err:
            preflight(load_config(example, {"dataset_dir": str(REPO / "data"), "output_dir": str(tmp_path / "o")}),
                      "train")
        assert err.value.keys() == ["reward_model"]
    folder = rm_dir(tmp_path, "adapter_config.json", "value_head.safetensors")
    cfg = load_config(example, {"dataset_dir": str(REPO / "data"), "reward_model": str(folder),
                                "output_dir": str(tmp_path / "o")})
    preflight(cfg, "train")
    assert cfg.method.stage == "ppo" and cfg.generation.do_sample


def test_a_pipeline_placeholder_stands_for_the_rm_steps_output() -> None:
    assert problems(reward_model="pipeline:rm", reward_model_type="lora") == {}
