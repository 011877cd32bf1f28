"""Batched generation for the generative metrics: prompts left-padded in batches, the KV cache on whatever the
checkpoint's generation config says, answers back in input order, only the new tokens decoded.

What the model's forward sees tells: with the cache, each step after the first feeds one new token per row; without
it, the whole sequence again."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.config import GeneratingArguments
from kubetune.evaluate.generate import generate

PROMPTS = [[17, 42, 99, 5, 8], [6, 7, 8], [9, 10, 11, 12], [3, 4], [21, 22, 23]]


def _forward_inputs(model, call):  # noqa: ANN001, ANN202
    """(result of call(), input_ids shapes of every forward the call made)."""
    seen: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        return call(), seen
    finally:
        hook.remove()


def test_batches_use_the_kv_cache_even_when_the_checkpoint_turns_it_off(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.generation_config.use_cache = False  # as a checkpoint's generation_config.json may say
    model.config.use_cache = False  # as training with gradient checkpointing leaves it
    gen = GeneratingArguments(max_new_tokens=4, do_sample=False)
    answers, seen = _forward_inputs(model, lambda: generate(model, tokenizer, PROMPTS, gen, batch_size=2))
    # three batches, longest prompts first (5 + 4, 3 + 3, 2 tokens), each a prefill over its padded prompts, then
    # one token a step
    prefills = [shape for shape in seen if shape[1] > 1]
    assert prefills == [(2, 5), (2, 3), (1, 2)], seen
    assert all(shape[1] == 1 for shape in seen if shape not in prefills), seen
    assert len(seen) <= 3 * gen.max_new_tokens  # no step re-reads the sequence

    # the same answers, in input order, as each prompt generated alone
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        ids = torch.tensor([prompt])
        alone = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=True)
        assert answer == tokenizer.decode(alone[0, len(prompt):], skip_special_tokens=True).strip()
