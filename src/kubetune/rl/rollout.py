"""Rollouts: sample responses to a batch of prompts and record what PPO needs to learn from them.

For each prompt we keep the sampled response (cut after its first stop token), the log-probs of
its tokens under the sampling policy and under the reference, the critic's values, and the score.

Sequences are laid out as `[left-padded prompt | right-padded response]`, the way `generate`
returns them, with position ids counted from the first real token, so the log-probs computed
here match the distribution the tokens were sampled from. Logits at position t predict token
t + 1: the response's log-probs and values are read at positions P−1 … P+R−2 (P = padded
prompt width, R = response width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kubetune.losses.logps import token_logps
from kubetune.losses.ppo import entropy_from_logits
from kubetune.rl.rewards import RewardSource


@dataclass
class SequenceBatch:
    """Prompts and responses as model input.

    Attributes:
        input_ids, attention_mask, position_ids: `[batch, P + R]`.
        prompt_width: P, the padded prompt width (responses start at this column).
        response_ids: `[batch, R]` the response tokens (pad after each response's end).
        response_mask: `[batch, R]` float, 1 on response tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    response_ids: torch.Tensor
    response_mask: torch.Tensor


def pad_sequences(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_token_id: int,
                  device: torch.device | str = "cpu") -> SequenceBatch:
    """Left-pad the prompts and right-pad the responses into one `[prompt | response]` batch.

    Args:
        prompt_ids: token ids of each prompt.
        response_ids: token ids of each response (at least one token each).
        pad_token_id: the padding id (masked out; its value does not matter).
        device: where the tensors go.
    """
    prompt_width = max(len(p) for p in prompt_ids)
    response_width = max(len(r) for r in response_ids)
    rows, masks, responses, response_masks = [], [], [], []
    for prompt, response in zip(prompt_ids, response_ids, strict=True):
        left, right = prompt_width - len(prompt), response_width - len(response)
        rows.append([pad_token_id] * left + list(prompt) + list(response) + [pad_token_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
        responses.append(list(response) + [pad_token_id] * right)
        response_masks.append([1.0] * len(response) + [0.0] * right)
    attention_mask = torch.tensor(masks, device=device)
    # positions count real tokens only, as `generate` does for left-padded prompts
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return SequenceBatch(torch.tensor(rows, device=device), attention_mask, position_ids, prompt_width,
                         torch.tensor(responses, device=device), torch.tensor(response_masks, device=device))


def cut_at_stop(tokens: list[int], stop_token_ids: set[int]) -> list[int]:
    """The tokens up to and including the first stop token (all of them if none stops)."""
    for i, token in enumerate(tokens):
        if token in stop_token_ids:
            return tokens[:i + 1]
    return tokens


@torch.no_grad()
def sample_responses(lm: Any, prompt_ids: list[list[int]], gen_kwargs: dict[str, Any], pad_token_id: int,
                     stop_token_ids: list[int]) -> list[list[int]]:
    """Generate one response per prompt; each is cut after its first stop token.

    Args:
        lm: the causal LM (plain or PEFT), in eval mode.
        prompt_ids: token ids of each prompt (unpadded).
        gen_kwargs: `generate` keyword arguments (`kubetune.evaluate.generate.generation_kwargs`).
        pad_token_id: the padding id.
        stop_token_ids: ids that end a response (`template.stop_token_ids`).
    """
    device = next(lm.parameters()).device
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    # use_cache: training configs turn the KV cache off (gradient checkpointing); sampling needs it
    generated = lm.generate(input_ids=input_ids, attention_mask=mask, use_cache=True, **gen_kwargs)
    stops = set(stop_token_ids)
    return [cut_at_stop(row.tolist(), stops) or [pad_token_id] for row in generated[:, width:]]


def _response_logprobs(logits: torch.Tensor, batch: SequenceBatch, temperature: float) -> torch.Tensor:
    taken = token_logps(logits.float() / temperature, batch.response_ids)  # float32 first, as generate samples
    return torch.where(batch.response_mask.bool(), taken, 0.0)


def _logits_to_keep(batch: SequenceBatch) -> int:
    # positions P-1 … P+R-1; the last one predicts past the response and is dropped
    return batch.response_ids.shape[1] + 1


def policy_forward(policy: Any, batch: SequenceBatch, temperature: float, with_entropy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens, the critic's values, and (optionally) the entropies.

    Args:
        policy: a `ModelWithValueHead` around the policy.
        batch: the sequences.
        temperature: the sampling temperature (log-probs are those of the distribution sampled from).
        with_entropy: also return the per-token entropy (training statistics).

    Returns:
        (logprobs, values, entropy or None), each `[batch, R]`.
    """
    logits, values = policy(batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, logits_to_keep=_logits_to_keep(batch))
    logits = logits[:, :-1]
    start = batch.prompt_width - 1
    values = values[:, start:start + batch.response_ids.shape[1]]
    entropy = entropy_from_logits(logits / temperature) if with_entropy else None
    return _response_logprobs(logits, batch, temperature), values, entropy


@torch.no_grad()
def reference_logprobs(policy: Any, reference: Any | None, batch: SequenceBatch, temperature: float
                       ) -> torch.Tensor:
    """Log-probs of the response tokens under the reference model.

    Args:
        policy: the `ModelWithValueHead`; with `reference=None` its PEFT model runs with the adapter
            disabled, which *is* the reference (no second copy of the weights).
        reference: a frozen causal LM (`ref_model`, or the base for full/freeze fine-tuning), or None.
        batch: the sequences.
        temperature: as in `policy_forward`.
    """
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "logits_to_keep": _logits_to_keep(batch), "use_cache": False}
    if reference is None:
        lm = policy.pretrained_model
        with lm.disable_adapter():
            logits = lm(**kwargs).logits
    else:
        logits = reference(**kwargs).logits
    return _response_logprobs(logits[:, :-1], batch, temperature)


@dataclass
class Experience:
    """One rollout batch, padded to its longest response.

    Attributes:
        prompt_ids, response_ids, references: per sample.
        logprobs, ref_logprobs, values, mask: `[n, R]` (0 on padding).
        scores: `[n]` the raw scores from the reward source.
        advantages, returns: `[n, R]`, filled in after GAE.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    references: list[str]
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def minibatch(self, indices: list[int], pad_token_id: int, device: torch.device | str
                  ) -> tuple[SequenceBatch, dict[str, torch.Tensor]]:
        """The sequences of `indices`, and their rollout tensors cut to the minibatch's longest response."""
        assert self.advantages is not None and self.returns is not None, "compute advantages first"
        batch = pad_sequences([self.prompt_ids[i] for i in indices], [self.response_ids[i] for i in indices],
                              pad_token_id, device)
        width = batch.response_ids.shape[1]
        index = torch.tensor(indices)
        rows = {name: getattr(self, name)[index, :width].to(device)
                for name in ("logprobs", "values", "advantages", "returns")}
        return batch, rows


@torch.no_grad()
def collect_experience(policy: Any, reference: Any | None, reward: RewardSource, prompt_ids: list[list[int]],
                       references: list[str], gen_kwargs: dict[str, Any], *, temperature: float, pad_token_id: int,
                       stop_token_ids: list[int], chunk_size: int) -> Experience:
    """Sample, evaluate and score responses to `prompt_ids`, `chunk_size` prompts at a time.

    Args:
        policy: the `ModelWithValueHead` around the policy (put in eval mode here).
        reference: a frozen reference LM, or None to use the policy with its adapter disabled.
        reward: the reward source.
        prompt_ids: the prompts.
        references: the dataset's reference answers (for rule-based rewards; may be empty strings).
        gen_kwargs: `generate` keyword arguments.
        temperature: the sampling temperature (1 for greedy decoding).
        pad_token_id: the padding id.
        stop_token_ids: ids that end a response.
        chunk_size: prompts per generate/forward call (`per_device_train_batch_size`).
    """
    policy.eval()
    device = next(policy.parameters()).device
    responses: list[list[int]] = []
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "scores": []}
    for start in range(0, len(prompt_ids), chunk_size):
        prompts = prompt_ids[start:start + chunk_size]
        sampled = sample_responses(policy.pretrained_model, prompts, gen_kwargs, pad_token_id, stop_token_ids)
        batch = pad_sequences(prompts, sampled, pad_token_id, device)
        logprobs, values, _ = policy_forward(policy, batch, temperature)
        parts["logprobs"].append(logprobs.cpu())
        parts["values"].append(torch.where(batch.response_mask.bool(), values, 0.0).cpu())
        parts["ref_logprobs"].append(reference_logprobs(policy, reference, batch, temperature).cpu())
        parts["scores"].append(reward(prompts, sampled, references[start:start + chunk_size]))
        responses.extend(sampled)
    width = max(len(r) for r in responses)

    def stack(chunks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1])) for c in chunks])

    mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in responses])
    return Experience(prompt_ids=list(prompt_ids), response_ids=responses, references=list(references),
                      logprobs=stack(parts["logprobs"]), ref_logprobs=stack(parts["ref_logprobs"]),
                      values=stack(parts["values"]), mask=mask, scores=torch.cat(parts["scores"]))


class PromptSampler:
    """Which prompts each PPO update rolls out: epoch after epoch of seeded shuffles, as one stream.

    Update k takes positions `[k·batch_size, (k+1)·batch_size)` of the stream, where epoch e is a
    permutation drawn from a generator seeded with `seed + e`. A batch therefore depends only on
    (seed, k): a resumed run needs no sampler state, and a batch may straddle two epochs.

    Args:
        num_prompts: size of the prompt set.
        batch_size: prompts per update.
        seed: the data seed.
    """

    def __init__(self, num_prompts: int, batch_size: int, seed: int) -> None:
        if num_prompts < 1:
            raise ValueError("PPO needs at least one prompt")
        self.num_prompts, self.batch_size, self.seed = num_prompts, batch_size, seed
        self._orders: dict[int, list[int]] = {}

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_prompts // self.batch_size)

    def batch(self, update: int) -> list[int]:
        """Prompt indices of update `update` (0-based)."""
        positions = range(update * self.batch_size, (update + 1) * self.batch_size)
        return [self._order(p // self.num_prompts)[p % self.num_prompts] for p in positions]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.num_prompts, generator=generator).tolist()}
        return self._orders[epoch]
