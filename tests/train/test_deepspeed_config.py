"""DeepSpeed and FSDP settings: accepted as LLaMA-Factory and transformers write them, refused with the file and
key named when they cannot run, resolved by transformers from our config, and named by `train.strategy`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kubetune.cli import main
from kubetune.config import ConfigError, load_config
from kubetune.train.arguments import training_arguments
from kubetune.train.strategy import params_are_sharded, strategy_name
from kubetune.validate import world_problems
from kubetune.validate.distributed import deepspeed_config, fsdp_config_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "deepspeed").glob("ds_z*_config.json"))
BASE = {"model_name_or_path": "some/model", "dataset": "kubi_sft", "dataset_dir": str(REPO / "data")}

# The shape of LLaMA-Factory's examples/deepspeed/ds_z3_offload_config.json: "auto" wherever transformers fills
# the value in, fp16 loss-scaling knobs, and sections DeepSpeed reads but we do not (comms, monitor).
LF_SHAPED = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": False, "contiguous_gradients": True,
        "sub_group_size": 1e9, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True,
    },
    "comms_config": {"verbose": False},
    "monitor_config": {"enabled": True, "tag": "DeepSpeedMonitor", "csv_monitor": {"enabled": False}},
}


@pytest.fixture(autouse=True)
def no_global_deepspeed_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """transformers remembers the last DeepSpeed config process-wide (a ZeRO-3 one makes every later
    `from_pretrained` shard its weights); forget it after each test, and run as one process."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def cfg(**keys):
    return load_config(None, {**BASE, **keys})


def write_json(path: Path, data: object) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def messages(problems) -> str:
    return "\n".join(str(p) for p in problems)


# --- accepted as written ---


def test_our_example_files_exist_and_are_accepted() -> None:
    assert [p.name for p in EXAMPLES] == ["ds_z0_config.json", "ds_z2_config.json", "ds_z2_offload_config.json",
                                          "ds_z3_config.json", "ds_z3_offload_config.json"]
    for path in EXAMPLES:
        assert deepspeed_config(cfg(deepspeed=str(path))) == [], path.name


def test_llama_factory_shaped_file_and_inline_mapping_are_accepted(tmp_path: Path) -> None:
    path = write_json(tmp_path / "ds_z3_offload_config.json", LF_SHAPED)
    from_file = cfg(deepspeed=path)
    assert from_file.train.deepspeed == path
    assert deepspeed_config(from_file) == []
    inline = cfg(deepspeed=LF_SHAPED)
    assert inline.train.deepspeed == LF_SHAPED
    assert deepspeed_config(inline) == []


def test_deepspeed_is_no_longer_refused_as_not_implemented(tmp_path: Path) -> None:
    assert cfg(deepspeed=str(EXAMPLES[1])).train.deepspeed == str(EXAMPLES[1])


# --- refused, naming the file and the key ---


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage is 4; ZeRO has stages 0, 1, 2 and 3"),
    ({"zero_optimization": {"stage": "auto"}}, "zero_optimization.stage is 'auto'"),
    ({"zero_optimization": 3}, "zero_optimization is 3, not an object"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "offload_param needs stage 3"),
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}, "its device must be one of"),
    ({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu is 4, but per_device_train_batch_size"),
])
def test_bad_deepspeed_files_are_refused_with_the_file_named(tmp_path: Path, content: object, fragment: str) -> None:
    path = write_json(tmp_path / "my_ds.json", content)
    (problem,) = deepspeed_config(cfg(deepspeed=path, per_device_train_batch_size=2))
    assert problem.key == "deepspeed"
    assert fragment in problem.message
    assert str(tmp_path / "my_ds.json") in str(problem)
    assert problem.hint  # says what to do


def test_missing_file_and_bad_inline_stage_are_refused_through_preflight(tmp_path: Path) -> None:
    missing = cfg(deepspeed=str(tmp_path / "nope.json"), output_dir=str(tmp_path / "o"))
    assert "deepspeed = " in messages(world_problems(missing, "train"))
    assert "no such file" in messages(world_problems(missing, "train"))
    inline = cfg(deepspeed={"zero_optimization": {"stage": 5}}, output_dir=str(tmp_path / "o"))
    text = messages(world_problems(inline, "train"))
    assert "the deepspeed mapping: zero_optimization.stage is 5" in text


