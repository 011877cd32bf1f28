"""New tokens: add them to the tokenizer, give the model rows for them, and start those rows sensibly.

LLaMA-Factory's `add_tokens`, `add_special_tokens`, `new_special_tokens_config`, `init_special_tokens`
and `resize_vocab`. The tokenizer gets the tokens wherever it is loaded (`kubetune.model.loader.load_tokenizer`),
so the data is encoded with them and the saved tokenizer holds them; the model's embeddings are resized
wherever a base is loaded (`load_base_model`), so a trained adapter's resized embeddings fit its base in
chat and export too.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from kubetune.config import ModelArguments
from kubetune.model.special_tokens_file import special_token_descriptions

logger = logging.getLogger(__name__)

PAD_TO_MULTIPLE_OF = 64  # rows are added in blocks of 64, as LLaMA-Factory does (faster matmuls on GPUs)


def new_special_tokens(args: ModelArguments) -> list[str]:
    """The special tokens to add: `new_special_tokens_config`'s keys if set (it takes precedence), else
    `add_special_tokens`."""
    descriptions = special_token_descriptions(args)
    if descriptions is not None:
        if args.add_special_tokens:
            logger.warning("new_special_tokens_config and add_special_tokens are both set: adding the config's "
                           "tokens %s", list(descriptions))
        return list(descriptions)
    return list(args.add_special_tokens or [])


def add_new_tokens(tokenizer: Any, args: ModelArguments) -> int:
    """Add `add_tokens` (plain) and the new special tokens to `tokenizer`, in place.

    Tokens the vocabulary has already are kept as they are (`add_tokens` skips them).

    Returns:
        How many tokens are new to the vocabulary.
    """
    added = 0
    if args.add_tokens:
        added += tokenizer.add_tokens(list(args.add_tokens), special_tokens=False)
        logger.info("added tokens %s to the tokenizer", args.add_tokens)
    special = new_special_tokens(args)
    if special:
        added += tokenizer.add_tokens(special, special_tokens=True)
        logger.info("added special tokens %s to the tokenizer", special)
    return added


def resize_embeddings(model: Any, tokenizer: Any, args: ModelArguments) -> int:
    """Give `model` an embedding row (and untied head row) per token of `tokenizer`, and initialise the new rows.

    Nothing changes when the model already has at least `len(tokenizer)` rows. Otherwise the embeddings grow to
    `len(tokenizer)` rounded up to a multiple of 64, and every new row (the padding rows too) starts as
    `init_special_tokens` says (see `initialise_rows`).

    Args:
        model: a loaded causal LM (not quantised).
        tokenizer: the tokenizer with its new tokens.
        args: `init_special_tokens`, `new_special_tokens_config`.

    Returns:
        How many rows were added (0 when none were needed).

    Raises:
        ValueError: the model is quantised, or its output head is not a plain linear layer.
    """
    old_rows = model.get_input_embeddings().weight.size(0)
    if len(tokenizer) <= old_rows:
        return 0
    if getattr(model, "quantization_method", None) or getattr(model, "is_quantized", False):
        raise ValueError("resize_vocab: the embeddings of a quantised model cannot be resized — remove "
                         "quantization_bit, or add no tokens")
    if not isinstance(model.get_output_embeddings(), torch.nn.Linear):
        raise ValueError(f"resize_vocab: {type(model).__name__}'s output head is not a linear layer, so its "
                         "vocabulary cannot be resized — add no tokens to this model")
    # mean_resizing off: every new row is overwritten below, so transformers need not fit a distribution first
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=PAD_TO_MULTIPLE_OF, mean_resizing=False)
    new_rows = model.get_input_embeddings().weight.size(0) - old_rows
    descriptions = special_token_descriptions(args)
    method = args.init_special_tokens
    if method != "noise_init" and descriptions is None:
        logger.warning("init_special_tokens: %s needs new_special_tokens_config; using noise_init", method)
        method = "noise_init"
    with torch.no_grad():
        # the descriptions are embedded with the input rows as they were (new ids are filtered out)
        inputs = model.get_input_embeddings().weight
        initialise_rows(inputs, new_rows, method, descriptions, tokenizer, inputs.detach().clone())
        head = model.get_output_embeddings()
        if head is not None and head.weight is not inputs:
            initialise_rows(head.weight, new_rows, method, descriptions, tokenizer, inputs.detach().clone())
    model.config.vocab_size = old_rows + new_rows
    model.config.get_text_config().vocab_size = old_rows + new_rows
    logger.info("resized the embeddings from %d to %d rows (%s)", old_rows, old_rows + new_rows, method)
    return new_rows


def initialise_rows(weight: torch.Tensor, new_rows: int, method: str, descriptions: dict[str, str] | None,
                    tokenizer: Any, input_embeddings: torch.Tensor) -> None:
    """Fill the last `new_rows` rows of `weight` in place, as LLaMA-Factory's `init_special_tokens` does.

    - noise_init: the mean of the old rows plus Gaussian noise with std 1/sqrt(hidden size).
    - desc_init: each new token's row is the mean input embedding of its description's tokens (those that
      are not new); the mean of the old rows when none are. Other new rows (tokens without a description,
      the padding up to a multiple of 64) keep resize_token_embeddings' initialisation.
    - desc_init_w_noise: desc_init plus the noise.

    Args:
        weight: the (resized) embedding or head weight.
        new_rows: rows added at its end.
        method: noise_init, desc_init or desc_init_w_noise (the desc ones need `descriptions`).
        descriptions: token -> description text (`special_token_descriptions`).
        tokenizer: encodes the descriptions.
        input_embeddings: the input embedding matrix to average description tokens from.
    """
    old_rows = weight.size(0) - new_rows
    std = 1.0 / math.sqrt(weight.size(1))
    mean = weight[:old_rows].mean(dim=0, keepdim=True)
    if method == "noise_init" or not descriptions:
        noise = torch.empty_like(weight[old_rows:]).normal_(mean=0.0, std=std)
        weight[old_rows:] = mean + noise
        return
    for token, text in descriptions.items():
        # each description to its own token's row (LLaMA-Factory writes them to the last rows in order, which
        # misplaces them when add_tokens also adds tokens, or when some of the special tokens existed already)
        target = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(target, int) or target < old_rows or target >= weight.size(0):
            continue  # a token the vocabulary had: its trained row stays
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        ids = ids[ids < old_rows].to(input_embeddings.device)
        row = input_embeddings[ids].mean(dim=0) if len(ids) else mean[0]
        if method == "desc_init_w_noise":
            row = row + torch.randn_like(row) * std
        weight[target] = row.to(weight.dtype)


def embedding_module_names(model: Any) -> list[str]:
    """Short names of the input embeddings and output head (`embed_tokens`, `lm_head`), for PEFT's modules_to_save."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return sorted({name.split(".")[-1] for name, module in model.named_modules()
                   if name and any(module is m for m in wanted)})
