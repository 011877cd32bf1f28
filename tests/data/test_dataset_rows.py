"""Rows made per preprocessing batch, as LLaMA-Factory 0.9.5 makes them: pt blocks, sft knapsacks, KTO's KL pairs."""

from __future__ import annotations

import pytest

from kubetune.config import DataArguments
from kubetune.data.dataset_rows import (
    kl_partners,
    preprocessing_batches,
    pretrain_blocks,
    row_plan,
    stage_rows,
)
from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.schema import Message, Sample


def test_pt_keeps_every_token_but_each_batchs_remainder():
    documents = [list(range(100 * d, 100 * d + n)) for d, n in enumerate([25, 3, 40, 7, 11])]
    total = sum(len(d) for d in documents)  # 86
    blocks = pretrain_blocks(documents, block_size=16)
    assert sum(len(b["input_ids"]) for b in blocks) == total - total % 16 == 80
    assert all(len(b["input_ids"]) == 16 for b in blocks)
    flat = [t for d in documents for t in d]
    assert [t for b in blocks for t in b["input_ids"]] == flat[:80]  # documents span blocks, in order
    assert all(b["labels"] == b["input_ids"] for b in blocks)  # every token is learnt
    assert pretrain_blocks([[1, 2, 3]], block_size=4) == []  # less than a block: nothing


def test_pt_blocks_start_with_bos_when_the_tokenizer_adds_one():
    blocks = pretrain_blocks([[5, 6, 7, 8, 9, 10]], block_size=3, bos_token_id=1)
    assert [b["input_ids"] for b in blocks] == [[1, 6, 7], [1, 9, 10]]  # the first token is replaced


def test_batches_are_preprocessing_batch_size_rows_within_contiguous_worker_shards():
    assert preprocessing_batches(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    # two workers: shards [0, 4) and [4, 7), each batched on its own (datasets.map with num_proc)
    assert preprocessing_batches(7, 3, workers=2) == [range(0, 3), range(3, 4), range(4, 7)]
    assert preprocessing_batches(2, 3, workers=4) == [range(0, 1), range(1, 2)]  # never more shards than rows


def _plan(stage: str, **keys):
    return row_plan(DataArguments(**keys), stage)


def test_packing_takes_one_token_off_the_cutoff_as_llamafactory():
    sft = _plan("sft", cutoff_len=64, neat_packing=True)
    assert (sft.cutoff_len, sft.block_size, sft.pack, sft.neat) == (63, 63, True, True)
    assert _plan("sft", cutoff_len=64, packing=True).cutoff_len == 63
    assert _plan("sft", cutoff_len=64).cutoff_len == 64  # unpacked: the whole cutoff
    # pt: unset packing packs with the whole cutoff (LF decides it after the subtraction), true with one less
    assert (_plan("pt", cutoff_len=64).block_size, _plan("pt", cutoff_len=64, packing=True).block_size) == (64, 63)
    assert not _plan("pt", cutoff_len=64, packing=False).pack
    with pytest.raises(ValueError, match="cutoff_len=1 leaves no room in a packed row"):
        _plan("sft", cutoff_len=1, neat_packing=True)


def _kto(i: int) -> Sample:
    return Sample(prompt=[Message("user", f"q{i}")], response=[Message("assistant", f"a{i}")], kto_tag=i % 2 == 0,
                  row=i)


def test_kto_row_i_takes_row_i_minus_1s_response_within_its_batch():
    samples = [_kto(i) for i in range(5)]
    partners = kl_partners(samples, preprocessing_batches(5, 3))
    assert [p.content for p in partners] == ["a2", "a0", "a1", "a4", "a3"]


def test_stage_rows_packs_each_batch_on_its_own_and_pairs_kto_per_batch():
    samples = [_kto(i) for i in range(4)]
    seen = []

    def encode(batch, partners):
        seen.extend(p.content for p in partners if p is not None)
        return [{"input_ids": [i] * (i % 2 + 1), "labels": [IGNORE_INDEX] * (i % 2 + 1)} for i in range(len(batch))]

    stage_rows(samples, encode, _plan("kto", preprocessing_batch_size=2))
    assert seen == ["a1", "a0", "a3", "a2"]
    rows = stage_rows(samples, encode, _plan("sft", cutoff_len=4, neat_packing=True, preprocessing_batch_size=2))
    # lengths 1, 2 | 1, 2 and capacity 3: each batch is one row, the longer example first (over the whole
    # set, rows 3 and 2 would come first)
    assert [r["input_ids"] for r in rows] == [[1, 1, 0], [3, 3, 2]]
    assert [r["position_ids"] for r in rows] == [[0, 1, 0], [0, 1, 0]]
    assert len(stage_rows(samples, encode, _plan("sft", neat_packing=True), for_eval=True)) == 4  # eval: unpacked


def test_the_plan_reads_bos_from_a_tokenizer_that_adds_one():
    class AddsBos:
        add_bos_token, bos_token_id = True, 7

    class NoBos:
        add_bos_token, bos_token_id = False, 7

    assert row_plan(DataArguments(), "pt", AddsBos()).bos_token_id == 7
    assert row_plan(DataArguments(), "pt", NoBos()).bos_token_id is None


def test_the_cache_key_follows_the_batches_only_where_rows_depend_on_them():
    def key(stage, **keys):
        return _plan(stage, **keys).key()

    assert key("pt", preprocessing_batch_size=10) != key("pt")
    assert key("pt", preprocessing_num_workers=4) != key("pt")
    assert key("kto", preprocessing_batch_size=10) != key("kto")
    assert key("pt", packing=True) != key("pt")  # blocks of cutoff_len - 1
    assert key("sft", preprocessing_batch_size=10) == key("sft")  # one row per example: no neighbours
    assert key("sft", neat_packing=True, preprocessing_batch_size=10) != key("sft", neat_packing=True)
