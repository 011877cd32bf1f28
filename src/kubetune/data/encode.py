"""Samples to token ids and labels, for every stage.

Labels follow the usual causal-LM convention: `labels[i]` is the token at position i when it
should be learnt, `IGNORE_INDEX` (-100) when it should not; the model shifts them itself.

Truncation to `cutoff_len` happens per exchange and keeps what matters: a long prompt is cut
before a short answer is, and a long answer before a short prompt (`infer_seqlen`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubetune.data.schema import Message, Sample
from kubetune.data.templates import Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label of a token that is not learnt (PyTorch's cross-entropy default ignore_index)."""


def infer_seqlen(source_len: int, target_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens to keep within `budget` tokens.

    A response shorter than half the budget is kept whole and the prompt gets the rest; a
    prompt shorter than half is kept whole and the response gets the rest; otherwise the
    budget is split in proportion to their lengths.

    Args:
        source_len: prompt length in tokens.
        target_len: response length in tokens.
        budget: tokens available (>= 0).

    Returns:
        (kept prompt length, kept response length), summing to at most `budget`.
    """
    if target_len * 2 < budget:
        max_target = budget
    elif source_len * 2 < budget:
        max_target = budget - source_len
    else:
        max_target = int(budget * target_len / max(source_len + target_len, 1))
    new_target = min(max_target, target_len)
    new_source = min(max(budget - new_target, 0), source_len)
    return new_source, new_target


def encode_supervised(
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    sample: Sample,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> tuple[list[int], list[int]]:
    """Input ids and labels of an SFT sample: every assistant turn is learnt, prompts are not.

    Args:
        template: the chat template.
        tokenizer: the tokenizer (after `template.fix_tokenizer`).
        sample: an SFT sample (one response).
        cutoff_len: the most tokens to return.
        train_on_prompt: learn the prompt tokens too. Default False.
        mask_history: learn only the last assistant turn. Turns are then filled in from the
            newest, so truncation drops the oldest history first. Default False.

    Returns:
        (input_ids, labels), equally long, at most `cutoff_len`. When truncation leaves no
        response token, every label is `IGNORE_INDEX`: callers drop such rows (`has_labels`).

    Raises:
        ValueError: the response is missing or empty (the message names the row).
    """
    _require_response(sample, count=1)
    eos = tokenizer.eos_token_id
    turns = list(enumerate(template.encode_turns(tokenizer, sample)))
    last = len(turns) - 1
    if mask_history:
        turns.reverse()
    input_ids: list[int] = []
    labels: list[int] = []
    used = 1 if template.efficient_eos else 0  # room for the final EOS
    for index, (source, target) in turns:
        if used >= cutoff_len:
            break
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - used)
        source, target = source[:source_len], target[:target_len]
        used += source_len + target_len
        source_labels = _prompt_labels(template, source, index, eos, train_on_prompt, mask_history)
        target_labels = [IGNORE_INDEX] * target_len if mask_history and index != last else list(target)
        if mask_history:  # filled newest first: prepend
            input_ids = source + target + input_ids
            labels = source_labels + target_labels + labels
        else:
            input_ids += source + target
            labels += source_labels + target_labels
    if template.efficient_eos:
        input_ids.append(eos)
        labels.append(eos)
    return input_ids, labels


def _prompt_labels(
    template: Template, source: list[int], index: int, eos: int, train_on_prompt: bool, mask_history: bool
) -> list[int]:
    if train_on_prompt:
        return list(source)
    labels = [IGNORE_INDEX] * len(source)
    # With efficient_eos, a prompt format may open with the EOS that ends the previous answer
    # (`{{eos_token}}` first): it belongs to that answer, so it is learnt when the answer is.
    if template.efficient_eos and index > 0 and not mask_history and source and source[0] == eos:
        labels[0] = eos
    return labels


def has_labels(labels: list[int]) -> bool:
    """Whether any token is learnt (False for rows truncation emptied of response tokens)."""
    return any(label != IGNORE_INDEX for label in labels)


def encode_pretrain(tokenizer: PreTrainedTokenizerBase, text: str, cutoff_len: int, add_eos: bool = True) -> list[int]:
    """Token ids of a pre-training document; its labels are the ids themselves.

    Args:
        tokenizer: the tokenizer.
        text: the document.
        cutoff_len: the most tokens to return; longer documents are cut (and lose their EOS,
            since they do not end there).
        add_eos: end the document with EOS, so packed documents are separated. Default True.

    Returns:
        BOS (if the tokenizer adds one by default) + text tokens + EOS, at most `cutoff_len`.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if add_eos:
        ids.append(tokenizer.eos_token_id)
    return ids[:cutoff_len]


def encode_prompt_for_generation(
    template: Template, tokenizer: PreTrainedTokenizerBase, sample: Sample, cutoff_len: int
) -> tuple[list[int], str]:
    """Prompt ids to generate from, and the reference answer, for `do_predict`/evaluation.

    Args:
        template: the chat template.
        tokenizer: the tokenizer.
        sample: a sample; its first response (if any) is the reference.
        cutoff_len: the most prompt tokens. A longer prompt keeps its *end*: the latest turns
            and the generation prompt matter most for what comes next.

    Returns:
        (prompt ids ending with the generation prompt, reference text or "").
    """
    ids = template.encode_prompt(tokenizer, sample.prompt, sample.system, sample.tools)
    reference = sample.response[0].content if sample.response else ""
    return ids[-cutoff_len:], reference


def encode_pairwise(
    template: Template, tokenizer: PreTrainedTokenizerBase, sample: Sample, cutoff_len: int
) -> dict[str, list[int]]:
    """Chosen and rejected sequences of a ranking sample (reward model, DPO).

    Both share the prompt (masked); earlier assistant turns are context, not learnt. The
    prompt and the longer of the two responses share `cutoff_len` as in `infer_seqlen`.

    Args:
        template: the chat template.
        tokenizer: the tokenizer.
        sample: a ranking sample, `response == [chosen, rejected]`.
        cutoff_len: the most tokens in each sequence.

    Returns:
        `chosen_input_ids`, `chosen_labels`, `rejected_input_ids`, `rejected_labels`.
    """
    _require_response(sample, count=2)
    prompt, chosen = _encode_final(template, tokenizer, sample, sample.response[0])
    _, rejected = _encode_final(template, tokenizer, sample, sample.response[1])
    source_len, target_len = infer_seqlen(len(prompt), max(len(chosen), len(rejected)), cutoff_len)
    prompt = prompt[:source_len]
    out: dict[str, list[int]] = {}
    for key, response in (("chosen", chosen[:target_len]), ("rejected", rejected[:target_len])):
        out[f"{key}_input_ids"] = prompt + response
        out[f"{key}_labels"] = [IGNORE_INDEX] * len(prompt) + response
    return out


def encode_kto(
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    sample: Sample,
    cutoff_len: int,
    kl_response: Message | None = None,
) -> dict[str, Any]:
    """A KTO sample: one response judged desirable or not (`sample.kto_tag`).

    Args:
        template: the chat template.
        tokenizer: the tokenizer.
        sample: a KTO sample with one response and `kto_tag` set.
        cutoff_len: the most tokens in each sequence.
        kl_response: a response from *another* sample, for KTO's KL reference term (the
            caller pairs samples, e.g. by rotating the dataset by one). Default None = no
            `kl_*` fields.

    Returns:
        `input_ids`, `labels`, `kto_tag`, and `kl_input_ids`/`kl_labels` with `kl_response`.
    """
    _require_response(sample, count=1)
    if sample.kto_tag is None:
        raise ValueError(f"{_where(sample)}: KTO needs kto_tag (is the response desirable?), found none")
    out: dict[str, Any] = {"kto_tag": bool(sample.kto_tag)}
    pairs = [("", sample.response[0])] + ([("kl_", kl_response)] if kl_response is not None else [])
    for prefix, response in pairs:
        prompt, target = _encode_final(template, tokenizer, sample, response)
        source_len, target_len = infer_seqlen(len(prompt), len(target), cutoff_len)
        out[f"{prefix}input_ids"] = prompt[:source_len] + target[:target_len]
        out[f"{prefix}labels"] = [IGNORE_INDEX] * source_len + target[:target_len]
    return out


def _encode_final(
    template: Template, tokenizer: PreTrainedTokenizerBase, sample: Sample, response: Message
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of the sample's prompt followed by `response`."""
    prompt, target = template.encode_oneturn(tokenizer, [*sample.prompt, response], sample.system, sample.tools)
    if template.efficient_eos:
        target = [*target, tokenizer.eos_token_id]
    return prompt, target


def _require_response(sample: Sample, count: int) -> None:
    if len(sample.response) < count:
        raise ValueError(
            f"{_where(sample)}: expected {count} response message(s), found {len(sample.response)}"
            + (" (ranking data needs [chosen, rejected])" if count == 2 else "")
        )
    for message in sample.response[:count]:
        if not message.content.strip():
            raise ValueError(f"{_where(sample)}: the response is empty; fix or drop this row of the dataset")


def _where(sample: Sample) -> str:
    return f"row {sample.row}" + (f" of {sample.source}" if sample.source else "")
