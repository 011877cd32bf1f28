"""`template: custom`: a `Template` from a YAML file, checked key by key.

It reads a YAML file (`template_file:`) whose keys are `Template`'s fields::

    name: my-chat                       # optional, defaults to the file's stem
    format_system: "<|system|>{{content}}\\n"
    format_user: "<|user|>{{content}}\\n"
    format_generation: "<|assistant|>"  # opens an assistant turn; ends every prompt segment
    format_assistant: "{{content}}<|end|>\\n"
    format_observation: "<|tool|>{{content}}\\n"   # optional, defaults to format_user
    format_function: "{{content}}<|end|>\\n"       # optional, defaults to format_assistant
    tool_format: qwen                   # optional (default: default): how tools and tool calls are written
    format_tools: "\\n\\nTools:\\n{{tools}}"        # optional: instead of tool_format's tool list, the tools JSON
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
from typing import Any

from kubetune.data.templates import Template

_FIELD_TYPES: dict[str, type] = {
    f.name: (bool if f.type == "bool" else list if f.type.startswith("list") else str)
    for f in dataclasses.fields(Template)
}
_NULLABLE = frozenset(f.name for f in dataclasses.fields(Template) if str(f.type).endswith("| None"))


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
    if value is None and key in _NULLABLE:
        return
    if expected is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        wanted = "a list of strings"
    else:
        ok = isinstance(value, expected)
        wanted = "true or false" if expected is bool else "a string"
    if not ok:
        raise ValueError(f"{path}: key {key!r} must be {wanted}, got {value!r}")
