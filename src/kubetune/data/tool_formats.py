"""Tool formats: how a model family writes its tool list and an assistant's tool calls.

A sample's `tools` column (a JSON list of function descriptions, OpenAI-style `{"type": "function",
"function": {...}}` or the bare `{...}`) is written into the system prompt by the template's tool format;
a `function` turn (`{"name": ..., "arguments": {...}}`, or a list of them for parallel calls) is written
as that family calls a tool. The names are LLaMA-Factory 0.9.5's `tool_format` values, and each writes
the same text as LLaMA-Factory, so a model is fine-tuned on the calls its own chat template produces:

    default   "> Tool Name: ..." descriptions, "Action: / Action Input:" calls (every template without its own)
    qwen      <tools> JSON lines, <tool_call> JSON calls            ling      qwen's, Ling's wording
    qwen3_5   <function=...><parameter=...> calls                  glm4      "## name" JSON blocks, "name\\nargs"
    glm4_moe  <arg_key>/<arg_value> calls                           llama3    dated prompt, {"name", "parameters"}
    mistral   [AVAILABLE_TOOLS] JSON list, JSON list of calls       minimax1  <tool_calls> JSON lines
    minimax2  <invoke name=...> calls                               seed_oss  <seed:tool_call> calls
    lfm2      Python-call syntax                                    gemma4    declaration:/call: syntax
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from kubetune.data import tool_prompts as prompts


class FunctionCall(NamedTuple):
    """One tool call of a `function` turn.

    Attributes:
        name: the tool's name.
        arguments: its arguments, as parsed from the turn's JSON (normally an object).
    """

    name: str
    arguments: Any


@dataclass(frozen=True)
class ToolFormat:
    """A family's tool format.

    Attributes:
        name: the `tool_format` name.
        tools: the system-prompt text for a non-empty list of tool descriptions.
        calls: the text of an assistant turn making these calls.
    """

    name: str
    tools: Callable[[list[dict[str, Any]]], str]
    calls: Callable[[list[FunctionCall]], str]


def today() -> str:
    """Today's date as llama3's tool prompt writes it (`01 Dec 2026`); tests replace it to fix the date."""
    return datetime.now().strftime("%d %b %Y")


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    """The function description itself: `{"type": "function", "function": f}` gives f."""
    return tool["function"] if tool.get("type") == "function" else tool


def _wrapped(tool: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-style wrapping `{"type": "function", "function": ...}` (kept if the tool has it)."""
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _value_text(value: Any) -> str:
    """An argument value inside XML-like call formats: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else _json(value)


def _argument_items(call: FunctionCall) -> list[tuple[str, Any]]:
    if not isinstance(call.arguments, dict):
        raise ValueError(f"tool call {call.name!r}: this tool format needs the arguments as a JSON object, "
                         f"got {_json(call.arguments)}")
    return list(call.arguments.items())


# ------------------------------------------------------------------------------------------ default


def _default_tools(tools: list[dict[str, Any]]) -> str:
    blocks, names = [], []
    for tool in map(_function, tools):
        parameters = tool.get("parameters") or {}
        required = parameters.get("required", [])
        lines = []
        for name, spec in (parameters.get("properties") or {}).items():
            notes = ", required" if name in required else ""
            extra = ""
            if spec.get("enum"):
                extra += f", should be one of [{', '.join(spec['enum'])}]"
            if spec.get("items"):
                extra += f", where each item should be {spec['items'].get('type', '')}"
            lines.append(f"  - {name} ({spec.get('type', '')}{notes}): {spec.get('description', '')}{extra}\n")
        blocks.append(f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\n"
                      f"Tool Args:\n{''.join(lines)}\n")
        names.append(tool["name"])
    return prompts.fill(prompts.DEFAULT, tools="".join(blocks), names=", ".join(names))


def _default_calls(calls: list[FunctionCall]) -> str:
    return "\n".join(f"Action: {c.name}\nAction Input: {_json(c.arguments)}" for c in calls)


# ----------------------------------------------------------------------------------- glm4, glm4_moe


def _glm4_tools(tools: list[dict[str, Any]]) -> str:
    text = "".join(f"\n\n## {t['name']}\n\n{_json(t, indent=4)}\n{prompts.GLM4_CALL_NOTE}"
                   for t in map(_function, tools))
    return prompts.fill(prompts.GLM4, tools=text)


def _glm4_calls(calls: list[FunctionCall]) -> str:
    if len(calls) > 1:
        raise ValueError(f"the glm4 tool format has no parallel calls; this turn makes {len(calls)}")
    return f"{calls[0].name}\n{_json(calls[0].arguments)}"


def _glm4_moe_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.GLM4_MOE, tools="".join("\n" + _json(_wrapped(t)) for t in tools))


def _glm4_moe_calls(calls: list[FunctionCall]) -> str:
    texts = []
    for call in calls:
        pairs = "".join(f"\n<arg_key>{key}</arg_key>\n<arg_value>{_value_text(value)}</arg_value>"
                        for key, value in _argument_items(call))
        texts.append(f"\n<tool_call>{call.name}{pairs}")  # no closing tag: GLM-4.5's template has none here
    return "\n".join(texts)


# --------------------------------------------------------------------------------- qwen, ling, qwen3_5


def _qwen_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.QWEN, tools="".join("\n" + _json(_wrapped(t)) for t in tools))


def _ling_tools(tools: list[dict[str, Any]]) -> str:
    listed = prompts.fill(prompts.LING, tools="".join("\n" + _json(_wrapped(t)) for t in tools))
    return listed + "\ndetailed thinking off"


def _qwen_calls(calls: list[FunctionCall]) -> str:
    return "\n".join(f"<tool_call>\n{_json({'name': c.name, 'arguments': c.arguments})}\n</tool_call>" for c in calls)


def _qwen3_5_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.QWEN3_5, tools="".join("\n" + _json(_function(t)) for t in tools))


def _qwen3_5_calls(calls: list[FunctionCall]) -> str:
    texts = []
    for call in calls:
        params = "".join(f"\n<parameter={key}>\n{_value_text(value)}\n</parameter>"
                         for key, value in _argument_items(call))
        texts.append(f"<tool_call>\n<function={call.name}>{params}\n</function>\n</tool_call>")
    return "\n".join(texts)


# ----------------------------------------------------------------------------------------- llama3


def _llama3_tools(tools: list[dict[str, Any]]) -> str:
    text = "".join(_json(_wrapped(t), indent=4) + "\n\n" for t in tools)
    return prompts.fill(prompts.LLAMA3, date=today(), tools=text)


def _llama3_calls(calls: list[FunctionCall]) -> str:
    objects = [{"name": c.name, "parameters": c.arguments} for c in calls]
    return _json(objects[0] if len(objects) == 1 else objects)


# ---------------------------------------------------------------------------------------- mistral


def _mistral_tools(tools: list[dict[str, Any]]) -> str:
    return f"[AVAILABLE_TOOLS] {_json([_wrapped(t) for t in tools])}[/AVAILABLE_TOOLS]"


def _mistral_calls(calls: list[FunctionCall]) -> str:
    return _json([{"name": c.name, "arguments": c.arguments} for c in calls])


# ------------------------------------------------------------------------------- minimax1, minimax2


def _minimax1_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.MINIMAX1, tools="".join(_json(_function(t)) + "\n" for t in tools))


def _minimax1_calls(calls: list[FunctionCall]) -> str:
    lines = "\n".join(_json({"name": c.name, "arguments": c.arguments}) for c in calls)
    return f"<tool_calls>\n{lines}\n</tool_calls>"


def _minimax2_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.MINIMAX2, tools="".join(f"<tool>{_json(_function(t))}</tool>\n" for t in tools))


def _minimax2_calls(calls: list[FunctionCall]) -> str:
    texts = []
    for call in calls:
        params = "".join(f'\n<parameter name="{key}">{_value_text(value)}</parameter>'
                         for key, value in _argument_items(call))
        texts.append(f'<invoke name="{call.name}">{params}\n</invoke>')
    return "\n".join(texts)


# --------------------------------------------------------------------------------------- seed_oss


def _seed_oss_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.SEED_OSS, tools="\n" + _json(tools))  # the list as given, wrapped or not


def _seed_oss_calls(calls: list[FunctionCall]) -> str:
    texts = []
    for call in calls:
        params = "".join(f"\n<parameter={key}>{_value_text(value)}</parameter>" for key, value in _argument_items(call))
        texts.append(f"\n<seed:tool_call>\n<function={call.name}{params}\n</function>\n</seed:tool_call>")
    return "\n".join(texts)


# ------------------------------------------------------------------------------------------- lfm2


def _lfm2_tools(tools: list[dict[str, Any]]) -> str:
    return prompts.fill(prompts.LFM2, tools=_json([_function(t) for t in tools]))


def _lfm2_calls(calls: list[FunctionCall]) -> str:
    def keyword(key: str, value: Any) -> str:
        return f'{key}="{value}"' if isinstance(value, str) else f"{key}={_json(value)}"

    texts = [f"{c.name}({', '.join(keyword(k, v) for k, v in _argument_items(c))})" for c in calls]
    return f"<|tool_call_start|>[{', '.join(texts)}]<|tool_call_end|>"


# ----------------------------------------------------------------------------------------- gemma4

_QUOTE = '<|"|>'  # Gemma 4's string delimiter


def _quoted(text: Any) -> str:
    return f"{_QUOTE}{text}{_QUOTE}"


def _gemma4_tools(tools: list[dict[str, Any]]) -> str:
    declarations = []
    for tool in map(_function, tools):
        text = f"declaration:{tool['name']}{{description:{_quoted(tool.get('description', ''))}"
        parameters = tool.get("parameters")
        if parameters:
            parts = []
            if parameters.get("properties"):
                props = ",".join(f"{name}:{{{_gemma4_schema(spec)}}}"
                                 for name, spec in parameters["properties"].items())
                parts.append(f"properties:{{{props}}}")
            if parameters.get("required"):
                parts.append(f"required:[{','.join(_quoted(r) for r in parameters['required'])}]")
            if parameters.get("type"):
                parts.append(f"type:{_quoted(str(parameters['type']).upper())}")
            text += f",parameters:{{{','.join(parts)}}}"
        response = tool.get("response")
        if response:
            parts = [f"description:{_quoted(response['description'])}"] if response.get("description") else []
            if str(response.get("type", "")).upper() == "OBJECT":
                parts.append(f"type:{_quoted('OBJECT')}")
            text += f",response:{{{','.join(parts)}}}"
        declarations.append(text + "}")
    return "\n".join(declarations)


def _gemma4_schema(spec: dict[str, Any]) -> str:
    parts = [f"description:{_quoted(spec['description'])}"] if spec.get("description") else []
    if spec.get("type"):
        parts.append(f"type:{_quoted(str(spec['type']).upper())}")
    return ",".join(parts)


def _gemma4_value(value: Any) -> str:
    """An argument value in Gemma 4's call syntax: quoted strings, bare keys (sorted), JSON-like literals."""
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_gemma4_value(value[key])}" for key in sorted(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_gemma4_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _gemma4_calls(calls: list[FunctionCall]) -> str:
    texts = []
    for call in calls:
        args = call.arguments
        if isinstance(args, dict):
            body = _gemma4_value(args)[1:-1]  # the object's members, inside the call's own braces
        elif isinstance(args, str):
            body = args
        else:
            body = _gemma4_value(args)
        texts.append(f"<|tool_call>call:{call.name}{{{body}}}<tool_call|>")
    return "".join(texts)


