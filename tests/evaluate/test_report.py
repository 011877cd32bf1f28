"""The HTML report shows what it is given (gates, both sides' metrics and deltas, images that are real PNGs, the
most different answers first) and escapes what models and data wrote."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

from kubetune.evaluate.report import Gate, ReportData, most_different, write_report


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []
        self._in = False

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self._in = tag in ("td", "th")
        if self._in:
            self.cells.append("")
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):  # noqa: ANN001
        self._in = False if tag in ("td", "th") else self._in

    def handle_data(self, data):  # noqa: ANN001
        if self._in:
            self.cells[-1] += data


def test_the_report_holds_gates_metrics_images_and_escaped_answers(tmp_path: Path) -> None:
    samples = [{"prompt": "p1", "candidate": "same words", "baseline": "same words!"},
               {"prompt": "<script>alert(1)</script>", "candidate": "totally different", "baseline": "xyz"},
               {"prompt": "p3", "candidate": "abc", "baseline": "abd"}]
    data = ReportData(
        title="nightly sft", candidate="v7", baseline="champion v5", decision="keep v5: a gate failed",
        gates=[Gate("eval_loss min_delta 0.01", True, "1.90 vs 2.00 (-0.10)"),
               Gate("no_regression benchmark/Average 0.5", False, "41.0 vs 42.0 (-1.0 > 0.5)")],
        metrics={"eval_loss": (1.9, 2.0), "benchmark/Average": (41.0, 42.0), "judge/win_rate": (0.6, None)},
        categories={"STEM": (40.0, 45.0), "Other": (42.0, 39.0)},
        loss_curve=[(1, 2.5), (2, 2.1), (3, 1.9)], samples=most_different(samples, 2))
    path = write_report(data, tmp_path / "report" / "evaluation.html")
    text = path.read_text()
    parser = _Cells()
    parser.feed(text)
    cells = parser.cells
    assert cells[cells.index("eval_loss"):cells.index("eval_loss") + 4] == ["eval_loss", "1.9", "2", "-0.1"]
    assert cells[cells.index("judge/win_rate"):cells.index("judge/win_rate") + 4] == ["judge/win_rate", "0.6", "—",
                                                                                      "—"]
    assert "failed" in cells and "41.0 vs 42.0 (-1.0 > 0.5)" in cells
    assert len(parser.images) == 2
    for src in parser.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the most different pair first, the near-identical one left out; model text is escaped, never markup
    answers = cells[cells.index("prompt"):]
    assert answers[3:6] == ["<script>alert(1)</script>", "totally different", "xyz"] and "p1" not in answers
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert re.search(r"<title>nightly sft</title>", text)


def test_sections_without_data_are_left_out(tmp_path: Path) -> None:
    text = write_report(ReportData(title="t", metrics={"eval_loss": (1.0, 1.0)}), tmp_path / "r.html").read_text()
    assert "<img" not in text and "Decision" not in text and "differ most" not in text and "+0" in text
