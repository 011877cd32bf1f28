"""Pack tokenised examples into rows (`packing`, `neat_packing`), and the best-fit grouping the collators use.

Packing removes padding: short examples share a row. `pack_examples` groups one preprocessing batch
of sft examples as LLaMA-Factory 0.9.5 does (its greedy knapsack, rows of `cutoff_len - 1` tokens, see
`dataset_rows`). Plain packing concatenates them, so an example can attend to the ones before it in
the row. Neat packing also writes `position_ids` that restart at 0 at every example; the collator then
passes no `attention_mask`, and transformers (5.x, `masking_utils.find_packed_sequence_indices`) turns
the restarts into a block-diagonal causal mask for sdpa/eager attention, or varlen boundaries for flash
attention on a single flattened row. Each example then sees only itself, as if run alone.

`best_fit` and `concatenate` pack within a batch instead (the collators' padding-free batches and dpo's
packed pairs), unlearning each example's first label so the loss equals the padded batch's.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Any

from kubetune.data.encode import IGNORE_INDEX


def packing_mode(packing: bool | None, neat_packing: bool, stage: str) -> tuple[bool, bool]:
    """(pack, neat) for a stage's training rows, from the config's `packing` / `neat_packing`.

    As in LLaMA-Factory: unset, pt packs (plainly: documents may attend across a row, as in
    pre-training) and sft does not, so a config keeps its number of examples per step and of steps
    per epoch; `neat_packing: true` packs sft rows with each example seeing only itself, the fastest
    setting (`make bench`). Pairs, KTO rows and PPO prompts are never packed into the dataset (dpo
    packs within each batch instead, see `stages.dpo.padding_free`).

    Args:
        packing: the config's `packing` (None = the stage's default).
        neat_packing: the config's `neat_packing`.
        stage: the training stage.
    """
    if stage not in ("pt", "sft"):
        return False, False
    pack = packing if packing is not None else (stage == "pt" or neat_packing)
    return pack, pack and neat_packing


def pack_examples(examples: list[dict[str, Any]], capacity: int, neat: bool) -> list[dict[str, list[int]]]:
    """Pack one preprocessing batch of sft examples into rows of at most `capacity` tokens, as LLaMA-Factory does.

    The rows and their order are LLaMA-Factory 0.9.5's (`greedy_knapsacks`); its trailing padding to the
    cutoff is left to the collator, which pads each batch only to its longest row.

    Args:
        examples: dicts with `input_ids` and `labels` (equally long, at most `capacity`). Other keys
            are dropped.
        capacity: the most tokens in a row (`dataset_rows.RowPlan.block_size`: cutoff_len - 1, as in LF).
        neat: add `position_ids` restarting at 0 for each example (the collator then keeps the examples
            apart). Labels are kept as they are, the first token's included, as in LF.

    Returns:
        Rows with `input_ids`, `labels` and, with `neat`, `position_ids`; no padding.

    Raises:
        ValueError: an example is longer than `capacity` or its labels do not match.
    """
    lengths = [len(example["input_ids"]) for example in examples]
    for index, (example, length) in enumerate(zip(examples, lengths, strict=True)):
        if length > capacity:
            raise ValueError(
                f"example {index} has {length} tokens, more than the packing capacity {capacity}: "
                "encode with the same cutoff_len before packing"
            )
        if len(example["labels"]) != length:
            raise ValueError(f"example {index}: {len(example['labels'])} labels for {length} input ids")
    return [_join([examples[i] for i in row], neat) for row in greedy_knapsacks(lengths, capacity)]


def greedy_knapsacks(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per row, chosen as LLaMA-Factory's `greedy_knapsack` chooses them.

    Each row takes the longest example that still fits, again and again, until none does; then a new
    row starts. Of equally long examples the last one is taken first, as LF pops them from the end of
    its list. Every length must be at most `capacity`.
    """
    remaining = sorted(lengths)
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    rows: list[list[int]] = []
    while remaining:
        room, row = capacity, []
        while (fits := bisect_right(remaining, room)) > 0:
            length = remaining.pop(fits - 1)
            room -= length
            row.append(by_length[length].pop())
        rows.append(row)
    return rows


def _join(examples: list[dict[str, Any]], neat: bool) -> dict[str, list[int]]:
    """One row of `examples` in order, their labels unchanged; with `neat`, positions restarting per example."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": []}
    if neat:
        row["position_ids"] = []
    for example in examples:
        row["input_ids"] += example["input_ids"]
        row["labels"] += example["labels"]
        if neat:
            row["position_ids"] += range(len(example["input_ids"]))
    return row


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per row: longest first, each into the row it fills most tightly.

    Ties break by index, so the same input always gives the same rows.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), kept sorted
    for i in order:
        slot = bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            rows.append([i])
            row, room = len(rows) - 1, capacity - lengths[i]
        else:
            room, row = free.pop(slot)
            rows[row].append(i)
            room -= lengths[i]
        if room > 0:
            insort(free, (room, row))
    return rows


def concatenate(examples: list[dict[str, Any]], neat: bool) -> dict[str, list[int]]:
    """One row holding `examples` in order; with `neat`, positions restart and first labels are unlearnt."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for example in examples:
        example_labels = list(example["labels"])
        if neat:
            example_labels[0] = IGNORE_INDEX
            position_ids += range(len(example_labels))
        input_ids += example["input_ids"]
        labels += example_labels
    row = {"input_ids": input_ids, "labels": labels}
    if neat:
        row["position_ids"] = position_ids
    return row
