"""Chat templates: how a conversation becomes tokens, one prompt/response segment at a time.

A `Template` is a handful of format strings (LLaMA-Factory's `template:` names, our own design).
Encoding produces one token segment per message, so label masks line up with what the model
sees: a prompt segment ends exactly where the model starts talking, a response segment ends
with the template's stop word.

Format strings use these placeholders:

- `{{content}}`: the message text (in `format_tools`: `{{tools}}`, the sample's tools JSON as written).
- `{{bos_token}}` / `{{eos_token}}`: the tokenizer's BOS/EOS *by id*, whatever their text; a
  missing BOS is skipped (many tokenizers have none).
- `{{token:NAME}}`: the id of the token NAME, looked up by name rather than tokenised (chatglm3's
  `{{token:<|user|>}}`, as LLaMA-Factory's `{"token": ...}` slots).
- `{{split}}`: the text before and after is tokenised apart (chatglm3 tokenises its `\n` on its own).
- anything else is literal text. Special tokens written as text (`<|im_start|>`) tokenise as
  the tokenizer's special tokens, as in the model's own Jinja template.

Tools (`tools` column) and tool calls (`function` turns) are written by the template's `tool_format`
(`kubetune.data.tool_formats`), as LLaMA-Factory writes them.

Each format's text is tokenised on its own, never joined with the next format's (prefix, system,
user turn and generation header are separate `tokenizer.encode` calls), as LLaMA-Factory does: a
boundary such as `"\n\n" + "### Instruction"` tokenises differently joined than apart, and
LLaMA-Factory's templates are the reference their users' models were trained with.

Named templates (`named_templates`), `custom` YAML files (`template_file`) and the tokenizer's own
template (`jinja_template.JinjaTemplate`, for `template: null`) are looked up by
`kubetune.data.template_registry.get_template`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubetune.data.conversation import Conversation, conversation
from kubetune.data.schema import PROMPT_ROLES, Message, Sample
from kubetune.data.thoughts import place_thoughts
from kubetune.data.tool_formats import TOOL_FORMATS, render_function, render_tools

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Conversation", "Segment", "Template", "conversation", "encode_pieces", "join_pieces", "joined",
           "last_turn", "pair_turns"]

logger = logging.getLogger(__name__)

# `{{name}}`, or `{{token:NAME}}` for a token by name (NAME: anything but whitespace and braces)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+(?::[^\s{}]+)?)\s*\}\}")
_TOKEN_SLOTS = frozenset({"bos_token", "eos_token"})
_SPLIT = "split"
_NAMED_TOKEN = "token:"
# A looks-like-a-special-token literal: `<|im_start|>`, `<start_of_turn>`, `<reserved_106>`.
_SPECIAL_LITERAL = re.compile(r"<\|[\w.-]+\|>|<(?:start|end)_of_turn>|<reserved_\d+>")

DEFAULT_THOUGHT_WORDS = ["<think>\n", "\n</think>\n\n"]
"""LLaMA-Factory's default thought markers: a thinking template's unless it sets its own, and what a
`function` turn's thought is recognised by in every template."""
DEFAULT_TOOL_CALL_WORDS = ["<tool_call>", "</tool_call>"]


@dataclass(frozen=True)
class _Token:
    """A placeholder that becomes one token id at tokenisation: `bos_token`, `eos_token` or `token:NAME`."""

    name: str


@dataclass(frozen=True)
class _Split:
    """`{{split}}`: the texts either side are tokenised apart."""


_Piece = str | _Token | _Split

Segment = list[str | int]
"""A message's rendered segment: texts to tokenise (adjacent text already joined) and token ids."""


