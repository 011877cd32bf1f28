"""Configuration errors written for people: what, where, and what to do."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

from kubetune.config.secret_keys import REDACTED, is_secret_key

# Python refuses to print integers of more than 4300 digits; a message shows their size instead
_MAX_INT_BITS = 4000 * 3


class _BoundedRepr(reprlib.Repr):
    """reprlib, with limits a config value fits in and huge integers shown by size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset, self.maxfrozenset = 4, 12, 12, 12, 12, 12
        self.maxstring = self.maxother = 300
        self.maxlong = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > _MAX_INT_BITS:
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()


def shown_key(key: object) -> str:
    """A key as a message names it: plain, or quoted when blank, padded or holding invisible characters."""
    text = str(key)
    return text if text and text.strip() == text and text.isprintable() else repr(text)


def shown_value(value: Any) -> str:
    """`repr(value)` for a message: exact for ordinary values, bounded for huge, deep or self-referring ones."""
    if _is_plain(value, budget=[200]):
        text = repr(value)
        if len(text) <= 1000:
            return text
    return _REPR.repr(value)


def _is_plain(value: Any, budget: list[int], depth: int = 0) -> bool:
    budget[0] -= 1
    if budget[0] < 0 or depth > 8:
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() <= _MAX_INT_BITS
    if isinstance(value, dict):
        return all(_is_plain(k, budget, depth + 1) and _is_plain(v, budget, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return all(_is_plain(v, budget, depth + 1) for v in value)
    return True


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config.

    Attributes:
        key: the config key (or file) at fault.
        value: the value given (None when missing).
        origin: where the value came from: the config file, "command line", or "defaults".
        message: what is wrong / what was expected.
        hint: what to do about it ("" when the message says it all).
    """

    key: str
    value: Any
    origin: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        shown = "" if self.value is None else f" = {REDACTED if is_secret_key(self.key) else shown_value(self.value)}"
        where = f" (from {self.origin})" if self.origin else ""
        hint = f" — {self.hint}" if self.hint else ""
        return f"{self.key}{shown}{where}: {self.message}{hint}"


class ConfigError(ValueError):
    """Every problem found in a config, reported at once before any work starts."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config{where}: {count}\n{lines}")

    def keys(self) -> list[str]:
        return [p.key for p in self.problems]
