"""Rollouts: stop-token cutting, the [prompt | response] layout, log-probs that match the sampler, prompt order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.model.value_head import ModelWithValueHead
from kubetune.rl.rewards import FunctionReward
from kubetune.rl.rollout import PromptSampler, collect_experience, cut_at_stop, pad_sequences, policy_forward


def test_responses_are_cut_after_their_first_stop_token() -> None:
    assert cut_at_stop([5, 6, 2, 7, 2], {2}) == [5, 6, 2]
    assert cut_at_stop([5, 6, 7], {2, 3}) == [5, 6, 7]
    assert cut_at_stop([3, 9], {2, 3}) == [3]


def test_sequences_are_left_padded_prompts_then_right_padded_responses() -> None:
    batch = pad_sequences([[11, 12, 13], [21]], [[14], [22, 23]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[11, 12, 13, 14, 0], [0, 0, 21, 22, 23]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]
    assert batch.prompt_width == 3
    assert batch.response_ids.tolist() == [[14, 0], [22, 23]]
    assert batch.response_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: a non-zero adapter, so the policy and its reference differ
    lm = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return ModelWithValueHead(lm)


def test_experience_matches_unpadded_forward_passes_and_stops_at_stop_tokens(policy, tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer.encode(t) for t in ("Hello there, how are you?", "Hi", "one two three four five six", "x")]
    stops = list(range(0, len(tokenizer), 3))  # a third of the vocabulary stops: responses of mixed lengths
    gen = {"do_sample": True, "max_new_tokens": 8, "temperature": 0.7, "top_k": 0, "top_p": 1.0,
           "pad_token_id": tokenizer.pad_token_id, "eos_token_id": stops}
    torch.manual_seed(1)
    exp = collect_experience(policy, None, FunctionReward(lambda p, r: [len(x) for x in r], tokenizer), prompts,
                             [""] * 4, gen, temperature=0.7, pad_token_id=tokenizer.pad_token_id,
                             stop_token_ids=stops, chunk_size=3)  # two chunks of different widths
    lengths = [len(r) for r in exp.response_ids]
    assert exp.mask.sum(dim=1).tolist() == lengths and len(set(lengths)) > 1
    stop_set = set(stops)
    for response in exp.response_ids:
        assert not stop_set & set(response[:-1])  # nothing after the first stop token is kept
    lm = policy.pretrained_model
    for i, (prompt, response) in enumerate(zip(prompts, exp.response_ids, strict=True)):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits, values = policy(ids)
            with lm.disable_adapter():
                ref_logits = lm(ids).logits
        start, n = len(prompt) - 1, len(response)
        target = torch.tensor(response).unsqueeze(1)
        logprobs = torch.log_softmax(logits[0, start:start + n] / 0.7, -1).gather(1, target).squeeze(1)
        ref = torch.log_softmax(ref_logits[0, start:start + n] / 0.7, -1).gather(1, target).squeeze(1)
        assert_close(exp.logprobs[i, :n], logprobs, atol=1e-5, rtol=0)
        assert_close(exp.ref_logprobs[i, :n], ref, atol=1e-5, rtol=0)
        assert_close(exp.values[i, :n], values[0, start:start + n], atol=1e-5, rtol=0)
        assert exp.logprobs[i, n:].abs().sum() == 0 and exp.values[i, n:].abs().sum() == 0
    assert (exp.logprobs - exp.ref_logprobs).abs().max() > 1e-3  # the adapter was really disabled
    assert exp.scores.tolist() == [float(len(tokenizer.decode(r, skip_special_tokens=True)))
                                   for r in exp.response_ids]

    # a training minibatch re-pads a subset: its log-probs must equal the rollout's (ratio 1 before any update)
    exp.advantages = exp.returns = torch.zeros_like(exp.logprobs)
    batch, old = exp.minibatch([3, 0], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        logprobs, values, entropy = policy_forward(policy, batch, 0.7, with_entropy=True)
    assert_close(logprobs, old["logprobs"], atol=1e-5, rtol=0)
    assert entropy.shape == logprobs.shape and (entropy > 0).all()


def test_prompt_order_is_a_seeded_shuffle_per_epoch_resumable_from_the_step_alone() -> None:
    sampler = PromptSampler(num_prompts=10, batch_size=4, seed=7)
    stream = [i for step in range(5) for i in sampler.batch(step)]  # 20 positions = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # each epoch is shuffled anew
    assert PromptSampler(10, 4, seed=7).batch(3) == sampler.batch(3)  # no state needed to resume at step 3
    assert PromptSampler(10, 4, seed=8).batch(0) != sampler.batch(0)
    assert sampler.steps_per_epoch == 3


def test_response_logprobs_are_float32_log_probs_of_the_tempered_distribution() -> None:
    """bf16 logits are upcast before the temperature divides them: the log-probs are those `generate` samples from."""
    from types import SimpleNamespace

    from kubetune.rl.rollout import _response_logprobs

    torch.manual_seed(0)
    logits = (torch.randn(2, 3, 50) * 8).to(torch.bfloat16)
    batch = SimpleNamespace(response_ids=torch.randint(0, 50, (2, 3)), response_mask=torch.tensor([[1, 1, 0]] * 2))
    expected = torch.log_softmax(logits.float() / 0.95, dim=-1).gather(2, batch.response_ids[..., None]).squeeze(2)
    got = _response_logprobs(logits, batch, 0.95)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.where(batch.response_mask.bool(), expected, 0.0), atol=1e-5, rtol=0)