@dataclass
class Template:
    """How messages are written out for one model family.

    Args:
        name: registry name (`chatml`, `llama3`, ...).
        format_user: a user turn; `{{content}}` is the message. Default `"{{content}}"`.
        format_assistant: an assistant turn, including the stop word unless `efficient_eos`.
            Default `"{{content}}"`.
        format_generation: the header that opens an assistant turn (`<|im_start|>assistant\\n`).
            It is appended to every prompt segment, so it is masked in training and is what
            `encode_prompt` ends with. Default `""`.
        format_system: the system prompt; `{{content}}` is the system text plus the rendered
            tools. Default `"{{content}}"`.
        format_observation: a tool result turn. Default None = `format_user`.
        format_function: an assistant turn that calls a tool; `{{content}}` is the call written in
            `tool_format` (the turn itself is JSON with `name` and `arguments`, or a list of them).
            Default None = `format_assistant`.
        format_tools: None (the default) writes a sample's tools in `tool_format` after the system
            text; a format string instead writes `{{tools}}`, the tools JSON as the sample has it
            (phi4_mini's `<|tool|>{{tools}}<|/tool|>`).
        tool_format: how tools and tool calls are written, a `tool_formats.TOOL_FORMATS` name
            (`qwen`, `llama3`, `glm4`, ...). Default `default` (LLaMA-Factory's: "> Tool Name:" lists,
            "Action: / Action Input:" calls).
        tool_call_words: (open, close) that may wrap the JSON of a `function` turn; the text around
            them is kept before the call. Default `["<tool_call>", "</tool_call>"]`.
        format_prefix: written once before the first message (typically `{{bos_token}}`).
            Default `""`.
        default_system: used when a sample has no system prompt. Default `""`.
        system_in_user: render the system prompt inside the first prompt turn's content
            (llama2, mistral, gemma) instead of as its own block. Default False.
        stop_words: strings that end an assistant turn; the first replaces EOS when
            `replace_eos`. Default none.
        efficient_eos: assistant turns carry no EOS; one EOS is appended after the last
            turn by the encoder. Default False.
        replace_eos: make `stop_words[0]` the tokenizer's EOS (see `fix_tokenizer`), so that
            generation stops at the end of a turn. Default False.
        thought_words: (open, close) of a reasoning block (`["<think>\n", "\n</think>\n\n"]`);
            set for a thinking model (qwen3, deepseekr1): an answer without a thought gets an
            empty one, as the model's own template writes it. Default none (not a thinking model).
        empty_thought: the text of that added empty thought. Default None = open + close (GLM-4.7
            writes only `</think>`).
        enable_thinking: thinking models: learn the thoughts (an added empty thought is part of
            the response); False strips every thought and puts the empty one in the prompt.
            Default True (LLaMA-Factory's default).
        preserve_thinking: thinking models: keep the thoughts of earlier assistant turns in
            preference prompts (and with `mask_history`). Default False: they are stripped.
    """

    name: str
    format_user: str = "{{content}}"
    format_assistant: str = "{{content}}"
    format_generation: str = ""
    format_system: str = "{{content}}"
    format_observation: str | None = None
    format_function: str | None = None
    format_tools: str | None = None
    tool_format: str = "default"
    tool_call_words: list[str] = field(default_factory=lambda: list(DEFAULT_TOOL_CALL_WORDS))
    format_prefix: str = ""
    default_system: str = ""
    system_in_user: bool = False
    stop_words: list[str] = field(default_factory=list)
    efficient_eos: bool = False
    replace_eos: bool = False
    thought_words: list[str] = field(default_factory=list)
    empty_thought: str | None = None
    enable_thinking: bool = True
    preserve_thinking: bool = False

    def __post_init__(self) -> None:
        for key, allowed in _ALLOWED_PLACEHOLDERS.items():
            value = getattr(self, key)
            if value is None:
                continue
            for found in _PLACEHOLDER.findall(value):
                if found not in allowed and not (key.startswith("format_") and _is_split_or_named(found)):
                    raise ValueError(
                        f"template {self.name!r}: {key} uses unknown placeholder {{{{{found}}}}}; "
                        f"allowed here: {', '.join('{{' + a + '}}' for a in sorted(allowed))}"
                    )
        for key in ("format_user", "format_assistant", "format_system"):
            if "content" not in _PLACEHOLDER.findall(getattr(self, key)):
                raise ValueError(f"template {self.name!r}: {key} must contain {{{{content}}}}")
        if self.replace_eos and not self.stop_words:
            raise ValueError(f"template {self.name!r}: replace_eos needs at least one stop word")
        if self.thought_words and len(self.thought_words) != 2:
            raise ValueError(f"template {self.name!r}: thought_words must be [open, close], got {self.thought_words}")
        if self.tool_call_words and len(self.tool_call_words) != 2:
            raise ValueError(f"template {self.name!r}: tool_call_words must be [open, close], "
                             f"got {self.tool_call_words}")
        if self.tool_format not in TOOL_FORMATS:
            raise ValueError(f"template {self.name!r}: unknown tool_format {self.tool_format!r}; "
                             f"known: {', '.join(sorted(TOOL_FORMATS))}")

    # ----------------------------------------------------------------------------------- public

    def encode_turns(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sample_or_messages: Sample | Sequence[Message | Mapping[str, str]],
        system: str | None = None,
        tools: str | None = None,
    ) -> list[tuple[list[int], list[int]]]:
        """Token ids of each exchange, as (prompt_ids, response_ids) pairs.

        Args:
            tokenizer: a Hugging Face tokenizer.
            sample_or_messages: a `Sample` (its prompt plus its first response), or messages
                alternating prompt and response roles, starting with a prompt and ending with
                a response. Dicts with `role`/`content` are accepted; a leading `system`
                message is used as the system prompt.
            system: system prompt; None = the sample's (or the leading system message's),
                "" = the template's default.
            tools: tools as a JSON list string; None = the sample's, "" = none.

        Returns:
            One pair per exchange. Concatenated, they are the whole conversation; each segment
            is tokenised with `add_special_tokens=False`.
        """
        conv = conversation(sample_or_messages, system, tools, ends_with_prompt=False)
        return pair_turns(self._encode(tokenizer, conv))

    def encode_oneturn(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sample_or_messages: Sample | Sequence[Message | Mapping[str, str]],
        system: str | None = None,
        tools: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """(prompt_ids, response_ids) where the prompt holds every message but the last.

        Arguments as in `encode_turns`. Used for preference data, where only the final
        response is compared and earlier assistant turns are context.
        """
        conv = conversation(sample_or_messages, system, tools, ends_with_prompt=False, oneturn=True)
        return last_turn(self._encode(tokenizer, conv))

    def encode_prompt(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: Sequence[Message | Mapping[str, str]],
        system: str | None = None,
        tools: str | None = None,
    ) -> list[int]:
        """Token ids of a conversation to continue, ending with the generation prompt.

        Args:
            tokenizer: a Hugging Face tokenizer.
            messages: alternating prompt/response messages ending with a prompt message.
            system: system prompt; None or "" = the template's default.
            tools: tools as a JSON list string; None or "" = none.
        """
        conv = conversation(messages, system, tools, ends_with_prompt=True)
        return joined(self._encode(tokenizer, conv))

    def render(self, tokenizer: PreTrainedTokenizerBase, conv: Conversation) -> list[Segment]:
        """The conversation as one segment per message, not yet tokenised.

        The first segment carries the prefix and the system prompt; a prompt segment ends with
        the generation header. Tokenising each segment's texts (`encode_pieces`) gives the ids
        that `encode_turns` and friends return.

        Args:
            tokenizer: the tokenizer (for the BOS/EOS ids).
            conv: the conversation, from `conversation(...)`.

        Raises:
            ValueError: the template writes `{{eos_token}}` and the tokenizer has none.
        """
        system_text = conv.system or self.default_system
        system_pieces: list[_Piece] = []
        # A tools string, even "[]", opens the system block (LLaMA-Factory does; the block may be empty).
        if system_text or conv.tools:
            system_pieces = _fill(self.format_system, content=[system_text, *self._tools_pieces(conv.tools)])

        messages, thoughts = self._with_thoughts(conv)

        def resolve(pieces: list[_Piece]) -> Segment:
            return _resolve(tokenizer, pieces, self.name)

        segments: list[Segment] = []
        for i, message in enumerate(messages):
            segment: Segment = []
            text = self._function_text(message.content) if message.role == "function" else message.content
            content: list[_Piece] = [text]
            if i == 0:
                segment += resolve(_fill(self.format_prefix))
                if not self.system_in_user:
                    segment += resolve(system_pieces)
                elif message.role == "user":  # as LLaMA-Factory: only a user turn carries it
                    content = system_pieces + content
            if thoughts.get(i) == "before":
                segment.append(self._empty_thought())
            segment += resolve(_fill(self._format_for(message.role), content=content))
            if message.role in PROMPT_ROLES:
                segment += resolve(_fill(self.format_generation))
            if thoughts.get(i) == "after":
                segment.append(self._empty_thought())
            segments.append(segment)
        return segments

    def _empty_thought(self) -> str:
        if self.empty_thought is not None:
            return self.empty_thought
        return self.thought_words[0] + self.thought_words[1]

    def _tools_pieces(self, tools: str | Sequence[Any]) -> list[_Piece]:
        """What follows the system text when a sample has tools (nothing for "" or `[]` in a tool format)."""
        if not tools:
            return []
        if self.format_tools is not None:
            raw = tools if isinstance(tools, str) else json.dumps(list(tools), ensure_ascii=False)
            return _fill(self.format_tools, tools=[raw])
        return [render_tools(tools, self.tool_format)]

    def _function_text(self, content: str) -> str:
        """A `function` turn written in the tool format. Templates with the system prompt in the first user
        turn (LLaMA-Factory's Llama2Template) take the whole turn as the call; the others keep a thought or
        the prose around `tool_call_words` before it."""
        if self.system_in_user:
            return render_function(content, self.tool_format)
        return render_function(content, self.tool_format, self.thought_words or DEFAULT_THOUGHT_WORDS,
                               self.tool_call_words)

    def with_tool_format(self, tool_format: str) -> Template:
        """This template with another tool format (the config's `tool_format`), as LLaMA-Factory overrides it:
        tools and calls in `tool_format`, and a call turn written as the bare call plus EOS (no EOS with
        `efficient_eos`), whatever the template's own `format_function` was.

        Args:
            tool_format: a `tool_formats.TOOL_FORMATS` name.

        Raises:
            ValueError: an unknown tool format.
        """
        function = "{{content}}" if self.efficient_eos else "{{content}}{{eos_token}}"
        return dataclasses.replace(self, tool_format=tool_format, format_tools=None, format_function=function)

    def _with_thoughts(self, conv: Conversation) -> tuple[list[Message], dict[int, str]]:
        """The messages to write and where an empty thought goes (see `thoughts.place_thoughts`)."""
        if not self.thought_words:
            return list(conv.messages), {}
        only_last = conv.oneturn or conv.discard_history_thoughts
        return place_thoughts(
            conv.messages, self.thought_words, self.enable_thinking,
            strip_history=conv.oneturn and not self.preserve_thinking or conv.discard_history_thoughts,
            only_last=only_last,
        )

    def render_many(self, tokenizer: PreTrainedTokenizerBase, convs: Sequence[Conversation]) -> list[list[Segment]]:
        """`render` for many conversations at once (what batched preprocessing calls).

        Args:
            tokenizer: the tokenizer.
            convs: the conversations.

        Returns:
            `render(tokenizer, conv)` for each conversation, in order.
        """
        return [self.render(tokenizer, conv) for conv in convs]

    def fix_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Adapt a tokenizer to this template, in place, and say what changed.

        - `replace_eos`: the first stop word becomes EOS (so `generate` stops at the end of a
          turn and the collator/encoders use it); the other stop words (all of them without
          `replace_eos`) are registered as special tokens.
        - A missing pad token is set to EOS: the collator masks padding out of the loss.

        Args:
            tokenizer: a Hugging Face tokenizer, modified in place.

        Returns:
            Human-readable descriptions of the changes (also logged). If a change added new
            tokens to the vocabulary, the model's embeddings must be resized.
        """
        changes: list[str] = []
        if self.replace_eos and tokenizer.eos_token != self.stop_words[0]:
            old = tokenizer.eos_token
            added = tokenizer.add_special_tokens({"eos_token": self.stop_words[0]})
            changes.append(f"eos_token {old!r} -> {self.stop_words[0]!r}" + _added_note(added))
        # Stop words (all but the one that became EOS) are special tokens whether or not EOS is replaced,
        # as in LLaMA-Factory: a format that writes one then tokenises it as one token.
        rest = self.stop_words[1:] if self.replace_eos else self.stop_words
        extra = [w for w in rest if w not in tokenizer.all_special_tokens]
        if extra:
            added = tokenizer.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
            changes.append(f"stop words {extra} registered as special tokens" + _added_note(added))
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer has no eos_token and template {self.name!r} sets none (replace_eos): "
                "use a template with stop words or a tokenizer with an EOS token"
            )
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": tokenizer.eos_token})
            changes.append(f"pad_token None -> {tokenizer.eos_token!r} (the EOS token)")
        for change in changes:
            logger.info("template %s changed the tokenizer: %s", self.name, change)
        return changes

    def stop_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Ids that end generation: EOS plus every stop word that is a single token."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for word in self.stop_words:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(encoded[0])
        return ids

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Special-token literals in the formats that the tokenizer does not know.

        Such a literal tokenises as ordinary pieces: training still runs, but the model never
        sees the token it was pretrained with. Logged as a warning; returned for tests.
        """
        vocab = tokenizer.get_vocab()
        texts = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("format_")]
        found = {lit for text in texts if text for lit in _SPECIAL_LITERAL.findall(text)}
        found |= {slot[len(_NAMED_TOKEN):] for text in texts if text for slot in _PLACEHOLDER.findall(text)
                  if slot.startswith(_NAMED_TOKEN)}
        # Stop words are added to the vocabulary by fix_tokenizer.
        added_later = set(self.stop_words)
        missing = sorted(lit for lit in found if lit not in vocab and lit not in added_later)
        if missing:
            logger.warning(
                "template %s writes %s, which this tokenizer does not have as tokens: is it the "
                "right template for this model?",
                self.name,
                ", ".join(missing),
            )
        return missing

    # --------------------------------------------------------------------------------- internal

    def _encode(self, tokenizer: PreTrainedTokenizerBase, conv: Conversation) -> list[list[int]]:
        """Token ids of each message's segment, one `tokenizer.encode` per text."""
        return [encode_pieces(tokenizer, segment) for segment in self.render(tokenizer, conv)]

    def _format_for(self, role: str) -> str:
        if role == "user":
            return self.format_user
        if role == "observation":
            return self.format_observation or self.format_user
        if role == "function":
            return self.format_function or self.format_assistant
        return self.format_assistant


