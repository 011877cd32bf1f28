"""Rows that depend on their neighbours, made per preprocessing batch as LLaMA-Factory 0.9.5 makes them.

LF's loader runs its processor on batches of `preprocessing_batch_size` rows (`datasets.map(batched=True)`;
with `preprocessing_num_workers` the dataset is first cut into that many contiguous shards, each batched
on its own). Three things happen per batch, so kubetune does them per batch too (`preprocessing_batches`):

- pt, packed: every document (with its end token) is concatenated and cut into blocks; the batch's
  remainder shorter than a block is dropped; with `add_bos_token` each block starts with BOS.
- sft, packed: examples are grouped into rows by LF's greedy knapsack (`packing.pack_examples`).
- kto: row i's KL partner is row i-1's response (the batch's first row takes its last).

`RowPlan` holds LF's lengths: packing encodes sft examples with `cutoff_len - 1` (LF's `DataArguments`
subtracts one whenever `packing`/`neat_packing` is set) and packs them into rows of that many tokens;
pt's blocks are `cutoff_len` long by default, but `cutoff_len - 1` with an explicit `packing: true`
(LF decides pt's default packing after that subtraction).

`stage_rows` is the one function the pipeline (`pipeline._Encoder`) and the conformance harness call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from kubetune.data.packing import pack_examples, packing_mode
from kubetune.data.schema import Message, Sample

ROWS_REVISION = "lf-0.9.5-batches"
"""Names the way rows are made, in the cache key: change it when the same inputs give other rows."""


@dataclass(frozen=True)
class RowPlan:
    """How a stage's samples become its training rows.

    Attributes:
        stage: the training stage.
        cutoff_len: the most tokens each example is encoded to (`cutoff_len - 1` for packed sft).
        pack: pt: cut documents into blocks; sft: pack examples into rows.
        neat: sft: packed examples restart their positions (see `packing`).
        block_size: packed rows' length: pt's block, sft's packing capacity.
        batch_size: rows per preprocessing batch (`preprocessing_batch_size`).
        workers: `preprocessing_num_workers` (None = one process); moves the batches' boundaries, as in LF.
        bos_token_id: pt blocks start with this token (the tokenizer's BOS when it adds one), or None.
    """

    stage: str
    cutoff_len: int
    pack: bool
    neat: bool
    block_size: int
    batch_size: int
    workers: int | None = None
    bos_token_id: int | None = None

    def key(self) -> list[Any]:
        """What of the plan changes the rows, for the cache key (`cache_key.data_key`; the BOS is the
        tokenizer's, hashed there). The batches matter only where rows depend on their neighbours."""
        by_batch = self.pack or self.stage == "kto"
        shards = (self.workers or 1) if by_batch else 1
        return [ROWS_REVISION, self.cutoff_len, self.pack, self.neat, self.block_size,
                self.batch_size if by_batch else None, shards]


def row_plan(data: Any, stage: str, tokenizer: Any = None) -> RowPlan:
    """The `RowPlan` of a config's data arguments (`config.DataArguments`) for `stage` and its tokenizer.

    Raises:
        ValueError: packing with `cutoff_len` 1 (no room once one token is taken off).
    """
    pack, neat = packing_mode(data.packing, data.neat_packing, stage)
    cutoff, block = data.cutoff_len, data.cutoff_len
    if stage == "sft" and pack:
        cutoff = block = data.cutoff_len - 1
    elif stage == "pt" and data.packing:  # explicit packing: true (unset packs with the whole cutoff)
        block = data.cutoff_len - 1
    if pack and block < 1:
        raise ValueError(f"cutoff_len={data.cutoff_len} leaves no room in a packed row (packing uses cutoff_len - 1 "
                         "tokens, as LLaMA-Factory): set cutoff_len to 2 or more")
    bos = getattr(tokenizer, "bos_token_id", None) if getattr(tokenizer, "add_bos_token", False) else None
    return RowPlan(stage, cutoff, pack, neat, block, data.preprocessing_batch_size, data.preprocessing_num_workers,
                   bos)


Encode = Callable[[list[Sample], list[Message | None]], list[dict[str, Any]]]
"""(samples, KL partners) -> one row per sample: `encode.BatchEncoder.encode`, or its parallel form."""


def stage_rows(samples: list[Sample], encode: Encode, plan: RowPlan, *, for_eval: bool = False) -> list[dict]:
    """A stage's rows from its samples: each sample encoded, then packed per preprocessing batch.

    Args:
        samples: the samples, in dataset order (merged datasets one after the other).
        encode: encodes samples with their KL partners into one row each (pt: whole documents when
            `plan.pack`, see `encode.BatchEncoder`'s `whole_documents`).
        plan: the stage's `RowPlan`.
        for_eval: eval rows: one row per sample, never packed (KTO's partners are still paired).

    Returns:
        The rows: one per sample, or packed rows (pt blocks / sft knapsacks).
    """
    if not samples:
        return []
    batches = preprocessing_batches(len(samples), plan.batch_size, plan.workers)
    partners = kl_partners(samples, batches) if plan.stage == "kto" else [None] * len(samples)
    rows = encode(samples, partners)
    if for_eval or not plan.pack:
        return rows
    if plan.stage == "pt":
        return [block for b in batches for block in pretrain_blocks([r["input_ids"] for r in rows[b.start:b.stop]],
                                                                     plan.block_size, plan.bos_token_id)]
    return [row for b in batches for row in pack_examples(rows[b.start:b.stop], plan.block_size, plan.neat)]


def preprocessing_batches(count: int, batch_size: int, workers: int | None = None) -> list[range]:
    """The row ranges LF's processor sees: `count` rows cut into `workers` contiguous shards (as
    `datasets.Dataset.shard(contiguous=True)`; never more shards than rows), each into batches of
    `batch_size`."""
    if count == 0:
        return []
    shards = min(workers, count) if workers and workers > 1 else 1
    size, extra = divmod(count, shards)
    out: list[range] = []
    for shard in range(shards):
        start = shard * size + min(shard, extra)
        stop = start + size + (1 if shard < extra else 0)
        out += [range(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]
    return out


def kl_partners(samples: list[Sample], batches: list[range]) -> list[Message]:
    """KTO's KL partners, as LF pairs them: row i of a batch takes row i-1's response, the batch's first
    row its last row's (one prompt with an unrelated answer, for the KL estimate)."""
    partners: list[Message] = []
    for batch in batches:
        responses = [samples[i].response[0] for i in batch]
        partners += responses[-1:] + responses[:-1]
    return partners


def pretrain_blocks(documents: list[list[int]], block_size: int, bos_token_id: int | None = None) -> list[dict]:
    """One batch of pt documents as blocks: concatenated, cut every `block_size` tokens, the remainder
    (shorter than a block) dropped; with `bos_token_id`, each block's first token replaced by it.

    Returns:
        Rows with `input_ids` and `labels` (the same ids: every token is learnt).
    """
    tokens = list(chain.from_iterable(documents))
    blocks = [tokens[i:i + block_size] for i in range(0, len(tokens) - block_size + 1, block_size)]
    if bos_token_id is not None:
        for block in blocks:
            block[0] = bos_token_id
    return [{"input_ids": block, "labels": list(block)} for block in blocks]
