"""OFT adapters (PEFT's OFTConfig) and LLaMA Pro (`use_llama_pro`): the adapter sits on the modules LLaMA-Factory
would put it on and trains; LLaMA Pro trains exactly the layers the expansion added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft.tuners.oft import OFTLayer
from transformers import LlamaConfig, LlamaForCausalLM

from kubetune.config import ConfigError, load_config
from kubetune.model.adapters import linear_module_names, llama_pro_layers, prepare_for_training
from kubetune.model.loader import load_base_model
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


def _prepared(model: torch.nn.Module, **keys):  # noqa: ANN202
    cfg = load_config(None, {"model_name_or_path": "some/model", **keys})
    return prepare_for_training(model, cfg.model, cfg.method, gradient_checkpointing=False)


def _oft_modules(model: torch.nn.Module) -> set[str]:
    return {name.split("base_model.model.")[-1] for name, module in model.named_modules()
            if isinstance(module, OFTLayer)}


def test_oft_adapts_every_linear_but_the_head(tiny_model_dir: Path) -> None:
    base = load_base_model(load_config(None, {"model_name_or_path": str(tiny_model_dir)}).model,
                           path=str(tiny_model_dir))
    linears = linear_module_names(base)
    model = _prepared(base, finetuning_type="oft", oft_block_size=16, module_dropout=0.1)
    adapted = _oft_modules(model)
    assert {name.split(".")[-1] for name in adapted} == set(linears) and len(adapted) == 2 * len(linears)
    config = model.peft_config["default"]
    assert (config.peft_type.value, config.oft_block_size, config.module_dropout) == ("OFT", 16, 0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("oft_" in n for n in trainable)


@pytest.mark.parametrize(("keys", "expected"), [
    ({"oft_target": "q_proj,v_proj"}, {"q_proj", "v_proj"}),
    ({"lora_target": "k_proj"}, {"k_proj"}),  # LLaMA-Factory 0.9.5 reads OFT's modules from lora_target
])
def test_oft_targets(tiny_model_dir: Path, keys: dict, expected: set[str]) -> None:
    base = load_base_model(load_config(None, {"model_name_or_path": str(tiny_model_dir)}).model,
                           path=str(tiny_model_dir))
    model = _prepared(base, finetuning_type="oft", **keys)
    assert {name.split(".")[-1] for name in _oft_modules(model)} == expected


def test_sft_trains_and_saves_an_oft_adapter(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    from stage_helpers import log_lines

    out = tmp_path / "oft"
    cfg = load_config(None, {
        "model_name_or_path": str(tiny_model_dir), "stage": "sft", "finetuning_type": "oft", "oft_block_size": 16,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 4, "per_device_train_batch_size": 4, "output_dir": str(out), "learning_rate": 3e-2,
        "max_steps": 6, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False, "lr_scheduler_type": "constant"})
    run_stage(cfg)
    losses = [line["loss"] for line in log_lines(out)]
    assert losses[-1] < losses[0] - 0.1, losses
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "OFT"
    # the saved adapter loads back (and merges) through adapter_name_or_path
    back = load_config(None, {"model_name_or_path": str(tiny_model_dir), "finetuning_type": "oft",
                              "adapter_name_or_path": str(out), "do_train": False})
    merged = prepare_for_training(load_base_model(back.model, path=str(tiny_model_dir)), back.model, back.method,
                                  gradient_checkpointing=False, is_trainable=False)
    assert not _oft_modules(merged)


def _four_layers() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2))


def _trained_layers(model: torch.nn.Module) -> set[int]:
    return {int(n.split(".layers.")[1].split(".")[0]) for n, p in model.named_parameters()
            if p.requires_grad and ".layers." in n}


def test_llama_pro_layers_are_the_last_of_each_group() -> None:
    assert list(llama_pro_layers(4, 2)) == [1, 3]
    assert list(llama_pro_layers(24, 8)) == [2, 5, 8, 11, 14, 17, 20, 23]  # scripts/llama_pro.py, 16 → 24 layers
    with pytest.raises(ValueError, match="must divide the model's 4 layers"):
        llama_pro_layers(4, 3)


def test_llama_pro_freeze_trains_exactly_the_added_layers() -> None:
    model = _prepared(_four_layers(), finetuning_type="freeze", use_llama_pro=True, freeze_trainable_layers=2)
    assert _trained_layers(model) == {1, 3}
    plain = _prepared(_four_layers(), finetuning_type="freeze", freeze_trainable_layers=2)
    assert _trained_layers(plain) == {2, 3}  # without it: the last two
    only_mlp = _prepared(_four_layers(), finetuning_type="freeze", use_llama_pro=True, freeze_trainable_layers=2,
                         freeze_trainable_modules="mlp")
    assert all(".mlp." in n for n, p in only_mlp.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("finetuning_type", ["lora", "oft"])
def test_llama_pro_adapter_sits_on_the_added_layers_only(finetuning_type: str) -> None:
    keys = {"oft_block_size": 8} if finetuning_type == "oft" else {}
    model = _prepared(_four_layers(), finetuning_type=finetuning_type, use_llama_pro=True, freeze_trainable_layers=2,
                      **keys)
    assert _trained_layers(model) == {1, 3}
    adapted = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(adapted) > 0 and all(("lora_" in n) or ("oft_" in n) for n in adapted)


def _problems(**keys) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"model_name_or_path": "some/model", **keys})
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


def test_oft_and_llama_pro_rules() -> None:
    assert "exactly one non-zero" in _problems(finetuning_type="oft", oft_rank=4)["oft_rank"]
    assert "has no effect without finetuning_type: oft" in _problems(oft_rank=4)["oft_rank"]
    assert "contradicts oft_target" in _problems(finetuning_type="oft", oft_target="q_proj",
                                                 lora_target="v_proj")["lora_target"]
    assert "sft and pt stages only" in _problems(finetuning_type="oft", stage="dpo", dataset="kubi_pref",
                                                 dataset_dir=str(REPO / "data"))["finetuning_type"]
    assert "quantised base" in _problems(finetuning_type="oft", quantization_bit=4)["finetuning_type"]
    assert "only applies to LoRA" in _problems(finetuning_type="oft", use_dora=True)["use_dora"]
    assert "finetuning_type full trains all" in _problems(finetuning_type="full", use_llama_pro=True)["use_llama_pro"]
    assert "positive" in _problems(finetuning_type="freeze", use_llama_pro=True,
                                   freeze_trainable_layers=-2)["freeze_trainable_layers"]
    load_config(None, {"model_name_or_path": "m", "finetuning_type": "oft", "oft_rank": 4, "oft_block_size": 0,
                       "create_new_adapter": True, "adapter_name_or_path": "a"})
