"""The tokenizer's own chat template (`template: null`) as a `Template`.

`JinjaTemplate` renders with `tokenizer.apply_chat_template` and recovers one segment per message
by rendering growing prefixes of the conversation, so label masks line up as with the named
templates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune.data.named_templates import TEMPLATE_NAMES
from kubetune.data.schema import PROMPT_ROLES, Message
from kubetune.data.templates import Conversation, Segment, Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase



@dataclass
class JinjaTemplate(Template):
    """The tokenizer's own `chat_template`, used when `template` is not set.

    Segments come from rendering growing prefixes of the conversation and taking the new
    text each time: a prompt segment is rendered with `add_generation_prompt=True`, so it
    ends with the assistant header. This needs a template whose rendering of a conversation
    starts with its rendering of any earlier part; ones that rewrite earlier turns (e.g.
    dropping past reasoning) are refused with an error.

    Args:
        chat_template: the Jinja source, from the tokenizer.
    """

    name: str = "jinja"
    chat_template: str = ""

    def __post_init__(self) -> None:  # the Jinja source replaces the format strings
        if not self.chat_template:
            raise ValueError("JinjaTemplate needs the tokenizer's chat_template source")

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return []  # the template came with this tokenizer

    def render(self, tokenizer: PreTrainedTokenizerBase, conv: Conversation) -> list[Segment]:
        prefixes = _prefixes(conv)
        tool_list = json.loads(conv.tools) if conv.tools else None
        # rendered lazily, so a template that rewrites earlier turns is refused before later prefixes render
        texts = (
            tokenizer.apply_chat_template(
                prefix, tools=tool_list, chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=generation,
            )
            for prefix, generation in prefixes
        )
        return _cut_prefixes(texts)

    def render_many(self, tokenizer: PreTrainedTokenizerBase, convs: Sequence[Conversation]) -> list[list[Segment]]:
        # One apply_chat_template call per (tools, generation prompt) group renders a whole list of
        # prefixes: its per-call set-up costs more than rendering one short prefix does.
        groups: dict[tuple[str, bool], list[tuple[int, int, list[dict[str, Any]]]]] = {}
        texts: list[list[str]] = []
        for c, conv in enumerate(convs):
            prefixes = _prefixes(conv)
            texts.append([""] * len(prefixes))
            for m, (prefix, generation) in enumerate(prefixes):
                groups.setdefault((conv.tools, generation), []).append((c, m, prefix))
        for (tools, generation), items in groups.items():
            rendered = tokenizer.apply_chat_template(
                [prefix for _, _, prefix in items], tools=json.loads(tools) if tools else None,
                chat_template=self.chat_template, tokenize=False, add_generation_prompt=generation,
            )
            for (c, m, _), text in zip(items, rendered, strict=True):
                texts[c][m] = text
        return [_cut_prefixes(conv_texts) for conv_texts in texts]


def _prefixes(conv: Conversation) -> list[tuple[list[dict[str, Any]], bool]]:
    """The growing prefixes a Jinja template renders, each with whether it ends with the generation prompt.

    A prompt message's prefix is rendered with `add_generation_prompt=True`, so its segment ends
    with the assistant header.
    """
    head = [{"role": "system", "content": conv.system}] if conv.system else []
    messages = [_to_hf_message(m) for m in conv.messages]
    return [(head + messages[: i + 1], message.role in PROMPT_ROLES) for i, message in enumerate(conv.messages)]


def _cut_prefixes(texts: Iterable[str]) -> list[Segment]:
    """Each rendered prefix's new text, as one segment per message.

    Raises:
        ValueError: a rendering does not start with the one before it (the template rewrites
            earlier turns), so prompt and response tokens cannot be told apart.
    """
    segments: list[Segment] = []
    previous = ""
    for text in texts:
        if not text.startswith(previous):
            raise ValueError(
                "the tokenizer's chat template rewrites earlier turns when the conversation grows, "
                "so prompt and response tokens cannot be told apart for label masking; set "
                f"`template` to a named template instead (one of: {', '.join(TEMPLATE_NAMES)})"
            )
        new = text[len(previous):]
        segments.append([new] if new else [])
        previous = text
    return segments


def _to_hf_message(message: Message) -> dict[str, Any]:
    """Our roles in the OpenAI/HF chat vocabulary that Jinja chat templates expect."""
    if message.role == "observation":
        return {"role": "tool", "content": message.content}
    if message.role == "function":
        try:
            calls = json.loads(message.content)
        except json.JSONDecodeError:
            return {"role": "assistant", "content": message.content}
        calls = calls if isinstance(calls, list) else [calls]
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": call} for call in calls],
        }
    return {"role": message.role, "content": message.content}
