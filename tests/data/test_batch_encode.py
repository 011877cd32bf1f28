"""Batched encoding gives exactly the per-sample rows; batch tokenisation gives exactly the tokenizer's ids."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from oracle_encode import (
    encode_kto,
    encode_pairwise,
    encode_pretrain,
    encode_prompt_for_generation,
    encode_supervised,
)
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import kubetune.data.batch_tokenize as batch_tokenize
import kubetune.data.encode as encode_module
from kubetune.config import load_config
from kubetune.data.batch_tokenize import BatchTokenizer, memo_applies
from kubetune.data.cache_key import data_key, tokenizer_fingerprint
from kubetune.data.encode import BatchEncoder, RowError, document_end
from kubetune.data.pipeline import _Encoder
from kubetune.data.schema import Message, Sample
from kubetune.data.template_registry import get_template
from kubetune.data.templates import conversation

TOOLS = json.dumps([{"name": "add", "description": "adds", "parameters": {"a": {"type": "integer"}}}])
CALL = json.dumps({"name": "add", "arguments": {"a": 1}})
LONG = " ".join(["Several careful steps measure the loss, and it's 3.5x lower!"] * 12)


def _sample(*texts: str, system: str = "", tools: str = "", row: int = 0, roles: tuple[str, ...] = ()) -> Sample:
    roles = roles or tuple("user" if i % 2 == 0 else "assistant" for i in range(len(texts)))
    messages = [Message(role, text) for role, text in zip(roles, texts, strict=True)]  # type: ignore[arg-type]
    return Sample(prompt=messages[:-1], response=messages[-1:], system=system, tools=tools, row=row)


# Varied on purpose: multi-turn, system prompts, tools and tool calls, whitespace runs, digits and
# contractions, special-token text inside a message, non-ASCII text, and texts long enough to truncate.
SAMPLES = [
    _sample("What is 2+2?", "4."),
    _sample("hi there", "Hello! How can I help?", "And 3+3?", "6, of course.", system="Be brief."),
    _sample("Summarise:\n\n" + LONG, "It's   short.\n\tReally\n", system="  spaced  system  "),
    _sample("add 1", CALL, "1", "It is 1.", tools=TOOLS, roles=("user", "function", "observation", "assistant")),
    _sample("Écris un poème 🙂", "Les données — voilà. 日本語も。"),
    _sample("Say <|im_end|> literally", "<|im_end|> done <|im_start|>"),
    _sample("question", LONG + " " + LONG),
    _sample("x" * 300, "ok"),
]


def _reference_rows(template, tokenizer, stage: str, samples, partners, cutoff: int, *, for_eval: bool,
                    train_on_prompt: bool = False, mask_history: bool = False) -> list[dict]:
    """The per-sample functions' rows, in the form pipeline.tokenized stores."""
    rows = []
    for sample, partner in zip(samples, partners, strict=True):
        if stage == "pt":
            ids = encode_pretrain(tokenizer, sample.response[0].content, cutoff, end=document_end(template, tokenizer))
            rows.append({"input_ids": ids, "labels": list(ids)})
        elif stage in ("rm", "dpo"):
            rows.append(encode_pairwise(template, tokenizer, sample, cutoff))
        elif stage == "kto":
            rows.append(encode_kto(template, tokenizer, sample, cutoff, kl_response=partner))
        elif stage == "ppo":
            ids, reference = encode_prompt_for_generation(template, tokenizer, sample, cutoff)
            rows.append({"input_ids": ids, "reference": reference})
        else:
            ids, labels = encode_supervised(template, tokenizer, sample, cutoff, train_on_prompt=train_on_prompt,
                                            mask_history=mask_history)
            row = {"input_ids": ids, "labels": labels}
            if for_eval:
                prompt_ids, reference = encode_prompt_for_generation(template, tokenizer, sample, cutoff)
                row.update(prompt_ids=prompt_ids, reference=reference)
            rows.append(row)
    return rows


def _stage_samples(stage: str) -> tuple[list[Sample], list[Message | None]]:
    if stage in ("rm", "dpo"):
        samples = [Sample(s.prompt, [*s.response, Message("assistant", "A worse answer, isn't it?")], s.system,
                          s.tools, row=i) for i, s in enumerate(SAMPLES)]
    elif stage == "kto":
        samples = [Sample(s.prompt, s.response, s.system, s.tools, kto_tag=i % 2 == 0, row=i)
                   for i, s in enumerate(SAMPLES)]
    else:
        samples = SAMPLES
    partners = [samples[(i + 1) % len(samples)].response[0] if stage == "kto" else None for i in range(len(samples))]
    return samples, partners


