"""`kubetune run`'s console: kfp.local's stream goes to one log file per step; people see marked events only."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kubetune.launch.console import MARK, StepLogRouter


def _event(**fields: object) -> str:
    return "    " + MARK + json.dumps(fields) + "\n"  # kfp.local indents a step's lines by four spaces


def test_lines_go_to_their_step_log_and_only_events_reach_the_console(tmp_path: Path) -> None:
    console = io.StringIO()
    router = StepLogRouter(tmp_path / "logs", console)
    router.write("09:00:00.000 - INFO - Executing task \x1b[96m'validate'\x1b[0m\n")
    router.write('    "executorInput": {"inputs": {}}\n' + _event(event="start", step="validate"))
    router.write("    FutureWarning: something is deprecated\n")
    router.write(_event(event="end", step="validate", status="succeeded", seconds=1.5))
    router.write("09:00:02.000 - INFO - Executing task 'sft'\n" + _event(event="start", step="sft"))
    for current in range(1, 101):  # a progress event per logged step
        router.write(_event(event="progress", step="sft", current=current, total=100, loss=2.0 - current / 100,
                            learning_rate=1e-4, elapsed=current, eta=100 - current))
    router.write("    Traceback (most recent call last): ...\n    ValueError: boom\n")
    router.write(_event(event="end", step="sft", status="failed", seconds=9.0, error="ValueError: boom"))
    router.write("no newline at the end")
    router.close()

    shown = console.getvalue().splitlines()
    assert not any("executorInput" in line or "FutureWarning" in line for line in shown)
    # the first step, one per further tenth (10, 20, ... 90) and the last
    assert sum("step " in line and "/100" in line for line in shown) == 11
    assert any("validate" in line and "succeeded in 1.5 s" in line for line in shown)
    assert any("sft" in line and "failed in 9.0 s" in line for line in shown)
    assert any("ValueError: boom" in line for line in shown)
    assert any(f"full log: {tmp_path / 'logs' / 'sft.log'}" in line for line in shown)

    validate_log = (tmp_path / "logs" / "validate.log").read_text()
    sft_log = (tmp_path / "logs" / "sft.log").read_text()
    assert "executorInput" in validate_log and "FutureWarning" in validate_log and "Traceback" not in validate_log
    assert "Traceback" in sft_log and sft_log.count('"event": "progress"') == 100  # every event is in the log
    assert "\x1b[" not in validate_log
    everything = (tmp_path / "logs" / "pipeline.log").read_text()
    assert everything.endswith("no newline at the end\n")
    assert "executorInput" in everything and "Traceback" in everything
    assert router.step_logs == {"validate": tmp_path / "logs" / "validate.log", "sft": tmp_path / "logs" / "sft.log"}
