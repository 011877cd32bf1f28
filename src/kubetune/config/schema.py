"""The run configuration, in LLaMA-Factory's parameter names.

A user's YAML is flat (`lora_rank: 8`, `learning_rate: 1e-4`, ...), as LLaMA-Factory's is.
We split it into groups by field name so each part of the library receives only what it
reads: `cfg.model`, `cfg.method`, `cfg.data`, `cfg.train`, `cfg.generation`, `cfg.export`, `cfg.benchmark`
(`benchmark_args.py`; the groups share `group.ArgumentGroup`).
Field names are unique across groups; `loader.py` routes each key to its group.

Every field's `description` is its documentation (`kubetune keys` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from kubetune.config.benchmark_args import BenchmarkArguments
from kubetune.config.group import ArgumentGroup as _Group
from kubetune.config.group import bool_words  # noqa: F401  (re-exported: tests and docs read it here)


def _split_list(value: object) -> object:
    """LLaMA-Factory writes lists as comma-separated strings (`dataset: a,b`); accept both."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value





class ModelArguments(_Group):
    model_name_or_path: str = Field(
        description="Base model: a local HF directory, an s3:// prefix, a hub id, or a directory "
        "holding `gguf_file`. `HuggingFaceTB/SmolLM2-135M-Instruct` resolves to the embedded copy."
    )
    adapter_name_or_path: list[str] | None = Field(
        None, description="LoRA adapter(s) to load on the base, comma-separated; merged in order."
    )
    gguf_file: str | None = Field(None, description="GGUF file inside model_name_or_path to load.")
    cache_dir: str | None = Field(None, description="Where downloaded models go (default: kubetune cache).")
    model_revision: str = Field("main", description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description=(
        "Run model code shipped with the checkpoint (its own modelling Python files). Off unless set; on, each "
        "load logs a WARNING naming the model, since that code runs with this process's permissions."))
    allow_pickle: bool = Field(False, description=(
        "Load a model whose weights are only a pickle (`pytorch_model.bin`, `*.pt`, `*.ckpt`), which can run "
        "code when unpickled. Off: such a folder is refused (at validation for a local folder, at load time for "
        "s3:// and hub models, which must then ship safetensors) with the file named; convert it to safetensors, "
        "or set allow_pickle: true for a source you trust. A kubetune key (LLaMA-Factory loads pickles)."))
    use_fast_tokenizer: bool = Field(True, description="Use the tokenizers-backed fast tokenizer.")
    resize_vocab: bool = Field(False, description=(
        "Resize the input embeddings (and an untied output head) to the tokenizer's length, rounded up to a "
        "multiple of 64, when the tokenizer has more tokens than the model has rows; new rows start as "
        "init_special_tokens says. On by itself when add_tokens, add_special_tokens or new_special_tokens_config "
        "is set. A new LoRA adapter then trains the embeddings and the head in full and saves them with it "
        "(unless additional_target names the modules). Not with quantization_bit."))
    add_tokens: list[str] | None = Field(None, description=(
        "Plain (non-special) tokens to add to the tokenizer's vocabulary, comma-separated; each then encodes as "
        "one id. Saved with the tokenizer."))
    add_special_tokens: list[str] | None = Field(None, description=(
        "Special tokens to add to the tokenizer, comma-separated (kept whole, dropped by skip_special_tokens). "
        "Ignored when new_special_tokens_config is set."))
    new_special_tokens_config: str | None = Field(None, description=(
        "A YAML file mapping each new special token to a description (`<tool>: marks a tool call`); its tokens "
        "take the place of add_special_tokens, and init_special_tokens: desc_init starts each one's embedding "
        "from its description's."))
    init_special_tokens: Literal["noise_init", "desc_init", "desc_init_w_noise"] = Field("noise_init", description=(
        "How the embedding rows of new tokens start: noise_init (the mean of the old rows plus Gaussian noise of "
        "std 1/sqrt(hidden size)), desc_init (the mean embedding of the token's description in "
        "new_special_tokens_config), desc_init_w_noise (that plus the noise). The desc_ ones need "
        "new_special_tokens_config; without it noise_init is used, as in LLaMA-Factory."))
    low_cpu_mem_usage: bool = Field(True, description="Load weights without a full extra copy in RAM.")
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2"] = Field(
        "auto", description="Attention kernel: auto picks fa2 when installed on GPU, else sdpa."
    )
    enable_liger_kernel: bool = Field(False, description="Fused Liger kernels (GPU only).")
    use_unsloth: bool = Field(False, description="Unsloth kernels (not supported).")
    upcast_layernorm: bool = Field(False, description="Keep layer norms in float32.")
    upcast_lmhead_output: bool = Field(False, description="Compute the LM head output in float32.")
    rope_scaling: Literal["linear", "dynamic", "yarn", "llama3"] | None = Field(None, description=(
        "Stretch the model's RoPE context: in training, when cutoff_len exceeds the model's (original) "
        "max_position_embeddings, by factor ceil(cutoff_len / that length), else not at all; at inference "
        "(chat, export), by 2. The loaded config's rope_parameters and max_position_embeddings say so, and the "
        "saved model keeps them. dynamic (NTK) may not suit fine-tuning."))
    train_from_scratch: bool = Field(False, description=(
        "Train randomly initialised weights built from the model's config (seeded by `seed`) instead of loading "
        "its checkpoint; the tokenizer is still the model's. Not with quantization_bit."))
    use_reentrant_gc: bool = Field(False, description=(
        "Gradient checkpointing in PyTorch's reentrant form (LLaMA-Factory's default is true). Off by default: "
        "PyTorch recommends the non-reentrant form, the same gradients without needing an input that requires grad."))
    infer_backend: Literal["huggingface", "vllm", "sglang", "ktransformers"] = Field(
        "huggingface", description="Engine of `kubetune chat`: huggingface (vllm, sglang, ktransformers: not "
        "supported yet). With no `stage`, it marks a config as an inference config for `kubetune validate`.")
    quantization_method: Literal["bnb"] = Field("bnb", description="On-the-fly quantisation backend.")
    quantization_bit: Literal[4, 8] | None = Field(
        None, description="Load the base in 4 or 8 bits (bitsandbytes) for QLoRA."
    )
    quantization_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quantization: bool = Field(True, description="Quantise the 4-bit quantisation constants.")
    infer_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="dtype for inference (chat, predict, export)."
    )
    hf_hub_token: SecretStr | None = Field(None, description=(
        "Token for private hub models. A secret: shown as ********** in MLflow params and <redacted> in messages; "
        "refused in pipeline configs, which are compiled in clear (give the steps HF_TOKEN from a Kubernetes "
        "secret instead)."))
    print_param_status: bool = Field(False, description="Log every parameter's dtype and trainability.")

    _lists = field_validator("adapter_name_or_path", "add_tokens", "add_special_tokens", mode="before")(_split_list)

    @model_validator(mode="after")
    def _new_tokens_resize(self) -> ModelArguments:
        # LLaMA-Factory turns resize_vocab on once it adds a token; asking for tokens is asking for their rows
        if self.add_tokens or self.add_special_tokens or self.new_special_tokens_config:
            self.resize_vocab = True
        return self


