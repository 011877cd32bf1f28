"""The conversation a template encodes: messages in order, with their system prompt and tools, checked.

`conversation(...)` accepts a `Sample` or plain messages (dicts with `role`/`content` or `Message`s) and
checks that prompt and response roles alternate, so that an encoder pairs each prompt with its response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubetune.data.schema import PROMPT_ROLES, RESPONSE_ROLES, Message, Sample


@dataclass
class Conversation:
    """Messages to encode, with the system prompt and tools that go with them.

    Attributes:
        messages: alternating prompt and response messages, starting with a prompt.
        system: the system prompt ("" = the template's default).
        tools: tools as a JSON list string ("" = none).
        oneturn: only the last response is learnt (preference data): thinking templates strip the
            earlier turns' thoughts and give only the last answer an empty one.
        discard_history_thoughts: SFT with `mask_history`: the same, for a thinking template
            without `preserve_thinking`.
    """

    messages: list[Message]
    system: str
    tools: str
    oneturn: bool = False
    discard_history_thoughts: bool = False


def conversation(
    sample_or_messages: Sample | Sequence[Message | Mapping[str, str]],
    system: str | None = None,
    tools: str | None = None,
    *,
    ends_with_prompt: bool,
    oneturn: bool = False,
    discard_history_thoughts: bool = False,
) -> Conversation:
    """The checked conversation that `encode_turns` (or `encode_prompt`) would encode.

    Args:
        sample_or_messages: a `Sample` (its prompt plus its first response) or messages, as in
            `Template.encode_turns`.
        system: system prompt; None = the sample's (or the leading system message's).
        tools: tools as a JSON list string; None = the sample's.
        ends_with_prompt: the conversation must end with a prompt (`encode_prompt`) rather
            than a response (`encode_turns`).
        oneturn, discard_history_thoughts: see `Conversation`.

    Raises:
        ValueError: no messages, roles out of order, or a sample without a response; the
            message names the row.
    """
    messages, system, tools, where = _unpack(sample_or_messages, system, tools)
    _check_order(messages, ends_with_prompt=ends_with_prompt, where=where)
    return Conversation(messages, system, tools, oneturn, discard_history_thoughts)


def _unpack(
    sample_or_messages: Sample | Sequence[Message | Mapping[str, str]],
    system: str | None,
    tools: str | None,
) -> tuple[list[Message], str, str, str]:
    """Messages, system, tools and a "where" for error messages, from either input form."""
    if isinstance(sample_or_messages, Sample):
        sample = sample_or_messages
        if not sample.response:
            raise ValueError(f"{_where(sample)}: the sample has no response")
        messages = [*sample.prompt, sample.response[0]]
        system = sample.system if system is None else system
        tools = sample.tools if tools is None else tools
        return messages, system, tools, _where(sample)
    messages = [_as_message(m) for m in sample_or_messages if _role(m) != "system"]
    leading = [m for m in sample_or_messages if _role(m) == "system"]
    if system is None and leading:
        system = leading[0].content if isinstance(leading[0], Message) else leading[0]["content"]
    return messages, system or "", tools or "", "messages"


def _where(sample: Sample) -> str:
    return f"row {sample.row}" + (f" of {sample.source}" if sample.source else "")


def _role(message: Message | Mapping[str, str]) -> str:
    return message.role if isinstance(message, Message) else message["role"]


def _as_message(message: Message | Mapping[str, str]) -> Message:
    if isinstance(message, Message):
        return message
    return Message(role=message["role"], content=message["content"])  # type: ignore[arg-type]


def _check_order(messages: list[Message], ends_with_prompt: bool, where: str) -> None:
    """Messages must alternate prompt and response roles, starting with a prompt."""
    if not messages:
        raise ValueError(f"{where}: no messages to encode")
    for i, message in enumerate(messages):
        expected = PROMPT_ROLES if i % 2 == 0 else RESPONSE_ROLES
        if message.role not in expected:
            raise ValueError(
                f"{where}: message {i} has role {message.role!r}, expected one of {expected} "
                "(messages alternate user/observation and assistant/function, starting with a prompt)"
            )
    last_is_prompt = len(messages) % 2 == 1
    if last_is_prompt != ends_with_prompt:
        wanted = "a prompt (user/observation)" if ends_with_prompt else "a response (assistant/function)"
        raise ValueError(f"{where}: the conversation must end with {wanted}")
