"""Promotion gates over one evaluate step's numbers: the candidate's metrics beside its baseline's, measured on
the same data in the same step (the baseline is the registered champion's model, or the base model).

A candidate is promoted only when every gate holds; the decision names each gate with its numbers:
- `metric` + `min_delta`: the gate metric beats the baseline's by more than min_delta (its direction from
  `greater_is_better`);
- `no_regression: {metric: tolerance}`: the metric is not worse than the baseline's by more than the tolerance
  (lower is better for names with loss or perplexity in them, higher for the rest: accuracies, win rates,
  ROUGE);
- `min_judge_win_rate`: the judge's win rate of the candidate over the baseline is at least this;
- `min_reward_delta`: the mean reward gap (candidate − baseline) under the reward model is at least this;
- always, when the evaluate step found a champion registered but could not score it (its model unreadable, or the
  registry silent): the candidate was compared with the base model, not the model it would replace, so it is
  refused, the gate naming the champion's version and why (`CHAMPION_UNREADABLE`).

Baseline metrics travel as `baseline/<name>` beside the candidate's `<name>` (`with_baseline`), the judge's as
`judge/win_rate` and the reward gap as `reward/delta` (`kubetune.evaluate.judge`, `kubetune.evaluate.reward_gap`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from kubetune.evaluate.report import Gate

BASELINE = "baseline/"
DELTA = "delta/"

# A champion the evaluate step could not score travels as numbers (metrics carry nothing else): its version (0 when
# the registry did not answer, so it is unknown) and why, a key of CHAMPION_UNREADABLE_REASONS.
CHAMPION_UNREADABLE = BASELINE + "champion_unreadable"
CHAMPION_UNREADABLE_WHY = BASELINE + "champion_unreadable_why"
FETCH_FAILED, NO_MODEL, REGISTRY_UNREADABLE = 1, 2, 3
CHAMPION_UNREADABLE_REASONS = {
    FETCH_FAILED: "its model could not be fetched from where the registry says it is",
    NO_MODEL: "its registered source holds no model the evaluate step could read (no config.json there)",
    REGISTRY_UNREADABLE: "the registry did not answer, so whether a champion is registered is unknown",
}


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities fall as models improve; every other metric here rises."""
    name = metric.lower()
    return "loss" in name or "perplexity" in name or name.endswith("ppl")


def with_baseline(candidate: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """One metrics dict: the candidate's, `baseline/<name>` and `delta/<name>` (candidate − baseline)."""
    out = dict(candidate)
    for name, value in baseline.items():
        out[BASELINE + name] = value
        if name in candidate:
            out[DELTA + name] = candidate[name] - value
    return out


@dataclass(frozen=True)
class GateSettings:
    """The promotion section's gates (see the module docstring)."""

    metric: str
    greater_is_better: bool
    min_delta: float = 0.0
    no_regression: Mapping[str, float] | None = None
    min_judge_win_rate: float | None = None
    min_reward_delta: float | None = None


def check_gates(metrics: Mapping[str, float], settings: GateSettings) -> list[Gate]:
    """Every configured gate over `metrics` (the evaluate step's, with `baseline/` entries).

    A gate whose numbers are missing fails and says which number: a gate is never passed by default.
    """
    gates = [_champion_scored(metrics)] if CHAMPION_UNREADABLE in metrics else []
    gates.append(_metric_gate(metrics, settings))
    for name, tolerance in (settings.no_regression or {}).items():
        gates.append(_no_regression(metrics, name, tolerance))
    if settings.min_judge_win_rate is not None:
        gates.append(_at_least(metrics, "judge/win_rate", settings.min_judge_win_rate, "judge win rate",
                               "set evaluation.judge_model"))
    if settings.min_reward_delta is not None:
        gates.append(_at_least(metrics, "reward/delta", settings.min_reward_delta, "reward gap",
                               "set evaluation.reward_model (or run a pipeline with an rm stage)"))
    return gates


def _value(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None or math.isnan(value) else float(value)


def _champion_scored(metrics: Mapping[str, float]) -> Gate:
    """Fails always: the evaluate step scored the base model in place of a registered champion (see above)."""
    version = int(metrics[CHAMPION_UNREADABLE])
    why = CHAMPION_UNREADABLE_REASONS.get(int(metrics.get(CHAMPION_UNREADABLE_WHY, 0)), "no reason was recorded")
    champion = f"champion v{version}" if version > 0 else "the champion"
    fix = (f"make {champion}'s model readable from the pipeline's pods (or move the champion alias to a version "
           "whose model is) and run again" if version > 0 else "run again once the registry answers")
    return Gate("the baseline is the registered champion", False,
                f"{champion} was not scored: {why}; the candidate was compared with the base model instead, so no "
                f"number here says it beats {champion} (the evaluate step's log and report give the error). To "
                f"promote, {fix}")


def _metric_gate(metrics: Mapping[str, float], s: GateSettings) -> Gate:
    title = f"{s.metric} beats the baseline by more than {s.min_delta:g}"
    ours, theirs = _value(metrics, s.metric), _value(metrics, BASELINE + s.metric)
    if ours is None or theirs is None:
        missing = s.metric if ours is None else BASELINE + s.metric
        return Gate(title, False, f"{missing} was not measured")
    gain = ours - theirs if s.greater_is_better else theirs - ours
    direction = "higher" if s.greater_is_better else "lower"
    return Gate(title, gain > s.min_delta, f"{ours:.4g} vs {theirs:.4g}: {gain:+.4g} better ({direction} is better)")


def _no_regression(metrics: Mapping[str, float], name: str, tolerance: float) -> Gate:
    title = f"{name} no worse than the baseline by more than {tolerance:g}"
    ours, theirs = _value(metrics, name), _value(metrics, BASELINE + name)
    if ours is None or theirs is None:
        return Gate(title, False, f"{name if ours is None else BASELINE + name} was not measured")
    worse = ours - theirs if lower_is_better(name) else theirs - ours
    return Gate(title, worse <= tolerance, f"{ours:.4g} vs {theirs:.4g}: {max(worse, 0.0):.4g} worse")


def _at_least(metrics: Mapping[str, float], name: str, minimum: float, what: str, hint: str) -> Gate:
    title = f"{what} at least {minimum:g}"
    value = _value(metrics, name)
    if value is None:
        return Gate(title, False, f"{name} was not measured: {hint}")
    low, high = _value(metrics, f"{name}_ci_low"), _value(metrics, f"{name}_ci_high")
    interval = f" (95% interval {low:.3g} to {high:.3g})" if low is not None and high is not None else ""
    return Gate(title, value >= minimum, f"{value:.4g}{interval}")
