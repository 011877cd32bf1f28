"""The evaluation report people read: one self-contained HTML file (the KFP UI renders it as an HTML artifact, and
MLflow keeps the same file), candidate beside baseline.

Sections, each present when its data is: notes on the comparison (why the baseline is not the champion); the
promotion decision with every gate and its numbers; the metrics table (candidate, baseline, delta); benchmark
accuracy per category as paired bars; the training step's loss curve; and the side-by-side answers where the two
models differ most. Images are inline PNGs (data URIs), so the file needs nothing beside it. Every string from
data or models is HTML-escaped.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}.pass{color:#176c2e}.fail{color:#b3261e}.note{color:#8a5a00}
.answers td{text-align:left;vertical-align:top;white-space:pre-wrap;max-width:30em}"""


@dataclass
class Gate:
    """One promotion gate: its name, whether it held, and the numbers that decided it."""

    name: str
    passed: bool
    detail: str


@dataclass
class ReportData:
    """Everything a report shows; empty fields leave their section out."""

    title: str
    candidate: str = "candidate"
    baseline: str = "baseline"
    decision: str = ""
    gates: list[Gate] = field(default_factory=list)
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # name → (cand, base)
    categories: dict[str, tuple[float, float]] = field(default_factory=dict)  # benchmark category → accuracies
    loss_curve: list[tuple[float, float]] = field(default_factory=list)  # (step, training loss)
    samples: list[dict[str, str]] = field(default_factory=list)  # {prompt, candidate, baseline}
    notes: list[str] = field(default_factory=list)  # said under the title, e.g. why the baseline is the base model


def most_different(samples: Sequence[dict[str, str]], count: int = 5) -> list[dict[str, str]]:
    """The `count` samples whose two answers differ most (lowest difflib similarity), most different first."""
    def similarity(sample: dict[str, str]) -> float:
        return difflib.SequenceMatcher(None, sample["candidate"], sample["baseline"]).ratio()

    return sorted(samples, key=similarity)[:count]


def render(data: ReportData) -> str:
    """The report as one HTML document."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(data.title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{e(data.title)}</h1>"
             f"<p>Candidate: <b>{e(data.candidate)}</b> · baseline: <b>{e(data.baseline)}</b></p>"]
    parts += [f"<p class='note'>{e(note)}</p>" for note in data.notes]
    if data.decision or data.gates:
        parts.append(f"<h2>Decision</h2><p>{e(data.decision)}</p>")
        if data.gates:
            rows = "".join(f"<tr><td>{e(g.name)}</td><td class='{'pass' if g.passed else 'fail'}'>"
                           f"{'held' if g.passed else 'failed'}</td><td>{e(g.detail)}</td></tr>" for g in data.gates)
            parts.append(f"<table><tr><th>gate</th><th>result</th><th>numbers</th></tr>{rows}</table>")
    if data.metrics:
        rows = "".join(f"<tr><td>{e(name)}</td><td>{_num(c)}</td><td>{_num(b)}</td><td>{_delta(c, b)}</td></tr>"
                       for name, (c, b) in data.metrics.items())
        parts.append(f"<h2>Metrics</h2><table><tr><th>metric</th><th>{e(data.candidate)}</th>"
                     f"<th>{e(data.baseline)}</th><th>delta</th></tr>{rows}</table>")
    if data.categories:
        parts.append("<h2>Benchmark accuracy per category</h2>" + _img(_category_bars(data), "accuracy per category"))
    if data.loss_curve:
        parts.append("<h2>Training loss</h2>" + _img(_loss_plot(data.loss_curve), "training loss"))
    if data.samples:
        rows = "".join(f"<tr><td>{e(s['prompt'])}</td><td>{e(s['candidate'])}</td><td>{e(s['baseline'])}</td></tr>"
                       for s in data.samples)
        parts.append(f"<h2>Where the answers differ most</h2><table class='answers'><tr><th>prompt</th>"
                     f"<th>{e(data.candidate)}</th><th>{e(data.baseline)}</th></tr>{rows}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(data: ReportData, path: str | Path) -> Path:
    """Render `data` into `path` (its folder is made) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data), encoding="utf-8")
    return path


def _num(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _delta(candidate: float | None, baseline: float | None) -> str:
    if candidate is None or baseline is None or math.isnan(candidate) or math.isnan(baseline):
        return "—"
    return f"{candidate - baseline:+.4g}"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _figure() -> Any:
    from matplotlib.figure import Figure  # never pyplot: no display, the process's backend left alone

    return Figure(figsize=(7, 3.2), dpi=100)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _category_bars(data: ReportData) -> bytes:
    figure = _figure()
    axes = figure.add_subplot()
    names = list(data.categories)
    xs = range(len(names))
    axes.bar([x - 0.2 for x in xs], [data.categories[n][0] for n in names], width=0.4, label=data.candidate)
    axes.bar([x + 0.2 for x in xs], [data.categories[n][1] for n in names], width=0.4, label=data.baseline)
    axes.set_xticks(list(xs), names)
    axes.set_ylabel("accuracy %")
    axes.legend()
    return _png(figure)


def _loss_plot(curve: list[tuple[float, float]]) -> bytes:
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot([s for s, _ in curve], [v for _, v in curve])
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    return _png(figure)
