"""Generation metrics and perplexity, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from kubetune.evaluate import generation_metrics, perplexity, segment

KEYS = {"bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"}


def test_identical_texts_score_100_everywhere() -> None:
    scores = generation_metrics(
        ["The quick brown fox jumps over the dog.", "今天天气很好，我们去公园散步吧。"],
        ["The quick brown fox jumps over the dog.", "今天天气很好，我们去公园散步吧。"],
    )
    assert scores == dict.fromkeys(KEYS, 100.0)


def test_disjoint_texts_score_zero() -> None:
    scores = generation_metrics(["alpha beta gamma delta"], ["one two three four"])
    assert scores == pytest.approx(dict.fromkeys(KEYS, 0.0), abs=1e-6)


def test_partial_overlap_matches_hand_computation() -> None:
    prediction, reference = "a cat sat on mats", "one cat sat quietly"
    assert segment(prediction) == ["a", "cat", "sat", "on", "mats"]  # jieba drops no English word

    scores = generation_metrics([prediction], [reference])

    # ROUGE-1: overlap {cat, sat}; P = 2/5, R = 2/4, F1 = 2PR / (P + R) = 4/9.
    assert scores["rouge-1"] == pytest.approx(100 * 4 / 9, abs=1e-3)
    # ROUGE-2: overlap {(cat, sat)}; P = 1/4, R = 1/3, F1 = 2/7.
    assert scores["rouge-2"] == pytest.approx(100 * 2 / 7, abs=1e-3)
    # BLEU-4: p1 = 2/5, p2 = 1/4; method 3 replaces the zero p3, p4 by 1/(2·3), 1/(4·2);
    # the prediction is longer than the reference, so no brevity penalty.
    expected_bleu = (2 / 5 * 1 / 4 * 1 / 6 * 1 / 8) ** 0.25
    assert scores["bleu-4"] == pytest.approx(100 * expected_bleu, abs=1e-3)
    assert scores["exact_match"] == 0.0


def test_chinese_is_scored_by_words() -> None:
    assert segment("今天天气很好") == ["今天天气", "很", "好"]
    assert segment("今天天气不错") == ["今天天气", "不错"]

    scores = generation_metrics(["今天天气很好"], ["今天天气不错"])

    # One shared word of 3 and 2: P = 1/3, R = 1/2, F1 = 2/5 (by characters it would be 4 of 6).
    assert scores["rouge-1"] == pytest.approx(40.0, abs=1e-3)
    assert scores["rouge-2"] == 0.0


def test_empty_texts_score_zero_without_crashing() -> None:
    scores = generation_metrics(["", "  ", "a full answer here"], ["a reference", "another one", ""])
    assert {k: v for k, v in scores.items() if k != "exact_match"} == dict.fromkeys(
        KEYS - {"exact_match"}, 0.0
    )


def test_scores_are_means_over_examples() -> None:
    same = "the quick brown fox jumps"
    scores = generation_metrics([same, "nothing alike at all"], [same, "zero overlap here"])
    assert scores["rouge-1"] == pytest.approx(50.0, abs=1e-3)
    assert scores["exact_match"] == 50.0


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert generation_metrics([" Paris\n", "paris"], ["Paris", "Paris"])["exact_match"] == 50.0


def test_misaligned_or_empty_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        generation_metrics([], [])


def test_perplexity() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(12.5)) == pytest.approx(12.5)
    assert perplexity(1e6) == math.inf  # math.exp would raise OverflowError
    assert math.isnan(perplexity(math.nan))
