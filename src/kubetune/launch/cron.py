"""Schedules for KFP recurring runs: 6-field cron, `@daily`-style macros, and `@every <duration>`.

KFP's ScheduledWorkflow controller parses `cron` with robfig/cron v1 (`cron.Parse`), whose fields are
seconds-first:

```
second minute hour day-of-month month day-of-week
0      0      3    *            *     0            -> 03:00:00 every Sunday (UTC)
```

That parser also accepts *five* fields — it then drops day-of-week, not seconds — so a standard crontab
line such as `0 3 * * 0` is silently read as "second 0, minute 3, every hour, month 0" and fails or fires
at the wrong times. [`validate_cron`] therefore refuses five fields and names the 6-field equivalent.

```python
validate_cron("0 0 3 * * SUN")   # '0 0 3 * * SUN'
validate_cron("@weekly")         # '0 0 0 * * 0'
parse_trigger("@every 1h30m")    # Trigger(cron_expression=None, interval_second=5400)
```

The ranges below are robfig/cron's: day-of-week is 0-6 (0 = Sunday), months 1-12; names (`JAN`, `MON`)
are case-insensitive; `?` means "any" in the two day fields. `L`, `W` and `#` (Quartz) are not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["MACROS", "Trigger", "parse_every", "parse_trigger", "validate_cron"]

# robfig/cron's descriptors, written out as the 6-field expressions they stand for, so the KFP UI shows
# the schedule itself rather than a word.
MACROS: dict[str, str] = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_EVERY = "@every"
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# Go's time.ParseDuration units, in seconds; "µs" and "us" are both Go spellings of microseconds.
_DURATION_UNITS = {
    "ns": Fraction(1, 10**9), "us": Fraction(1, 10**6), "µs": Fraction(1, 10**6), "ms": Fraction(1, 1000),
    "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


@dataclass(frozen=True)
class _Field:
    """One cron field: its name for messages, its inclusive bounds, and the names it accepts."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0  # the number the first name stands for (JAN = 1, SUN = 0)
    allows_question_mark: bool = False
    note: str = ""

    def describe(self) -> str:
        words = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.name} is {self.low}-{self.high}{words}{note}"


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31, allows_question_mark=True),
    _Field("month", 1, 12, names=tuple(_MONTHS), name_base=1),
    # Standard crontab also takes 7 for Sunday; robfig/cron v1 does not, hence the note.
    _Field("day-of-week", 0, 6, names=tuple(_DAYS), allows_question_mark=True, note="Sunday is 0 (SUN), not 7"),
)


@dataclass(frozen=True)
class Trigger:
    """The schedule of a KFP recurring run: exactly one of the two fields is set.

    Attributes:
        cron_expression (`str`, *optional*): a validated 6-field cron expression (KFP's `cron_schedule`).
        interval_second (`int`, *optional*): seconds between runs (KFP's `periodic_schedule`), from `@every`.
    """

    cron_expression: str | None = None
    interval_second: int | None = None


def validate_cron(expr: str) -> str:
    """Check a schedule the way KFP's scheduler will read it, and return it normalised.

    Args:
        expr (`str`): a 6-field cron expression (seconds first), a macro (`@daily`, `@weekly`, `@monthly`,
            `@yearly`/`@annually`, `@hourly`, `@midnight`) or `@every <duration>` (Go duration: `90s`, `1h30m`).

    Returns:
        `str`: the expression with single spaces and upper-case names; a macro becomes its 6-field
        equivalent (`@weekly` -> `0 0 0 * * 0`); `@every` becomes `@every <N>s`.

    Raises:
        `ValueError`: with what is wrong and how to write it instead — for a 5-field crontab line, the
            6-field equivalent to use.
    """
    text = " ".join(expr.split()) if isinstance(expr, str) else ""
    if not text:
        raise ValueError(f"empty schedule {expr!r}: {_FORMAT_HELP}")
    if text.startswith("@"):
        return _validate_descriptor(text)
    fields = text.split(" ")
    if len(fields) == 5:
        raise ValueError(_five_field_message(text))
    if len(fields) != 6:
        raise ValueError(f"cron {text!r} has {len(fields)} fields; KFP needs 6. {_FORMAT_HELP}")
    return " ".join(_validate_field(value, spec, text) for value, spec in zip(fields, _FIELDS, strict=True))


def parse_trigger(expr: str) -> Trigger:
    """Turn a schedule into what `kfp.Client.create_recurring_run` takes.

    Args:
        expr (`str`): anything [`validate_cron`] accepts.

    Returns:
        [`Trigger`]: `interval_second` for `@every <duration>` (KFP's native periodic schedule),
        else `cron_expression` with the validated 6-field expression.

    Raises:
        `ValueError`: as [`validate_cron`].
    """
    normalised = validate_cron(expr)
    if normalised.startswith(_EVERY):
        return Trigger(interval_second=parse_every(normalised[len(_EVERY):]))
    return Trigger(cron_expression=normalised)


