"""Samples to token ids and labels, for every stage.

Labels follow the usual causal-LM convention: `labels[i]` is the token at position i when it
should be learnt, `IGNORE_INDEX` (-100) when it should not; the model shifts them itself.

Truncation to `cutoff_len` happens per exchange and keeps what matters: a long prompt is cut
before a short answer is, and a long answer before a short prompt (`infer_seqlen`).

`BatchEncoder` is the encoder: it renders many samples, tokenises all their texts in one call and
builds each row with the functions below. A sample it cannot encode is an error naming its row
(`RowError`). The tests hold a per-sample encoder (one sample, one text at a time) as the oracle
it must agree with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubetune.data.batch_tokenize import BatchTokenizer
from kubetune.data.schema import Message, Sample
from kubetune.data.templates import (
    Conversation,
    Segment,
    Template,
    conversation,
    join_pieces,
    joined,
    last_turn,
    pair_turns,
)

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


def _supervised_ids(
    template: Template,
    eos: int,
    exchanges: list[tuple[list[int], list[int]]],
    cutoff_len: int,
    train_on_prompt: bool,
    mask_history: bool,
) -> tuple[list[int], list[int]]:
    """An SFT row from tokenised (prompt, response) exchanges: every assistant turn is learnt, prompts are not.

    Args:
        template: the chat template (`efficient_eos`: one EOS ends the row).
        eos: the tokenizer's EOS id.
        exchanges: (prompt ids, response ids) per exchange.
        cutoff_len: the most tokens to return.
        train_on_prompt: learn the prompt tokens too.
        mask_history: learn only the last assistant turn; turns are then filled in from the newest, so
            truncation drops the oldest history first.

    Returns:
        (input_ids, labels), equally long, at most `cutoff_len`. When truncation leaves no response
        token, every label is `IGNORE_INDEX`.
    """
    turns = list(enumerate(exchanges))
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
        # LLaMA-Factory's rule, in its (reversed with mask_history) order: not the first turn it fills
        stops_previous = index != (last if mask_history else 0)
        source_labels = _prompt_labels(template, source, stops_previous, eos, train_on_prompt)
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
    template: Template, source: list[int], stops_previous: bool, eos: int, train_on_prompt: bool
) -> list[int]:
    if train_on_prompt:
        return list(source)
    labels = [IGNORE_INDEX] * len(source)
    # With efficient_eos an answer carries no EOS: the model learns to stop where the next prompt starts
    # (its first token's label is EOS), as LLaMA-Factory does. With mask_history LF fills the turns newest
    # first and so labels the first turn's first token instead of the last's: that label is never used
    # (the loss shifts labels by one), and the masked answers' ends are learnt; kept so rows are identical.
    if template.efficient_eos and stops_previous and source:
        labels[0] = eos
    return labels


LLAMA3_DOCUMENT_END = "<|end_of_text|>"
"""What ends a pre-training document under the llama3 template, whose EOS is the end of a turn (`<|eot_id|>`)."""


def document_end(template: Template, tokenizer: PreTrainedTokenizerBase) -> str:
    """The text appended to every pre-training document, as LLaMA-Factory appends it: the tokenizer's EOS,
    or for the llama3 template Llama 3's end of text. It is tokenised with the document (as text, so a
    tokenizer without that token spells it out, as LF's does).

    Raises:
        ValueError: the tokenizer has no EOS token.
    """
    if template.name == "llama3":
        return LLAMA3_DOCUMENT_END
    if not tokenizer.eos_token:
        raise ValueError("pt needs an EOS token to end each document, and the tokenizer has none: "
                         "set one in its tokenizer_config.json")
    return tokenizer.eos_token


def _pretrain_ids(tokenizer: PreTrainedTokenizerBase, ids: list[int], cutoff_len: int) -> list[int]:
    """A pre-training row of one document (`packing: false`, and eval rows): BOS (if the tokenizer adds one
    by default) + the document's ids (ending with `document_end`), cut to `cutoff_len` (a cut document
    loses its end, since it does not end there), as LLaMA-Factory's unpacked pt rows."""
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids[:cutoff_len]


def _generation_prompt(ids: list[int], sample: Sample, cutoff_len: int) -> tuple[list[int], str]:
    """Prompt ids to generate from, cut to their last `cutoff_len` (the latest turns and the generation
    prompt matter most), and the reference answer (the first response, or "")."""
    reference = sample.response[0].content if sample.response else ""
    return ids[-cutoff_len:], reference


def _pairwise_ids(finals: list[tuple[list[int], list[int]]], cutoff_len: int) -> dict[str, list[int]]:
    """Chosen and rejected rows (reward model, DPO) from (prompt, chosen) and (prompt, rejected) ids: both
    share the (masked) prompt, which shares `cutoff_len` with the longer response as in `infer_seqlen`."""
    (prompt, chosen), (_, rejected) = finals
    source_len, target_len = infer_seqlen(len(prompt), max(len(chosen), len(rejected)), cutoff_len)
    prompt = prompt[:source_len]
    out: dict[str, list[int]] = {}
    for key, response in (("chosen", chosen[:target_len]), ("rejected", rejected[:target_len])):
        out[f"{key}_input_ids"] = prompt + response
        out[f"{key}_labels"] = [IGNORE_INDEX] * len(prompt) + response
    return out


