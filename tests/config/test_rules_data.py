"""The data keys' rules: interleave_probs with mix_strategy and the datasets, streaming refused with a reason."""

from __future__ import annotations

import pytest

from kubetune.config import ConfigError, load_config

BASE = {"model_name_or_path": "some/model", "dataset": "a,b"}


def problems(overrides: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, base=BASE)
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


def test_every_mix_strategy_and_probabilities_as_lf_writes_them_are_accepted() -> None:
    for strategy in ("concat", "interleave_under", "interleave_over", "interleave_once"):
        assert load_config(None, {"mix_strategy": strategy}, base=BASE).data.mix_strategy == strategy
    cfg = load_config(None, {"mix_strategy": "interleave_over", "interleave_probs": "0.7, 0.3"}, base=BASE)
    assert cfg.data.interleave_probs == [0.7, 0.3]


@pytest.mark.parametrize("overrides,fragment", [
    ({"interleave_probs": "0.5,0.5"}, "only read when datasets are interleaved, but mix_strategy is concat"),
    ({"mix_strategy": "interleave_under", "interleave_probs": "0.2,0.3,0.5"}, "3 values but dataset names 2"),
    ({"mix_strategy": "interleave_under", "interleave_probs": "0.6,0.6"}, "summing to 1; these sum to 1.2"),
    ({"mix_strategy": "interleave_under", "interleave_probs": "1.5,-0.5"}, "each ≥ 0"),
    ({"mix_strategy": "interleave_under", "interleave_probs": "0.5,0.5", "eval_dataset": "x,y,z"},
     "eval_dataset names 3"),
    ({"mix_strategy": "interleave_under", "interleave_probs": "0.5,0.5", "eval_dataset": "x"},
     "eval_dataset names 1"),
])
def test_interleave_probs_problems_name_what_to_fix(overrides: dict, fragment: str) -> None:
    assert fragment in problems(overrides)["interleave_probs"]


def test_streaming_and_its_buffer_are_refused_with_the_reason() -> None:
    found = problems({"streaming": True})["streaming"]
    assert "Arrow cache" in found and "bounded memory" in found
    assert "streaming is not supported" in problems({"buffer_size": 1024})["buffer_size"]
    assert load_config(None, {"streaming": False, "buffer_size": 16384}, base=BASE).data.streaming is False