def test_deepspeed_and_fsdp_together_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        cfg(deepspeed=str(EXAMPLES[3]), fsdp="full_shard auto_wrap")
    assert err.value.keys() == ["fsdp"]
    assert "cannot be combined with deepspeed" in str(err.value)


@pytest.mark.parametrize("keys,key,fragment", [
    ({"fsdp": "full_shard auto_warp"}, "fsdp", "unknown FSDP option auto_warp"),
    ({"fsdp": "hybrid_shard"}, "fsdp", "hybrid_shard is an FSDP1 strategy"),
    ({"fsdp": "full_shard", "fsdp_config": {"version": 3}}, "fsdp_config", "version is 3"),
    ({"fsdp_config": {"version": 2}}, "fsdp_config", "is read only when FSDP is on"),
])
def test_fsdp_settings_that_cannot_run_are_refused(keys: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(**keys)
    assert err.value.keys() == [key]
    assert fragment in str(err.value)


def test_fsdp_accepts_transformers_spellings_and_an_fsdp_config_file(tmp_path: Path) -> None:
    assert cfg(fsdp="full_shard auto_wrap").train.fsdp_options == ["full_shard", "auto_wrap"]
    assert cfg(fsdp=["shard_grad_op", "offload"]).train.fsdp_options == ["shard_grad_op", "offload"]
    assert cfg(fsdp=True, fsdp_config={"fsdp_version": 2}).train.fsdp_options == ["full_shard"]
    assert cfg(fsdp="hybrid_shard", fsdp_config={"version": 1}).train.fsdp_options == ["hybrid_shard"]
    good = write_json(tmp_path / "fsdp.json", {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    assert fsdp_config_file(cfg(fsdp="full_shard", fsdp_config=good)) == []
    old = write_json(tmp_path / "fsdp1.json", {"version": 2})
    (problem,) = fsdp_config_file(cfg(fsdp="hybrid_shard", fsdp_config=old))
    assert "FSDP1 strategy" in problem.message
    (problem,) = fsdp_config_file(cfg(fsdp="full_shard", fsdp_config=str(tmp_path / "nope.json")))
    assert problem.key == "fsdp_config" and "no such file" in problem.message


# --- handed to transformers, which resolves the "auto"s ---


def test_training_arguments_resolve_auto_values_from_our_config(tmp_path: Path) -> None:
    path = write_json(tmp_path / "ds.json", LF_SHAPED)
    run = cfg(deepspeed=path, per_device_train_batch_size=2, gradient_accumulation_steps=3, max_grad_norm=0.5)
    args = training_arguments(run, tmp_path / "out")
    resolved = args.hf_deepspeed_config.config
    assert resolved["train_micro_batch_size_per_gpu"] == 2
    assert resolved["gradient_accumulation_steps"] == 3
    assert resolved["train_batch_size"] == 6  # one process
    assert resolved["gradient_clipping"] == 0.5
    assert resolved["bf16"]["enabled"] is bool(args.bf16) and resolved["fp16"]["enabled"] is False
    assert args.deepspeed == path  # transformers read the file itself


def test_an_inline_mapping_reaches_transformers_and_is_left_as_written(tmp_path: Path) -> None:
    run = cfg(deepspeed=LF_SHAPED, per_device_train_batch_size=3)
    args = training_arguments(run, tmp_path / "out")
    assert args.hf_deepspeed_config.config["train_micro_batch_size_per_gpu"] == 3
    assert args.hf_deepspeed_config.is_zero3()
    assert run.train.deepspeed["train_micro_batch_size_per_gpu"] == "auto"  # resolved on a copy


def test_without_deepspeed_training_arguments_have_none(tmp_path: Path) -> None:
    args = training_arguments(cfg(), tmp_path / "out")
    assert args.deepspeed is None and not args.fsdp


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_fsdp_without_a_gpu_is_refused_before_training(tmp_path: Path) -> None:
    # accelerate would otherwise train plain DDP on CPU ranks, silently (see train/arguments.py)
    with pytest.raises(ConfigError, match="FSDP runs on CUDA GPUs only"):
        training_arguments(cfg(fsdp="full_shard auto_wrap"), tmp_path / "out")


# --- named for the log line, and whether parameters are sharded ---


@pytest.mark.parametrize("keys,world,name,sharded", [
    ({}, "1", "single", False),
    ({}, "4", "ddp", False),
    ({"deepspeed": "ds_z0_config.json"}, "2", "deepspeed zero-0", False),
    ({"deepspeed": "ds_z2_config.json"}, "2", "deepspeed zero-2", False),
    ({"deepspeed": "ds_z2_offload_config.json"}, "2", "deepspeed zero-2 (offload)", False),
    ({"deepspeed": "ds_z3_config.json"}, "2", "deepspeed zero-3", True),
    ({"deepspeed": "ds_z3_offload_config.json"}, "1", "deepspeed zero-3 (offload)", True),
    ({"deepspeed": {"train_batch_size": "auto"}}, "2", "deepspeed zero-0", False),
    ({"fsdp": "full_shard auto_wrap"}, "2", "fsdp2", True),
    ({"fsdp": True, "fsdp_config": {"fsdp_version": 2, "cpu_offload": True}}, "2", "fsdp2 (offload)", True),
    ({"fsdp": "hybrid_shard offload", "fsdp_config": {"version": 1}}, "8", "fsdp1 (offload)", True),
])
def test_strategy_name_and_sharding(monkeypatch: pytest.MonkeyPatch, keys: dict, world: str, name: str,
                                    sharded: bool) -> None:
    monkeypatch.setenv("WORLD_SIZE", world)
    if isinstance(keys.get("deepspeed"), str):
        keys = {**keys, "deepspeed": str(REPO / "examples" / "deepspeed" / keys["deepspeed"])}
    run = cfg(**keys)
    assert strategy_name(run) == name
    assert params_are_sharded(run) is sharded


def test_keys_lists_the_new_keys_with_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "DeepSpeed config: a JSON file" in lines["deepspeed"]
    assert "PyTorch FSDP" in lines["fsdp"]
    assert "FSDP settings" in lines["fsdp_config"]


@pytest.mark.parametrize(("keys", "message"), [
    ({"stage": "rm", "dataset": "kubi_pref"}, "value head is saved from the unsharded model"),
    ({"stage": "dpo", "dataset": "kubi_pref", "finetuning_type": "full"}, "a frozen copy for full"),
    ({"stage": "kto", "dataset": "kubi_kto", "ref_model": "m"}, "the separate reference model (ref_model)"),
    ({"stage": "sft", "dataset": "kubi_sft", "do_predict": True, "eval_dataset": "kubi_sft_eval"},
     "generation runs on rank 0 alone"),
    ({"stage": "sft", "dataset": "kubi_sft", "add_special_tokens": "<tool>"}, "shards the embeddings"),
])
def test_what_sharded_parameters_cannot_run_yet_is_refused_up_front(keys: dict, message: str) -> None:
    from kubetune.validate.distributed import sharded_parameters_limits

    zero3 = {"zero_optimization": {"stage": 3}}
    base = {"model_name_or_path": "m", "dataset_dir": str(REPO / "data"), "output_dir": "o", "deepspeed": zero3}
    problems = sharded_parameters_limits(load_config(None, {**base, **keys}))
    assert [p.message for p in problems if message in p.message], problems
    # ZeRO-2 keeps every parameter whole: all of it runs
    zero2 = {"zero_optimization": {"stage": 2}}
    assert sharded_parameters_limits(load_config(None, {**base, **keys, "deepspeed": zero2})) == []


def test_ppo_refuses_deepspeed_it_would_ignore() -> None:
    from kubetune.validate.distributed import sharded_parameters_limits

    cfg = load_config(str(REPO / "examples" / "ppo_lora.yaml"), ['deepspeed={"zero_optimization": {"stage": 2}}'])
    assert "runs data parallel (DDP) only" in sharded_parameters_limits(cfg)[0].message
