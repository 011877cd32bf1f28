"""The named chat templates (`template: chatml`, ...), `custom` YAML templates and `get_template`.

`template: custom` reads a YAML file (`template_file:`) whose keys are `Template`'s fields::

    name: my-chat                       # optional, defaults to the file's stem
    format_system: "<|system|>{{content}}\\n"
    format_user: "<|user|>{{content}}\\n"
    format_generation: "<|assistant|>"  # opens an assistant turn; ends every prompt segment
    format_assistant: "{{content}}<|end|>\\n"
    format_observation: "<|tool|>{{content}}\\n"   # optional, defaults to format_user
    format_function: "{{content}}<|end|>\\n"       # optional, defaults to format_assistant
    format_tools: "\\n\\nTools:\\n{{tools}}"        # optional
    format_prefix: "{{bos_token}}"      # once, before the first message
    default_system: "You are helpful."
    system_in_user: false               # true: system text goes inside the first user turn
    stop_words: ["<|end|>"]
    efficient_eos: false
    replace_eos: true
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.data.templates import JinjaTemplate, Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_QWEN_TOOLS_FORMAT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{{tools}}\n"
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)

_CHATML = {
    "format_system": "<|im_start|>system\n{{content}}<|im_end|>\n",
    "format_user": "<|im_start|>user\n{{content}}<|im_end|>\n",
    "format_observation": "<|im_start|>tool\n{{content}}<|im_end|>\n",
    "format_generation": "<|im_start|>assistant\n",
    "format_assistant": "{{content}}<|im_end|>\n",
    "stop_words": ["<|im_end|>"],
    "replace_eos": True,
}
_QWEN = {
    **_CHATML,
    # Qwen2.5's own template: tool results come back as a user turn, calls as <tool_call> JSON.
    "format_observation": "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n",
    "format_function": "<tool_call>\n{{content}}\n</tool_call><|im_end|>\n",
    "format_tools": _QWEN_TOOLS_FORMAT,
}

_TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            name="default",
            format_system="System: {{content}}\n\n",
            format_user="Human: {{content}}\n",
            format_generation="Assistant: ",
            format_assistant="{{content}}{{eos_token}}\n",
        ),
        # Raw concatenation; the only EOS is the one `efficient_eos` appends at the end.
        Template(name="empty", efficient_eos=True),
        Template(
            name="alpaca",
            format_system="{{content}}\n\n",
            format_user="### Instruction:\n{{content}}\n\n",
            format_generation="### Response:\n",
            format_assistant="{{content}}{{eos_token}}\n\n",
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request."
            ),
        ),
        Template(name="chatml", **_CHATML),
        Template(
            name="qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", **_QWEN
        ),
        Template(name="qwen3", **_QWEN),
        Template(
            name="llama2",
            format_system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
            format_user="{{bos_token}}[INST] {{content}} [/INST]",
            format_assistant=" {{content}} {{eos_token}}",
            system_in_user=True,
        ),
        Template(
            name="llama3",
            format_prefix="{{bos_token}}",
            format_system="<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",
            format_user="<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>",
            format_observation="<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>",
            format_generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
            format_assistant="{{content}}<|eot_id|>",
            stop_words=["<|eot_id|>", "<|eom_id|>"],
            replace_eos=True,
        ),
        Template(
            name="mistral",
            format_prefix="{{bos_token}}",
            format_system="{{content}}\n\n",
            format_user="[INST] {{content}}[/INST]",
            format_observation="[TOOL_RESULTS] {{content}}[/TOOL_RESULTS]",
            format_function="[TOOL_CALLS] {{content}}{{eos_token}}",
            format_tools="\n\n[AVAILABLE_TOOLS] [{{tools}}][/AVAILABLE_TOOLS]",
            format_assistant="{{content}}{{eos_token}}",
            system_in_user=True,
        ),
        Template(
            name="gemma",
            format_prefix="{{bos_token}}",
            format_system="{{content}}\n\n",
            format_user="<start_of_turn>user\n{{content}}<end_of_turn>\n",
            format_observation="<start_of_turn>tool\n{{content}}<end_of_turn>\n",
            format_generation="<start_of_turn>model\n",
            format_assistant="{{content}}<end_of_turn>\n",
            system_in_user=True,
            stop_words=["<end_of_turn>"],
            replace_eos=True,
        ),
        # Baichuan2 marks turns with reserved tokens and ends only the whole sample with EOS.
        Template(
            name="baichuan2",
            format_user="<reserved_106>{{content}}",
            format_generation="<reserved_107>",
            efficient_eos=True,
        ),
        Template(
            name="phi",
            format_prefix="{{bos_token}}",
            format_system="<|system|>\n{{content}}<|end|>\n",
            format_user="<|user|>\n{{content}}<|end|>\n",
            format_generation="<|assistant|>\n",
            format_assistant="{{content}}<|end|>\n",
            stop_words=["<|end|>"],
            replace_eos=True,
        ),
    ]
}

TEMPLATE_NAMES: list[str] = sorted(_TEMPLATES)
"""Names `get_template` accepts besides None (the tokenizer's own) and `custom` (a YAML file)."""


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
        ValueError: unknown name, a tokenizer without a chat template for None, or a bad file.
    """
    if name is None:
        return _jinja_template(tokenizer)
    if name == "custom":
        if template_file is None:
            raise ValueError("template 'custom' needs template_file: the path of a YAML template definition")
        template = load_template_file(template_file)
    elif name in _TEMPLATES:
        template = dataclasses.replace(_TEMPLATES[name], stop_words=list(_TEMPLATES[name].stop_words))
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


_FIELD_TYPES: dict[str, type] = {
    f.name: (bool if f.type == "bool" else list if f.type.startswith("list") else str)
    for f in dataclasses.fields(Template)
}


def load_template_file(path: str | Path) -> Template:
    """A `Template` from a YAML file whose keys are `Template`'s fields (see the module docstring).

    Args:
        path: the YAML file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a mapping, an unknown key, a value of the wrong type or a bad format;
            the message names the file and the key.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template_file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a template file must be a mapping of Template fields, got {type(raw).__name__}")
    for key, value in raw.items():
        if key not in _FIELD_TYPES:
            hint = difflib.get_close_matches(str(key), list(_FIELD_TYPES), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"{path}: unknown key {key!r}{did_you_mean}; known keys: {', '.join(_FIELD_TYPES)}")
        _check_type(path, key, value)
    raw.setdefault("name", path.stem)
    try:
        return Template(**raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _check_type(path: Path, key: str, value: Any) -> None:
    expected = _FIELD_TYPES[key]
    if value is None and key in ("format_observation", "format_function"):
        return
    if expected is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        wanted = "a list of strings"
    else:
        ok = isinstance(value, expected)
        wanted = "true or false" if expected is bool else "a string"
    if not ok:
        raise ValueError(f"{path}: key {key!r} must be {wanted}, got {value!r}")
