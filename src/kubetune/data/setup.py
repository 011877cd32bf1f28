"""The one set-up of a stage's data: tokenizer, chat template, tokenised rows.

Every caller that turns a config into tokens goes through here — the stages, the preprocess
step, `kubetune chat`, the benchmarks — so that the template's fix-ups (`default_system`, pad and
stop tokens) are applied once, the same way, wherever the tokens are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.config import RunConfig
from kubetune.data.pipeline import TokenizedData, tokenized
from kubetune.data.template_registry import get_template
from kubetune.data.templates import Template
from kubetune.model.loader import load_tokenizer, resolve_model_path


@dataclass
class StageData:
    """Attributes:
    model_path: the local folder of the base model (downloaded or converted once, then cached).
    tokenizer: its tokenizer, fixed up by the template (pad and stop tokens).
    template: the chat template, with `tool_format` and `default_system` applied.
    data: the tokenised train/eval splits in the stage's row form.
    """

    model_path: str
    tokenizer: Any
    template: Template
    data: TokenizedData


def tokenizer_and_template(cfg: RunConfig, model_path: str | None = None) -> tuple[Any, Template]:
    """Load the model's tokenizer and its chat template, ready to encode.

    The template is `cfg.data.template` (None: the tokenizer's own chat format; `custom`: the YAML
    `template_file`), with `tool_format` and `default_system` applied; the tokenizer gets the template's pad and stop
    tokens (`Template.fix_tokenizer`).

    Args:
        cfg: the validated run config.
        model_path: a local folder holding the tokenizer; None resolves `model_name_or_path` first
            (`load_tokenizer`: an s3:// model is fetched, the embedded GGUF model converted once).
    """
    tokenizer = load_tokenizer(cfg.model, model_path)
    template = get_template(cfg.data.template, tokenizer, cfg.data.template_file)
    if cfg.data.tool_format is not None:
        template = template.with_tool_format(cfg.data.tool_format)
    if cfg.data.default_system is not None:
        template.default_system = cfg.data.default_system
    # thinking templates only read these; part of the template, so of the tokenised data's cache key too
    template.enable_thinking, template.preserve_thinking = cfg.data.enable_thinking, cfg.data.preserve_thinking
    template.fix_tokenizer(tokenizer)
    return tokenizer, template


def stage_data(cfg: RunConfig, stage: str, *, train: bool = True, evaluate: bool = False,
               model_path: str | None = None) -> StageData:
    """Resolve the model, set up its tokenizer and template, and tokenise the data (cached by content hash).

    Args:
        cfg: the validated run config.
        stage: the row form to build (pt, sft, rm, dpo, kto, ppo; see `kubetune.data.pipeline.tokenized`).
        train: build the training split. Default True.
        evaluate: build the eval split (eval_dataset, or val_size of dataset). Default False.
        model_path: the base model's local folder if the caller resolved it already; None resolves
            `model_name_or_path` (download or GGUF conversion, cached).
    """
    path = model_path or str(resolve_model_path(cfg.model))
    tokenizer, template = tokenizer_and_template(cfg, path)
    data = tokenized(cfg.data, tokenizer, template, stage=stage, seed=cfg.train.seed, train=train, evaluate=evaluate)
    return StageData(path, tokenizer, template, data)
