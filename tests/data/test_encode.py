"""Tokenisation with label masks: which tokens are learnt, and what truncation keeps (on the per-sample
oracle, `oracle_encode`, whose rows the batched encoder must equal)."""

from __future__ import annotations

import random

import pytest
from oracle_encode import (
    encode_kto,
    encode_pairwise,
    encode_pretrain,
    encode_prompt_for_generation,
    encode_supervised,
    has_labels,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kubetune.data.encode import IGNORE_INDEX, document_end, infer_seqlen
from kubetune.data.schema import Message, Sample
from kubetune.data.template_registry import get_template
from kubetune.data.templates import Template

SPECIALS = ["<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant", "hi", "hello", "how", "are", "you", "fine", "be", "brief"]
IM_START, IM_END = 1, 2
SYSTEM, USER, ASSISTANT, HI, HELLO, HOW, ARE, YOU, FINE, BE, BRIEF = range(3, 14)
X = IGNORE_INDEX


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids can be written by hand; whitespace is not a token."""
    vocab = {word: i for i, word in enumerate(["[UNK]", *SPECIALS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>", additional_special_tokens=SPECIALS
    )


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def chatml(tok):
    return get_template("chatml", tok)


def sft(*texts: str, system: str = "", row: int = 0) -> Sample:
    messages = [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]
    return Sample(prompt=messages[:-1], response=messages[-1:], system=system, row=row)


TWO_TURNS = sft("hi", "hello", "how are you", "fine", system="be brief")
PROMPT_1 = [IM_START, SYSTEM, BE, BRIEF, IM_END, IM_START, USER, HI, IM_END, IM_START, ASSISTANT]
RESPONSE_1 = [HELLO, IM_END]
PROMPT_2 = [IM_START, USER, HOW, ARE, YOU, IM_END, IM_START, ASSISTANT]
RESPONSE_2 = [FINE, IM_END]


def test_every_assistant_turn_is_learnt_and_prompts_are_masked(tok, chatml):
    input_ids, labels = encode_supervised(chatml, tok, TWO_TURNS, cutoff_len=100)
    assert input_ids == PROMPT_1 + RESPONSE_1 + PROMPT_2 + RESPONSE_2
    assert labels == [X] * len(PROMPT_1) + RESPONSE_1 + [X] * len(PROMPT_2) + RESPONSE_2
    # The masked spans are exactly the template's prompt segments.
    turns = chatml.encode_turns(tok, TWO_TURNS)
    assert [len(p) for p, _ in turns] == [len(PROMPT_1), len(PROMPT_2)]


def test_train_on_prompt_learns_everything(tok, chatml):
    input_ids, labels = encode_supervised(chatml, tok, TWO_TURNS, cutoff_len=100, train_on_prompt=True)
    assert labels == input_ids


def test_mask_history_learns_only_the_last_turn(tok, chatml):
    input_ids, labels = encode_supervised(chatml, tok, TWO_TURNS, cutoff_len=100, mask_history=True)
    assert input_ids == PROMPT_1 + RESPONSE_1 + PROMPT_2 + RESPONSE_2  # same order as without
    assert labels == [X] * (len(PROMPT_1) + len(RESPONSE_1) + len(PROMPT_2)) + RESPONSE_2


def test_mask_history_truncates_the_oldest_turns_first(tok, chatml):
    sample = sft("hi hi hi", "hello hello", "how how how", "you you", "are are are", "fine fine")
    last_turn = [IM_START, USER, ARE, ARE, ARE, IM_END, IM_START, ASSISTANT, FINE, FINE, IM_END]
    cutoff = len(last_turn) + 4

    input_ids, labels = encode_supervised(chatml, tok, sample, cutoff, mask_history=True)
    assert input_ids[-len(last_turn) :] == last_turn and len(input_ids) == cutoff
    assert HI not in input_ids  # the oldest exchange went first
    assert labels == [X] * (cutoff - 3) + [FINE, FINE, IM_END]

    # Without mask_history the oldest turns are kept and the last answer is cut off instead.
    input_ids, _ = encode_supervised(chatml, tok, sample, cutoff)
    assert HI in input_ids and FINE not in input_ids


def test_long_prompt_is_cut_and_the_response_kept(tok, chatml):
    sample = sft(" ".join(["hi"] * 50), "hello fine")
    input_ids, labels = encode_supervised(chatml, tok, sample, cutoff_len=20)
    assert len(input_ids) == 20
    assert input_ids[-3:] == [HELLO, FINE, IM_END] and labels[-3:] == [HELLO, FINE, IM_END]
    assert labels[:-3] == [X] * 17


def test_long_response_is_cut_and_the_prompt_kept(tok, chatml):
    sample = sft("hi", " ".join(["hello"] * 50))
    input_ids, labels = encode_supervised(chatml, tok, sample, cutoff_len=20)
    prompt = [IM_START, USER, HI, IM_END, IM_START, ASSISTANT]
    assert input_ids == prompt + [HELLO] * 14
    assert labels == [X] * 6 + [HELLO] * 14


def test_infer_seqlen_rule():
    assert infer_seqlen(100, 5, 20) == (15, 5)  # short target kept whole
    assert infer_seqlen(5, 100, 20) == (5, 15)  # short source kept whole
    assert infer_seqlen(30, 10, 20) == (15, 5)  # both long: proportional
    assert infer_seqlen(3, 4, 20) == (3, 4)  # everything fits


@pytest.mark.parametrize("flags", [{}, {"train_on_prompt": True}, {"mask_history": True}])
def test_never_longer_than_cutoff_and_labels_are_input_tokens(tok, chatml, flags):
    rng = random.Random(0)
    words = ["hi", "hello", "how", "are", "you", "fine"]
    for _ in range(200):
        texts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(2 * rng.randint(1, 4))]
        cutoff = rng.randint(1, 120)
        input_ids, labels = encode_supervised(chatml, tok, sft(*texts), cutoff, **flags)
        assert 0 < len(input_ids) <= cutoff and len(labels) == len(input_ids)
        assert all(label in (X, token) for label, token in zip(labels, input_ids, strict=True))


def test_efficient_eos_appends_one_learnt_eos(tok):
    template = Template(name="raw", efficient_eos=True)
    input_ids, labels = encode_supervised(template, tok, sft("hi", "hello"), cutoff_len=10)
    assert input_ids == [HI, HELLO, IM_END]
    assert labels == [X, HELLO, IM_END]
    input_ids, _ = encode_supervised(template, tok, sft("hi hi hi hi", "hello hello hello"), cutoff_len=4)
    assert len(input_ids) == 4 and input_ids[-1] == IM_END  # the EOS has a reserved place


def test_efficient_eos_learns_the_stop_where_the_next_prompt_starts(tok):
    # The answers carry no EOS: the first token of the next prompt is labelled EOS (LLaMA-Factory's
    # efficient_eos), so the model learns to stop after each answer, not only the last.
    template = Template(name="raw", efficient_eos=True)
    input_ids, labels = encode_supervised(template, tok, sft("hi", "hello", "how", "fine"), cutoff_len=20)
    assert input_ids == [HI, HELLO, HOW, FINE, IM_END]
    assert labels == [X, HELLO, IM_END, FINE, IM_END]
    # with mask_history the earlier answer is not learnt but its end is, and (LF's order) the row's first
    # token is labelled instead of the last prompt's: a label the shifted loss never reads
    _, labels = encode_supervised(template, tok, sft("hi", "hello", "how", "fine"), cutoff_len=20, mask_history=True)
    assert labels == [IM_END, X, X, FINE, IM_END]


def test_empty_response_names_the_row(tok, chatml):
    with pytest.raises(ValueError, match="row 7: the response is empty"):
        encode_supervised(chatml, tok, sft("hi", "   ", row=7), cutoff_len=10)
    with pytest.raises(ValueError, match="row 3: expected 1 response"):
        encode_supervised(chatml, tok, Sample(prompt=[Message("user", "hi")], response=[], row=3), 10)


def test_has_labels():
    assert has_labels([X, 5]) and not has_labels([X, X])


def test_pretrain_adds_eos_and_truncation_drops_it(tok, chatml):
    end = document_end(chatml, tok)
    assert end == "<|im_end|>"  # the tokenizer's EOS
    assert encode_pretrain(tok, "hi hello", cutoff_len=10, end=end) == [HI, HELLO, IM_END]
    assert encode_pretrain(tok, "hi hello", cutoff_len=10) == [HI, HELLO]
    assert encode_pretrain(tok, "hi hello fine", cutoff_len=2, end=end) == [HI, HELLO]


def test_a_pretrain_document_ends_with_llama3s_end_of_text_under_llama3(tok):
    """llama3's template makes the end of a turn the EOS; documents end with Llama 3's end of text, as in
    LLaMA-Factory, spelt as text (this tokenizer lacks the token: it is unknown words, as LF tokenises it)."""
    assert document_end(get_template("llama3", tok), tok) == "<|end_of_text|>"


def test_prompt_for_generation_ends_with_the_assistant_header(tok, chatml):
    ids, reference = encode_prompt_for_generation(chatml, tok, TWO_TURNS, cutoff_len=100)
    assert ids == PROMPT_1 + RESPONSE_1 + PROMPT_2
    assert reference == "fine"
    ids, _ = encode_prompt_for_generation(chatml, tok, TWO_TURNS, cutoff_len=5)
    assert ids == PROMPT_2[-5:]  # keeps the end: the generation prompt


def test_pairwise_shares_the_masked_prompt(tok, chatml):
    sample = Sample(
        prompt=[Message("user", "hi")],
        response=[Message("assistant", "hello"), Message("assistant", "fine fine")],
    )
    out = encode_pairwise(chatml, tok, sample, cutoff_len=100)
    prompt = [IM_START, USER, HI, IM_END, IM_START, ASSISTANT]
    assert out["chosen_input_ids"] == prompt + [HELLO, IM_END]
    assert out["rejected_input_ids"] == prompt + [FINE, FINE, IM_END]
    assert out["chosen_labels"] == [X] * 6 + [HELLO, IM_END]
    assert out["rejected_labels"] == [X] * 6 + [FINE, FINE, IM_END]
    short = encode_pairwise(chatml, tok, sample, cutoff_len=8)
    # The longer response (3 tokens) is under half the budget: it is kept, the prompt is cut.
    assert short["chosen_input_ids"] == prompt[:5] + [HELLO, IM_END]
    assert short["rejected_input_ids"] == prompt[:5] + [FINE, FINE, IM_END]
    with pytest.raises(ValueError, match=r"\[chosen, rejected\]"):
        encode_pairwise(chatml, tok, sft("hi", "hello"), cutoff_len=10)


def test_kto_carries_the_tag_and_a_kl_pair(tok, chatml):
    sample = Sample(prompt=[Message("user", "hi")], response=[Message("assistant", "hello")], kto_tag=False)
    out = encode_kto(chatml, tok, sample, cutoff_len=100, kl_response=Message("assistant", "fine"))
    prompt = [IM_START, USER, HI, IM_END, IM_START, ASSISTANT]
    assert out["kto_tag"] is False
    assert out["input_ids"] == prompt + [HELLO, IM_END] and out["labels"] == [X] * 6 + [HELLO, IM_END]
    assert out["kl_input_ids"] == prompt + [FINE, IM_END] and out["kl_labels"] == [X] * 6 + [FINE, IM_END]
    assert "kl_input_ids" not in encode_kto(chatml, tok, sample, cutoff_len=100)
    sample.kto_tag = None
    sample.row = 4
    with pytest.raises(ValueError, match="row 4: KTO needs kto_tag"):
        encode_kto(chatml, tok, sample, cutoff_len=100)
