"""A reward model on disk: saved, restored in place (resume), loaded alone (PPO, eval), and scoring sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune.config import load_config
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model, load_tokenizer
from kubetune.model.reward import (
    RewardModelInfo,
    find_trained_reward_model,
    load_reward_model,
    load_reward_weights,
    save_reward_model,
    score_ids,
    score_texts,
    sequence_scores,
)
from kubetune.model.value_head import ModelWithValueHead

SEQUENCES = [[1, 5, 9, 200, 17], [3, 4], [8, 8, 8, 8, 8, 8, 8, 1000, 2], [42]]


def build(model_dir: Path, finetuning_type: str, seed: int) -> tuple[ModelWithValueHead, object]:
    """A trainable reward model with every trainable weight randomised (LoRA B starts at 0 otherwise)."""
    cfg = load_config(None, {"model_name_or_path": str(model_dir), "stage": "rm", "finetuning_type": finetuning_type,
                             "lora_rank": 4, "freeze_trainable_layers": 1})
    torch.manual_seed(seed)
    base = prepare_for_training(load_base_model(cfg.model), cfg.model, cfg.method, gradient_checkpointing=False)
    model = ModelWithValueHead(base)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    return model.eval(), cfg


def trainable_state(model: ModelWithValueHead) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def scores(model: ModelWithValueHead) -> torch.Tensor:
    return score_ids(model, SEQUENCES, pad_token_id=0, batch_size=len(SEQUENCES))


@pytest.mark.parametrize("finetuning_type", ["lora", "freeze", "full"])
def test_saved_weights_and_head_restore_in_place(tiny_model_dir: Path, tmp_path: Path, finetuning_type: str) -> None:
    saved, cfg = build(tiny_model_dir, finetuning_type, seed=1)
    save_reward_model(saved, tmp_path, RewardModelInfo(str(tiny_model_dir), finetuning_type))
    other, _ = build(tiny_model_dir, finetuning_type, seed=2)
    before = trainable_state(other)
    load_reward_weights(other, tmp_path)
    after, expected = trainable_state(other), trainable_state(saved)
    assert after.keys() == expected.keys() and "v_head.summary.weight" in after
    for name in after:
        assert not torch.equal(before[name], after[name]), f"{name} was not restored"
        torch.testing.assert_close(after[name], expected[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(scores(other), scores(saved), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("finetuning_type", "kind"), [("lora", "lora"), ("full", "full"), ("freeze", "full")])
def test_load_reward_model_alone_scores_like_the_saved_one(tiny_model_dir: Path, tmp_path: Path,
                                                           finetuning_type: str, kind: str) -> None:
    saved, cfg = build(tiny_model_dir, finetuning_type, seed=3)
    save_reward_model(saved, tmp_path, RewardModelInfo(str(tiny_model_dir), finetuning_type))
    rng = torch.get_rng_state()
    loaded = load_reward_model(str(tmp_path), base_model_args=cfg.model, reward_model_type=kind)
    assert torch.equal(rng, torch.get_rng_state()), "loading must not move the caller's RNG"
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(scores(loaded), scores(saved), rtol=0, atol=1e-5)
    assert RewardModelInfo.load(tmp_path).reward_model_type == kind


def test_wrong_kind_or_no_head_is_refused_with_a_hint(tiny_model_dir: Path, tmp_path: Path) -> None:
    saved, cfg = build(tiny_model_dir, "lora", seed=4)
    save_reward_model(saved, tmp_path / "rm", RewardModelInfo(str(tiny_model_dir), "lora"))
    with pytest.raises(ValueError, match="set reward_model_type: lora"):
        load_reward_model(str(tmp_path / "rm"), base_model_args=cfg.model, reward_model_type="full")
    with pytest.raises(FileNotFoundError, match="output_dir of an rm"):
        load_reward_model(str(tiny_model_dir), base_model_args=cfg.model, reward_model_type="full")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward_model(str(tmp_path / "nowhere"), base_model_args=cfg.model)
    full, _ = build(tiny_model_dir, "full", seed=4)
    with pytest.raises(FileNotFoundError, match="finetuning_type"):  # a LoRA checkpoint cannot resume a full run
        load_reward_weights(full, tmp_path / "rm")


def test_scores_ignore_padding_batching_and_text_round_trip(tiny_model_dir: Path) -> None:
    model, cfg = build(tiny_model_dir, "lora", seed=5)
    one_by_one = score_ids(model, SEQUENCES, pad_token_id=0, batch_size=1)
    batched = score_ids(model, SEQUENCES, pad_token_id=7, batch_size=3)
    torch.testing.assert_close(one_by_one, batched, rtol=0, atol=1e-5)
    ids = torch.tensor([SEQUENCES[0]])
    # the fast path (last-position logits only) scores exactly as ModelWithValueHead.score
    mask = torch.ones_like(ids)
    torch.testing.assert_close(sequence_scores(model, ids, mask), model.score(ids, mask))
    tokenizer = load_tokenizer(cfg.model)
    texts = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nAnswer: hello.<|im_end|>\n", "short"]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    torch.testing.assert_close(score_texts(model, tokenizer, texts),
                               score_ids(model, encoded, pad_token_id=tokenizer.pad_token_id), rtol=0, atol=1e-6)


def test_evaluate_only_finds_the_trained_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    saved, cfg = build(tiny_model_dir, "lora", seed=6)
    save_reward_model(saved, tmp_path / "rm", RewardModelInfo(str(tiny_model_dir), "lora"))
    assert find_trained_reward_model(cfg.model, str(tmp_path / "rm")) == tmp_path / "rm"
    assert find_trained_reward_model(cfg.model, str(tmp_path / "empty")) is None
    with_adapter = cfg.model.model_copy(update={"adapter_name_or_path": [str(tmp_path / "rm")]})
    assert find_trained_reward_model(with_adapter, str(tmp_path / "empty")) == tmp_path / "rm"
