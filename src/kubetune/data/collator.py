"""Batch tokenised rows into tensors for training: supervised rows, preference pairs, KTO rows.

`DataCollatorForSupervised` (sft, pt) makes three kinds of batch:

- Ordinary rows: right-padded `input_ids`/`labels` and an `attention_mask` that hides padding.
- Padding-free batches of ordinary rows (`padding_free=True`): the batch's examples are packed
  into as few rows as fit within its longest example, each restarting its position ids, and
  then batched like neat-packed rows. The batch holds the same examples and learns the same
  tokens as the padded one (each example's first label, which no token predicts in its own
  row, is unlearnt), so the loss is the same; only the compute spent on padding goes.
- Neat-packed rows (they carry `position_ids`): no `attention_mask` at all. Given position ids
  and no mask, transformers 5 builds a block-diagonal causal mask from the points where the
  positions restart (`masking_utils.find_packed_sequence_indices`), so each packed example
  attends only to itself. Padding is given positions 0, 1, ... so it forms its own block.
  This holds only when the forward pass has no KV cache: the model must run with
  `use_cache=False`, which the HF Trainer sets from `TrainingArguments.use_cache` (False).

Flash attention derives varlen boundaries from position ids only for a batch of one row
(`modeling_flash_attention_utils._is_packed_sequence`); `flatten_packed=True` concatenates
the batch into one row for it, as for kubetune's sdpa per packed sequence
(`model.packed_attention`). Keep it off for transformers' own sdpa/eager: their mask is
quadratic in the row length.

`PairwiseCollator` batches the chosen and rejected sequences of rm and dpo pairs (padded, or packed
without padding for dpo's fused log-probs); `KTOCollator` pads KTO rows with their KL partners.
Which layout a stage uses is decided once by `kubetune.train.layout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.packing import best_fit, concatenate
from kubetune.model.loader import pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class DataCollatorForSupervised:
    """Pads sft/pt rows (`encode.BatchEncoder`, or `dataset_rows.stage_rows` packed) into a batch of tensors.

    Args:
        tokenizer: where to read the pad id from when `pad_token_id` is None (its pad token,
            else its EOS). Default None.
        pad_token_id: id written into padded `input_ids`. Default None = from the tokenizer.
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor cores
            like multiples of 8). Default None = the longest row.
        label_pad: label of padding. Default -100 (`IGNORE_INDEX`).
        flatten_packed: concatenate neat-packed rows into a single row (for flash attention).
            Default False.
        padding_free: pack each batch of ordinary rows into rows no longer than its longest
            one (best fit, longest first), examples kept apart as in neat packing. Rows that
            are already packed are left as they are. Default False.
    """

    tokenizer: PreTrainedTokenizerBase = None
    pad_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad: int = IGNORE_INDEX
    flatten_packed: bool = False
    padding_free: bool = False

    def __post_init__(self) -> None:
        if self.pad_token_id is None and self.tokenizer is not None:
            self.pad_token_id = pad_token_id(self.tokenizer)
        if self.pad_token_id is None:
            raise ValueError("DataCollatorForSupervised needs pad_token_id, or a tokenizer with a pad or EOS token")

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Batch `features` (dicts with `input_ids`, optional `labels` and `position_ids`).

        Missing labels default to the input ids (pre-training). Returns `input_ids`, `labels`
        and either `attention_mask` (ordinary rows) or `position_ids` (any packed row).
        """
        rows = [_as_lists(feature) for feature in features]
        packed = any("position_ids" in row for row in rows)
        if self.padding_free and not packed:
            rows, packed = _pack_batch(rows), True
        if packed and self.flatten_packed:
            rows = [_flatten(rows)]
        width = self._width(max(len(row["input_ids"]) for row in rows))
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        batch["position_ids" if packed else "attention_mask"] = []
        for row in rows:
            pad = width - len(row["input_ids"])
            batch["input_ids"].append(row["input_ids"] + [self.pad_token_id] * pad)
            batch["labels"].append(row["labels"] + [self.label_pad] * pad)
            if packed:
                # Restarting at 0 makes the padding a separate segment, never attended by real tokens.
                positions = row.get("position_ids") or list(range(len(row["input_ids"])))
                batch["position_ids"].append(positions + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}

    def _width(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        return longest if not multiple else -(-longest // multiple) * multiple


def _pack_batch(rows: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
    """The batch's examples in as few rows as fit within the longest: never wider than padding would be.

    A capacity of the cutoff would give fewer, wider rows, but attention is quadratic in a row's
    width (sdpa and eager build a block-diagonal mask over the whole row).
    """
    lengths = [len(row["input_ids"]) for row in rows]
    return [concatenate([rows[i] for i in group], neat=True) for group in best_fit(lengths, max(lengths))]


def _as_lists(feature: dict[str, Any]) -> dict[str, list[int]]:
    row = {key: _to_list(feature[key]) for key in ("input_ids", "labels", "position_ids") if key in feature}
    row.setdefault("labels", list(row["input_ids"]))
    return row


def _to_list(value: Any) -> list[int]:
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


def _flatten(rows: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """All rows as one; rows without position ids count as one example each."""
    flat: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        flat["input_ids"] += row["input_ids"]
        labels = list(row["labels"])
        # The row's first label would be predicted from the previous row's last token.
        labels[0] = IGNORE_INDEX
        flat["labels"] += labels
        flat["position_ids"] += row.get("position_ids") or list(range(len(row["input_ids"])))
    return flat


@dataclass
class PairwiseCollator:
    """Batches ranking rows: the B chosen sequences, then the B rejected ones (sequence i pairs with B + i).

    Args:
        pad_token_id: id written into padded positions.
        pad_to_multiple_of: round the width up to a multiple of this. Default None = the longest row.
        pack_to: pack the 2B sequences into as few rows of at most this many tokens as fit (best fit,
            longest first), so no compute goes to padding. Each sequence restarts its position ids
            and sees only itself; `sequence_index` says which sequence each token belongs to. Default
            None = one sequence per row, padded to the longest.
        one_row: with `pack_to`, put every sequence into a single row instead (FlashAttention-2 reads
            packed sequences from the position ids of one row only). Default False.

    Returns (on call): `input_ids`, `labels` and `attention_mask` [2B, T]; packed: `input_ids`,
    `labels`, `position_ids` and `sequence_index` [R, T]. The reward model reads `input_ids` and
    `attention_mask` only; dpo scores the labelled tokens.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack_to: int | None = None
    one_row: bool = False

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": list(f[f"{side}_input_ids"]), "labels": list(f[f"{side}_labels"])}
                for side in ("chosen", "rejected") for f in features]
        if self.pack_to is None:
            pad = DataCollatorForSupervised(pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
            return pad(rows)
        return self._packed(rows)

    def _packed(self, sequences: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        lengths = [len(s["input_ids"]) for s in sequences]
        groups = [list(range(len(sequences)))] if self.one_row else best_fit(lengths, max(self.pack_to, *lengths))
        groups = [sorted(group) for group in groups]
        width = max(sum(lengths[i] for i in group) for group in groups)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": [], "sequence_index": []}
        for group in groups:
            ids, labels, positions, index = [], [], [], []
            for i in group:
                n = lengths[i]
                ids += sequences[i]["input_ids"]
                # the first label would be predicted from the previous sequence's last token: never scored
                labels += [IGNORE_INDEX, *sequences[i]["labels"][1:]]
                positions += range(n)
                index += [i] * n
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(positions + list(range(pad)))  # padding: a segment of its own
            batch["sequence_index"].append(index + [-1] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


@dataclass
class KTOCollator:
    """Pads KTO rows and their KL partners to one width.

    Args:
        pad_token_id: id written into padded positions.
        pad_to_multiple_of: round the width up to a multiple of this. Default None.

    Returns (on call): `input_ids`, `attention_mask`, `labels` [B, T]; `kl_input_ids`, `kl_attention_mask`,
    `kl_labels` [B, T]; `kto_tag` bool [B].
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": f[f"{prefix}input_ids"], "labels": f[f"{prefix}labels"]}
                for prefix in ("", "kl_") for f in features]
        padded = DataCollatorForSupervised(pad_token_id=self.pad_token_id,
                                           pad_to_multiple_of=self.pad_to_multiple_of)(rows)
        n = len(features)
        batch = {key: value[:n] for key, value in padded.items()}
        batch.update({f"kl_{key}": value[n:] for key, value in padded.items()})
        batch["kto_tag"] = torch.tensor([bool(f["kto_tag"]) for f in features])
        return batch