def _added_note(added: int) -> str:
    return f" ({added} new token(s): resize the model's embeddings)" if added else ""


_CONTENT_ONLY = frozenset({"content"}) | _TOKEN_SLOTS
_ALLOWED_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "format_user": _CONTENT_ONLY,
    "format_assistant": _CONTENT_ONLY,
    "format_system": _CONTENT_ONLY,
    "format_observation": _CONTENT_ONLY,
    "format_function": _CONTENT_ONLY,
    "format_tools": frozenset({"tools"}) | _TOKEN_SLOTS,
    "format_generation": _TOKEN_SLOTS,
    "format_prefix": _TOKEN_SLOTS,
    "default_system": frozenset(),
}


def _is_split_or_named(placeholder: str) -> bool:
    return placeholder == _SPLIT or placeholder.startswith(_NAMED_TOKEN)


def _fill(fmt: str, **values: list[_Piece]) -> list[_Piece]:
    """Split a format string into text and token pieces, substituting `values` for placeholders.

    Substitution happens after splitting, so message text that happens to contain
    `{{eos_token}}` stays text.
    """
    pieces: list[_Piece] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(fmt):
        pieces.append(fmt[pos : match.start()])
        slot = match.group(1)
        if slot == _SPLIT:
            pieces.append(_Split())
        elif slot in _TOKEN_SLOTS or slot.startswith(_NAMED_TOKEN):
            pieces.append(_Token(slot))
        else:
            pieces += values.get(slot, [])
        pos = match.end()
    pieces.append(fmt[pos:])
    return [p for p in pieces if p != ""]