def parse_every(duration: str) -> int:
    """Parse the duration of `@every` (Go's `time.ParseDuration` syntax) into whole seconds.

    Args:
        duration (`str`): e.g. `3600s`, `15m`, `1h30m`, `1.5h`.

    Returns:
        `int`: the interval in seconds (at least 1).

    Raises:
        `ValueError`: for a missing unit, an unknown unit, or an interval that is not a whole number of
            seconds (KFP's `interval_second` is an integer).
    """
    text = duration.strip()
    parts = list(_DURATION_PART.finditer(text))
    if not text or not parts or "".join(p.group(0) for p in parts) != text:
        raise ValueError(
            f"@every {text!r}: not a duration; write a number and a unit, e.g. '@every 90s', '@every 15m', "
            f"'@every 1h30m' (units: h, m, s, ms, us, ns)"
        )
    seconds = sum((Fraction(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts), Fraction(0))
    if seconds.denominator != 1 or seconds < 1:
        raise ValueError(
            f"@every {text!r} is {float(seconds):g} s; KFP's interval_second is a whole number of seconds >= 1"
        )
    return int(seconds)


_FORMAT_HELP = (
    "Write 'second minute hour day-of-month month day-of-week', e.g. '0 0 3 * * 0' (03:00 UTC every Sunday), "
    "a macro (@daily, @weekly, @monthly, @yearly, @hourly) or '@every 6h'."
)


def _five_field_message(text: str) -> str:
    """The error for a standard crontab line: KFP needs seconds first; say what to write instead."""
    suggestion = "0 " + text
    message = (
        f"cron {text!r} has 5 fields (standard crontab); KFP needs 6, with seconds first "
        f"('second minute hour day-of-month month day-of-week'). Its scheduler would read these 5 fields "
        f"as second, minute, hour, day-of-month, month. Use the 6-field equivalent: {suggestion!r}."
    )
    try:
        validate_cron(suggestion)
    except ValueError as problem:  # the suggestion carries the same field error; say so now, not next time
        message += f" Note: {problem}"
    return message


def _validate_descriptor(text: str) -> str:
    """Check `@every <duration>` or a macro; return `@every <N>s` or the macro's 6-field expression."""
    head, _, rest = text.partition(" ")
    head = head.lower()
    if head == _EVERY:
        return f"{_EVERY} {parse_every(rest)}s"
    if head in MACROS and not rest:
        return MACROS[head]
    known = ", ".join([*MACROS, "@every <duration>"])
    raise ValueError(f"unknown schedule {text!r}; KFP accepts {known}, or a 6-field cron expression")


def _validate_field(value: str, spec: _Field, expr: str) -> str:
    """Check one field (a comma list of `*`, `?`, N, N-M, each with an optional /step); return it normalised."""
    normalised = value.upper()
    for item in normalised.split(","):
        try:
            _check_item(item, spec)
        except ValueError as problem:
            raise ValueError(f"cron {expr!r}: {spec.name} field {value!r}: {problem} ({spec.describe()})") from None
    return normalised


def _check_item(item: str, spec: _Field) -> None:
    """Check one list item: `*`, `?`, N, N-M, each with an optional /step."""
    if not item:
        raise ValueError("empty list item")
    if "#" in item or (re.search("[LW]", item) and not _is_name_item(item, spec)):
        raise ValueError("L, W and # are not supported by KFP's scheduler (robfig/cron)")
    base, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        raise ValueError(f"step {step!r} must be a whole number >= 1")
    if base in ("*", "?"):
        if base == "?" and not spec.allows_question_mark:
            raise ValueError("'?' is only allowed in day-of-month and day-of-week")
        return
    low_text, dash, high_text = base.partition("-")
    low = _number(low_text, spec)
    high = _number(high_text, spec) if dash else low
    if low > high:
        raise ValueError(f"range {base!r} starts after it ends")


def _is_name_item(item: str, spec: _Field) -> bool:
    """Whether the letters in `item` are all month/day names (JUL has an L, WED a W: not Quartz marks)."""
    words = re.findall(r"[A-Z]+", item)
    return bool(words) and all(word in spec.names for word in words)


def _number(text: str, spec: _Field) -> int:
    """One value of a field: a number within bounds, or a name the field accepts."""
    if text in spec.names:
        return spec.names.index(text) + spec.name_base
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number" + (" or a name" if spec.names else ""))
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{number} is out of range")
    return number
