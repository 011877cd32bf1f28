"""The benchmark's pass/fail rules, shared by the SFT report (`bench.bench`), the DPO half (`bench.dpo_bench`) and
their tests: loss guards (equal settings must give equal losses) and speed-at-memory targets."""

from __future__ import annotations

import math
from typing import Any

LOSS_TOLERANCE = 0.03


def loss_guard(kubetune_loss: float, reference_loss: float, tolerance: float = LOSS_TOLERANCE) -> dict[str, Any]:
    """Whether kubetune's final per-token loss is within `tolerance` (relative) of the reference's.

    Args:
        kubetune_loss: kubetune's final loss at the reference's settings.
        reference_loss: plain TRL's final loss.
        tolerance: the largest relative difference that passes. Default 0.03.
    """
    diff = abs(kubetune_loss - reference_loss) / abs(reference_loss)
    return {"kubetune_loss": kubetune_loss, "reference_loss": reference_loss, "relative_diff": diff,
            "tolerance": tolerance, "passed": bool(diff <= tolerance)}


def speed_memory_target(name: str, ours: dict[str, Any], theirs: dict[str, Any], min_speedup: float,
                        max_memory_ratio: float, rate: str = "tokens_per_s") -> dict[str, Any]:
    """A target of the form "≥ min_speedup × their `rate` (tokens_per_s, or DPO's pairs_per_s) at
    ≤ max_memory_ratio × their peak memory"."""
    speedup = ours[rate] / theirs[rate]
    memory = ours["peak_rss_gb"] / theirs["peak_rss_gb"]
    return {"target": name, "speedup": speedup, "needed_speedup": min_speedup, "memory_ratio": memory,
            "max_memory_ratio": max_memory_ratio, "met": bool(speedup >= min_speedup and memory <= max_memory_ratio)}


FIRST_LOSS_TOLERANCE = 0.01


def dpo_loss_guard(ours: dict[str, Any], theirs: dict[str, Any], tolerance: float | None = None,
                   first_tolerance: float = FIRST_LOSS_TOLERANCE) -> dict[str, Any]:
    """Whether two DPO runs at equal settings agree: first losses ≈ ln 2, final losses within `tolerance`.

    At the first step the policy equals the reference (LoRA's B starts at zero), so every pair's
    margin is 0 and the sigmoid loss is exactly ln 2 in both tools; after that, the same data and
    settings must give final losses (mean of the last five logged) close to each other.

    Args:
        ours: kubetune's run result (`first_loss`, `final_loss`), e.g. the `kubetune:equal` JSON line.
        theirs: the reference run's result, e.g. `trl:plain`.
        tolerance: the largest relative difference of the final losses that passes. Default None =
            LOSS_TOLERANCE (0.03).
        first_tolerance: the largest absolute distance of a first loss from ln 2. Default 0.01.

    Returns:
        `loss_guard`'s fields for the final losses (`kubetune_loss`, `reference_loss`,
        `relative_diff`, `tolerance`), plus `kubetune_first_loss`, `reference_first_loss`,
        `first_loss_target` (ln 2), `first_tolerance`, `first_passed`, `final_passed`, and `passed` (both).
    """
    final = loss_guard(ours["final_loss"], theirs["final_loss"], LOSS_TOLERANCE if tolerance is None else tolerance)
    firsts = (ours["first_loss"], theirs["first_loss"])
    first_passed = all(abs(x - math.log(2)) <= first_tolerance for x in firsts)
    return {**final, "kubetune_first_loss": firsts[0], "reference_first_loss": firsts[1],
            "first_loss_target": math.log(2), "first_tolerance": first_tolerance, "first_passed": first_passed,
            "final_passed": final["passed"], "passed": bool(first_passed and final["passed"])}
