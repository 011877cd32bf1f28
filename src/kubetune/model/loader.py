"""Load a base model and its tokenizer from wherever it lives.

`model_name_or_path` may be a local HF directory, a directory plus `gguf_file`, an `s3://`
prefix (fetched once into the cache), the embedded SmolLM2 id, or a hub id (only where a hub
is reachable). Remote code stays off unless `trust_remote_code: true`, and turning it on logs a
WARNING naming the model. Weights that are only a pickle are refused unless `allow_pickle: true`
(`kubetune.model.pickle_files`): a local or fetched folder by its files, a hub model by asking
transformers for safetensors only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from kubetune.config import ModelArguments, RunConfig
from kubetune.model.embedded import embedded_model_dir, is_embedded
from kubetune.model.pickle_files import pickle_only_weights, pickle_refusal

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model (or tokenizer) could not be found or loaded; the message says what to do."""


def resolve_model_path(args: ModelArguments) -> str:
    """Turn `model_name_or_path` into something `from_pretrained` can open without a network."""
    name = args.model_name_or_path
    if name.startswith("s3://"):
        from kubetune.storage import localize

        return str(localize(name))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if is_embedded(name):
        return str(embedded_model_dir())
    if name.startswith(("/", "./", "../", "~")) or path.suffix == ".gguf":
        raise ModelLoadError(f"model_name_or_path: {name!r} does not exist — check the path")
    return name  # a hub id: from_pretrained will try the hub (and say so if it cannot reach it)


_WARNED_REMOTE_CODE: set[str] = set()


def warn_remote_code(args: ModelArguments, path: str) -> None:
    """Log, once per model, that `trust_remote_code: true` will run the Python code the model ships."""
    if not args.trust_remote_code or path in _WARNED_REMOTE_CODE:
        return
    _WARNED_REMOTE_CODE.add(path)
    where = args.model_name_or_path if path == args.model_name_or_path else f"{args.model_name_or_path} ({path})"
    logger.warning("trust_remote_code: true — the Python code shipped with %s will run in this process, with its "
                   "permissions and credentials. Set it only for a model whose code you have read.", where)


def check_pickle(args: ModelArguments, path: str) -> None:
    """Refuse a local model folder whose weights are only a pickle, unless `allow_pickle: true`.

    Raises:
        ModelLoadError: naming the file and the key.
    """
    if args.allow_pickle or args.gguf_file:
        return
    weights = pickle_only_weights(path)
    if weights is not None:
        message, hint = pickle_refusal(weights)
        raise ModelLoadError(f"model_name_or_path: {args.model_name_or_path!r}: {message} — {hint}")


def _from_pretrained_kwargs(args: ModelArguments) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": args.trust_remote_code, "revision": args.model_revision}
    if args.cache_dir:
        kwargs["cache_dir"] = args.cache_dir
    if args.hf_hub_token and args.hf_hub_token.get_secret_value():
        kwargs["token"] = args.hf_hub_token.get_secret_value()
    if args.gguf_file:
        kwargs["gguf_file"] = args.gguf_file
    return kwargs


def pad_token_id(tokenizer: Any) -> int | None:
    """The id padding is written with: the tokenizer's pad token, else its EOS (many causal LMs have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_tokenizer(args: ModelArguments, path: str | None = None) -> Any:
    """Load the tokenizer with right padding (training; generation switches to left padding itself), with the
    config's new tokens (`add_tokens`, `add_special_tokens`, `new_special_tokens_config`) added."""
    from kubetune.model.vocabulary import add_new_tokens

    path = path or resolve_model_path(args)
    warn_remote_code(args, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=args.use_fast_tokenizer,
                                                  **_from_pretrained_kwargs(args))
    except OSError as err:
        raise ModelLoadError(_not_found(args.model_name_or_path, err)) from None
    tokenizer.padding_side = "right"
    add_new_tokens(tokenizer, args)
    return tokenizer


