"""`make bench` in miniature: the harness runs kubetune and plain TRL sft on a tiny model and reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.bench import REFERENCE, evaluate, main  # noqa: E402
from bench.data import make_rows, write_dataset  # noqa: E402
from bench.run_one import count_real_tokens  # noqa: E402
from bench.targets import loss_guard, speed_memory_target  # noqa: E402


def test_quick_bench_reports_both_tools(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.bench

    # as on a machine without LLaMA-Factory's venv: its rows are then quoted, not measured
    monkeypatch.delenv("LLAMAFACTORY_PYTHON", raising=False)
    monkeypatch.setattr(bench.bench, "LF_VENV_PYTHON", tmp_path / "no-lf-venv" / "python")
    result = main(["--quick", "--steps", "1", "--model", str(tiny_model_dir), "--no-prep",
                   "--runs", "kubetune:default,trl:plain", "--no-dpo", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "latest.json").read_text())
    table = (tmp_path / "latest.md").read_text()
    assert set(saved["rows"]) == {"kubetune:default", "trl:plain"}
    for row in saved["rows"].values():
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["step_time_s"] > 0
        assert row["peak_rss_gb"] > 0.1 and row["final_loss"] > 0
    assert "kubetune:default" in table and "trl:plain" in table and "reference, not re-measured" in table
    assert result["report"]["ratios"]["kubetune:default / trl:plain"]["tokens_per_s"] > 0
    # the DPO half's runs are tests/bench/test_dpo_bench.py's (the same run_dpo, both tools)
    assert not saved.get("dpo")


def test_loss_guard_passes_within_3_percent_and_fails_beyond() -> None:
    assert loss_guard(2.05, 2.00)["passed"]
    assert not loss_guard(2.10, 2.00)["passed"]
    assert not loss_guard(1.90, 2.00)["passed"]
    assert loss_guard(2.10, 2.00)["relative_diff"] == pytest.approx(0.05)


def test_targets_need_both_speed_and_memory() -> None:
    lf = {"tokens_per_s": 100.0, "peak_rss_gb": 4.0}
    assert speed_memory_target("t", {"tokens_per_s": 200.0, "peak_rss_gb": 4.0}, lf, 2.0, 1.0)["met"]
    assert not speed_memory_target("t", {"tokens_per_s": 199.0, "peak_rss_gb": 3.0}, lf, 2.0, 1.0)["met"]
    assert not speed_memory_target("t", {"tokens_per_s": 300.0, "peak_rss_gb": 4.1}, lf, 2.0, 1.0)["met"]


def test_evaluate_checks_targets_against_quoted_and_anchored_figures() -> None:
    def row(tps: float, mem: float, loss: float = 2.0) -> dict:
        return {"tokens_per_s": tps, "peak_rss_gb": mem, "final_loss": loss, "tool": "x", "variant": "y"}

    rows = {"kubetune:default": row(230, 3.0), "kubetune:best": row(320, 5.0), "trl:plain": row(102, 8.1),
            "kubetune:equal": row(150, 6.0, loss=2.1)}
    report = evaluate(rows, lf_measured=False)
    assert [t["met"] for t in report["targets"]] == [True, True, True, True]
    assert not report["guard"]["passed"]  # 2.1 vs 2.0 is 5% apart
    rows["kubetune:best"] = row(320, 6.0)  # 6.0 GB > 0.8 × 7.4 GB
    assert not evaluate(rows, lf_measured=False)["targets"][1]["met"]
    assert len(REFERENCE) == 5


def test_padding_is_not_counted_as_trained_tokens() -> None:
    ids = torch.tensor([[5, 6, 7, 2, 2]])
    assert count_real_tokens(ids, torch.tensor([[1, 1, 1, 0, 0]]), None, pad_id=2) == 3
    # neat-packed: two examples (3 + 1 tokens), then a padding segment of pad ids
    assert count_real_tokens(torch.tensor([[5, 6, 2, 9, 2, 2]]), None, torch.tensor([[0, 1, 2, 0, 0, 1]]), 2) == 4
    # a full packed row whose last example ends in the pad id is all real
    assert count_real_tokens(torch.tensor([[5, 6, 9, 2]]), None, torch.tensor([[0, 1, 0, 1]]), 2) == 4


def test_dataset_is_deterministic_and_mixed(tmp_path: Path) -> None:
    rows = make_rows()
    assert rows == make_rows() and len(rows) == 400
    lengths = sorted(len(r["output"].split()) + len(r["input"].split()) for r in rows)
    assert lengths[0] < 60 and lengths[-1] > 350  # short and long rows alike
    folder = write_dataset(tmp_path / "d")
    info = json.loads((folder / "dataset_info.json").read_text())
    assert (folder / info["bench_alpaca"]["file_name"]).is_file()


def test_dpo_targets_compare_with_trl_default_and_the_fastest_trl_row() -> None:
    from bench.dpo_bench import evaluate as evaluate_dpo
    from bench.dpo_bench import markdown as dpo_markdown

    def row(tool: str, variant: str, pairs_per_s: float, mem: float, final: float = 0.6) -> dict:
        return {"tool": tool, "variant": variant, "settings": {}, "pairs_per_s": pairs_per_s, "peak_rss_gb": mem,
                "step_time_s": 1.0, "cpu_s_per_step": 2.0, "first_loss": 0.6931, "final_loss": final}

    rows = {"kubetune:default": row("kubetune", "default", 2.0, 3.0), "trl:default": row("trl", "default", 0.9, 3.5),
            "kubetune:equal": row("kubetune", "equal", 1.0, 4.0, 0.61), "trl:plain": row("trl", "plain", 1.5, 6.0),
            "kubetune:best": row("kubetune", "best", 2.4, 5.0)}
    report = evaluate_dpo(rows)
    default, best = report["targets"]
    assert default["met"] and default["speedup"] == pytest.approx(2.0 / 0.9)
    # best is faster but over 0.8 × 6.0 GB: the default row is kubetune's best under the cap (1.33×)
    assert "kubetune:default" in best["target"] and "trl:plain" in best["target"] and best["met"]
    rows["kubetune:default"] = row("kubetune", "default", 2.0, 5.0)  # now neither fits: the fastest is judged
    best = evaluate_dpo(rows)["targets"][1]
    assert "kubetune:best" in best["target"] and not best["met"]
    assert report["guard"]["passed"]  # 0.61 vs 0.60: 1.7% apart, first losses ln 2
    assert any("kubetune:best" in line for line in dpo_markdown({"steps": 3, "rows": rows, "report": report}))