TOOL_FORMATS: dict[str, ToolFormat] = {
    f.name: f
    for f in (
        ToolFormat("default", _default_tools, _default_calls),
        ToolFormat("gemma4", _gemma4_tools, _gemma4_calls),
        ToolFormat("glm4", _glm4_tools, _glm4_calls),
        ToolFormat("glm4_moe", _glm4_moe_tools, _glm4_moe_calls),
        ToolFormat("lfm2", _lfm2_tools, _lfm2_calls),
        ToolFormat("ling", _ling_tools, _qwen_calls),
        ToolFormat("llama3", _llama3_tools, _llama3_calls),
        ToolFormat("minimax1", _minimax1_tools, _minimax1_calls),
        ToolFormat("minimax2", _minimax2_tools, _minimax2_calls),
        ToolFormat("mistral", _mistral_tools, _mistral_calls),
        ToolFormat("qwen", _qwen_tools, _qwen_calls),
        ToolFormat("qwen3_5", _qwen3_5_tools, _qwen3_5_calls),
        ToolFormat("seed_oss", _seed_oss_tools, _seed_oss_calls),
    )
}


# ---------------------------------------------------------------------------------- parsing turns


def parse_tools(tools: str | Sequence[Any]) -> list[dict[str, Any]]:
    """A sample's tools as a list of tool descriptions.

    Args:
        tools: a JSON list (or one JSON object) of tool descriptions, or the parsed list.

    Raises:
        ValueError: not JSON, or an entry that is not an object (the message says which).
    """
    if isinstance(tools, str):
        try:
            parsed = json.loads(tools)
        except json.JSONDecodeError as err:
            raise ValueError(f"tools must be a JSON list of tool descriptions: {err}") from err
    else:
        parsed = list(tools)
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise ValueError(f"tools must be a JSON list of tool descriptions, got {_json(parsed)[:60]}")
    for i, tool in enumerate(parsed):
        if not isinstance(tool, dict) or "name" not in _function_or_empty(tool):
            raise ValueError(f"tools[{i}] must be an object with a 'name' (or {{'type': 'function', "
                             f"'function': {{'name': ...}}}}), got {_json(tool)[:80]}")
    return parsed