def pick_attention(args: ModelArguments) -> str:
    """The attention kernel: `auto` prefers FlashAttention-2 on a GPU when installed, else SDPA."""
    import importlib.util

    has_fa2 = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    choice = {"disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}.get(args.flash_attn)
    if choice is None:  # auto
        choice = "flash_attention_2" if has_fa2 else "sdpa"
        logger.info("flash_attn: auto → %s", choice)
    return choice


def weight_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype to load base weights in.

    pure_bf16: bfloat16 everywhere. Mixed precision (bf16/fp16) with plain LoRA: the frozen base in
    the 16-bit compute dtype, as LLaMA-Factory loads it. Autocast then casts no weight at each op,
    the residual stream and attention run in 16 bits, and the base takes half the memory; PEFT keeps
    the adapters in float32 and casts around them, so generation outside autocast works too. Measured
    on SmolLM2-135M LoRA (2-core AMX CPU, bf16): 10-15% less time per step and 0.2-0.4 GB less RSS.
    float32 otherwise: full and freeze train the weights themselves (their own master copy), and
    `additional_target` modules (and `resize_vocab`'s embeddings and head) and PiSSA's residual weights
    are trained or rewritten in place.
    """
    t, m = cfg.train, cfg.method
    if t.pure_bf16:
        return torch.bfloat16
    plain_lora = (m.finetuning_type == "lora" and not m.additional_target and not m.pissa_init
                  and not cfg.model.resize_vocab)  # resize_vocab trains the embeddings and head in full
    if plain_lora and (t.bf16 or t.fp16):
        return torch.bfloat16 if t.bf16 else torch.float16
    return torch.float32


def quantization_config(args: ModelArguments, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if args.quantization_bit is None:
        return None
    if args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=args.quantization_type,
        bnb_4bit_use_double_quant=args.double_quantization,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def load_base_model(args: ModelArguments, *, dtype: torch.dtype = torch.float32, path: str | None = None,
                    quantize: bool = True, model_max_length: int | None = None, from_scratch: bool = False,
                    tokenizer: Any | None = None) -> Any:
    """Load the base causal LM, with `rope_scaling` applied and the vocabulary resized (`resize_vocab`).

    Args:
        args: model arguments.
        dtype: weight dtype for unquantised layers (float32 on CPU; bf16/fp16 on GPUs when asked).
        path: an already-resolved path (skips resolution).
        quantize: apply `quantization_bit` (False for export, which must not merge into a quantised base).
        model_max_length: the training length (`cutoff_len`) `rope_scaling` sizes its factor for; None at
            inference (factor 2). Default None.
        from_scratch: build random weights from the config instead of loading the checkpoint
            (`train_from_scratch`; the caller seeds). Default False.
        tokenizer: the tokenizer the embeddings are resized to with `resize_vocab`; None loads it
            (`load_tokenizer`, which adds the config's new tokens). Default None.
    """
    from kubetune.model.rope import configure_rope
    from kubetune.model.vocabulary import resize_embeddings

    path = path or resolve_model_path(args)
    warn_remote_code(args, path)
    if not from_scratch:
        check_pickle(args, path)
    kwargs = _from_pretrained_kwargs(args)
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelLoadError(_not_found(args.model_name_or_path, err)) from None
    configure_rope(config, args.rope_scaling, model_max_length)
    qconfig = quantization_config(args, dtype) if quantize else None
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": quantised_device()}
    if from_scratch:
        logger.info("train_from_scratch: random weights from %s's config (its checkpoint is not read)",
                    args.model_name_or_path)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=pick_attention(args),
                                                 trust_remote_code=args.trust_remote_code)
    else:
        if not args.allow_pickle and not args.gguf_file and not Path(path).is_dir():
            kwargs["use_safetensors"] = True  # a hub model: its files are only known once fetched
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, config=config, dtype=dtype, attn_implementation=pick_attention(args),
                low_cpu_mem_usage=args.low_cpu_mem_usage, **kwargs,
            )
        except OSError as err:
            if kwargs.get("use_safetensors") and "safetensors" in str(err):
                raise ModelLoadError(f"model_name_or_path: {args.model_name_or_path!r} has no safetensors weights "
                                     f"(only a pickle, which can run code when loaded): {err}\nSet allow_pickle: "
                                     f"true if you trust its source, or convert it to safetensors") from None
            raise
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = model.config.eos_token_id
    if args.resize_vocab:
        resize_embeddings(model, tokenizer if tokenizer is not None else load_tokenizer(args, path), args)
    return model


def quantised_device() -> str:
    """Where a quantised base is placed as it loads: this rank's GPU (`LOCAL_RANK`, set by torchrun), or the CPU.

    bitsandbytes quantises the weights on the device they load to, and a quantised model is not moved
    afterwards: accelerate refuses to train it on another device than the one it was loaded on ("You
    can't train a model that has been loaded in 8-bit or 4-bit precision on a different device"), which
    under DDP is every rank but the one on GPU 0.
    """
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def _not_found(name: str, err: Exception) -> str:
    return (
        f"cannot load model {name!r}: {err}\n"
        "model_name_or_path must be a local HF directory, an s3:// prefix, or a hub id on a machine that "
        "can reach the hub. Offline, download the model first, or use HuggingFaceTB/SmolLM2-135M-Instruct "
        "(embedded)."
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked size, ZeRO-3 partitions as the
    whole parameter (`ds_numel`: loaded under `zero.Init`, a rank holds an empty placeholder of each)."""
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", None) or param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
