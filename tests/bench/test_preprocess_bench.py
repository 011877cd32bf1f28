"""The preprocessing cost curve of `make bench` in miniature: one small size measured in a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

from bench.preprocess_bench import project, run_sizes, table  # noqa: E402


def test_the_projection_is_the_line_through_the_measured_sizes() -> None:
    line = project([{"rows": 1000, "peak_rss_mb": 500, "seconds": 1.0},
                    {"rows": 3000, "peak_rss_mb": 700, "seconds": 3.0}], 10_000)
    assert line == {"rows": 10_000, "peak_rss_mb": 1400, "seconds": 10.0}
    assert project([{"rows": 1000, "peak_rss_mb": 500, "seconds": 1.0}], 10_000) is None


@pytest.mark.slow  # a subprocess importing transformers and tokenising: ~10 s alone, a minute on a busy machine
def test_a_size_is_measured_in_its_own_process(smollm2_dir: Path) -> None:
    (small,) = run_sizes([60])
    assert small["rows"] == 60 and small["train_rows"] == 60
    assert small["peak_rss_mb"] >= small["base_rss_mb"] > 0 and small["rows_per_s"] > 0
    assert "| 60 |" in table([small], None)