def _function_or_empty(tool: dict[str, Any]) -> dict[str, Any]:
    inner = tool.get("function") if tool.get("type") == "function" else tool
    return inner if isinstance(inner, dict) else {}


def render_tools(tools: str | Sequence[Any], tool_format: str) -> str:
    """The system-prompt text of a sample's tools in `tool_format` ("" for an empty list).

    Args:
        tools: the sample's tools (see `parse_tools`).
        tool_format: a `TOOL_FORMATS` name.
    """
    parsed = parse_tools(tools)
    return TOOL_FORMATS[tool_format].tools(parsed) if parsed else ""


def parse_calls(content: str) -> list[FunctionCall]:
    """The calls of a `function` turn: `{"name": ..., "arguments": ...}` or a JSON list of them.

    Raises:
        ValueError: not JSON, or a call without `name` or `arguments`.
    """
    try:
        parsed = json.loads(content)
    except json.JSONDecodeError as err:
        raise ValueError(f'a function turn must be JSON {{"name": ..., "arguments": {{...}}}} or a list of '
                         f"them ({err}): {content[:80]!r}") from err
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
            raise ValueError(f"a tool call needs 'name' and 'arguments', got {_json(call)[:80]} in the function turn")
        out.append(FunctionCall(str(call["name"]), call["arguments"]))
    return out


