"""Racing promotions for `champion`: claims written before the alias moves, and a reconcile after it.

MLflow has no compare-and-set on an alias: `set_registered_model_alias` overwrites whatever is there, and
the client cannot make "set it if it is still v3" one request. `registry.promote` therefore runs
check → claim → set → reconcile:

1. judge the candidate against the champion it reads, then re-read the alias (and its gate value) right
   before writing; if it moved, judge again;
2. a candidate that earned `champion` first tags itself with a *claim* (`champion_claim`: when, which
   metric, which direction, forced or not), and only then sets the alias;
3. after setting it, `reconcile` reads the alias and every fresh claim and moves `champion` to the best of
   them, repeating until the alias it reads is that best.

Why that is enough: every alias write is preceded by its writer's claim and followed by its writer's
reconcile. Take the last write to `champion` among racing promotions: the reconcile after it starts after
every racer's claim was stored (each racer claimed before its own, earlier, write), so it sees all of
them and leaves the best as champion. The store must be one database that makes each request visible to
the next one (sqlite and PostgreSQL behind `mlflow server` are).

What it does not guarantee, honestly:
- between a stale write and its writer's reconcile (milliseconds: two or three requests), a reader may see
  the worse racer as champion; serving should read `champion` when a promotion has finished;
- a promoter killed between its alias write and its reconcile leaves a possibly worse champion until the
  next promotion of that model reconciles; one killed between its claim and its alias write leaves a claim
  that the next reconcile within the window honours if it is the best;
- claims count for `CLAIM_WINDOW_S` (10 minutes) by the promoters' clocks: promotions further apart than
  that, or on clocks skewed by more, are treated as sequential ones, judged one after the other;
- among racing claims the higher value wins even by less than `min_delta` (each claim already beat the
  champion it was judged against by more than `min_delta`); equal values go to the lower version number;
- a forced claim beats every older claim; claims made after it compete with it as usual.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from kubetune.tracking.registry_reads import (
    CHALLENGER,
    CHAMPION,
    GATE_METRIC_TAG,
    GATE_VALUE_TAG,
    alias_version,
    recorded_value,
)

logger = logging.getLogger(__name__)

CLAIM_TAG = "champion_claim"
CLAIM_WINDOW_S = 600.0
"""Seconds a claim takes part in reconciles; far longer than a promotion takes (a few requests)."""
_ROUNDS = 10  # reconcile rounds before giving up: each round either ends or moves the alias to the best seen

__all__ = ["CLAIM_TAG", "CLAIM_WINDOW_S", "Claim", "best_version", "fresh_claims", "reconcile", "write_claim"]


@dataclass(frozen=True)
class Claim:
    """A version's claim on `champion`.

    Attributes:
        version (`str`): the claiming version.
        value (`float` or `None`): its gate value (`None` only for a forced claim without one).
        at (`float`): when it was claimed (Unix seconds, the promoter's clock).
        forced (`bool`): an operator's `force`.
    """

    version: str
    value: float | None
    at: float
    forced: bool = False


def write_claim(client: Any, name: str, version: str, metric: str, greater_is_better: bool,
                forced: bool = False) -> None:
    """Tag `version` with a claim on `champion`; call before setting the alias (the gate value is in its tags)."""
    claim = {"at": time.time(), "metric": metric, "greater_is_better": greater_is_better, "forced": forced}
    client.set_model_version_tag(name, version, CLAIM_TAG, json.dumps(claim))


def fresh_claims(client: Any, name: str, metric: str, greater_is_better: bool,
                 now: float | None = None) -> list[Claim]:
    """The claims on `name`'s champion made within `CLAIM_WINDOW_S` for the same metric and direction.

    Args:
        client (`MlflowClient`): the registry.
        name (`str`): registered model name.
        metric (`str`): the gate metric.
        greater_is_better (`bool`): its direction.
        now (`float`, *optional*): the current time (Unix seconds); `time.time()` when `None`.

    Returns:
        `list[Claim]`: oldest first.
    """
    now = time.time() if now is None else now
    claims = []
    # the tag filter keeps this one indexed query, however many versions the model has
    for mv in _search_all(client, f"name = '{name}' and tags.{CLAIM_TAG} LIKE '%'"):
        try:
            claim = json.loads(mv.tags[CLAIM_TAG])
        except (KeyError, json.JSONDecodeError):
            continue  # not ours
        if claim.get("metric") != metric or claim.get("greater_is_better") != greater_is_better:
            continue
        if not now - CLAIM_WINDOW_S <= float(claim.get("at", 0.0)) <= now + CLAIM_WINDOW_S:
            continue
        value = float(mv.tags[GATE_VALUE_TAG]) if mv.tags.get(GATE_METRIC_TAG) == metric else None
        claims.append(Claim(str(mv.version), value, float(claim["at"]), bool(claim.get("forced"))))
    return sorted(claims, key=lambda c: c.at)


def best_version(claims: list[Claim], champion: str | None, champion_value: float | None,
                 greater_is_better: bool) -> str | None:
    """Who should hold `champion`: the newest forced claim, or the best value among the claims made after it.

    Without a forced claim the current champion competes too. A value of `None` or NaN loses to any number;
    equal values go to the lower version number.

    Args:
        claims (`list[Claim]`): fresh claims, any order.
        champion (`str` or `None`): the version holding `champion` now.
        champion_value (`float` or `None`): its gate value.
        greater_is_better (`bool`): the metric's direction.

    Returns:
        `str` or `None`: the version (`None` when there are no claims and no champion).
    """
    ordered = sorted(claims, key=lambda c: c.at)
    forced = [i for i, c in enumerate(ordered) if c.forced]
    if forced:
        pool = {c.version: c.value for c in ordered[forced[-1]:]}  # the newest forced claim and those after it
    else:
        pool = {c.version: c.value for c in ordered}
        if champion is not None and champion not in pool:
            pool[champion] = champion_value
    if not pool:
        return None

    def rank(item: tuple[str, float | None]) -> tuple[bool, float, int]:
        version, value = item
        usable = value is not None and not math.isnan(value)
        score = (value if greater_is_better else -value) if usable else -math.inf  # type: ignore[operator]
        return usable, score, -int(version)  # max(): a number beats none, then the better value, then lower v

    return max(pool.items(), key=rank)[0]


def reconcile(client: Any, name: str, metric: str, greater_is_better: bool) -> str | None:
    """Move `champion` to the best of the fresh claims and the current champion; repeat until it stays.

    Call after every write of the `champion` alias (see the module docstring for what this guarantees).

    Args:
        client (`MlflowClient`): the registry.
        name (`str`): registered model name.
        metric (`str`): the gate metric.
        greater_is_better (`bool`): its direction.

    Returns:
        `str` or `None`: the version that holds `champion` at the end.

    Raises:
        RuntimeError: the alias still moved after `_ROUNDS` rounds (something else keeps rewriting it).
    """
    for _ in range(_ROUNDS):
        current = alias_version(client, name, CHAMPION)
        claims = fresh_claims(client, name, metric, greater_is_better)
        claimed = {c.version for c in claims}
        current_value = None
        if current is not None and current not in claimed:
            current_value = recorded_value(client, client.get_model_version(name, current), metric)[0]
        best = best_version(claims, current, current_value, greater_is_better)
        if best is None or best == current:
            return current
        logger.warning("%s: champion is v%s but v%s has the better fresh claim on %s (racing promotions); "
                       "moving champion to v%s", name, current, best, metric, best)
        client.set_registered_model_alias(name, CHAMPION, best)
        if alias_version(client, name, CHALLENGER) == best:
            client.delete_registered_model_alias(name, CHALLENGER)
    raise RuntimeError(f"{name}: the champion alias kept moving for {_ROUNDS} reconcile rounds; something other "
                       "than kubetune's promote is rewriting it. Check who sets it, then promote again.")


def _search_all(client: Any, filter_string: str) -> list[Any]:
    found, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return found
