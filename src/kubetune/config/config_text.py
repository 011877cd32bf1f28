"""Turn a config file's bytes into a mapping, refusing what YAML allows but a config never means.

Hostile or broken files must end in a `ConfigError` naming the file and what to fix, never in
another exception: bytes that are not UTF-8, YAML syntax errors, a top level that is not a
mapping of names, a key written twice (LLaMA-Factory reads YAML with OmegaConf, which refuses
that too), and anchors that refer to themselves or expand to millions of values (an alias
"bomb" is a few lines of text that PyYAML turns into a structure whose printing takes hours).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from kubetune.config.errors import ConfigError, Problem

# A real config holds a few hundred values; nested anchors that expand past this are refused.
MAX_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a mapping that names one key twice is an error (as in OmegaConf)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges: repeats there are YAML's rule
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: PyYAML's own error below says so, with its line
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r} (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"found duplicate key {key!r}")
        out[key] = value
    return out


def parse_config_text(data: bytes | str, source: str, *, json_file: bool = False) -> dict[str, Any]:
    """Parse a YAML or JSON config into a flat mapping of string keys.

    Args:
        data: the file's bytes (decoded as UTF-8, a byte-order mark allowed) or text.
        source: the file's name (or "pipeline config"), used in every message.
        json_file: parse as JSON rather than YAML.

    Raises:
        ConfigError: one problem naming `source` and what to fix.
    """
    def fail(message: str, hint: str) -> ConfigError:
        return ConfigError([Problem(source, None, source, message, hint)])

    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data[:err.start].count(b"\n") + 1
            raise fail(f"is not UTF-8 text: byte {data[err.start]:#04x} at offset {err.start} (line {line})",
                       "save the file as UTF-8") from None
    else:
        text = data.removeprefix("\ufeff")
    try:
        parsed = (json.loads(text, object_pairs_hook=_unique_pairs) if json_file
                  else yaml.load(text, Loader=_StrictLoader))  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise fail(f"cannot parse the file: {err}", "fix the syntax at the position shown") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise fail(f"expected a mapping of key: value at the top level, found {type(parsed).__name__}",
                   "write one `key: value` per line, as in examples/sft_lora.yaml")
    bad = [k for k in parsed if not isinstance(k, str)]
    if bad:
        raise fail(f"expected a mapping of key: value at the top level, but the key {bad[0]!r} is not a name "
                   f"({type(bad[0]).__name__})", "write each key as a name, e.g. `lora_rank: 8`")
    for key, value in parsed.items():
        problem = shape_problem(key, value, source)
        if problem is not None:
            raise ConfigError([problem], source)
    return parsed


def shape_problem(key: str, value: Any, origin: str) -> Problem | None:
    """A problem if `value` refers to itself or holds more than `MAX_VALUES` values once aliases expand.

    The walk stops at the limit, so a bomb costs at most `MAX_VALUES` steps to detect.
    """
    count = 0
    path: set[int] = set()

    def walk(item: Any) -> str | None:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values (anchors and aliases expanded)"
        if not isinstance(item, Mapping | list | tuple | set | frozenset):
            return None
        if id(item) in path:
            return "refers to itself (a YAML anchor used inside its own value)"
        path.add(id(item))
        children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
        for child in children:
            if (found := walk(child)) is not None:
                return found
        path.discard(id(item))
        return None

    try:
        found = walk(value)
    except RecursionError:
        found = "is nested too deeply"
    if found is None:
        return None
    return Problem(key, None, origin, found, "write the value out plainly; a config value is a few lines")
