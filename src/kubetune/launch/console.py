"""What `kubetune run` shows: a line when a step starts and ends, training progress, then the summary.

kfp.local runs each step as a subprocess and streams everything it prints into the parent:
executor-input dumps, library warnings, our own logs. The parent routes all of it into log files
under `<output>/logs/` (one per step, plus `pipeline.log` with everything in order) and shows on
the console only the events that steps mark for people — lines that start with `MARK`, written
by `emit` (and by `kubetune.launch.progress` while a step trains). On a cluster the same marked
lines sit in each pod's log, one JSON object per event.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any, TextIO

MARK = "::kubetune::"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
STEP_WIDTH = 16


def emit(event: str, **fields: Any) -> None:
    """Print one marked event line for `kubetune run`'s console (in a step's process)."""
    print(MARK + json.dumps({"event": event, **fields}, default=str), flush=True)


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else time.strftime("%H:%M:%S", time.gmtime(seconds))


def format_event(event: dict[str, Any]) -> str | None:
    """The console line of one event (None: nothing to show)."""
    step = f"{event.get('step', '?'):{STEP_WIDTH}}"
    kind = event.get("event")
    if kind == "start":
        return f"{_clock()}  {step} started"
    if kind == "end":
        line = f"{_clock()}  {step} {event.get('status', '?')} in {event.get('seconds', 0):.1f} s"
        if event.get("note"):
            line += f"  ({event['note']})"
        if event.get("error"):
            line += f"\n{'':10}{event['error']}"
        return line
    if kind == "progress":
        total = event.get("total") or 0
        pct = f" ({100 * event['current'] / total:.0f}%)" if total else ""
        parts = [f"step {event['current']}/{total}{pct}"]
        for key, label in (("loss", "loss"), ("eval_loss", "eval_loss"), ("reward/mean", "reward")):
            if key in event:
                parts.append(f"{label} {float(event[key]):.4f}")
        if "learning_rate" in event:
            parts.append(f"lr {float(event['learning_rate']):.2e}")
        if event.get("eta") is not None:
            parts.append(f"{_duration(event['elapsed'])} elapsed, {_duration(event['eta'])} left")
        return f"{_clock()}  {step}   " + "  ".join(parts)
    return None


class StepLogRouter(io.TextIOBase):
    """A text stream for kfp.local's output: every line to the log files, marked events to the console.

    Use it as `sys.stdout`/`sys.stderr` while the pipeline runs. A step's lines go to
    `<logs>/<task>.log` from the line kfp.local writes when it starts the task.

    Progress lines are thinned to about one per tenth of a step's training (plus eval lines and
    the last step), so a long run stays readable; every event is in the step's log.

    Args:
        logs_dir: folder for the log files (created).
        console: where people read (the real stdout).
    """

    def __init__(self, logs_dir: Path, console: TextIO) -> None:
        self.logs_dir = logs_dir
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.all = (logs_dir / "pipeline.log").open("a", encoding="utf-8")
        self.step_file: TextIO | None = None
        self.step_logs: dict[str, Path] = {}  # our step name (from its events) -> its log file
        self.started: list[str] = []  # steps that sent a start event, in order
        self._task_log: Path | None = None
        self._pending = ""
        self._shown_tenth: dict[str, int] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.all.flush()
        if self.step_file:
            self.step_file.flush()
        self.console.flush()

    def close(self) -> None:
        if self.closed:
            return
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self.flush()
        super().close()
        self.all.close()
        if self.step_file:
            self.step_file.close()

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw).rsplit("\r", 1)[-1]  # a progress bar's redraws: keep the last
        started = _TASK_START.search(line)
        if started:
            self._open_task(started.group(1))
        self.all.write(line + "\n")
        if self.step_file:
            self.step_file.write(line + "\n")
        at = line.find(MARK)
        if at >= 0:
            try:
                event = json.loads(line[at + len(MARK):])
            except ValueError:
                return
            self._show(event)

    def _open_task(self, task: str) -> None:
        if self.step_file:
            self.step_file.close()
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in task)
        self._task_log = self.logs_dir / f"{safe}.log"
        self.step_file = self._task_log.open("a", encoding="utf-8")

    def _show(self, event: dict[str, Any]) -> None:
        step = str(event.get("step", "?"))
        if self._task_log is not None:
            self.step_logs.setdefault(step, self._task_log)
        if event.get("event") == "start" and step not in self.started:
            self.started.append(step)
        if event.get("event") == "progress" and not self._worth_showing(step, event):
            return
        text = format_event(event)
        if text is None:
            return
        if event.get("event") == "end" and event.get("status") != "succeeded" and step in self.step_logs:
            text += f"\n{'':10}full log: {self.step_logs[step]}"
        self.console.write(text + "\n")
        self.console.flush()

    def _worth_showing(self, step: str, event: dict[str, Any]) -> bool:
        total, current = event.get("total") or 0, event.get("current", 0)
        if "eval_loss" in event or not total or current >= total:
            return True
        tenth = int(10 * current / total)
        if tenth <= self._shown_tenth.get(step, -1):
            return False
        self._shown_tenth[step] = tenth
        return True
