"""Decide which parameters train: a LoRA or OFT adapter, the last few layers (freeze), or everything.

Loaded adapters (`adapter_name_or_path`) are merged into the base in order, except the last
one when training LoRA: that one keeps training, as a user resuming an adapter expects, unless
`create_new_adapter` asks for a fresh adapter on top of them all. New adapters may be DoRA,
rsLoRA or PiSSA-initialised; LoRA+ (optimizer groups) and PiSSA conversion happen in training,
see `kubetune.model.loraplus` and `kubetune.model.pissa`. OFT adapters (`finetuning_type: oft`) are loaded,
merged and resumed the same way.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, OFTConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training

from kubetune.config import FinetuningArguments, ModelArguments
from kubetune.model.loader import count_parameters
from kubetune.model.precision import upcast_layernorms

logger = logging.getLogger(__name__)

_HEADS = ("lm_head", "score", "v_head", "output_layer")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of every linear layer except the output head (`lora_target: all`)."""
    names: set[str] = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or "Linear" in module.__class__.__name__
        short = full_name.split(".")[-1]
        if is_linear and short not in _HEADS and "lora_" not in full_name:
            names.add(short)
    return sorted(names)


def prepare_for_training(model: Any, model_args: ModelArguments, method: FinetuningArguments,
                         *, gradient_checkpointing: bool, is_trainable: bool = True) -> Any:
    """Apply `finetuning_type` to a loaded base and return the model to train (or run).

    Args:
        model: the base model from `load_base_model`.
        model_args: for `adapter_name_or_path`, quantisation and `use_reentrant_gc`.
        method: finetuning arguments.
        gradient_checkpointing: recompute activations in backward (less memory, ~30% more compute).
        is_trainable: False for evaluation/prediction: adapters are loaded frozen.
    """
    quantized = model_args.quantization_bit is not None
    if is_trainable and quantized:
        # freezes the base and casts its norms to float32; checkpointing is switched on below, under transformers
        # 5's own name (PEFT's helper would call the deprecated `gradient_checkpointing_enable`)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if is_trainable and gradient_checkpointing:
        # `use_reentrant_gc` picks PyTorch's checkpoint variant, as LLaMA-Factory's key of that name does
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": model_args.use_reentrant_gc})
        model.enable_input_require_grads()  # so recomputation reaches frozen layers (LoRA, 4-bit)
    if is_trainable and gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and breaks recomputation
    if is_trainable and model_args.upcast_layernorm:
        upcast_layernorms(model)

    if method.finetuning_type in ("lora", "oft"):
        model = _apply_lora(model, model_args, method, is_trainable)
    elif model_args.adapter_name_or_path:
        raise ValueError("adapter_name_or_path needs finetuning_type: lora (or oft)")
    elif not is_trainable:
        model.requires_grad_(False)
    elif method.finetuning_type == "freeze":
        _apply_freeze(model, method)
    else:  # full
        model.requires_grad_(True)

    if is_trainable:
        trainable, total = count_parameters(model)
        logger.info("trainable params: %s || all params: %s || trainable%%: %.4f",
                    f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    else:
        model.eval()
    return model


def _apply_lora(model: Any, model_args: ModelArguments, method: FinetuningArguments, is_trainable: bool) -> Any:
    """Merge the loaded adapters in order; then resume the last one, or add a new adapter to train.

    Training resumes the last of `adapter_name_or_path` unless `create_new_adapter` is set, in which case
    every loaded adapter is merged and a fresh one (with this config's LoRA settings) is stacked on top.
    """
    adapters = list(model_args.adapter_name_or_path or [])
    if model_args.quantization_bit is not None and adapters:
        # Merging into a quantised base would round the adapter away, so it stays a separate module.
        if len(adapters) > 1:
            raise ValueError("a quantised base can carry only one adapter: merge the others first "
                             "(`kubetune export` on the unquantised base)")
        if is_trainable and method.create_new_adapter:
            raise ValueError("create_new_adapter cannot stack on a quantised base (the loaded adapter would have "
                             "to be merged into 4/8-bit weights): export the merged model first")
        return load_adapter(model, adapters[0], is_trainable=is_trainable)
    resume = is_trainable and bool(adapters) and not method.create_new_adapter
    for path in adapters[:-1] if resume else adapters:
        _untie_embeddings_if_adapted(model, path)
        model = load_adapter(model, path, is_trainable=False).merge_and_unload()
        logger.info("merged adapter %s into the base", path)
    if not is_trainable:
        model.requires_grad_(False)
        return model
    if resume:
        logger.info("continuing to train adapter %s (its adapter_config.json decides rank, DoRA, ...)", adapters[-1])
        return load_adapter(model, adapters[-1], is_trainable=True)

    trains_vocabulary = model_args.resize_vocab and method.additional_target is None
    if trains_vocabulary:
        # the new tokens' rows must learn: train the embeddings and head in full, as LLaMA-Factory does
        from kubetune.model.vocabulary import embedding_module_names

        method = method.model_copy(update={"additional_target": embedding_module_names(model)})
        logger.info("resize_vocab: training %s in full with the adapter", ", ".join(method.additional_target))
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    if method.finetuning_type == "oft":
        if trains_vocabulary and tied:
            # PEFT's OFTConfig has no ensure_weight_tying: the embeddings and the head would train as two copies,
            # and the merged model (its config says "tied") would keep only one of them on reload
            raise ValueError("resize_vocab with finetuning_type: oft on a model with tied embeddings: OFT cannot keep "
                             "the new tokens' embedding and head rows tied. Use finetuning_type: lora, which trains "
                             "one shared copy")
        config = oft_config(model, method)
        model = get_peft_model(model, config)
        logger.info("%sOFT r=%d block size %d (module dropout %g) on %s", "new " if adapters else "", config.r,
                    config.oft_block_size, config.module_dropout, ", ".join(sorted(config.target_modules)))
        return model
    config = lora_config(model, method)
    if trains_vocabulary and tied:
        # Tied embeddings: one trained copy shared by the lookup and the head. Two separate copies (PEFT's
        # default) would untie them in training, yet the saved and merged model says "tied" and drops the
        # head's copy on reload, so the exported model would not be the one trained.
        config.ensure_weight_tying = True
    model = get_peft_model(model, config)
    variant = [name for name, on in (("DoRA", config.use_dora), ("rsLoRA", config.use_rslora),
                                     (f"PiSSA init {config.init_lora_weights}", method.pissa_init)) if on]
    logger.info("%sLoRA r=%d alpha=%d%s on %s", "new " if adapters else "", config.r, config.lora_alpha,
                f" ({', '.join(variant)})" if variant else "", ", ".join(sorted(config.target_modules)))
    return model


def lora_config(model: Any, method: FinetuningArguments) -> LoraConfig:
    """The PEFT LoraConfig for a new adapter: targets, rank, and the DoRA / rsLoRA / PiSSA variants.

    Args:
        model: the base (for `lora_target: all`, resolved to its linear layers).
        method: finetuning arguments (`lora_*`, `additional_target`, `use_dora`, `use_rslora`, `pissa_*`).
    """
    targets = method.lora_target
    if targets == ["all"]:
        targets = linear_module_names(model)
    if method.use_llama_pro:
        targets = _expanded_targets(model, targets, method)
    init: bool | str = True  # A random, B zero: the adapter starts as a no-op
    if method.pissa_init:
        # PiSSA moves the top-r singular directions of W into A, B and leaves the residual in the base
        init = "pissa" if method.pissa_iter == -1 else f"pissa_niter_{method.pissa_iter}"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method.lora_rank,
        lora_alpha=method.lora_alpha or 2 * method.lora_rank,
        lora_dropout=method.lora_dropout,
        target_modules=targets,
        # PEFT matches these by suffix: `norm` also selects every `*_layernorm`
        modules_to_save=method.additional_target,
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
        init_lora_weights=init,
    )


