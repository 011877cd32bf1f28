"""sdpa per packed sequence: the same logits and gradients as transformers' block-diagonal mask, less work."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kubetune.data.collator import DataCollatorForSupervised
from kubetune.model import packed_attention
from kubetune.model.packed_attention import packed_spans


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,  # grouped-query, as SmolLM2
                         max_position_embeddings=64, use_cache=False, pad_token_id=0)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def examples(*lengths: int) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 128, (n,), generator=generator).tolist() for n in lengths]
    return [{"input_ids": ids, "labels": list(ids)} for ids in rows]


def loss_and_grads(model, batch):  # noqa: ANN001, ANN201
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_spans_cut_rows_where_positions_restart_and_leave_other_batches_alone():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert packed_spans(positions, 6, 6) == [[(0, 3), (3, 5), (5, 6)], [(0, 4), (4, 6)]]
    assert packed_spans(torch.arange(6)[None], 6, 6) is None  # a padded batch: one sequence per row
    assert packed_spans(positions, 1, 6) is None  # decoding with a cache
    assert packed_spans(None, 6, 6) is None


@pytest.mark.parametrize("one_row", [False, True])
def test_per_sequence_sdpa_equals_the_block_mask(one_row: bool):
    model = tiny_llama()
    batch = DataCollatorForSupervised(pad_token_id=0, padding_free=True, flatten_packed=one_row)(
        examples(9, 3, 5, 4, 7))
    logits, loss, grads = loss_and_grads(model, batch)  # transformers' sdpa with its block-diagonal mask
    assert packed_attention.can_use(model) and model.config._attn_implementation == "sdpa"  # asking changes nothing
    packed_attention.switch(model)
    assert model.config._attn_implementation == packed_attention.NAME
    packed_logits, packed_loss, packed_grads = loss_and_grads(model, batch)
    torch.testing.assert_close(packed_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=0)
    for packed, expected in zip(packed_grads, grads, strict=True):
        torch.testing.assert_close(packed, expected, atol=1e-6, rtol=1e-4)


def test_padded_batches_and_left_padded_generation_are_unchanged():
    model = tiny_llama().eval()
    padded = DataCollatorForSupervised(pad_token_id=0)(examples(6, 3))
    prompts = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]]),
               "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    with torch.no_grad():
        expected_logits = model(**padded).logits
        expected_tokens = model.generate(**prompts, max_new_tokens=6, do_sample=False, use_cache=True)
        assert packed_attention.can_use(model)
        packed_attention.switch(model)
        torch.testing.assert_close(model(**padded).logits, expected_logits, atol=1e-5, rtol=0)
        tokens = model.generate(**prompts, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(tokens, expected_tokens)


def test_only_sdpa_models_are_switched():
    eager = tiny_llama("eager")
    assert packed_attention.can_use(eager) is False and eager.config._attn_implementation == "eager"