class FinetuningArguments(_Group):
    stage: Literal["pt", "sft", "rm", "ppo", "dpo", "kto"] = Field("sft", description="Training stage.")
    finetuning_type: Literal["lora", "oft", "freeze", "full"] = Field(
        "lora", description="lora (PEFT adapter), oft (PEFT's orthogonal adapter), freeze (train a few layers) or "
        "full. `qlora` = lora + 4-bit."
    )
    # LoRA
    lora_rank: int = Field(8, gt=0, description="LoRA rank r.")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA scale numerator (default: 2 × lora_rank).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target: list[str] = Field(
        ["all"], description="Modules to adapt: `all` (every linear layer except the head) or names."
    )
    additional_target: list[str] | None = Field(
        None, description="Extra modules trained in full and saved with the adapter (e.g. embed_tokens)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling alpha/sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA.")
    pissa_init: bool = Field(False, description="Initialise LoRA from principal singular vectors.")
    pissa_iter: int = Field(16, description="Fast-SVD iterations for PiSSA (-1 = full SVD).")
    pissa_convert: bool = Field(False, description="Save PiSSA as a plain LoRA adapter.")
    loraplus_lr_ratio: float | None = Field(None, description="LoRA+: learning-rate ratio of B to A.")
    loraplus_lr_embedding: float = Field(1e-6, description="LoRA+: learning rate of embedding adapters.")
    create_new_adapter: bool = Field(False, description="Stack a fresh adapter on a loaded one.")
    # OFT (PEFT's OFTConfig): each targeted weight turned by a learnt block-diagonal orthogonal matrix
    oft_rank: int = Field(0, ge=0, description="OFT blocks per layer (r); set this or oft_block_size, the other 0.")
    oft_block_size: int = Field(32, ge=0, description="OFT block size; set this or oft_rank, the other 0.")
    oft_target: list[str] = Field(["all"], description=(
        "Modules OFT adapts: `all` (every linear layer except the head) or names. Unset, lora_target is used, "
        "as LLaMA-Factory does."))
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="OFT dropout: blocks set to identity in "
                                  "training with this probability.")
    # freeze
    freeze_trainable_layers: int = Field(
        2, description="Train the last n layers (negative: the first n); with use_llama_pro, the n added layers."
    )
    use_llama_pro: bool = Field(False, description=(
        "LLaMA Pro: the model was expanded with freeze_trainable_layers copied layers (LLaMA-Factory's "
        "scripts/llama_pro.py); train only those (freeze), or adapt only them (lora, oft)."))
    freeze_trainable_modules: list[str] = Field(
        ["all"], description="Modules inside the trainable layers to train (`all` or names)."
    )
    freeze_extra_modules: list[str] | None = Field(
        None, description="Modules outside the layers to train too (e.g. embed_tokens, norm)."
    )
    # memory-saving optimisers
    use_galore: bool = Field(False, description="GaLore optimiser (full fine-tuning).")
    galore_target: list[str] = Field(["all"], description="GaLore target modules.")
    galore_rank: int = Field(16, description="GaLore projection rank.")
    galore_update_interval: int = Field(200, description="Steps between GaLore projection updates.")
    galore_scale: float = Field(2.0, description="GaLore gradient scale.")
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = Field(
        "std", description="GaLore projection type."
    )
    galore_layerwise: bool = Field(False, description="Layer-wise GaLore updates.")
    use_badam: bool = Field(False, description="BAdam block-coordinate optimiser (full fine-tuning).")
    badam_mode: Literal["layer", "ratio"] = Field("layer", description="BAdam mode.")
    badam_start_block: int | None = Field(None, description="First BAdam block.")
    badam_switch_mode: Literal["ascending", "descending", "random", "fixed"] = Field(
        "ascending", description="BAdam block order."
    )
    badam_switch_interval: int = Field(50, description="Steps between BAdam block switches.")
    badam_update_ratio: float = Field(0.05, description="BAdam ratio-mode update ratio.")
    badam_mask_mode: Literal["adjacent", "scatter"] = Field("adjacent", description="BAdam mask mode.")
    badam_verbose: int = Field(0, description="BAdam verbosity (0, 1, 2).")
    use_apollo: bool = Field(False, description=(
        "APOLLO optimiser (full fine-tuning): AdamW's moments in a low-rank projection of each targeted weight's "
        "gradient, used to scale the full gradient (`pip install kubetune[apollo]`)."))
    apollo_target: list[str] = Field(["all"], description="APOLLO target modules: `all` (every linear but the "
                                     "head) or names.")
    apollo_rank: int = Field(16, description="APOLLO projection rank.")
    apollo_update_interval: int = Field(200, description="Steps between APOLLO projection updates.")
    apollo_scale: float = Field(32.0, description="APOLLO gradient scale.")
    apollo_proj: Literal["svd", "random"] = Field("random", description="APOLLO projection: random or svd.")
    apollo_proj_type: Literal["std", "right", "left"] = Field("std", description="APOLLO projection side.")
    apollo_scale_type: Literal["channel", "tensor"] = Field(
        "channel", description="APOLLO scaling: one factor per channel or per tensor.")
    apollo_layerwise: bool = Field(False, description="Layer-wise APOLLO updates (no gradient accumulation).")
    apollo_scale_front: bool = Field(False, description="Apply APOLLO's norm-growth limiter before the scaling.")
    use_adam_mini: bool = Field(False, description=(
        "Adam-mini optimiser: one second-moment value per block (head, neuron, token) instead of per weight "
        "(`pip install kubetune[adam-mini]`)."))
    use_muon: bool = Field(False, description=(
        "Muon optimiser: orthogonalised momentum on the 2-D hidden weights, AdamW on embeddings, head, norms "
        "and biases."))
    # re-weighted sft losses (kubetune.losses.sft_objectives); at most one
    use_dft_loss: bool = Field(False, description=(
        "DFT (Dynamic Fine-Tuning) loss for sft/pt: each token's cross-entropy times its probability under "
        "the model, not back-propagated through."))
    use_asft_loss: bool = Field(False, description=(
        "ASFT (anchored) loss for sft/pt: the DFT loss plus asft_alpha × KL(reference ‖ policy) per token. "
        "The reference is ref_model, else the policy with its LoRA adapter disabled (LoRA) or a frozen copy "
        "of the base (freeze/full)."))
    asft_alpha: float = Field(0.1, ge=0.0, description="Weight of ASFT's KL term.")
    use_eaft_loss: bool = Field(False, description=(
        "EAFT (entropy-adaptive) loss for sft/pt: each token's cross-entropy times (H / 3)^eaft_alpha, H the "
        "entropy of the model's top-20 token distribution, not back-propagated through."))
    eaft_alpha: float = Field(1.0, ge=0.0, description="Exponent of EAFT's entropy weight.")
    # preference optimisation and RL (the preference issue implements these)
    pref_beta: float = Field(0.1, description="β of the preference losses.")
    pref_ftx: float = Field(0.0, description="Weight of an SFT term on the chosen response.")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = Field(
        "sigmoid", description="Preference loss. kto_pair: paired KTO (each response against the other half's "
        "mean log-ratio)."
    )
    pref_bco_weight: float = Field(0.0, description=(
        "Weight w of a BCO term (each response's reward classified against a running mean of the rewards) added "
        "to a reference loss: (loss + w·BCO) / (1 + w). 0 = off."))
    ld_alpha: float | None = Field(None, description=(
        "LD-DPO: the policy's log-probs of the response tokens beyond the pair's shorter length count ld_alpha "
        "times (in [0, 1]; null = fully)."))
    dpo_label_smoothing: float = Field(0.0, description="Label smoothing of the DPO loss.")
    kto_chosen_weight: float = Field(1.0, description="KTO weight of desirable examples.")
    kto_rejected_weight: float = Field(1.0, description="KTO weight of undesirable examples.")
    simpo_gamma: float = Field(0.5, description="SimPO target reward margin.")
    ref_model: str | None = Field(None, description="Reference model for DPO/KTO/PPO.")
    ref_model_adapters: str | None = Field(None, description="Adapters of the reference model.")
    ref_model_quantization_bit: int | None = Field(None, description="Quantisation of the reference.")
    reward_model: str | None = Field(None, description="Reward model for PPO.")
    reward_model_adapters: str | None = Field(None, description="Adapters of the reward model.")
    reward_model_quantization_bit: int | None = Field(None, description="Quantisation of the reward model.")
    reward_model_type: Literal["lora", "full", "api"] = Field("lora", description="Reward model kind.")
    ppo_buffer_size: int = Field(1, description="PPO minibatches per experience batch.")
    ppo_epochs: int = Field(4, description="PPO epochs per update.")
    ppo_score_norm: bool = Field(False, description="Normalise PPO scores.")
    ppo_target: float = Field(6.0, description="Target KL of the adaptive KL controller.")
    ppo_whiten_rewards: bool = Field(False, description="Whiten PPO rewards.")
    kl_coef: float = Field(0.2, ge=0.0, description="PPO KL penalty coefficient (initial value when adaptive).")
    adaptive_kl: bool = Field(True, description="Adapt kl_coef towards ppo_target (false: fixed kl_coef).")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="PPO discount factor of GAE.")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="PPO λ of GAE.")
    cliprange: float = Field(0.2, gt=0.0, description="PPO policy ratio clip range.")
    cliprange_value: float = Field(0.2, gt=0.0, description="PPO value clip range.")
    vf_coef: float = Field(0.1, ge=0.0, description="PPO value loss coefficient.")

    _lists = field_validator(
        "lora_target", "additional_target", "oft_target", "freeze_trainable_modules", "freeze_extra_modules",
        "galore_target", "apollo_target", mode="before",
    )(_split_list)

    @field_validator("freeze_trainable_layers")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be 0: use a positive n for the last n layers, negative for the first n")
        return value


