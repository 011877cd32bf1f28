"""Packing and the collator: rows fit, and neat packing keeps examples from seeing each other."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kubetune.data.collator import DataCollatorForSupervised
from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.packing import greedy_knapsacks, pack_examples

X = IGNORE_INDEX


def example(start: int, length: int) -> dict[str, list[int]]:
    ids = list(range(start, start + length))
    return {"input_ids": ids, "labels": [X] + ids[1:]}


def test_rows_are_llamafactorys_greedy_knapsacks_and_lose_nothing():
    examples = [example(10 * i, n) for i, n in enumerate([6, 5, 4, 3, 2, 1])]
    rows = pack_examples(examples, capacity=10, neat=False)
    # each row takes the longest example that still fits: 6+4; 5+3+2; 1
    assert [row["input_ids"] for row in rows] == [
        examples[0]["input_ids"] + examples[2]["input_ids"],
        examples[1]["input_ids"] + examples[3]["input_ids"] + examples[4]["input_ids"],
        examples[5]["input_ids"],
    ]
    assert rows[0]["labels"] == examples[0]["labels"] + examples[2]["labels"]
    assert all("position_ids" not in row for row in rows)
    assert pack_examples(examples, capacity=10, neat=False) == rows


def test_equally_long_examples_are_taken_last_first_as_llamafactory_pops_them():
    assert greedy_knapsacks([3, 3, 3, 2], capacity=6) == [[2, 1], [0, 3]]
    assert greedy_knapsacks([], capacity=6) == []


def test_many_examples_fit_and_each_appears_once():
    lengths = [(i * 37) % 23 + 1 for i in range(300)]
    examples = [example(1000 * i, n) for i, n in enumerate(lengths)]
    rows = pack_examples(examples, capacity=32, neat=True)
    assert all(len(row["input_ids"]) <= 32 for row in rows)
    packed = sorted(t for row in rows for t in row["input_ids"])
    assert packed == sorted(t for e in examples for t in e["input_ids"])
    assert len(rows) <= sum(lengths) // 32 + 2  # nearly no wasted room


def test_neat_rows_restart_positions_and_keep_every_label_as_llamafactory():
    first, second = example(0, 4), example(100, 3)
    second["labels"][0] = 100  # a learnt first token (train_on_prompt) stays learnt, as in LF
    rows = pack_examples([first, second], capacity=10, neat=True)
    assert rows == [
        {
            "input_ids": [0, 1, 2, 3, 100, 101, 102],
            "labels": [X, 1, 2, 3, 100, 101, 102],
            "position_ids": [0, 1, 2, 3, 0, 1, 2],
        }
    ]


def test_too_long_or_mismatched_examples_are_refused():
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than the packing capacity 8"):
        pack_examples([example(0, 3), example(0, 9)], capacity=8, neat=False)
    with pytest.raises(ValueError, match="example 0: 2 labels for 3 input ids"):
        pack_examples([{"input_ids": [1, 2, 3], "labels": [1, 2]}], capacity=8, neat=False)


def test_collator_pads_ordinary_rows_with_an_attention_mask():
    collate = DataCollatorForSupervised(pad_token_id=0, pad_to_multiple_of=4)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [X, 6, 7]}, {"input_ids": [8, 9, 10, 11, 12]}])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 0, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7, X, X, X, X, X], [8, 9, 10, 11, 12, X, X, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]


def test_collator_gives_packed_rows_position_ids_and_no_attention_mask():
    collate = DataCollatorForSupervised(pad_token_id=0)
    rows = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [X, 2, 3, X, 5], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [6, 7], "labels": [X, 7], "position_ids": [0, 1]},
    ]
    batch = collate(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch["labels"].tolist() == [[X, 2, 3, X, 5], [X, 7, X, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]  # padding: its own segment

    flat = DataCollatorForSupervised(pad_token_id=0, flatten_packed=True)(rows)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert flat["labels"].tolist() == [[X, 2, 3, X, 5, X, 7]]


def test_collator_reads_the_pad_id_from_the_tokenizer():
    class Tok:
        pad_token_id = None
        eos_token_id = 9

    assert DataCollatorForSupervised(tokenizer=Tok()).pad_token_id == 9
    with pytest.raises(ValueError, match="needs pad_token_id"):
        DataCollatorForSupervised()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny_llama(request):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        # As in training: the HF Trainer sets config.use_cache from TrainingArguments (False). With a
        # KV cache, transformers skips the packed-sequence mask and examples would see each other.
        use_cache=False,
    )
    config._attn_implementation = request.param
    return LlamaForCausalLM(config).eval()


def random_examples(*lengths: int) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for n in lengths:
        ids = torch.randint(0, 128, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": ids})
    return out


@torch.no_grad()
def logits_alone(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0]


@torch.no_grad()
def test_neat_packing_keeps_examples_apart(tiny_llama):
    first, second = random_examples(7, 5)
    collate = DataCollatorForSupervised(pad_token_id=0)

    [row] = pack_examples([first, second], capacity=16, neat=True)
    assert row["input_ids"] == first["input_ids"] + second["input_ids"]  # the longer one goes first
    packed = tiny_llama(**collate([row])).logits[0]
    torch.testing.assert_close(packed[7:], logits_alone(tiny_llama, second["input_ids"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:7], logits_alone(tiny_llama, first["input_ids"]), atol=1e-5, rtol=0)

    # Plain packing: the second example attends to the first, so its logits change.
    [plain] = pack_examples([first, second], capacity=16, neat=False)
    mixed = tiny_llama(**collate([plain])).logits[0]
    assert (mixed[7:] - logits_alone(tiny_llama, second["input_ids"])).abs().max() > 1e-3


@torch.no_grad()
def test_neat_packed_batch_with_padding_matches_each_example_alone(tiny_llama):
    examples = random_examples(6, 5, 4, 3)
    rows = pack_examples(examples, capacity=11, neat=True)  # [6+5], [4+3]: the second row is padded
    assert [len(r["input_ids"]) for r in rows] == [11, 7]
    for collate in (
        DataCollatorForSupervised(pad_token_id=0, pad_to_multiple_of=8),
        DataCollatorForSupervised(pad_token_id=0, flatten_packed=True),
    ):
        batch = collate(rows)
        assert "attention_mask" not in batch
        logits = tiny_llama(**batch).logits.flatten(0, 1)
        flat_ids = batch["input_ids"].flatten().tolist()
        positions = batch["position_ids"].flatten().tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        segments = {tuple(flat_ids[a:b]): (a, b) for a, b in zip(starts, starts[1:], strict=False)}
        for ids in (e["input_ids"] for e in examples):
            a, b = segments[tuple(ids)]
            torch.testing.assert_close(logits[a:b], logits_alone(tiny_llama, ids), atol=1e-5, rtol=0)


def test_padding_free_batch_packs_within_the_longest_example_and_keeps_every_token():
    rows = random_examples(6, 2, 4, 3)
    batch = DataCollatorForSupervised(pad_token_id=0, padding_free=True)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    # capacity 6: [6], [4+2], [3]: no row is wider than the padded batch would be
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    flat = batch["input_ids"].tolist()
    assert flat[1] == rows[2]["input_ids"] + rows[1]["input_ids"]
    # each example's first label is unlearnt (in its own row the shift drops it): same learnt tokens
    assert batch["labels"][1].tolist() == [X, *rows[2]["labels"][1:], X, *rows[1]["labels"][1:]]
    padded = DataCollatorForSupervised(pad_token_id=0)(rows)
    assert (batch["labels"] != X).sum() == (padded["labels"][:, 1:] != X).sum()
    # already-packed rows pass through unchanged
    packed = pack_examples(rows, capacity=8, neat=True)
    assert DataCollatorForSupervised(pad_token_id=0, padding_free=True)(packed)["input_ids"].tolist() == \
        DataCollatorForSupervised(pad_token_id=0)(packed)["input_ids"].tolist()


def test_padding_free_batch_gives_the_padded_batch_loss_and_gradients(tiny_llama):
    rows = random_examples(9, 3, 5, 4)
    results = []
    for padding_free in (False, True):
        tiny_llama.zero_grad()
        batch = DataCollatorForSupervised(pad_token_id=0, padding_free=padding_free)(rows)
        loss = tiny_llama(**batch).loss
        loss.backward()
        results.append((batch["input_ids"].numel(), loss.detach(),
                        [p.grad.clone() for p in tiny_llama.parameters() if p.grad is not None]))
    (padded_size, padded_loss, padded_grads), (packed_size, packed_loss, packed_grads) = results
    assert packed_size < padded_size  # rows 9 | 5+4 | 3: 27 tokens instead of 36
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=0)
    assert len(packed_grads) == len(padded_grads) > 0
    for packed, padded in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
