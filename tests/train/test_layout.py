"""The batch-layout plan: decided without touching the models, applied in one visible step, recorded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kubetune.config import load_config
from kubetune.model import packed_attention
from kubetune.train import layout

REPO = Path(__file__).resolve().parents[2]


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def cfg(**keys):
    base = {"model_name_or_path": "m", "stage": "sft", "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"),
            "output_dir": "o"}
    return load_config(None, {**base, **keys})


def test_sdpa_sft_plans_one_row_of_per_sequence_sdpa_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_llama()
    plan = layout.plan_sft(cfg(flash_attn="sdpa"), model)
    assert (plan.rows, plan.attention, plan.padding_free, plan.one_row) == (
        "one-row", {"policy": packed_attention.NAME}, True, True)
    assert "per packed sequence" in plan.reason
    assert model.config._attn_implementation == "sdpa"  # planning changes nothing
    with caplog.at_level(logging.INFO, logger="kubetune.train.layout"):
        layout.apply(plan, {"policy": model})
    assert model.config._attn_implementation == packed_attention.NAME
    assert [r.getMessage() for r in caplog.records] == [plan.describe()]
    assert plan.as_dict()["attention"] == {"policy": packed_attention.NAME}


@pytest.mark.parametrize(("keys", "attn", "rows", "kernel"), [
    ({"packing": False}, "sdpa", "padded", "sdpa"),
    ({}, "eager", "padding-free", "eager"),
    ({"neat_packing": True}, "sdpa", "neat-packed", "sdpa"),
    ({"stage": "pt", "dataset": "kubi_pt"}, "sdpa", "packed", "sdpa"),
])
def test_sft_layouts(keys: dict, attn: str, rows: str, kernel: str) -> None:
    model = tiny_llama(attn)
    plan = layout.plan_sft(cfg(**keys), model)
    assert (plan.rows, plan.attention["policy"]) == (rows, kernel)
    layout.apply(plan, {"policy": model})
    assert model.config._attn_implementation == attn  # only a one-row plan switches kernels


def test_dpo_pairs_switch_policy_and_reference_together() -> None:
    models = {"policy": tiny_llama(), "reference": tiny_llama()}
    plan = layout.plan_pairs(cfg(stage="dpo", dataset="kubi_pref", cutoff_len=48), models)
    assert (plan.rows, plan.pack_to, plan.one_row) == ("one-row", 48, True)
    layout.apply(plan, models)
    assert {m.config._attn_implementation for m in models.values()} == {packed_attention.NAME}
    # an eager reference cannot take per-sequence sdpa: rows of cutoff_len under the block mask, nobody switched
    mixed = {"policy": tiny_llama(), "reference": tiny_llama("eager")}
    plan = layout.plan_pairs(cfg(stage="dpo", dataset="kubi_pref", cutoff_len=48), mixed)
    assert (plan.rows, plan.attention) == ("packed-pairs", {"policy": "sdpa", "reference": "eager"})


def test_dpo_pairs_stay_padded_where_zero3_shards_the_head() -> None:
    """Planned before DeepSpeed wraps the models: the plan reads the config, as the models look whole yet."""
    models = {"policy": tiny_llama(), "reference": tiny_llama()}
    zero3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    plan = layout.plan_pairs(cfg(stage="dpo", dataset="kubi_pref", cutoff_len=48, deepspeed=zero3), models)
    assert (plan.rows, plan.pack_to) == ("padded", None)
    assert "deepspeed zero-3 shards the parameters" in plan.reason
    zero2 = {"zero_optimization": {"stage": 2}}
    assert layout.plan_pairs(cfg(stage="dpo", dataset="kubi_pref", cutoff_len=48, deepspeed=zero2), models).pack_to