ToolFormatName = Literal["default", "gemma4", "glm4", "glm4_moe", "lfm2", "ling", "llama3", "minimax1", "minimax2",
                         "mistral", "qwen", "qwen3_5", "seed_oss"]
"""LLaMA-Factory 0.9.5's `tool_format` names (each one of `kubetune.data.tool_formats.TOOL_FORMATS`)."""


class DataArguments(_Group):
    dataset: list[str] | None = Field(None, description="Training dataset names (dataset_info.json) or files.")
    eval_dataset: list[str] | None = Field(None, description="Evaluation dataset names or files.")
    dataset_dir: str = Field("data", description="Folder holding dataset_info.json and the data files.")
    data_path: str | None = Field(None, description="A JSON/JSONL file used directly as the dataset.")
    template: str | None = Field(None, description="Chat template name; null = the tokenizer's own.")
    template_file: str | None = Field(None, description="YAML file defining `template: custom`.")
    default_system: str | None = Field(None, description="Override the template's default system prompt.")
    enable_thinking: bool = Field(True, description=(
        "Thinking templates (qwen3, deepseekr1, ...): learn the assistant's thoughts, adding an empty one "
        "where a turn has none; false moves the thoughts into the prompt (not learnt), as in LLaMA-Factory."))
    preserve_thinking: bool = Field(False, description=(
        "Thinking templates: keep the thoughts of earlier assistant turns in the history (default: dropped)."))
    cutoff_len: int = Field(2048, gt=0, description="Maximum tokens per example after tokenisation.")
    max_samples: int | None = Field(None, gt=0, description=(
        "Use at most this many rows per dataset: its first rows, in file order, as in LLaMA-Factory."))
    val_size: float = Field(
        0.0, ge=0.0, description="Validation split: a fraction in (0, 1) or a row count (≥ 1)."
    )
    eval_on_each_dataset: bool = Field(False, description=(
        "sft/pt: evaluate each eval_dataset on its own: eval_<name>_loss (and _perplexity, _accuracy) per "
        "dataset instead of one eval_loss; name metric_for_best_model after one of them (e.g. <name>_loss) "
        "for early stopping or load_best_model_at_end."))
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens.")
    mask_history: bool = Field(False, description="Train only on the last turn of each conversation.")
    packing: bool | None = Field(None, description=(
        "Pack examples into cutoff_len rows (default: on for pt). Unset for sft/dpo: each batch is packed "
        "without padding, examples kept apart (same loss); false: batches are padded."))
    neat_packing: bool = Field(False, description="Pack without attention across examples (implies packing).")
    overwrite_cache: bool = Field(False, description="Rebuild the tokenised cache.")
    preprocessing_num_workers: int | None = Field(None, gt=0, description="Processes for tokenisation.")
    preprocessing_batch_size: int = Field(1000, gt=0, description="Rows per tokenisation batch.")
    tokenized_path: str | None = Field(None, description="Save the tokenised data here, or load it if present.")
    streaming: bool = Field(False, description=(
        "Stream the dataset: refused; the tokenised data is an Arrow cache, memory-mapped, and preprocessing "
        "writes it shard by shard, so memory does not grow with the dataset without streaming."))
    mix_strategy: Literal["concat", "interleave_under", "interleave_over", "interleave_once"] = Field(
        "concat", description=(
            "How several datasets are combined: concatenated, or interleaved until the first runs out (under), "
            "the last runs out (over: the shorter ones repeat) or every row was used once (once)."))
    interleave_probs: list[float] | None = Field(None, description=(
        "Interleaving: the probability of each dataset giving the next row (one per dataset, summing to 1); "
        "unset: round-robin. Drawn with the training seed."))
    tool_format: ToolFormatName | None = Field(None, description=(
        "How tools and tool calls are written, instead of the template's own format: a LLaMA-Factory tool format "
        "(default, qwen, llama3, glm4, mistral, ...); the call turn becomes the bare call plus EOS, as there."))
    on_bad_rows: Literal["drop", "error"] = Field(
        "drop", description="Bad rows: drop them and report their row numbers, or stop with an error."
    )

    _lists = field_validator("dataset", "eval_dataset", "interleave_probs", mode="before")(_split_list)


