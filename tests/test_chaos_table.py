"""The chaos table prints what each fault test recorded; an unset `data_lost` is unknown, not zero."""

from chaos_table import format_table


def test_rows_sort_by_scenario_and_an_unset_loss_shows_unknown() -> None:
    table = format_table([
        {"scenario": "b outage", "runs": 3, "data_lost": None, "detail": "", "outcome": "failed", "seconds": 2.0},
        {"scenario": "a kill", "runs": 5, "data_lost": 0, "detail": "sft", "outcome": "passed", "seconds": 1.25},
    ])
    lines = table.splitlines()
    assert lines[2] == "| a kill (sft) | 5 | passed | 0 | 1.2 |"
    assert lines[3] == "| b outage | 3 | failed | ? | 2.0 |"