def oft_targets(method: FinetuningArguments) -> list[str]:
    """OFT's target modules: `oft_target`, unless left at `all` while `lora_target` names modules — LLaMA-Factory
    0.9.5 adapts `lora_target`'s modules with OFT, so configs written for it name them there."""
    return method.lora_target if method.oft_target == ["all"] else method.oft_target


def oft_config(model: Any, method: FinetuningArguments) -> OFTConfig:
    """The PEFT OFTConfig for a new adapter: targets, `oft_rank` or `oft_block_size`, `module_dropout`.

    Args:
        model: the base (for `all`, resolved to its linear layers).
        method: finetuning arguments (`oft_*`, `module_dropout`, `additional_target`).
    """
    targets = oft_targets(method)
    if targets == ["all"]:
        targets = linear_module_names(model)
    if method.use_llama_pro:
        targets = _expanded_targets(model, targets, method)
    return OFTConfig(task_type=TaskType.CAUSAL_LM, r=method.oft_rank, oft_block_size=method.oft_block_size,
                     target_modules=targets, module_dropout=method.module_dropout,
                     modules_to_save=method.additional_target)


def load_adapter(model: Any, path: str, *, is_trainable: bool) -> Any:
    """Load a saved adapter onto `model`, refusing PiSSA adapters that would not reproduce the trained model.

    A PiSSA adapter is trained against a residual base (W minus its top-r part). PEFT rebuilds that residual
    when it loads the adapter, which is exact for a full SVD (`pissa_iter: -1`) but not for the randomised
    fast SVD, whose draw differs from the one made in training: the result would be silently wrong.
    """
    config_file = Path(path) / "adapter_config.json"
    if config_file.is_file():
        init = json.loads(config_file.read_text()).get("init_lora_weights")
        if isinstance(init, str) and init.startswith("pissa_niter"):
            converted = Path(path) / "pissa_converted"
            hint = (f"use adapter_name_or_path: {converted} (the same adapter as plain LoRA on the original base)"
                    if (converted / "adapter_config.json").is_file()
                    else "retrain with pissa_convert: true (or pissa_iter: -1), then load its pissa_converted folder")
            raise ValueError(f"adapter {path} was trained with PiSSA fast SVD ({init}): it only fits the residual "
                             f"base it was trained on, which cannot be rebuilt exactly — {hint}")
    _check_vocabulary_fits(model, path)
    return PeftModel.from_pretrained(model, path, is_trainable=is_trainable)


