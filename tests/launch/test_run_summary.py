"""The local run's summary: the metrics side by side, and the reward model's and the judge's verdicts as lines
of their own with their intervals (they compare the two sides; they are not one side's metric)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.local_run import LocalRunResult, summary

REPO = Path(__file__).resolve().parents[2]


def test_reward_and_judge_verdicts_are_shown_with_their_intervals() -> None:
    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data["dataset_dir"] = str(REPO / "data")
    cfg = load_pipeline_config(text=yaml.safe_dump(data))
    metrics = {"predict_rouge-l": 80.0, "baseline/predict_rouge-l": 20.0, "delta/predict_rouge-l": 60.0,
               "reward/candidate_mean": 1.25, "reward/baseline_mean": -0.5, "reward/delta": 1.75,
               "reward/delta_ci_low": 1.5, "reward/delta_ci_high": 2.0, "reward/reference_mean": 1.375,
               "judge/win_rate": 0.8,
               "judge/win_rate_ci_low": 0.7, "judge/win_rate_ci_high": 0.9, "judge/wins": 32.0,
               "judge/losses": 8.0, "judge/ties": 0.0}
    result = LocalRunResult(ok=True, steps=[{"step": "evaluate", "status": "SUCCEEDED", "seconds": 1.0,
                                             "metrics": metrics, "baseline": "base model m"}])
    text = summary(result, cfg)
    assert "predict_rouge-l" in text and "20.0000    80.0000" in text
    assert ("reward under the rm: baseline -0.5000, candidate 1.2500; candidate − baseline +1.7500 "
            "(95% CI +1.5000 … +2.0000)") in text
    assert "the rows' reference answers score 1.3750 under the same rm" in text
    assert "judge: candidate wins 80.0% (95% CI 70.0% … 90.0%; 32 wins, 8 losses, 0 ties)" in text
    assert "reward/delta " not in text and "judge/wins" not in text  # not in the side-by-side table
