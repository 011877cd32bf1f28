"""Reasoning blocks (`<think>...</think>`) of thinking templates: which are kept, and where an empty one goes.

As LLaMA-Factory's reasoning templates (qwen3, deepseekr1, glmz1, ...): a thinking model's own chat
template writes a thought before every answer, so an answer without one gets an empty thought —
learnt (part of the response) when `enable_thinking`, else written into the prompt. With thinking
off every thought is stripped; preference prompts and `mask_history` strip the earlier answers'
thoughts unless `preserve_thinking`, and only the last answer gets an empty one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kubetune.data.schema import Message


def place_thoughts(
    messages: Sequence[Message],
    thought_words: Sequence[str],
    enable_thinking: bool,
    *,
    strip_history: bool,
    only_last: bool,
) -> tuple[list[Message], dict[int, str]]:
    """The messages with thoughts stripped where they are not kept, and where empty thoughts go.

    Args:
        messages: alternating prompt/response messages, ending with a response.
        thought_words: (open, close) markers, e.g. `("<think>\\n", "\\n</think>\\n\\n")`.
        enable_thinking: learn thoughts; False strips them all and puts empty ones in the prompt.
        strip_history: strip the thoughts of every answer but the last.
        only_last: only the last answer gets an empty thought (preference data, `mask_history`).

    Returns:
        (messages, {message index: "before" | "after"}): "before" = the empty thought opens that
        response segment; "after" = it closes that prompt segment.
    """
    out = list(messages)
    last = len(out) - 1
    answers = range(1, len(out), 2)
    for i in answers:
        if not enable_thinking or (strip_history and i != last):
            out[i] = Message(out[i].role, strip_thought(out[i].content, thought_words))
    open_word, close_word = (w.strip() for w in thought_words)
    places: dict[int, str] = {}
    for i in answers:
        if only_last and i != last:
            continue
        if open_word not in out[i].content and close_word not in out[i].content:
            if enable_thinking:
                places[i] = "before"
            else:
                places[i - 1] = "after"
    return out, places


def strip_thought(content: str, thought_words: Sequence[str]) -> str:
    """`content` without its thought block(s) and the newlines that followed them."""
    open_word, close_word = (re.escape(w) for w in thought_words)
    return re.sub(f"{open_word}(.*?){close_word}", "", content, flags=re.DOTALL).lstrip("\n")