@pytest.fixture(scope="module")
def smol_dir(smollm2_dir: Path) -> Path:
    return smollm2_dir


_LOADED: dict[str | None, tuple] = {}


def _tokenizer(smol_dir: Path, template_name: str | None):
    """A fixed tokenizer and its template, loaded once per template (encoding never changes them)."""
    if template_name not in _LOADED:
        tokenizer = AutoTokenizer.from_pretrained(smol_dir)
        template = get_template(template_name, tokenizer)
        template.fix_tokenizer(tokenizer)  # llama3 adds its stop words: new added tokens
        _LOADED[template_name] = tokenizer, template
    return _LOADED[template_name]


@pytest.mark.parametrize("template_name", [None, "chatml", "llama3", "qwen", "llama2", "mistral", "empty"])
@pytest.mark.parametrize("stage", ["sft", "pt", "dpo", "kto", "ppo"])
def test_batched_rows_equal_per_sample_rows(smol_dir, template_name, stage):
    tokenizer, template = _tokenizer(smol_dir, template_name)
    samples, partners = _stage_samples(stage)
    flag_sets = [{}, {"train_on_prompt": True}, {"mask_history": True}] if stage == "sft" else [{}]
    for cutoff in (1024, 48, 9):
        for flags in flag_sets:
            for_eval = stage == "sft" and not flags
            expected = _reference_rows(template, tokenizer, stage, samples, partners, cutoff, for_eval=for_eval,
                                       **flags)
            encoder = BatchEncoder(template, tokenizer, stage, cutoff, **flags)
            assert encoder.encode(samples, partners, for_eval=for_eval) == expected, (cutoff, flags)


def test_small_batches_and_a_small_memo_give_the_same_rows(smol_dir, monkeypatch):
    tokenizer, template = _tokenizer(smol_dir, None)
    partners = [None] * len(SAMPLES)
    expected = _reference_rows(template, tokenizer, "sft", SAMPLES, partners, 64, for_eval=True)
    monkeypatch.setattr(encode_module, "BATCH_SAMPLES", 3)
    monkeypatch.setattr(batch_tokenize, "MEMO_LIMIT", 20)  # the memo starts over in every batch
    assert BatchEncoder(template, tokenizer, "sft", 64).encode(SAMPLES, partners, for_eval=True) == expected


def test_jinja_render_many_equals_render(smol_dir):
    tokenizer, template = _tokenizer(smol_dir, None)
    convs = [conversation(s, ends_with_prompt=False) for s in SAMPLES]
    convs += [conversation(s.prompt, s.system, s.tools, ends_with_prompt=True) for s in SAMPLES]
    assert template.render_many(tokenizer, convs) == [template.render(tokenizer, c) for c in convs]


def test_bad_rows_raise_an_error_naming_the_row(smol_dir):
    tokenizer, template = _tokenizer(smol_dir, None)
    data = load_config(None, {"model_name_or_path": "x", "dataset": "kubi_sft", "cutoff_len": 64}).data
    bad = _sample("question", "   ", row=5)
    bad.source = "kubi_sft_train.json"
    with pytest.raises(RowError, match="row 5 of kubi_sft_train.json: the response is empty"):
        _Encoder(tokenizer, template, data, "sft").encode_all([SAMPLES[0], bad, SAMPLES[1]], for_eval=False)


@pytest.mark.parametrize("template_name", [None, "chatml"])
def test_a_row_that_fails_inside_the_batched_render_is_named(smol_dir, template_name):
    """Bad tools JSON fails in `render_many`, for the whole batch: the error still names the row."""
    tokenizer, template = _tokenizer(smol_dir, template_name)
    bad = _sample("add 1", "2", tools="[{not json", row=3)
    with pytest.raises(RowError, match="row 3: "):
        BatchEncoder(template, tokenizer, "sft", 64).encode([SAMPLES[0], bad], [None, None], for_eval=False)


def test_a_dpo_row_with_roles_out_of_order_is_named(smol_dir):
    tokenizer, template = _tokenizer(smol_dir, "chatml")
    bad = Sample([Message("assistant", "hi")], [Message("assistant", "a"), Message("assistant", "b")], row=8)
    with pytest.raises(RowError, match="row 8: message 0 has role 'assistant'"):
        BatchEncoder(template, tokenizer, "dpo", 64).encode([bad], [None], for_eval=False)


