"""mix_strategy and interleave_probs: the row mix of several datasets, as LLaMA-Factory's merge_dataset gives it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from kubetune.data.mixing import mix

SHORT, LONG = [f"s{i}" for i in range(3)], [f"l{i}" for i in range(7)]


def test_concat_keeps_the_datasets_in_order() -> None:
    assert mix([SHORT, LONG]) == SHORT + LONG
    assert mix([LONG], "interleave_over", [1.0]) == LONG  # one dataset is used as it is


def test_interleave_under_stops_at_the_shortest_and_over_oversamples_it() -> None:
    under = mix([SHORT, LONG], "interleave_under")
    assert under == ["s0", "l0", "s1", "l1", "s2", "l2"]  # round-robin until the short one runs out
    over = mix([SHORT, LONG], "interleave_over")
    assert len(over) == 14 and Counter(over)["s0"] == 3 and set(over) == set(SHORT + LONG)  # short ones repeat
    once = mix([SHORT, LONG], "interleave_once")
    assert sorted(once) == sorted(SHORT + LONG) and once[:2] == ["s0", "l0"]  # each row once, interleaved


def test_probabilities_skew_the_mix_and_follow_the_seed() -> None:
    big_a, big_b = [f"a{i}" for i in range(400)], [f"b{i}" for i in range(400)]
    skewed = mix([big_a, big_b], "interleave_under", [0.9, 0.1], seed=3)
    counts = Counter(row[0] for row in skewed)
    assert counts["a"] == 400 and 20 < counts["b"] < 80  # stops when a runs out; ~1 b for 9 a
    assert mix([big_a, big_b], "interleave_under", [0.9, 0.1], seed=3) == skewed
    assert mix([big_a, big_b], "interleave_under", [0.9, 0.1], seed=4) != skewed


@pytest.mark.parametrize("strategy,stopping", [("interleave_under", "first_exhausted"),
                                               ("interleave_over", "all_exhausted")])
def test_the_order_is_the_one_datasets_gives_llamafactory(strategy: str, stopping: str) -> None:
    """LLaMA-Factory interleaves the aligned datasets with `datasets.interleave_datasets(seed=training seed)`."""
    parts = [SHORT, LONG, [f"m{i}" for i in range(5)]]
    reference = datasets.interleave_datasets([datasets.Dataset.from_dict({"x": p}) for p in parts],
                                             probabilities=[0.2, 0.5, 0.3], seed=11, stopping_strategy=stopping)
    assert mix(parts, strategy, [0.2, 0.5, 0.3], seed=11) == reference["x"]


def test_an_empty_dataset_ends_interleave_under_and_is_skipped_otherwise() -> None:
    assert mix([SHORT, []], "interleave_under") == []
    assert mix([SHORT, [], LONG], "interleave_over", [0.5, 0.25, 0.25], seed=0)


def test_the_pipeline_mixes_the_train_datasets(tmp_path: Path, cache_dir: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    from kubetune.config import load_config
    from kubetune.data.pipeline import tokenized
    from kubetune.data.template_registry import get_template

    for name, count in (("few", 2), ("many", 6)):
        rows = [{"instruction": f"{name} question {i}", "output": f"{name} answer {i}"} for i in range(count)]
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"few": {"file_name": "few.json"},
                                                            "many": {"file_name": "many.json"}}))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

    def train_rows(**keys: object) -> list[str]:
        data = load_config(None, {"model_name_or_path": "x", "dataset": "few,many", "dataset_dir": str(tmp_path),
                                  "template": "chatml", "packing": False, **keys}).data
        built = tokenized(data, tokenizer, get_template("chatml", tokenizer), stage="sft", seed=42)
        return [tokenizer.decode(ids).split("question")[0].split()[-1] for ids in built.train["input_ids"]]

    assert train_rows() == ["few"] * 2 + ["many"] * 6
    assert train_rows(mix_strategy="interleave_under") == ["few", "many"] * 2
    assert Counter(train_rows(mix_strategy="interleave_over")) == {"few": 6, "many": 6}
    skewed = Counter(train_rows(mix_strategy="interleave_over", interleave_probs="0.1,0.9"))
    assert skewed["few"] < skewed["many"] and skewed["many"] >= 6


def test_no_datasets_mix_to_no_rows() -> None:
    # an eval-only build has no training datasets, whatever the strategy
    assert mix([], "interleave_under", None, 0) == [] and mix([], "interleave_over", [0.5, 0.5], 0) == []
