"""LLaMA-Factory's spellings: its negated and extra keys, and its keys kubetune refuses with a reason."""

from __future__ import annotations

import pytest

from kubetune.config import ConfigError, load_config

BASE = {"model_name_or_path": "some/model"}


def problems(overrides) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, base=BASE)
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


def test_disable_gradient_checkpointing_is_the_negation_of_ours() -> None:
    assert load_config(None, {"disable_gradient_checkpointing": True}, base=BASE).train.gradient_checkpointing is False
    assert load_config(None, {"disable_gradient_checkpointing": False}, base=BASE).train.gradient_checkpointing
    agreeing = {"disable_gradient_checkpointing": True, "gradient_checkpointing": False}
    assert load_config(None, agreeing, base=BASE).train.gradient_checkpointing is False
    assert "contradicts gradient_checkpointing" in problems({"disable_gradient_checkpointing": True,
                                                             "gradient_checkpointing": True})[
        "disable_gradient_checkpointing"]
    assert "expected true or false" in problems({"disable_gradient_checkpointing": "maybe"})[
        "disable_gradient_checkpointing"]


def test_use_unsloth_gc_is_refused_with_its_reason() -> None:
    load_config(None, {"use_unsloth_gc": False}, base=BASE)
    assert "Unsloth" in problems({"use_unsloth_gc": True})["use_unsloth_gc"]


def test_infer_backend_other_than_huggingface_is_refused() -> None:
    assert load_config(None, {"infer_backend": "huggingface"}, base=BASE).model.infer_backend == "huggingface"
    assert "vLLM" in problems({"infer_backend": "vllm"})["infer_backend"]


def test_max_length_is_llama_factorys_generation_length_not_cutoff_len(caplog) -> None:
    assert load_config(None, {"max_length": 512}, base=BASE).data.cutoff_len == 2048
    assert "set cutoff_len (default 2048)" in caplog.text  # a script user's max_length is told where it went
    caplog.clear()
    load_config(None, {"max_length": 512, "cutoff_len": 256}, base=BASE)
    assert "max_length" not in caplog.text  # both given: the user knows the difference


def test_ray_keys_are_accepted_with_a_warning_as_llama_factory_ignores_them_without_use_ray(caplog) -> None:
    load_config(None, {"ray_num_workers": 1}, base=BASE)  # LF's default: nothing to say
    assert caplog.text == ""
    load_config(None, {"ray_num_workers": 4}, base=BASE)
    assert "ray_num_workers = 4" in caplog.text and "resources.<stage>.gpus" in caplog.text


def test_a_refusal_names_its_reason_not_unknown_key() -> None:
    found = problems({"use_kt": True, "use_mca": True, "video_fps": 4.0, "use_galor": True})
    assert found["use_kt"].startswith("KTransformers: not supported")
    assert "Megatron: use the scale-out path" in found["use_mca"]
    assert found["video_fps"].startswith("multimodal models are not supported yet")
    assert found["use_galor"].startswith("unknown key") and "use_galore" in found["use_galor"]


def test_llama_factory_values_we_cannot_do_say_why() -> None:
    assert load_config(None, {"finetuning_type": "oft"}, base=BASE).method.finetuning_type == "oft"
    assert "gptq quantisation: not supported" in problems({"quantization_method": "gptq"})["quantization_method"]
    assert load_config(None, {"quantization_method": "bnb"}, base=BASE).model.quantization_method == "bnb"


def test_transformers_checkpointing_kwargs_set_use_reentrant_gc() -> None:
    for flag in (True, False):
        cfg = load_config(None, {"gradient_checkpointing_kwargs": {"use_reentrant": flag}}, base=BASE)
        assert cfg.model.use_reentrant_gc is flag
    assert "only use_reentrant" in problems({"gradient_checkpointing_kwargs": {"preserve_rng_state": False}})[
        "gradient_checkpointing_kwargs"]


def test_fsdp_wrap_classes_move_into_fsdp_config() -> None:
    fsdp = {**BASE, "fsdp": "full_shard auto_wrap"}
    cfg = load_config(None, {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer, MlpBlock"}, base=fsdp)
    assert cfg.train.fsdp_config == {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer", "MlpBlock"]}
    cfg = load_config(None, {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                             "fsdp_config": {"version": 2}}, base=fsdp)
    assert cfg.train.fsdp_config == {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
    assert "contradicts" in problems({"fsdp_transformer_layer_cls_to_wrap": "A",
                                      "fsdp_config": {"transformer_layer_cls_to_wrap": ["B"]}})[
        "fsdp_transformer_layer_cls_to_wrap"]


def test_flash_attn_fa3_is_refused_with_its_reason() -> None:
    assert "FlashAttention-3" in problems({"flash_attn": "fa3"})["flash_attn"]


def test_disable_shuffling_is_refused_where_it_cannot_hold() -> None:
    assert "own seeded prompt order" in problems({"disable_shuffling": True, "stage": "ppo",
                                                  "reward_model": "r"})["disable_shuffling"]
    assert "contradicts group_by_length" in problems({"disable_shuffling": True, "group_by_length": True})[
        "disable_shuffling"]
