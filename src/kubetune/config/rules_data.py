"""Cross-field rules of the data keys: how several datasets are mixed, and streaming."""

from __future__ import annotations

import math

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

_INTERLEAVING = ("interleave_under", "interleave_over", "interleave_once")

STREAMING_REASON = (
    "not supported: kubetune tokenises a dataset once into an Arrow cache, written shard by shard (preprocessing "
    "memory does not grow with the dataset) and memory-mapped while training, which is what streaming saves "
    "LLaMA-Factory; a shuffle buffer would only shuffle less than the sampler already does")


def interleave_probs(cfg: RunConfig) -> list[Problem]:
    """`interleave_probs` needs an interleaving `mix_strategy` and one probability per dataset, summing to 1."""
    d = cfg.data
    probs = d.interleave_probs
    if probs is None:
        return []
    where = cfg.origin("interleave_probs")
    if d.mix_strategy not in _INTERLEAVING:
        return [Problem("interleave_probs", probs, where,
                        f"is only read when datasets are interleaved, but mix_strategy is {d.mix_strategy}",
                        f"set mix_strategy to one of {', '.join(_INTERLEAVING)}, or remove interleave_probs")]
    problems = []
    if any(p < 0 or not math.isfinite(p) for p in probs) or abs(sum(probs) - 1) > 1e-8:
        problems.append(Problem("interleave_probs", probs, where,
                                f"must be probabilities (each ≥ 0) summing to 1; these sum to {sum(probs):g}",
                                "e.g. 0.7,0.3 for two datasets"))
    train_count = len(d.dataset or []) + (1 if d.data_path else 0)
    for key, count in (("dataset", train_count), ("eval_dataset", len(d.eval_dataset or []))):
        if count and count != len(probs):  # as LLaMA-Factory: eval datasets are mixed with the same probabilities
            problems.append(Problem("interleave_probs", probs, where,
                                    f"has {len(probs)} values but {key} names {count} datasets",
                                    "give one probability per dataset, in the same order"))
    return problems


def streaming(cfg: RunConfig) -> list[Problem]:
    """`streaming: true` is refused with its reason (LLaMA-Factory's `buffer_size` is refused with it)."""
    if not cfg.data.streaming:
        return []
    return [Problem("streaming", True, cfg.origin("streaming"), STREAMING_REASON,
                    "remove streaming (and buffer_size); a dataset of any size is preprocessed in bounded memory")]


def check(cfg: RunConfig) -> list[Problem]:
    """Every data-key problem of `cfg`."""
    return interleave_probs(cfg) + streaming(cfg)
