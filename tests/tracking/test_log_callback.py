"""JsonlLogCallback with a real (tiny) Trainer run, and resume behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from kubetune.tracking import JsonlLogCallback

SEQ_LEN = 8
PAD_ID = 0


def _examples(n: int = 8) -> list[dict[str, torch.Tensor]]:
    """Right-padded random sequences of lengths 3..8: padding must not count as throughput."""
    gen = torch.Generator().manual_seed(0)
    examples = []
    for i in range(n):
        length = 3 + i % (SEQ_LEN - 2)
        ids = torch.full((SEQ_LEN,), PAD_ID)
        ids[:length] = torch.randint(1, 64, (length,), generator=gen)
        mask = (torch.arange(SEQ_LEN) < length).long()
        examples.append(
            {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        )
    return examples


def _train(output_dir: Path, resume: str | None = None, **overrides: Any) -> Trainer:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        pad_token_id=PAD_ID,
    )
    options: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
    }
    options.update(overrides)
    trainer = Trainer(
        model=LlamaForCausalLM(config),
        args=TrainingArguments(**options),
        train_dataset=_examples(),
        callbacks=[JsonlLogCallback(output_dir)],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _lines(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]


def test_one_line_per_logging_step_with_progress_and_throughput(tmp_path: Path) -> None:
    _train(tmp_path)

    lines = _lines(tmp_path)
    assert [line["current_steps"] for line in lines] == [1, 2, 3, 4]  # no extra end-of-training summary
    for line in lines:
        assert line["total_steps"] == 4
        assert math.isfinite(line["loss"]) and line["loss"] > 0
        assert line["lr"] > 0 and math.isfinite(line["grad_norm"])
        assert line["throughput"] > 0
        assert line["elapsed_time"].count(":") == 2 and line["remaining_time"].count(":") == 2
    assert [line["percentage"] for line in lines] == [25.0, 50.0, 75.0, 100.0]
    assert lines[-1]["epoch"] == pytest.approx(1.0)
    assert lines[-1]["remaining_time"] == "0:00:00"
    # 4 steps × 2 examples is one pass over all 8: tokens are the attention-mask ones, not padding.
    assert lines[-1]["total_tokens"] == sum(int(e["attention_mask"].sum()) for e in _examples())


def test_resumed_run_replaces_lines_after_the_checkpoint(tmp_path: Path) -> None:
    _train(tmp_path, save_strategy="steps", save_steps=2)
    first = _lines(tmp_path)

    _train(tmp_path, resume=str(tmp_path / "checkpoint-2"), save_strategy="steps", save_steps=2)

    lines = _lines(tmp_path)
    assert [line["current_steps"] for line in lines] == [1, 2, 3, 4]
    assert lines[:2] == first[:2]  # kept verbatim, not rewritten
    # The resumed run counts tokens on from the checkpoint's total, and times only its own steps.
    assert lines[-1]["total_tokens"] == first[-1]["total_tokens"]


def test_fresh_run_in_reused_folder_starts_a_new_log(tmp_path: Path) -> None:
    (tmp_path / "trainer_log.jsonl").write_text('{"current_steps": 9, "loss": 1.0}\n')
    _train(tmp_path, max_steps=2)
    assert [line["current_steps"] for line in _lines(tmp_path)] == [1, 2]


def _state(**fields: Any) -> TrainerState:
    state = TrainerState(global_step=3, max_steps=10)
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def test_only_the_main_process_writes(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    callback = JsonlLogCallback(tmp_path)
    callback.on_log(args, _state(is_world_process_zero=False), TrainerControl(), logs={"loss": 1.0})
    assert not (tmp_path / "trainer_log.jsonl").exists()

    callback.on_log(args, _state(), TrainerControl(), logs={"eval_loss": 0.5, "epoch": 0.3})
    (line,) = _lines(tmp_path)
    assert line["eval_loss"] == 0.5 and line["current_steps"] == 3 and line["percentage"] == 30.0
    assert "throughput" not in line  # token counting is off by default: no made-up number