def _resolve(tokenizer: PreTrainedTokenizerBase, pieces: list[_Piece], template_name: str) -> Segment:
    """A segment's pieces with adjacent text joined (it is tokenised together) and token slots as ids."""
    out: Segment = []
    text: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
            continue
        if text:
            out.append("".join(text))
            text = []
        if isinstance(piece, _Split):
            continue
        if piece.name.startswith(_NAMED_TOKEN):
            out.append(_token_by_name(tokenizer, piece.name[len(_NAMED_TOKEN):], template_name))
            continue
        token_id = getattr(tokenizer, f"{piece.name}_id", None)
        if token_id is not None:
            out.append(token_id)
        elif piece.name == "eos_token":
            raise ValueError(f"template {template_name!r} writes {{{{eos_token}}}} but the tokenizer has no EOS token")
        # A missing BOS is not an error: most BPE tokenizers (GPT-2, Qwen) have none.
    if text:
        out.append("".join(text))
    return out


def _token_by_name(tokenizer: PreTrainedTokenizerBase, name: str, template_name: str) -> int:
    """The id of token `name` (a tokenizer without it gives its unknown-token id, as in LLaMA-Factory)."""
    token_id = tokenizer.convert_tokens_to_ids(name)
    if token_id is None:
        raise ValueError(f"template {template_name!r} writes the token {name!r}, which the tokenizer has not "
                         "(and it has no unknown token): is it the right template for this model?")
    return token_id


