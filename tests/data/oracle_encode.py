"""The per-sample encoders: one sample, one text at a time (`tokenizer.encode`), the oracle of `BatchEncoder`.

Production encodes with `kubetune.data.encode.BatchEncoder` only. These functions encode the same
rows the slow, obvious way — `Template.encode_turns` / `encode_oneturn` / `encode_prompt`, which
tokenise each rendered text on its own — and share only the truncation and masking code with it
(the encoder's private helpers), so the tests check that batching, the pre-token memo and
`render_many` change no id.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from kubetune.data.encode import (
    IGNORE_INDEX,
    _generation_prompt,
    _kto_ids,
    _kto_responses,
    _pairwise_ids,
    _pretrain_ids,
    _require_response,
    _supervised_ids,
    _with_final_eos,
)
from kubetune.data.schema import Message, Sample
from kubetune.data.templates import Template


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
        response token, every label is `IGNORE_INDEX` (`has_labels` tells).

    Raises:
        ValueError: the response is missing or empty (the message names the row).
    """
    _require_response(sample, count=1)
    turns = template.encode_turns(tokenizer, sample)
    return _supervised_ids(template, tokenizer.eos_token_id, turns, cutoff_len, train_on_prompt, mask_history)



def has_labels(labels: list[int]) -> bool:
    """Whether any token is learnt (False for rows truncation emptied of response tokens)."""
    return any(label != IGNORE_INDEX for label in labels)



def encode_pretrain(tokenizer: PreTrainedTokenizerBase, text: str, cutoff_len: int, end: str = "") -> list[int]:
    """Token ids of a pre-training document, one row (`packing: false`); its labels are the ids themselves.

    Args:
        tokenizer: the tokenizer.
        text: the document.
        cutoff_len: the most tokens to return; longer documents are cut (and lose their end, since they
            do not end there).
        end: text appended before tokenising (`encode.document_end`: the EOS). Default "".

    Returns:
        BOS (if the tokenizer adds one by default) + the tokens of text + end, at most `cutoff_len`.
    """
    return _pretrain_ids(tokenizer, tokenizer.encode(text + end, add_special_tokens=False), cutoff_len)



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
    return _generation_prompt(ids, sample, cutoff_len)



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
    finals = [_encode_final(template, tokenizer, sample, response) for response in sample.response[:2]]
    return _pairwise_ids(finals, cutoff_len)



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
    finals = [_encode_final(template, tokenizer, sample, response) for response in _kto_responses(sample, kl_response)]
    return _kto_ids(sample, finals, cutoff_len)



def _encode_final(
    template: Template, tokenizer: PreTrainedTokenizerBase, sample: Sample, response: Message
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of the sample's prompt followed by `response`."""
    final = template.encode_oneturn(tokenizer, [*sample.prompt, response], sample.system, sample.tools)
    return _with_final_eos(template, tokenizer.eos_token_id, final)
