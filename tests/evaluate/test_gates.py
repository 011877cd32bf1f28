"""Promotion gates over the candidate's and the baseline's numbers: each gate holds or fails on its own numbers,
a missing number fails its gate (never a pass by default), and the direction of each metric is respected."""

from kubetune.evaluate.gates import GateSettings, check_gates, lower_is_better, with_baseline


def test_every_gate_is_checked_and_named_with_its_numbers() -> None:
    metrics = with_baseline({"eval_loss": 1.90, "benchmark/Average": 41.0, "predict_rouge-l": 30.0},
                            {"eval_loss": 2.00, "benchmark/Average": 42.0, "predict_rouge-l": 29.0})
    metrics.update({"judge/win_rate": 0.62, "judge/win_rate_ci_low": 0.51, "judge/win_rate_ci_high": 0.73,
                    "reward/delta": -0.2})
    gates = check_gates(metrics, GateSettings(
        "eval_loss", greater_is_better=False, min_delta=0.05,
        no_regression={"benchmark/Average": 0.5, "predict_rouge-l": 0.0}, min_judge_win_rate=0.55,
        min_reward_delta=0.0))
    result = {g.name: (g.passed, g.detail) for g in gates}
    assert result["eval_loss beats the baseline by more than 0.05"] == (True, "1.9 vs 2: +0.1 better (lower is "
                                                                               "better)")
    assert result["benchmark/Average no worse than the baseline by more than 0.5"] == (False, "41 vs 42: 1 worse")
    assert result["predict_rouge-l no worse than the baseline by more than 0"][0]
    assert result["judge win rate at least 0.55"] == (True, "0.62 (95% interval 0.51 to 0.73)")
    assert result["reward gap at least 0"] == (False, "-0.2")
    assert metrics["delta/eval_loss"] == 1.90 - 2.00


def test_missing_numbers_fail_their_gate_and_say_what_to_set() -> None:
    gates = check_gates({"eval_loss": 1.0}, GateSettings("eval_loss", False, min_judge_win_rate=0.5))
    assert [(g.passed, g.detail) for g in gates] == [
        (False, "baseline/eval_loss was not measured"),
        (False, "judge/win_rate was not measured: set evaluation.judge_model")]
    assert not check_gates({"eval_loss": float("nan"), "baseline/eval_loss": 1.0},
                           GateSettings("eval_loss", False))[0].passed


def test_directions() -> None:
    assert lower_is_better("eval_loss") and lower_is_better("eval_perplexity") and lower_is_better("val_ppl")
    assert not lower_is_better("predict_rouge-l") and not lower_is_better("benchmark/Average")
