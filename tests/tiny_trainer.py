"""A Trainer run small enough for tracking tests: a 2-layer, hidden-32 Llama on random tokens, on one thread."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def train_tiny(output_dir: str | Path, callbacks: Sequence[Any], max_steps: int = 4, *, eval_steps: int = 2,
               step_pause_s: float = 0.0) -> Any:
    """Train for `max_steps`, logging every step and evaluating every `eval_steps`; nothing is saved.

    Args:
        output_dir: the Trainer's output folder (`save_strategy="no"`).
        callbacks: e.g. `[tracker.callback()]`.
        max_steps: optimiser steps.
        eval_steps: steps between evaluations.
        step_pause_s: sleep after each step (a real model's step takes longer than this one's).

    Returns:
        `Trainer`: after `train()`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    class Pause(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(step_pause_s)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    rows = []
    for _ in range(16):
        ids = torch.randint(0, 64, (16,)).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * 16, "labels": ids})
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-2, logging_steps=1, eval_strategy="steps", eval_steps=eval_steps, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, include_num_input_tokens_seen="non_padding",
    )
    extra = [Pause()] if step_pause_s else []
    trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=rows, eval_dataset=rows[:8],
                      callbacks=[*callbacks, *extra])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses to thread hand-offs on a busy machine (10x here)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return trainer
