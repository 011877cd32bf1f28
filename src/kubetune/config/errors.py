"""Configuration errors written for people: what, where, and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
        shown = "" if self.value is None else f" = {self.value!r}"
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
