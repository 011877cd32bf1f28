"""The reward gap: the mean reward of the candidate's answers and of the baseline's under one reward model, on the
same prompts, and the paired difference with its 95% interval — a promotion gate for dpo/kto/ppo pipelines.
With the rows' own reference answers it also gives their mean reward: what the reward model makes of the answers
the dataset calls right. A candidate already scoring about that much has little left to gain from this reward
model, however good or bad its answers are (one that learnt the answers' form but cannot check their content).

Both answers to a prompt are scored as the reward model was trained to read them: the prompt and the answer
written out with the chat template (`template.encode_oneturn`). The interval is a seeded percentile bootstrap
of the per-prompt differences (paired: the prompt's difficulty cancels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.evaluate.judge import bootstrap_interval


@dataclass(frozen=True)
class RewardGap:
    """Mean rewards of both sides and `delta` = candidate − baseline, with its interval; `reference_mean` is the
    mean reward of the rows' reference answers when they were given."""

    candidate_mean: float
    baseline_mean: float
    delta: float
    delta_ci_low: float
    delta_ci_high: float
    n: int
    reference_mean: float | None = None

    def as_metrics(self, prefix: str = "reward") -> dict[str, float]:
        metrics = {f"{prefix}/candidate_mean": self.candidate_mean, f"{prefix}/baseline_mean": self.baseline_mean,
                   f"{prefix}/delta": self.delta, f"{prefix}/delta_ci_low": self.delta_ci_low,
                   f"{prefix}/delta_ci_high": self.delta_ci_high}
        if self.reference_mean is not None:
            metrics[f"{prefix}/reference_mean"] = self.reference_mean
        return metrics


def conversation_ids(template: Any, tokenizer: Any, prompt: str, answer: str) -> list[int]:
    """The prompt and one answer as the reward model reads them."""
    prompt_ids, answer_ids = template.encode_oneturn(
        tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    return prompt_ids + answer_ids


def reward_gap(score: Any, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str], *,
               reference: Sequence[str] | None = None, seed: int = 0, resamples: int = 2000) -> RewardGap:
    """Score both sides with `score(prompts, answers) -> list[float]` and compare them prompt by prompt; score the
    `reference` answers too when given (one per prompt)."""
    if not (len(prompts) == len(candidate) == len(baseline)) or not prompts:
        raise ValueError(f"reward_gap needs one candidate and one baseline answer per prompt, and a prompt: got "
                         f"{len(prompts)}, {len(candidate)}, {len(baseline)}")
    if reference is not None and len(reference) != len(prompts):
        raise ValueError(f"reward_gap needs one reference answer per prompt: got {len(reference)} for "
                         f"{len(prompts)} prompts")
    ours, theirs = list(score(prompts, candidate)), list(score(prompts, baseline))
    deltas = [a - b for a, b in zip(ours, theirs, strict=True)]
    low, high = bootstrap_interval(deltas, seed=seed, resamples=resamples)
    n = len(deltas)
    reference_mean = sum(score(prompts, reference)) / n if reference is not None else None
    return RewardGap(sum(ours) / n, sum(theirs) / n, sum(deltas) / n, low, high, n, reference_mean)


def reward_model_scorer(model: Any, tokenizer: Any, template: Any, *, batch_size: int = 8) -> Any:
    """`score(prompts, answers)` over a loaded reward model (`kubetune.model.reward.load_reward_model`)."""
    from kubetune.model.loader import pad_token_id
    from kubetune.model.reward import score_ids

    def score(prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        ids = [conversation_ids(template, tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
        return score_ids(model, ids, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size).tolist()

    return score


def templated_scorer(model: Any, tokenizer: Any, template: Any, *, batch_size: int = 8) -> Any:
    """`score(prompts, answers)` where each prompt is already written out in the chat template (the `prompt` of
    generated_predictions.jsonl, generation header included): the answer follows as the template's assistant turn."""
    from kubetune.model.loader import pad_token_id
    from kubetune.model.reward import score_ids

    def answer_ids(answer: str) -> list[int]:
        # the assistant turn alone: its ids do not depend on the prompt before it
        return template.encode_oneturn(tokenizer, [{"role": "user", "content": "?"},
                                                   {"role": "assistant", "content": answer}])[1]

    def score(prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        ids = [tokenizer.encode(p, add_special_tokens=False) + answer_ids(a)
               for p, a in zip(prompts, answers, strict=True)]
        return score_ids(model, ids, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size).tolist()

    return score
