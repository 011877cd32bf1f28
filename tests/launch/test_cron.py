"""KFP schedules: 6-field cron (seconds first), the 5-field mistake and its fix, field ranges, macros, @every."""

from __future__ import annotations

import pytest

from kubetune.launch.cron import MACROS, Trigger, parse_every, parse_trigger, validate_cron


@pytest.mark.parametrize(
    ("expr", "normalised"),
    [
        ("0 0 3 * * 0", "0 0 3 * * 0"),
        ("  0   0 3 *  * 0 ", "0 0 3 * * 0"),
        ("0 0 3 * * sun", "0 0 3 * * SUN"),
        ("*/15 0-23/2 1,15 * JAN-MAR MON-FRI", "*/15 0-23/2 1,15 * JAN-MAR MON-FRI"),
        ("0 30 9 ? * 2-6", "0 30 9 ? * 2-6"),
        ("0 0 0 1 jul ?", "0 0 0 1 JUL ?"),  # JUL holds an L, WED a W: names, not Quartz marks
        ("0 0 12 * * WED", "0 0 12 * * WED"),
        ("5/10 * * * * *", "5/10 * * * * *"),
        ("59 59 23 31 12 6", "59 59 23 31 12 6"),
    ],
)
def test_valid_six_field_expressions_are_returned_normalised(expr: str, normalised: str) -> None:
    assert validate_cron(expr) == normalised
    assert parse_trigger(expr) == Trigger(cron_expression=normalised)


def test_five_fields_are_refused_with_the_six_field_equivalent() -> None:
    with pytest.raises(ValueError) as error:
        validate_cron("0 3 * * 0")
    message = str(error.value)
    assert "5 fields" in message and "KFP needs 6" in message and "seconds first" in message
    assert "'0 0 3 * * 0'" in message  # the fix, ready to paste
    assert validate_cron("0 0 3 * * 0") == "0 0 3 * * 0"  # and the fix is itself valid


def test_five_field_suggestion_that_is_still_wrong_says_why() -> None:
    with pytest.raises(ValueError, match=r"'0 60 3 \* \* 0'.*minute field '60'.*out of range"):
        validate_cron("60 3 * * 0")


@pytest.mark.parametrize("expr", ["", "   ", "1 2 3", "0 0 0 1 1 * 2025"])
def test_wrong_field_counts_are_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="second minute hour day-of-month month day-of-week"):
        validate_cron(expr)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("60 0 3 * * *", "second field '60': 60 is out of range (second is 0-59)"),
        ("0 60 3 * * *", "minute field '60': 60 is out of range (minute is 0-59)"),
        ("0 0 24 * * *", "hour field '24': 24 is out of range (hour is 0-23)"),
        ("0 0 3 0 * *", "day-of-month field '0': 0 is out of range (day-of-month is 1-31)"),
        ("0 0 3 * 13 *", "month field '13': 13 is out of range (month is 1-12 or JAN-DEC)"),
        ("0 0 3 * * 7", "Sunday is 0 (SUN), not 7"),
        ("0 0 5-1 * * *", "range '5-1' starts after it ends"),
        ("0 0 MON-FRI * * *", "'MON' is not a number"),
        ("0 0 3 * * FRI-MON", "range 'FRI-MON' starts after it ends"),
        ("*/0 * * * * *", "step '0' must be a whole number >= 1"),
        ("0 */x * * * *", "step 'X' must be a whole number >= 1"),
        ("? 0 3 * * *", "'?' is only allowed in day-of-month and day-of-week"),
        ("0 0 3 L * *", "L, W and # are not supported"),
        ("0 0 3 15W * *", "L, W and # are not supported"),
        ("0 0 3 * * MON#2", "L, W and # are not supported"),
        ("0 0 3 1,,15 * *", "empty list item"),
        ("0 0 3 * FOO *", "'FOO' is not a number or a name"),
        ("0 -5 3 * * *", "'' is not a number"),
        ("0 0 1-2-3 * * *", "'2-3' is not a number"),
    ],
)
def test_bad_fields_name_the_field_and_its_range(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        validate_cron(expr)
    assert fragment in str(error.value)
    assert repr(" ".join(expr.split())) in str(error.value)  # the whole expression, for context


@pytest.mark.parametrize(
    ("macro", "six_fields"),
    [
        ("@yearly", "0 0 0 1 1 *"),
        ("@annually", "0 0 0 1 1 *"),
        ("@monthly", "0 0 0 1 * *"),
        ("@weekly", "0 0 0 * * 0"),
        ("@daily", "0 0 0 * * *"),
        ("@midnight", "0 0 0 * * *"),
        ("@hourly", "0 0 * * * *"),
        ("@WEEKLY", "0 0 0 * * 0"),
    ],
)
def test_macros_become_their_six_field_equivalents(macro: str, six_fields: str) -> None:
    assert validate_cron(macro) == six_fields
    assert parse_trigger(macro) == Trigger(cron_expression=six_fields)


def test_every_macro_expansion_is_itself_valid() -> None:
    for expansion in MACROS.values():
        assert validate_cron(expansion) == expansion


@pytest.mark.parametrize("expr", ["@fortnightly", "@daily 3", "@reboot"])
def test_unknown_descriptors_list_the_known_ones(expr: str) -> None:
    with pytest.raises(ValueError, match="@weekly.*@every <duration>"):
        validate_cron(expr)


@pytest.mark.parametrize(
    ("expr", "seconds"),
    [
        ("@every 3600s", 3600),
        ("@every 1h", 3600),
        ("@every 1h30m", 5400),
        ("@every 1.5h", 5400),
        ("@every 90s", 90),
        ("@every 2m500ms500ms", 121),
        ("@EVERY  15m", 900),
    ],
)
def test_every_becomes_an_interval_in_seconds(expr: str, seconds: int) -> None:
    assert parse_trigger(expr) == Trigger(interval_second=seconds)
    assert validate_cron(expr) == f"@every {seconds}s"


@pytest.mark.parametrize(
    ("duration", "fragment"),
    [
        ("90", "not a duration"),  # Go needs a unit
        ("1d", "not a duration"),  # Go has no days
        ("", "not a duration"),
        ("1h 30m", "not a duration"),
        ("500ms", "0.5 s; KFP's interval_second is a whole number of seconds"),
        ("1.5s", "1.5 s"),
        ("0s", "0 s"),
    ],
)
def test_bad_every_durations_are_refused(duration: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_every(duration)
    assert fragment in str(error.value)