def _check_vocabulary_fits(model: Any, path: str) -> None:
    """Refuse, naming the keys, an adapter whose saved embeddings have more rows than the base: it was trained
    with added tokens that this config does not add (PEFT would fail with a bare size mismatch)."""
    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    rows = model.get_input_embeddings().weight.shape[0]
    with safe_open(str(weights), framework="pt") as f:
        names = [k for k in f.keys() if "embed_tokens" in k]  # noqa: SIM118 (safe_open is not a mapping)
        trained = max((f.get_slice(k).get_shape()[0] for k in names), default=0)
    if trained > rows:
        raise ValueError(f"adapter {path} was trained with {trained} embedding rows, the base has {rows}: it was "
                         "trained with added tokens — set the same add_tokens / add_special_tokens / "
                         "new_special_tokens_config as in training")


def _untie_embeddings_if_adapted(model: Any, path: str) -> None:
    """Give the output head its own copy of tied embeddings before merging an adapter on embed_tokens.

    In training, a LoRA on the input embeddings changes only the lookup; the tied head keeps the base
    weights. Merging into the shared tensor would change the head as well: a different model.
    """
    config_file = Path(path) / "adapter_config.json"
    targets = json.loads(config_file.read_text()).get("target_modules") if config_file.is_file() else None
    if not targets or "embed" not in str(targets):
        return
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or outputs.weight is not inputs.weight:
        return
    outputs.weight = torch.nn.Parameter(inputs.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False
    logger.info("adapter %s adapts the tied input embeddings: untied the output head before merging", path)


def llama_pro_layers(num_layers: int, expanded: int) -> range:
    """The decoder layers LLaMA Pro added: the last of each of `expanded` equal groups (LLaMA-Factory's
    scripts/llama_pro.py inserts one copy after every num_layers/expanded original layers).

    Args:
        num_layers: the expanded model's layer count.
        expanded: `freeze_trainable_layers`, the number of added layers.

    Raises:
        ValueError: when `expanded` does not divide `num_layers`, as no expansion can have made that model.
    """
    if expanded <= 0 or num_layers % expanded:
        raise ValueError(f"use_llama_pro: freeze_trainable_layers {expanded} must divide the model's "
                         f"{num_layers} layers (it is the number of layers the expansion added)")
    stride = num_layers // expanded
    return range(stride - 1, num_layers, stride)


def _expanded_targets(model: Any, targets: list[str], method: FinetuningArguments) -> list[str]:
    """LLaMA Pro with an adapter: the full names of the targeted linear layers inside the added layers only."""
    layers = llama_pro_layers(model.config.num_hidden_layers, method.freeze_trainable_layers)
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    names = []
    for name, module in model.named_modules():
        match = layer_re.search(name)
        if (isinstance(module, torch.nn.Linear) and match and int(match.group(1)) in layers
                and any(f".{t}." in f".{name}." for t in targets)):
            names.append(name)
    logger.info("LLaMA Pro: adapting layers %s only", list(layers))
    return names


def _apply_freeze(model: Any, method: FinetuningArguments) -> None:
    """Train the last (or first) n decoder layers, optionally only some of their modules; with `use_llama_pro`,
    the n layers the expansion added."""
    num_layers = model.config.num_hidden_layers
    n = method.freeze_trainable_layers
    layer_ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    if method.use_llama_pro:
        layer_ids = llama_pro_layers(num_layers, n)
    modules = method.freeze_trainable_modules
    extra = method.freeze_extra_modules or []
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    trained: set[str] = set()
    for name, param in model.named_parameters():
        match = layer_re.search(name)
        in_layer = match is not None and int(match.group(1)) in layer_ids
        wanted = in_layer and (modules == ["all"] or any(f".{m}." in name for m in modules))
        wanted = wanted or (match is None and any(f"{m}." in name or name.startswith(m) for m in extra))
        param.requires_grad_(wanted)
        if wanted:
            trained.add(name)
    if not trained:
        raise ValueError(f"freeze: no parameter matched layers {list(layer_ids)} and modules {modules}")
    logger.info("freeze: training layers %s (modules: %s; extra: %s)", list(layer_ids), modules, extra or "none")