def _kto_responses(sample: Sample, kl_response: Message | None) -> list[Message]:
    """The responses a KTO row pairs with the prompt: its own, then the KL partner (if any)."""
    _require_response(sample, count=1)
    if sample.kto_tag is None:
        raise ValueError(f"{_where(sample)}: KTO needs kto_tag (is the response desirable?), found none")
    return [sample.response[0]] + ([kl_response] if kl_response is not None else [])


def _kto_ids(sample: Sample, finals: list[tuple[list[int], list[int]]], cutoff_len: int) -> dict[str, Any]:
    """A KTO row (`input_ids`, `labels`, `kto_tag`, and `kl_*` with a KL partner) from the (prompt,
    response) token pairs of `_kto_responses`."""
    out: dict[str, Any] = {"kto_tag": bool(sample.kto_tag)}
    for prefix, (prompt, target) in zip(("", "kl_"), finals, strict=False):
        source_len, target_len = infer_seqlen(len(prompt), len(target), cutoff_len)
        out[f"{prefix}input_ids"] = prompt[:source_len] + target[:target_len]
        out[f"{prefix}labels"] = [IGNORE_INDEX] * source_len + target[:target_len]
    return out


def _with_final_eos(template: Template, eos: int, final: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """A (prompt, response) pair with the EOS that an `efficient_eos` template leaves to the encoder."""
    prompt, target = final
    if template.efficient_eos:
        target = [*target, eos]
    return prompt, target


BATCH_SAMPLES = 1024
"""Samples `BatchEncoder` renders and tokenises together. Batches bound the memory held at once:
a Jinja template renders every prefix of a conversation, so text grows with the square of its turns."""


class BatchEncoder:
    """Encodes many samples of one stage at once, into exactly the rows of the per-sample functions.

    Three passes over all samples: render every conversation (`Template.render_many`), tokenise
    every text in one `BatchTokenizer` call, then truncate and mask each row (`_supervised_ids`,
    `_pairwise_ids`, ...). The rows are those of encoding one sample, one text at a time with
    `tokenizer.encode` (the tests' oracle).

    Args:
        template: the chat template.
        tokenizer: the tokenizer (after `template.fix_tokenizer`).
        stage: pt, sft, rm, dpo, kto or ppo; decides the row form, as in `pipeline.tokenized`.
        cutoff_len: the most tokens in each sequence.
        train_on_prompt: sft: learn the prompt tokens too. Default False.
        mask_history: sft: learn only the last assistant turn. Default False.
        whole_documents: pt: training rows are whole documents (`input_ids` only, no BOS, not cut), for
            `dataset_rows` to cut into blocks; eval rows stay one cut document each. Default False.
    """

    def __init__(self, template: Template, tokenizer: PreTrainedTokenizerBase, stage: str, cutoff_len: int, *,
                 train_on_prompt: bool = False, mask_history: bool = False, whole_documents: bool = False) -> None:
        self.template, self.tokenizer, self.stage, self.cutoff_len = template, tokenizer, stage, cutoff_len
        self.train_on_prompt, self.mask_history, self.whole_documents = train_on_prompt, mask_history, whole_documents
        self.tokenize = BatchTokenizer(tokenizer)

    def encode(self, samples: list[Sample], partners: list[Message | None], *, for_eval: bool) -> list[dict[str, Any]]:
        """One row per sample, as `pipeline.tokenized` stores it.

        Args:
            samples: the samples.
            partners: kto: each sample's KL partner response (None = no `kl_*` fields); else ignored.
            for_eval: sft: add `prompt_ids` and `reference` for prediction.

        Raises:
            RowError: a sample that cannot be encoded (no or empty response, roles out of order, bad
                tools JSON, a chat template that fails on it); the message names its row and dataset.
            ValueError: the template cannot be used with this tokenizer at all (e.g. no EOS token).
        """
        rows: list[dict[str, Any]] = []
        for start in range(0, len(samples), BATCH_SAMPLES):
            end = start + BATCH_SAMPLES
            rows += self._encode_batch(samples[start:end], partners[start:end], for_eval)
        return rows

    def _encode_batch(self, samples: list[Sample], partners: list[Message | None], for_eval: bool) -> list[dict]:
        if self.stage == "pt":
            end = document_end(self.template, self.tokenizer)
            docs = self.tokenize([_document(sample) + end for sample in samples])
            if self.whole_documents and not for_eval:  # cut into blocks later (`dataset_rows`)
                return [{"input_ids": ids} for ids in docs]
            return [{"input_ids": ids, "labels": list(ids)}
                    for ids in (_pretrain_ids(self.tokenizer, d, self.cutoff_len) for d in docs)]
        plans = [self._plan(sample, partner, for_eval) for sample, partner in zip(samples, partners, strict=True)]
        try:
            rendered = self.template.render_many(self.tokenizer, [conv for plan in plans for conv in plan])
        except Exception as err:  # re-raised, naming the row: the batch call cannot say which sample failed
            raise self._render_error(samples, plans, err) from err
        encoded = iter(self._tokenize_segments(rendered))
        eos = self.tokenizer.eos_token_id  # read once: the tokenizer's attribute lookup is slow
        return [self._row(sample, [next(encoded) for _ in plan], for_eval, eos)
                for sample, plan in zip(samples, plans, strict=True)]

    def _plan(self, sample: Sample, partner: Message | None, for_eval: bool) -> list[Conversation]:
        """`_conversations`, with a bad sample's error naming its row."""
        try:
            return self._conversations(sample, partner, for_eval)
        except ValueError as err:
            raise row_error(sample, err) from err

    def _render_error(self, samples: list[Sample], plans: list[list[Conversation]], err: Exception) -> Exception:
        """The error of the first sample that does not render alone, naming its row; `err` if each renders alone.

        Only called when a batch failed: rendering one conversation at a time finds the sample to blame.
        """
        for sample, plan in zip(samples, plans, strict=True):
            for conv in plan:
                try:
                    self.template.render(self.tokenizer, conv)
                except Exception as row_err:  # whatever fails this sample alone is its error
                    return row_error(sample, row_err)
        return err

    def _conversations(self, sample: Sample, partner: Message | None, for_eval: bool) -> list[Conversation]:
        """What the sample's row is built from, checked: a response where the stage needs one, roles in order."""
        if self.stage in ("rm", "dpo", "kto"):
            if self.stage == "kto":
                responses = _kto_responses(sample, partner)
            else:
                _require_response(sample, count=2)
                responses = sample.response[:2]
            return [conversation([*sample.prompt, r], sample.system, sample.tools, ends_with_prompt=False,
                                 oneturn=True) for r in responses]
        if self.stage == "ppo":
            return [_prompt_conversation(sample)]
        _require_response(sample, count=1)
        discard = self.mask_history and not self.template.preserve_thinking
        return ([conversation(sample, ends_with_prompt=False, discard_history_thoughts=discard)]
                + ([_prompt_conversation(sample)] if for_eval else []))

    def _row(self, sample: Sample, encoded: list[list[list[int]]], for_eval: bool, eos: int) -> dict[str, Any]:
        """The sample's row from its conversations' token segments."""
        if self.stage in ("rm", "dpo", "kto"):
            finals = [_with_final_eos(self.template, eos, last_turn(segments)) for segments in encoded]
            if self.stage == "kto":
                return _kto_ids(sample, finals, self.cutoff_len)
            return _pairwise_ids(finals, self.cutoff_len)
        if self.stage == "ppo":
            prompt_ids, reference = _generation_prompt(joined(encoded[0]), sample, self.cutoff_len)
            return {"input_ids": prompt_ids, "reference": reference}
        input_ids, labels = _supervised_ids(self.template, eos, pair_turns(encoded[0]), self.cutoff_len,
                                            self.train_on_prompt, self.mask_history)
        row: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
        if for_eval:
            prompt_ids, reference = _generation_prompt(joined(encoded[1]), sample, self.cutoff_len)
            row.update(prompt_ids=prompt_ids, reference=reference)
        return row

    def _tokenize_segments(self, rendered: list[list[Segment]]) -> list[list[list[int]]]:
        """Token ids of every segment of every conversation, from one tokenizer call for all their texts."""
        texts = [piece for segments in rendered for segment in segments for piece in segment if type(piece) is str]
        ids = iter(self.tokenize(texts))
        return [[join_pieces(segment, ids) for segment in segments] for segments in rendered]


def _prompt_conversation(sample: Sample) -> Conversation:
    """The sample's prompt, to continue (ends with the generation prompt)."""
    return conversation(sample.prompt, sample.system, sample.tools, ends_with_prompt=True)


def _document(sample: Sample) -> str:
    """A pre-training sample's text (the converter puts it in the response)."""
    if not sample.response:
        raise RowError(f"{_where(sample)}: the document has no text; fix or drop this row of the dataset")
    return sample.response[0].content


class RowError(ValueError):
    """A sample that cannot be encoded; the message starts with its row and dataset (`row 5 of kubi_sft`)."""


def row_error(sample: Sample, err: Exception) -> RowError:
    """`err` as a `RowError` whose message names the sample's row and dataset (once).

    Args:
        sample: the sample that could not be encoded.
        err: what went wrong; its message may already name the row, or say `messages:` for a bare list.
    """
    if isinstance(err, RowError):
        return err
    where = _where(sample)
    text = str(err).removeprefix("messages: ")
    detail = text if text.startswith(where) else f"{where}: {text}"
    return RowError(detail if isinstance(err, ValueError) else f"{detail} ({type(err).__name__})")


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
