"""The base of every argument group: strict keys, and YAML 1.1's bare words (`no`, `off`) read back as the
choice words they were meant to be."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

# YAML 1.1 (PyYAML, as LLaMA-Factory reads its configs) turns the bare words no/off/false and yes/on/true into
# booleans, so `eval_strategy: no` arrives as False. A choice key whose choices hold such a word takes the bool
# back as that word; which one the user typed is lost, so the first of each list present among the choices wins.
_FALSE_WORDS = ("no", "off", "false", "n")
_TRUE_WORDS = ("yes", "on", "true", "y")


def _string_choices(annotation: object) -> tuple[str, ...]:
    """The string choices of a `Literal[...]` annotation, also inside `X | None`; () for anything else."""
    if typing.get_origin(annotation) is Literal:
        return tuple(a for a in typing.get_args(annotation) if isinstance(a, str))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(c for arg in typing.get_args(annotation) for c in _string_choices(arg))
    return ()


def bool_words(annotation: object) -> dict[bool, str]:
    """How a YAML boolean reads for a choice key: {False: "no", True: ...} for the words among its choices.

    Empty for a key whose choices hold no such word, and for keys that accept a bool themselves.
    """
    choices = _string_choices(annotation)
    args = typing.get_args(annotation)
    if not choices or bool in args:
        return {}
    words: dict[bool, str] = {}
    for flag, spellings in ((False, _FALSE_WORDS), (True, _TRUE_WORDS)):
        word = next((w for w in spellings if w in choices), None)
        if word is not None:
            words[flag] = word
    return words


class ArgumentGroup(BaseModel):
    """A group of config keys: unknown keys are refused; a YAML boolean given to a choice key becomes its word."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans_as_words(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            info = cls.model_fields.get(key)
            if isinstance(value, bool) and info is not None:
                out[key] = bool_words(info.annotation).get(value, value)
        return out