class TrainArguments(_Group):
    """Training, output and evaluation settings; mapped onto transformers' TrainingArguments."""

    output_dir: str | None = Field(None, description="Where checkpoints, the adapter, logs and plots go.")
    overwrite_output_dir: bool = Field(False, description="Allow training into a non-empty output_dir.")
    do_train: bool | None = Field(None, description="Train (default: true for `kubetune train`).")
    do_eval: bool = Field(False, description="Evaluate after training.")
    do_predict: bool = Field(False, description="Generate predictions on the eval dataset.")
    resume_from_checkpoint: str | None = Field(
        None, description="Checkpoint to resume from (default: the last one in output_dir)."
    )
    per_device_train_batch_size: int = Field(8, gt=0, description="Training batch size per device.")
    per_device_eval_batch_size: int = Field(8, gt=0, description="Evaluation batch size per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Batches per optimiser step.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Total optimiser steps; overrides num_train_epochs when > 0.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
    ] = Field("linear", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Warm-up as a fraction of total steps.")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps (overrides warmup_ratio when > 0).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, description="AdamW β1.")
    adam_beta2: float = Field(0.999, description="AdamW β2.")
    adam_epsilon: float = Field(1e-8, description="AdamW ε.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 = off).")
    optim: str = Field("adamw_torch", description="Optimiser name as transformers spells it.")
    bf16: bool | None = Field(
        None, description="Mixed precision in bfloat16 (default: on where the device computes bfloat16 natively: "
                          "GPUs from Ampere on, CPUs with AMX; see model/auto_precision.py).",
    )
    fp16: bool = Field(False, description="Mixed precision in float16 (GPU).")
    pure_bf16: bool = Field(False, description="Train in pure bfloat16 (no float32 master weights).")
    fp8: bool = Field(
        False, description="Train the linear layers with FP8 matmuls (torchao float8, rowwise scaling; embeddings "
                           "and heads stay in high precision). Needs a GPU with FP8 tensor cores (Ada, Hopper); "
                           "see model/fp8.py.",
    )
    fp8_backend: Literal["auto", "torchao", "te", "msamp"] = Field(
        "auto", description="FP8 implementation: auto and torchao are torchao's float8 training; te (Transformer "
                            "Engine) and msamp are refused (not dependencies of kubetune).",
    )
    fp8_enable_fsdp_float8_all_gather: bool = Field(
        False, description="Under FSDP2, all-gather the sharded weights in FP8 (tensorwise scaling); implies fp8.",
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations to save memory.")
    group_by_length: bool = Field(
        False, description="Batch unpacked sft/pt rows of similar length together: less padding computed, "
                           "but batches of similar rows train differently.",
    )
    disable_shuffling: bool = Field(
        False, description="Train on the rows in dataset order (a sequential sampler) instead of reshuffling them "
                           "each epoch. Not for ppo, which draws its own prompt order.",
    )
    seed: int = Field(42, description="Seed for initialisation, shuffling and the validation split.")
    data_seed: int | None = Field(None, description="Seed for data sampling (default: seed).")
    ddp_timeout: int = Field(1800, gt=0, description="Distributed timeout in seconds.")
    deepspeed: str | dict[str, Any] | None = Field(None, description=(
        "DeepSpeed config: a JSON file (examples/deepspeed/ds_z{0,2,3}[_offload]_config.json) or the same as a "
        "mapping. \"auto\" values are filled in from this config by transformers. Not with fsdp."))
    fsdp: bool | str | list[str] | None = Field(None, description=(
        "PyTorch FSDP, in transformers' words: true, or options such as `full_shard auto_wrap`, `shard_grad_op`, "
        "`offload`. Needs CUDA GPUs and a multi-process launch (torchrun); not with deepspeed."))
    fsdp_config: str | dict[str, Any] | None = Field(None, description=(
        "FSDP settings (used only with fsdp): a JSON file or a mapping in transformers' names, e.g. "
        "{version: 2, transformer_layer_cls_to_wrap: [LlamaDecoderLayer]}; version 2 (FSDP2) is the default."))
    logging_steps: int = Field(10, gt=0, description="Log every n steps.")
    save_strategy: Literal["no", "steps", "epoch"] = Field("steps", description="When to checkpoint.")
    save_steps: int = Field(500, gt=0, description="Checkpoint every n steps.")
    save_total_limit: int | None = Field(None, gt=0, description="Keep at most n checkpoints.")
    save_only_model: bool = Field(False, description="Checkpoints without optimiser state (cannot resume).")
    save_on_sigterm_grace: float = Field(30.0, ge=0.0, description=(
        "kubetune's own: seconds a pre-empted run (SIGTERM, as Kubernetes sends) has to finish its optimiser "
        "step and save checkpoint-N before it exits with code 75 and a rerun resumes; match the pod's "
        "terminationGracePeriodSeconds. 0 = off (SIGTERM kills at once)."))
    eval_strategy: Literal["no", "steps", "epoch"] = Field("no", description="When to evaluate.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every n steps (default: logging_steps).")
    compute_accuracy: bool = Field(False, description=(
        "sft/pt: also report eval_accuracy, the share of learnt tokens the model predicts exactly (argmax), "
        "averaged over the evaluated rows (a packed row counts as one), as LLaMA-Factory computes it."))
    early_stopping_steps: int | None = Field(None, gt=0, description=(
        "Stop training once metric_for_best_model (default: eval_loss) has not improved for this many "
        "evaluations in a row (transformers' EarlyStoppingCallback patience). Needs eval_strategy steps or epoch."))
    load_best_model_at_end: bool = Field(False, description=(
        "After training, load the checkpoint with the best metric_for_best_model and save it as the result. "
        "Needs save_strategy equal to eval_strategy (and, with steps, save_steps a multiple of eval_steps)."))
    metric_for_best_model: str | None = Field(None, description=(
        "The eval metric that decides the best checkpoint and early stopping, with or without `eval_` "
        "(loss, accuracy with compute_accuracy); default: loss when load_best_model_at_end or "
        "early_stopping_steps is set."))
    greater_is_better: bool | None = Field(None, description=(
        "Whether a larger metric_for_best_model is better (default: false for a loss, true otherwise)."))
    plot_loss: bool = Field(False, description="Write training_loss.png (and training_eval_loss.png).")
    report_to: list[str] = Field(["none"], description="Trackers: none, mlflow, tensorboard, wandb.")
    run_name: str | None = Field(None, description="Run name for trackers.")
    dataloader_num_workers: int = Field(0, ge=0, description="Data-loading processes.")
    predict_with_generate: bool = Field(True, description="Generate text in do_predict.")
    disable_tqdm: bool = Field(False, description="Hide progress bars.")
    include_effective_tokens_per_second: bool = Field(False, description=(
        "Add effective_tokens_per_sec to the final train metrics: the training rows' tokens (input_ids; both "
        "responses of a pair) times the epochs run, over the train runtime, per process; as in LLaMA-Factory. "
        "Every log line carries `throughput` (non-padding tokens per second) whatever this says."))

    _lists = field_validator("report_to", mode="before")(_split_list)

    @property
    def evaluates(self) -> bool:
        """Held-out rows are evaluated: `do_eval`, or evaluation during training (`eval_strategy`)."""
        return bool(self.do_eval or self.eval_strategy != "no")

    @property
    def fsdp_options(self) -> list[str]:
        """The FSDP options asked for, as transformers splits them ("full_shard auto_wrap" → two); [] when off.

        `fsdp: true` is transformers 5's own spelling of "on, settings in fsdp_config": ["full_shard"], its default.
        """
        if self.fsdp is True:
            return ["full_shard"]
        if not self.fsdp:
            return []
        return self.fsdp.split() if isinstance(self.fsdp, str) else list(self.fsdp)

    @property
    def needs_eval_split(self) -> bool:
        """The held-out split is read: to evaluate or to predict. The stage asks for it and the
        pipeline's preprocess step builds it by this one rule, so their cache keys agree."""
        return self.evaluates or bool(self.do_predict)


class GeneratingArguments(_Group):
    do_sample: bool = Field(True, description="Sample (false = greedy).")
    temperature: float = Field(0.95, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.7, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Top-k sampling.")
    num_beams: int = Field(1, gt=0, description="Beams (1 = no beam search).")
    max_new_tokens: int = Field(1024, gt=0, description="Tokens to generate at most.")
    repetition_penalty: float = Field(1.0, gt=0, description="Repetition penalty.")
    length_penalty: float = Field(1.0, description="Beam-search length penalty.")
    skip_special_tokens: bool = Field(True, description="Drop special tokens from decoded text.")


class ExportArguments(_Group):
    export_dir: str | None = Field(None, description="Where the merged model goes (local or s3://).")
    export_size: int = Field(5, gt=0, description="Shard size in GB.")
    export_device: Literal["cpu", "auto"] = Field("cpu", description="Device used for merging.")
    export_legacy_format: bool = Field(False, description="Save .bin instead of safetensors.")
    export_quantization_bit: int | None = Field(None, description="Quantise the export (not supported).")
    export_hub_model_id: str | None = Field(None, description="Push to the hub (not supported).")


GROUPS: dict[str, type[_Group]] = {
    "model": ModelArguments,
    "method": FinetuningArguments,
    "data": DataArguments,
    "train": TrainArguments,
    "generation": GeneratingArguments,
    "export": ExportArguments,
    "benchmark": BenchmarkArguments,
}


def field_owner() -> dict[str, str]:
    """Map every field name to its group name (names are unique across groups)."""
    owner: dict[str, str] = {}
    for group, model in GROUPS.items():
        for name in model.model_fields:
            assert name not in owner, f"{name} is defined in {owner[name]} and {group}"
            owner[name] = group
    return owner


@dataclass
class RunConfig:
    """A validated run configuration.

    Attributes:
        model, method, data, train, generation, export, benchmark: the argument groups.
        source: the file the config came from ("" when built in code).
        origins: where each key the user set (after aliasing) came from: the config file, "command line",
            a pipeline section. Problems name it, and it tells "left at the default" from "asked for".
    """

    model: ModelArguments
    method: FinetuningArguments
    data: DataArguments
    train: TrainArguments
    generation: GeneratingArguments
    export: ExportArguments
    benchmark: BenchmarkArguments
    source: str = ""
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def explicit(self) -> set[str]:
        """The keys the user set (file, command line, pipeline), after aliasing."""
        return set(self.origins)

    def origin(self, key: str) -> str:
        """Where `key`'s value came from, for a problem to name: its origin, or "defaults" when not set."""
        return self.origins.get(key, "defaults")

    def to_flat(self) -> dict[str, object]:
        """The flat key → value form a user writes; round-trips through `load_config`."""
        flat: dict[str, object] = {}
        for group in GROUPS:
            flat.update(getattr(self, group).model_dump(mode="json"))
        return flat