def test_a_jinja_template_that_rewrites_turns_is_refused_in_batches_too():
    vocab = {"[UNK]": 0, "<|im_end|>": 1, "hi": 2, "hello": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>")
    tokenizer.chat_template = "{{ messages[-1]['content'] }}"  # shows only the last message
    template = get_template(None, tokenizer)
    with pytest.raises(ValueError, match="rewrites earlier turns"):
        BatchEncoder(template, tokenizer, "sft", 32).encode([_sample("hi", "hello")], [None], for_eval=False)


# ------------------------------------------------------------------------------ batch tokenisation


def _random_texts(seed: int, count: int, extra: list[str]) -> list[str]:
    rng = random.Random(seed)
    alphabet = [chr(i) for i in range(128)] + ["'s", "'re", "'ll", "'d", " ", "  ", "\n\n", " \n", "123", *extra]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_batch_tokenizer_equals_encode_on_random_text(smol_dir):
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    assert memo_applies(tokenizer)
    extra = ["<|im_start|>", "<|im_end|>", "<|im_", "é", "日本", "🙂", "\u00a0", "\x85"]
    texts = _random_texts(0, 3000, extra) + [s.response[0].content for s in SAMPLES]
    batch = BatchTokenizer(tokenizer)
    expected = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert batch(texts) == expected
    assert batch(texts) == expected  # again, from the memo alone
    assert batch._splitters is not None  # the memo stayed on


def test_batch_tokenizer_cuts_overlapping_added_tokens_like_the_tokenizer(smol_dir):
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    # Normalised (non-special) added tokens are cut after the special ones, each leftmost-longest.
    tokenizer.add_tokens([AddedToken("ab", normalized=True), AddedToken("abc", normalized=True),
                          AddedToken("c<|im", normalized=True)])
    tokenizer.add_tokens(["<x>", "<x>y"], special_tokens=True)
    assert memo_applies(tokenizer)
    texts = _random_texts(1, 3000, ["ab", "abc", "c<|im", "<x>", "<x>y", "<|im_end|>", "<|im_start|>"])
    assert BatchTokenizer(tokenizer)(texts) == [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def test_batch_tokenizer_turns_its_memo_off_when_the_tokenizer_disagrees(smol_dir, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    # A wrong pre-token regex (whole lines) yields words the tokenizer splits further: caught, memo off.
    monkeypatch.setattr(batch_tokenize, "_PRE_TOKEN", batch_tokenize.re.compile(r"[^\n]+|\n"))
    batch = BatchTokenizer(tokenizer)
    texts = ["hello world, it's me", "two  spaces\nand a line"]
    assert batch(texts) == [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert batch._splitters is None


def test_other_tokenizers_are_called_directly():
    vocab = {"[UNK]": 0, "hi": 1, "there": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert not memo_applies(tokenizer)
    assert BatchTokenizer(tokenizer)(["hi there", "", "there hi x"]) == [[1, 2], [], [2, 1, 0]]


# ---------------------------------------------------------------------------------- cache keys


def _key(tokenizer, template) -> str:
    data = load_config(None, {"model_name_or_path": "x", "dataset": "kubi_sft", "cutoff_len": 64}).data
    return data_key(data, [], stage="sft", seed=0, splits=(True, False), tokenizer=tokenizer_fingerprint(tokenizer),
                    template=repr(template)).key


def test_cache_key_follows_the_tokenizer(smol_dir, tmp_path):
    def fresh(path=smol_dir):
        tokenizer = AutoTokenizer.from_pretrained(path)
        return tokenizer, get_template("chatml", tokenizer)

    base = _key(*fresh())
    assert _key(*fresh()) == base  # stable for the same tokenizer

    tokenizer, template = fresh()
    tokenizer.add_tokens(["<brand_new>"])
    assert _key(tokenizer, template) != base  # vocabulary grew

    tokenizer, template = fresh()
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    assert _key(tokenizer, template) != base  # special tokens changed

    tokenizer, template = fresh()
    tokenizer.chat_template = "{{ messages }}"
    assert _key(tokenizer, template) != base  # chat template changed

    tokenizer, template = fresh()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert _key(tokenizer, template) != base  # pipeline changed in memory

    # the same files elsewhere: same key; two tokens' ids swapped in tokenizer.json: a new key
    copy = tmp_path / "tok"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smol_dir / name, copy / name)
    assert _key(*fresh(copy)) == base
    spec = json.loads((copy / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["the"], vocab["and"] = vocab["and"], vocab["the"]
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    assert _key(*fresh(copy)) != base


def test_cache_key_of_an_in_memory_tokenizer_follows_its_vocabulary():
    def tokenizer_with(words):
        backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[UNK]")

    first, second = tokenizer_with(["a", "b"]), tokenizer_with(["a", "c"])
    template = get_template("empty", first)
    assert _key(first, template) == _key(tokenizer_with(["a", "b"]), template)
    assert _key(first, template) != _key(second, template)
