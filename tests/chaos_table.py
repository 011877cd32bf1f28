"""The `make chaos` table: one row per fault scenario, from the tests that inject the faults.

A fault test marks itself `@pytest.mark.chaos` and takes the `chaos_row` fixture::

    def test_s3_outage_mid_upload(chaos_row, ...):
        row = chaos_row("S3 stopped mid-upload, restarted")
        for attempt in ...:
            row.runs += 1
            ...
        row.data_lost = len(expected - uploaded)   # what a user would have lost, counted by the test
        assert row.data_lost == 0

The row travels with the test's report (`user_properties`, which pytest-xdist carries from the
workers to the controller), so the table is printed once at the end of a run, parallel or not:
scenario, runs, outcome (the test's), data lost, seconds (the test's call duration). A test that
fails before it sets `data_lost` shows `?` there: unknown is not zero.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

_KEY = "chaos_row"
# pytest_runtest_logreport gets no config; the one session's config, kept at configure time
_CONFIG: dict[str, pytest.Config] = {}


@dataclass
class ChaosRow:
    """What one fault scenario did: set `runs` and `data_lost` as the test goes."""

    scenario: str
    runs: int = 0
    data_lost: int | None = None
    detail: str = ""


@pytest.fixture
def chaos_row(request: pytest.FixtureRequest):
    """Make this test's row of the chaos table: `row = chaos_row("scenario")`."""
    rows: list[ChaosRow] = []

    def make(scenario: str) -> ChaosRow:
        row = ChaosRow(scenario)
        rows.append(row)
        return row

    yield make
    for row in rows:
        request.node.user_properties.append((_KEY, json.dumps(asdict(row))))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-table", metavar="PATH", default=None,
                     help="also write the chaos table (markdown) to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: a fault-injection scenario (a row of `make chaos`)")
    config._chaos_rows = []  # type: ignore[attr-defined]
    config._chaos_outcomes = {}  # type: ignore[attr-defined]
    _CONFIG["config"] = config


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # rows are attached at teardown (the fixture finalises then); the outcome is the call's
    config = _CONFIG.get("config")
    if config is None:
        return
    outcomes = config._chaos_outcomes  # type: ignore[attr-defined]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcomes[report.nodeid] = (report.outcome, report.duration)
    if report.when != "teardown":
        return
    for key, value in report.user_properties:
        if key == _KEY:
            outcome, seconds = outcomes.get(report.nodeid, ("error", 0.0))
            config._chaos_rows.append({**json.loads(value), "outcome": outcome, "seconds": seconds})  # type: ignore[attr-defined]


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table, in scenario order."""
    lines = ["| scenario | runs | outcome | data lost | seconds |", "|---|---:|---|---:|---:|"]
    for row in sorted(rows, key=lambda r: r["scenario"]):
        lost = "?" if row["data_lost"] is None else str(row["data_lost"])
        scenario = row["scenario"] + (f" ({row['detail']})" if row.get("detail") else "")
        lines.append(f"| {scenario} | {row['runs']} | {row['outcome']} | {lost} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = getattr(config, "_chaos_rows", [])
    if not rows:
        return
    table = format_table(rows)
    terminalreporter.section("chaos: faults injected, data lost")
    terminalreporter.write_line(table)
    path = config.getoption("--chaos-table")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(table + "\n")