def encode_pieces(tokenizer: PreTrainedTokenizerBase, segment: Segment) -> list[int]:
    """Token ids of a rendered segment: its texts tokenised one by one, its ids as they are.

    Args:
        tokenizer: the tokenizer.
        segment: texts and token ids, as `Template.render` returns them.
    """
    texts = (piece for piece in segment if type(piece) is str)
    return join_pieces(segment, (tokenizer.encode(text, add_special_tokens=False) for text in texts))


def join_pieces(segment: Segment, text_ids: Iterator[list[int]]) -> list[int]:
    """A segment's ids: its token ids as they are, each text replaced by the next ids from `text_ids`.

    Args:
        segment: texts and token ids, as `Template.render` returns them.
        text_ids: the ids of the segment's texts, in order (batched preprocessing tokenises the
            texts of many segments in one call and passes one iterator over them all).
    """
    if len(segment) == 1 and type(segment[0]) is str:  # the common case: one text
        return next(text_ids)
    out: list[int] = []
    for piece in segment:
        if type(piece) is str:
            out += next(text_ids)
        else:
            out.append(piece)  # type: ignore[arg-type]
    return out


def pair_turns(segments: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """Per-message token segments as (prompt_ids, response_ids) exchanges."""
    return [(segments[i], segments[i + 1]) for i in range(0, len(segments), 2)]


def last_turn(segments: list[list[int]]) -> tuple[list[int], list[int]]:
    """(everything before the last message, the last message) of per-message token segments."""
    return joined(segments[:-1]), segments[-1]


def joined(segments: list[list[int]]) -> list[int]:
    """Per-message token segments as one sequence."""
    return [t for segment in segments for t in segment]
