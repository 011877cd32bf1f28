"""Combine the samples of several datasets into one list: `mix_strategy` and `interleave_probs`.

As in LLaMA-Factory (`merge_dataset`), one dataset is used as it is; several are concatenated
(`concat`, the default) or interleaved with `datasets.interleave_datasets`, seeded with the training
seed. The interleaving runs on a column of sample indices rather than on the samples themselves, so
the order is exactly the one `datasets` gives LLaMA-Factory for the same lengths, probabilities and seed:

- `interleave_under`: stop when the first dataset runs out (`first_exhausted`): undersamples the longer
  ones; without probabilities the result is round-robin, `len(datasets) × shortest` rows.
- `interleave_over`: stop when the last runs out (`all_exhausted`): the shorter ones restart, i.e.
  are oversampled; without probabilities `len(datasets) × longest` rows.
- `interleave_once`: every row exactly once (`all_exhausted_without_replacement`), interleaved.

`interleave_probs` (one probability per dataset, summing to 1) draws which dataset gives the next
row, so it skews the mix towards the datasets with the larger probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

STOPPING_STRATEGY = {
    "interleave_under": "first_exhausted",
    "interleave_over": "all_exhausted",
    "interleave_once": "all_exhausted_without_replacement",
}


def mix(parts: Sequence[Sequence[T]], strategy: str = "concat", probs: Sequence[float] | None = None,
        seed: int = 0) -> list[T]:
    """The samples of several datasets as one list, mixed as `mix_strategy` says.

    Args:
        parts: each dataset's samples, in the order the datasets are named.
        strategy: `concat`, `interleave_under`, `interleave_over` or `interleave_once`. Default `concat`.
        probs: `interleave_probs`, one per dataset; None interleaves round-robin. Default None.
        seed: the training seed (the probabilities' random draws). Default 0.

    Returns:
        The mixed samples (the same objects, some repeated under `interleave_over`).

    Raises:
        ValueError: an unknown strategy, or probabilities that do not fit the datasets.
    """
    if not parts:  # no datasets (an eval-only build has no training datasets): nothing to mix
        return []
    if len(parts) == 1:
        return list(parts[0])
    if strategy == "concat":
        return [sample for part in parts for sample in part]
    if strategy not in STOPPING_STRATEGY:
        raise ValueError(f"mix_strategy {strategy!r} is not one of concat, {', '.join(STOPPING_STRATEGY)}")
    if probs is not None and len(probs) != len(parts):
        raise ValueError(f"interleave_probs has {len(probs)} values for {len(parts)} datasets; give one per dataset")
    if any(not part for part in parts):  # `datasets` cannot cycle through an empty dataset
        if strategy == "interleave_under":
            return []  # the first dataset to run out is the empty one: LLaMA-Factory gets no rows either
        keep = [i for i, part in enumerate(parts) if part]
        parts = [parts[i] for i in keep]
        probs = _renormalised([probs[i] for i in keep]) if probs is not None else None
        if len(parts) <= 1:
            return list(parts[0]) if parts else []
    return [parts[d][i] for d, i in _interleaved_indices([len(p) for p in parts], strategy, probs, seed)]


def _renormalised(probs: list[float]) -> list[float]:
    total = sum(probs)
    return [p / total for p in probs] if total > 0 else probs


def _interleaved_indices(lengths: list[int], strategy: str, probs: Sequence[float] | None,
                         seed: int) -> list[tuple[int, int]]:
    """(dataset, row) pairs in the order `datasets.interleave_datasets` puts rows of these lengths."""
    import datasets

    index_sets = [datasets.Dataset.from_dict({"d": [d] * n, "i": list(range(n))}) for d, n in enumerate(lengths)]
    mixed = datasets.interleave_datasets(index_sets, probabilities=list(probs) if probs is not None else None,
                                         seed=seed, stopping_strategy=STOPPING_STRATEGY[strategy])
    return list(zip(mixed["d"], mixed["i"], strict=True))
