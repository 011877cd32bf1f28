"""LLaMA-Factory training keys that reach transformers' TrainingArguments."""

from __future__ import annotations

from kubetune.config import load_config

BASE = {"model_name_or_path": "some/model"}


def test_include_effective_tokens_per_second_is_a_field_and_tokens_are_still_counted(tmp_path) -> None:
    from kubetune.tracking.throughput import counts_tokens
    from kubetune.train.arguments import training_arguments

    cfg = load_config(None, {"include_effective_tokens_per_second": True}, base=BASE)
    assert cfg.train.include_effective_tokens_per_second  # the sft stage test checks the metric it adds
    # trainer_log's per-line `throughput` counts non-padding tokens whatever the flag says
    assert counts_tokens(training_arguments(cfg, tmp_path))


def test_early_stopping_watches_the_eval_loss_unless_told_otherwise(tmp_path) -> None:
    from kubetune.train.arguments import training_arguments

    keys = {"early_stopping_steps": 3, "eval_strategy": "steps", "val_size": 0.1}
    args = training_arguments(load_config(None, keys, base=BASE), tmp_path)
    assert args.metric_for_best_model == "loss" and args.greater_is_better is False  # transformers reads eval_loss
    args = training_arguments(load_config(None, {**keys, "metric_for_best_model": "accuracy",
                                                 "compute_accuracy": True}, base=BASE), tmp_path)
    assert args.metric_for_best_model == "accuracy" and args.greater_is_better is True
    assert training_arguments(load_config(None, {}, base=BASE), tmp_path).metric_for_best_model is None


def test_disable_shuffling_trains_on_rows_in_dataset_order(tmp_path) -> None:
    import torch
    from transformers import Trainer

    from kubetune.train.arguments import training_arguments

    rows = [{"input_ids": [i]} for i in range(16)]

    def first_epoch_order(**keys) -> list[int]:
        cfg = load_config(None, {"per_device_train_batch_size": 4, **keys}, base=BASE)
        trainer = Trainer(model=torch.nn.Linear(1, 1), args=training_arguments(cfg, tmp_path), train_dataset=rows,
                          data_collator=lambda batch: {"ids": [r["input_ids"][0] for r in batch]})
        return [i for batch in trainer.get_train_dataloader() for i in batch["ids"]]

    assert first_epoch_order(disable_shuffling=True) == list(range(16))
    shuffled = first_epoch_order()
    assert sorted(shuffled) == list(range(16)) and shuffled != list(range(16))
