"""`eval_on_each_dataset`: one held-out split per `eval_dataset` name, each evaluated on its own.

LLaMA-Factory hands the Trainer a dict of eval datasets, so every evaluation reports one loss per dataset
(`eval_<name>_loss`). Each split here is the data pipeline's own eval split for that one name, built and
cached like any other (`kubetune.data.pipeline.tokenized` with `eval_dataset: [name]`): the same rows,
encoded the same way, as when they are evaluated together.
"""

from __future__ import annotations

from typing import Any

from kubetune.config import RunConfig
from kubetune.data.pipeline import tokenized


def eval_splits(cfg: RunConfig, tokenizer: Any, template: Any, stage: str) -> dict[str, Any]:
    """{eval_dataset name: its tokenised eval split}, in the config's order.

    Args:
        cfg: the run config (`eval_dataset`, with `eval_on_each_dataset`: the rules require the names).
        tokenizer: the stage's tokenizer (`kubetune.data.setup.stage_data`).
        template: the stage's template.
        stage: the row form (sft, pt).
    """
    splits: dict[str, Any] = {}
    for name in cfg.data.eval_dataset or []:
        # each in the content-addressed cache: tokenized_path (a pipeline step's input) holds the main split
        data = cfg.data.model_copy(update={"eval_dataset": [name], "tokenized_path": None})
        built = tokenized(data, tokenizer, template, stage=stage, seed=cfg.train.seed, train=False, evaluate=True)
        splits[name] = built.eval
    return splits
