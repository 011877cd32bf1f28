"""The setup every stage starts with: the tokenizer, the chat template and the tokenised data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.config import RunConfig
from kubetune.data.pipeline import TokenizedData, tokenized
from kubetune.data.templates import Template, get_template
from kubetune.model.loader import load_tokenizer, resolve_model_path


@dataclass
class StageData:
    """Attributes:
    model_path: the local folder of the base model (downloaded or converted once, then cached).
    tokenizer: its tokenizer, fixed up by the template (pad and stop tokens).
    template: the chat template, with `default_system` applied.
    data: the tokenised train/eval splits in the stage's row form.
    """

    model_path: str
    tokenizer: Any
    template: Template
    data: TokenizedData


def stage_data(cfg: RunConfig, stage: str, *, train: bool, evaluate: bool) -> StageData:
    """Resolve the model, load its tokenizer and template, and tokenise the data (cached by content hash).

    Args:
        cfg: the validated run config.
        stage: the row form to build (pt, sft, rm, dpo, kto, ppo; see `kubetune.data.pipeline.tokenized`).
        train: build the training split.
        evaluate: build the eval split (eval_dataset, or val_size of dataset).
    """
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    template = get_template(cfg.data.template, tokenizer, cfg.data.template_file)
    if cfg.data.default_system is not None:
        template.default_system = cfg.data.default_system
    template.fix_tokenizer(tokenizer)
    data = tokenized(cfg.data, tokenizer, template, stage=stage, seed=cfg.train.seed, train=train, evaluate=evaluate)
    return StageData(str(model_path), tokenizer, template, data)


def write_bad_rows(out: Path, data: TokenizedData, files: dict[str, str]) -> None:
    """Write the dropped rows' report (row numbers and reasons) next to the outputs, if any were dropped."""
    if data.report:
        (out / "bad_rows.txt").write_text(data.report + "\n")
        files["bad_rows"] = str(out / "bad_rows.txt")
