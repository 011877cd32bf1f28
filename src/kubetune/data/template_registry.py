"""`get_template`: the `Template` a config's `template` (and `template_file`) names, checked against the tokenizer.

A name from `named_templates`, `custom` for a YAML file (`template_file`), or None for the tokenizer's
own chat template (`jinja_template`).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.data.jinja_template import JinjaTemplate
from kubetune.data.named_templates import MULTIMODAL_TEMPLATES, NAMED_TEMPLATES, TEMPLATE_NAMES, multimodal_refusal
from kubetune.data.template_file import load_template_file
from kubetune.data.templates import Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TEMPLATE_NAMES", "get_template", "load_template_file"]


def get_template(
    name: str | None, tokenizer: PreTrainedTokenizerBase, template_file: str | Path | None = None
) -> Template:
    """The template called `name`, checked against the tokenizer.

    Args:
        name: a registered name (see `TEMPLATE_NAMES`), `custom` for a YAML file, or None for
            the tokenizer's own chat template.
        tokenizer: the tokenizer the template will be used with.
        template_file: the YAML file for `custom`. Default None.

    Returns:
        A fresh `Template` (changing it does not change the registry).

    Raises:
        ValueError: unknown name, a multimodal model's template, a tokenizer without a chat template for None,
            or a bad file.
    """
    if name is None:
        return _jinja_template(tokenizer)
    if name == "custom":
        if template_file is None:
            raise ValueError("template 'custom' needs template_file: the path of a YAML template definition")
        template = load_template_file(template_file)
    elif name in MULTIMODAL_TEMPLATES:
        raise ValueError(multimodal_refusal(name))
    elif name in NAMED_TEMPLATES:
        template = dataclasses.replace(NAMED_TEMPLATES[name], stop_words=list(NAMED_TEMPLATES[name].stop_words))
    else:
        hint = difflib.get_close_matches(name, [*TEMPLATE_NAMES, "custom"], n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(
            f"unknown template {name!r}.{did_you_mean} Known templates: {', '.join(TEMPLATE_NAMES)}; "
            "also `custom` (with template_file) or leave it unset to use the tokenizer's chat template."
        )
    template.check_tokenizer(tokenizer)
    return template


def _jinja_template(tokenizer: PreTrainedTokenizerBase) -> JinjaTemplate:
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # tokenizers may ship several named templates
        source = source.get("default") or next(iter(source.values()), None)
    if not source:
        raise ValueError(
            f"template is not set and the tokenizer ({getattr(tokenizer, 'name_or_path', '?') or '?'}) has no "
            f"chat_template: set `template` to one of {', '.join(TEMPLATE_NAMES)}, or `custom` with template_file"
        )
    return JinjaTemplate(chat_template=source)
