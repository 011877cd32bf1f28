"""LLaMA-Factory keys kubetune has no field for: each refused with its reason, or accepted as already true.

A LLaMA-Factory user's YAML must never fail on "unknown key". Every key of LLaMA-Factory 0.9.5's argument
classes (and of its main branch as of 2026-08: kt_cpu_activation, use_megatron_bridge, ...) is a field of
`kubetune.config.schema`, an alias in `kubetune.config.loader`, or listed here
(`tests/config/test_lf_key_inventory.py` reads LLaMA-Factory's own source to keep it so).

A refused key set to LLaMA-Factory's default asks for nothing, so it is accepted and dropped: configs that
spell out defaults (`use_swanlab: false`, `freeze_vision_tower: true`) run unchanged. Any other value is
refused with the reason, never silently ignored: a user who asks for Muon and gets AdamW is misled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why kubetune cannot do what a key asks, and what to do instead.

    Attributes:
        reason: what is missing ("multimodal models are not supported yet").
        hint: what the user can do ("" when removing the key is all).
        default: LLaMA-Factory's default; a config that sets the key to it is accepted.
    """

    reason: str
    hint: str = ""
    default: object = None


def _each(keys: dict[str, object], reason: str, hint: str = "") -> dict[str, Refusal]:
    return {key: Refusal(reason, hint, default) for key, default in keys.items()}


_NOT_YET = "not implemented yet"
_REMOVE = "remove it"

REFUSED: dict[str, Refusal] = {
    # ModelArguments: multimodal processing (ProcessorArguments) and the MLLM freeze switches
    **_each({"image_max_pixels": 768 * 768, "image_min_pixels": 32 * 32, "image_do_pan_and_scan": False,
             "crop_to_patches": False, "video_max_pixels": 256 * 256, "video_min_pixels": 16 * 16, "video_fps": 2.0,
             "video_maxlen": 128, "use_audio_in_video": False, "audio_sampling_rate": 16000, "media_dir": None,
             "freeze_vision_tower": True, "freeze_multi_modal_projector": True, "freeze_language_model": False},
            "multimodal models are not supported yet", "train a text model, and remove the key"),
    # ModelArguments: KTransformers (KTransformersArguments)
    **_each({"use_kt": False, "kt_weight_path": None, "kt_expert_checkpoint_path": None,
             "kt_use_lora_experts": None, "kt_lora_expert_num": None, "kt_lora_expert_intermediate_size": None,
             "kt_cpu_activation": None, "kt_non_expert_weight_path": None},
            "KTransformers: not supported", _REMOVE),
    # ModelArguments: inference engines (VllmArguments, SGLangArguments); `infer_backend` itself is a field
    **_each({"vllm_maxlen": 4096, "vllm_gpu_util": 0.7, "vllm_enforce_eager": False, "vllm_max_lora_rank": 32,
             "vllm_config": None},
            "vLLM inference: not supported yet", "kubetune chat runs infer_backend: huggingface; remove the key"),
    **_each({"sglang_maxlen": 4096, "sglang_mem_fraction": 0.7, "sglang_tp_size": -1, "sglang_config": None,
             "sglang_lora_backend": "triton"},
            "SGLang inference: not supported yet", "kubetune chat runs infer_backend: huggingface; remove the key"),
    # ModelArguments: quantised export (ExportArguments); export_quantization_bit is a field refused by rules.py
    **_each({"export_quantization_dataset": None, "export_quantization_nsamples": 128,
             "export_quantization_maxlen": 1024},
            f"GPTQ-quantised export: {_NOT_YET}", "export in 16 bits and quantise the exported model separately"),
    "quantization_device_map": Refusal("a device map for 4-bit inference: not supported",
                                       "remove it: kubetune places the quantised model itself"),
    # ModelArguments: vocabulary (add_tokens, add_special_tokens, ... are fields)
    "split_special_tokens": Refusal(f"splitting special tokens: {_NOT_YET}", "remove it: they are kept whole",
                                    False),
    # ModelArguments: architecture changes
    "shift_attn": Refusal("LongLoRA's shift short attention (S²-Attn): not supported", _REMOVE, False),
    # LLaMA-Factory's MoD library (PyPI mixture-of-depth 1.2.0) imports transformers 4's TRANSFORMERS_CACHE at
    # import time, so it cannot load beside the transformers 5 that kubetune pins (checked with 1.2.0)
    "mixture_of_depths": Refusal("mixture-of-depths: its library (mixture-of-depth 1.2.0, `MoD`) needs transformers "
                                 "4.x and does not import with the transformers 5 kubetune runs on", _REMOVE),
    "moe_aux_loss_coef": Refusal(f"setting the MoE router's auxiliary-loss coefficient: {_NOT_YET}",
                                 "remove it: the model's own coefficient is used"),
    "use_unsloth_gc": Refusal("Unsloth's offloaded gradient checkpointing: not supported (nor is Unsloth)",
                              "remove it: gradient_checkpointing (on by default) recomputes activations", False),
    "use_v1_kernels": Refusal("LLaMA-Factory's v1 kernel plugins (mostly Ascend NPU fused ops): not supported",
                              "remove it; enable_liger_kernel gives fused GPU kernels", False),
    "use_kv_cache": Refusal("generation without the KV cache: not supported", "remove it", True),
    "offload_folder": Refusal("offloading weights to disk: not supported", _REMOVE, "offload"),
    "adapter_folder": Refusal("adapter folders: not supported", "list the adapters in adapter_name_or_path"),
    **_each({"ms_hub_token": None, "om_hub_token": None},
            "ModelScope and Modelers hubs: not supported", "use a Hugging Face id, a local directory or s3://"),
    # ModelArguments: derived by LLaMA-Factory itself, which refuses them too ("Do not specify it")
    "model_max_length": Refusal("derived from cutoff_len, not set directly (as in LLaMA-Factory)", "set cutoff_len"),
    "block_diag_attn": Refusal("derived from neat_packing, not set directly (as in LLaMA-Factory)",
                               "set neat_packing", False),
    "compute_dtype": Refusal("derived from bf16/fp16, not set directly (as in LLaMA-Factory)", "set bf16 or fp16"),
    "device_map": Refusal("derived from the stage, not set directly (as in LLaMA-Factory)", _REMOVE),
    # DataArguments
    "buffer_size": Refusal("streaming's shuffle buffer; streaming is not supported (the tokenised data is an "
                           "Arrow cache, preprocessed in bounded memory)", _REMOVE, 16384),
    "eval_num_beams": Refusal("not read by kubetune's predictions", "set num_beams: do_predict generates with it"),
    "ignore_pad_token_for_loss": Refusal("counting padding in the loss: not supported",
                                         "remove it: padding never counts", True),
    # FinetuningArguments: optimisers and losses
    # FinetuningArguments: distributed back ends
    **_each({"use_mca": False, "use_megatron_bridge": False, "megatron_bridge_args": None},
            "Megatron: use the scale-out path (deepspeed/fsdp, nodes)", _REMOVE),
    **_each({"use_hyper_parallel": False, "hyper_parallel_args": None, "hyper_parallel_cp_size": 1},
            "HyperParallel: use the scale-out path (deepspeed/fsdp, nodes)", _REMOVE),
    # FinetuningArguments: SwanLab (SwanLabArguments)
    **_each({"use_swanlab": False, "swanlab_project": "llamafactory", "swanlab_workspace": None,
             "swanlab_run_name": None, "swanlab_mode": "cloud", "swanlab_api_key": None, "swanlab_logdir": None,
             "swanlab_lark_webhook_url": None, "swanlab_lark_secret": None},
            "SwanLab tracking: not supported", "use report_to: mlflow (or tensorboard, wandb)"),
    # TrainingArguments extras: Ray, the torch profiler, FP8
    **_each({"enable_torch_profiler": False, "profiler_output_dir": None, "profiler_wait_steps": 1,
             "profiler_warmup_steps": 1, "profiler_active_steps": 1, "profiler_repeat": 1,
             "profiler_record_shapes": True, "profiler_profile_memory": True, "profiler_with_stack": True,
             "profile_modules": None},
            f"the torch profiler: {_NOT_YET}", _REMOVE),
}