def render_function(content: str, tool_format: str, thought_words: Sequence[str] | None = None,
                    call_words: Sequence[str] | None = None) -> str:
    """A `function` turn's text in `tool_format`, keeping the thought or prose around the call.

    As LLaMA-Factory: if the turn holds `call_words[0] ... call_words[1]` (`<tool_call>...</tool_call>`),
    the JSON between them is the call and the rest of the turn is written before it; otherwise a thought
    (`thought_words[0] ... thought_words[1]`) is taken out, the rest is the call, and the thought is written
    first. Without `thought_words`/`call_words` (templates that put the system prompt in the first user
    turn: llama2, mistral, gemma) the whole turn is the call.

    Args:
        content: the turn's text.
        tool_format: a `TOOL_FORMATS` name.
        thought_words: (open, close) of a thought. Default None.
        call_words: (open, close) around a call. Default None.

    Raises:
        ValueError: the call is not valid JSON, or the format cannot write it (the message says why).
    """
    write = TOOL_FORMATS[tool_format].calls
    if call_words and len(call_words) == 2:
        match = re.search(f"{re.escape(call_words[0])}(.*?){re.escape(call_words[1])}", content, re.DOTALL)
        if match:
            return content.replace(match.group(0), "") + write(parse_calls(match.group(1)))
    if thought_words and len(thought_words) == 2:
        match = re.search(f"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", content, re.DOTALL)
        if match:
            return match.group(0) + write(parse_calls(content.replace(match.group(0), "")))
    return write(parse_calls(content))
