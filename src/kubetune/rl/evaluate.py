"""The mean reward of a policy's generations under a reward source — the number RLHF should raise.

Used by the ppo stage after training (`eval_reward_mean`), by `kubetune eval` on a ppo config, and
by anyone who wants to compare policies (an SFT adapter against its PPO or DPO successor) under
the same reward model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from kubetune.config import GeneratingArguments
from kubetune.evaluate.generate import generation_kwargs
from kubetune.rl.ranks import Ranks
from kubetune.rl.rewards import RewardSource
from kubetune.rl.rollout import sample_responses


@dataclass
class ScoredGenerations:
    """Attributes:
    responses: the decoded responses, in prompt order.
    rewards: `[n]` their scores.
    lengths: `[n]` response lengths in tokens (stop token included).
    """

    responses: list[str]
    rewards: torch.Tensor
    lengths: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.rewards.mean()) if len(self.rewards) else float("nan")


@torch.no_grad()
def score_generations(policy: Any, tokenizer: Any, prompts: list[list[int]], reward: RewardSource,
                      gen: GeneratingArguments, *, references: list[str] | None = None,
                      stop_token_ids: list[int] | None = None, batch_size: int = 8) -> ScoredGenerations:
    """Generate a response to every prompt with `policy` and score it.

    Args:
        policy: a causal LM (plain or PEFT) — not the value-head wrapper.
        tokenizer: its tokenizer (pad id, decoding).
        prompts: prompt token ids (the ppo row form's `input_ids`).
        reward: the reward source.
        gen: generation settings (`do_sample`, `temperature`, `max_new_tokens`, ...).
        references: reference answers passed to rule-based rewards (default: empty strings).
        stop_token_ids: ids that end a response (default: the tokenizer's EOS).
        batch_size: prompts per generate call (default 8).
    """
    policy.eval()
    stops = stop_token_ids or [tokenizer.eos_token_id]
    kwargs = generation_kwargs(gen, tokenizer, stops)
    references = references if references is not None else [""] * len(prompts)
    texts: list[str] = []
    rewards, lengths = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="reward eval", unit="batch"):
        chunk = prompts[start:start + batch_size]
        responses = sample_responses(policy, chunk, kwargs, tokenizer.pad_token_id, stops)
        rewards.append(reward(chunk, responses, references[start:start + batch_size]))
        lengths.extend(len(r) for r in responses)
        texts.extend(tokenizer.batch_decode(responses, skip_special_tokens=gen.skip_special_tokens))
    return ScoredGenerations([t.strip() for t in texts], torch.cat(rewards) if rewards else torch.zeros(0),
                             torch.tensor(lengths, dtype=torch.float32))


def score_generations_on_ranks(ranks: Ranks, policy: Any, tokenizer: Any, prompts: list[list[int]],
                               reward: RewardSource, gen: GeneratingArguments, *,
                               references: list[str] | None = None, **kwargs: Any) -> ScoredGenerations:
    """`score_generations` with the prompts dealt out over the data-parallel ranks (prompt i to rank i mod N).

    Every rank calls it and every rank gets all the results, in prompt order. `kwargs` as in
    `score_generations`.
    """
    if ranks.size == 1:
        return score_generations(policy, tokenizer, prompts, reward, gen, references=references, **kwargs)
    mine = list(range(ranks.rank, len(prompts), ranks.size))
    references = references if references is not None else [""] * len(prompts)
    scored = score_generations(policy, tokenizer, [prompts[i] for i in mine], reward, gen,
                               references=[references[i] for i in mine], **kwargs)
    rows = sorted(ranks.gather_lists(list(zip(mine, scored.responses, scored.rewards.tolist(),
                                              scored.lengths.tolist(), strict=True))))
    return ScoredGenerations([row[1] for row in rows], torch.tensor([row[2] for row in rows], dtype=torch.float32),
                             torch.tensor([row[3] for row in rows], dtype=torch.float32))


def mean_reward(policy: Any, tokenizer: Any, prompts: list[list[int]], reward: RewardSource,
                gen: GeneratingArguments, **kwargs: Any) -> float:
    """Mean score of `policy`'s responses to `prompts`; `kwargs` as in `score_generations`."""
    return score_generations(policy, tokenizer, prompts, reward, gen, **kwargs).mean
