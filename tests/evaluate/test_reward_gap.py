"""The reward gap: both sides' mean rewards on the same prompts and their paired difference with its interval,
each answer scored by a real (tiny, random-headed) reward model as the prompt and answer in the chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.config import load_config
from kubetune.data.setup import tokenizer_and_template
from kubetune.evaluate.reward_gap import reward_gap, reward_model_scorer
from kubetune.model.value_head import ModelWithValueHead

PROMPTS = ["Say hello.", "Count to three.", "Name a colour.", "What is 2 + 2?"]


def test_the_gap_is_the_paired_mean_difference_with_an_interval_around_it() -> None:
    def by_length(prompts, answers):  # noqa: ANN001  a reward that is the answer's length: known differences
        return [float(len(a)) for a in answers]

    gap = reward_gap(by_length, PROMPTS, ["aaaa", "aaa", "aaaaa", "aa"], ["a", "a", "aa", "aaa"], seed=1)
    assert (gap.candidate_mean, gap.baseline_mean, gap.delta) == (3.5, 1.75, 1.75)
    assert gap.delta_ci_low <= 1.75 <= gap.delta_ci_high and gap.delta_ci_low >= -1.0 and gap.delta_ci_high <= 4.0
    assert gap.reference_mean is None and "reward/reference_mean" not in gap.as_metrics()
    with_reference = reward_gap(by_length, PROMPTS, ["aaaa", "aaa", "aaaaa", "aa"], ["a", "a", "aa", "aaa"],
                                reference=["aa", "aa", "aaa", "a"], seed=1)
    assert with_reference.as_metrics()["reward/reference_mean"] == 2.0
    assert with_reference.delta == gap.delta and with_reference.delta_ci_low == gap.delta_ci_low
    with pytest.raises(ValueError, match="one reference answer per prompt"):
        reward_gap(by_length, PROMPTS, PROMPTS, PROMPTS, reference=["a"])
    with pytest.raises(ValueError, match="one candidate and one baseline answer per prompt"):
        reward_gap(by_length, PROMPTS, ["a"], ["b"])


def test_a_reward_model_scores_each_answer_in_the_chat_template(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    rm = ModelWithValueHead(AutoModelForCausalLM.from_pretrained(tiny_model_dir)).eval()
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "template": "chatml"})
    tokenizer, template = tokenizer_and_template(cfg, str(tiny_model_dir))
    score = reward_model_scorer(rm, tokenizer, template, batch_size=3)
    answers = ["Hello!", "1, 2, 3", "Blue", "4"]
    scores = score(PROMPTS, answers)
    raw = AutoTokenizer.from_pretrained(tiny_model_dir)
    for prompt, answer, got in zip(PROMPTS, answers, scores, strict=True):
        text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
        ids = torch.tensor([raw.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            _, values = rm(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert got == pytest.approx(values[0, -1].item(), abs=1e-4)
    assert len(set(scores)) == len(scores)  # a random head still tells the answers apart
