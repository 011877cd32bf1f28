"""LLaMA-Factory training keys that reach transformers' TrainingArguments."""

from __future__ import annotations

from kubetune.config import load_config

BASE = {"model_name_or_path": "some/model"}


def test_include_effective_tokens_per_second_is_accepted_and_tokens_are_counted(tmp_path) -> None:
    from kubetune.tracking.throughput import counts_tokens
    from kubetune.train.arguments import training_arguments

    cfg = load_config(None, {"include_effective_tokens_per_second": True}, base=BASE)
    # what the flag asks for is always on: the Trainer counts non-padding tokens for trainer_log's `throughput`
    assert counts_tokens(training_arguments(cfg, tmp_path))
