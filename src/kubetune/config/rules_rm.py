"""Rules of the rm (reward model) stage that the config alone decides; `kubetune.config.rules` runs `check`.

Pairs are never packed, so asking for packing is a mistake worth saying. What needs the world — that
the data is ranking data, that `kubetune eval` finds a trained reward model — is checked by
`kubetune.validate` (preflight). A quantised base with freeze/full training is refused by the global
rules already.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig


def check(cfg: RunConfig) -> list[Problem]:
    """Every rm-specific problem in `cfg` the config alone shows (empty if none).

    Args:
        cfg: the config, with `stage: rm`.
    """
    return no_packing(cfg)


def no_packing(cfg: RunConfig) -> list[Problem]:
    problems = []
    for key in ("packing", "neat_packing"):
        if getattr(cfg.data, key):
            problems.append(Problem(key, True, cfg.origin(key),
                                    "the rm stage scores whole chosen/rejected sequences; packing is for pt and sft",
                                    f"remove {key}"))
    return problems