# Keys whose request kubetune already fulfils, whatever their value: accepted and dropped, with why.
NO_EFFECT: dict[str, str] = {
    "data_shared_file_system": (
        "the pipeline's preprocess step tokenises once, for every rank and node, whatever the file system"),
    "max_length": (
        "generation stops at max_new_tokens, which overrides max_length in LLaMA-Factory too (its default, 1024, "
        "is always positive)"),
}


# Keys LLaMA-Factory itself reads only under an environment switch (Ray: `USE_RAY=1`), and ignores otherwise:
# accepted, with a warning that names what kubetune does instead when one is set to another value than the default.
IGNORED: dict[str, Refusal] = _each(
    {"ray_num_workers": 1, "ray_init_kwargs": None, "master_addr": None, "master_port": None},
    "Ray is LLaMA-Factory's launcher (USE_RAY=1) and kubetune does not use it: `kubetune train` starts one rank per "
    "visible GPU (torchrun), a pipeline step as many as resources.<stage>.gpus, on resources.<stage>.nodes nodes",
    "remove it; set resources.<stage>.gpus / nodes in a pipeline config for several GPUs or nodes")


# Values of kubetune fields that LLaMA-Factory accepts and kubetune cannot do yet: key -> value -> refusal.
REFUSED_VALUES: dict[str, dict[str, Refusal]] = {
    "flash_attn": {"fa3": Refusal("FlashAttention-3: not supported yet", "use flash_attn: fa2, sdpa or auto")},
    "quantization_method": {
        method: Refusal(f"{method} quantisation: not supported yet",
                        "use quantization_method: bnb (bitsandbytes) with quantization_bit: 4 or 8")
        for method in ("gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8")},
}


def refusal(key: str, value: object) -> Refusal | None:
    """Why `key: value` is refused; None when it is not (including a refused key at LLaMA-Factory's default)."""
    if key in REFUSED_VALUES:
        return REFUSED_VALUES[key].get(value) if isinstance(value, str) else None
    found = REFUSED.get(key) or IGNORED.get(key)
    if found is None or value == found.default:
        return None
    return found
