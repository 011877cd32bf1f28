"""Our own conformance data: conversations that exercise what a chat template decides.

Each row is written once, in a neutral form (`messages` alternating user/assistant, an optional
`system`, and for pairs `chosen`/`rejected`), and converted to LLaMA-Factory's aligned form (for the
oracle) and to our `Sample` (for kubetune's encoder). The texts are ours, chosen to hit tokenizer
boundaries: leading spaces and newlines, punctuation next to a turn marker, non-ASCII, a long answer
that a short cutoff must cut.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune.data.schema import Message, Sample

LONG = " ".join(f"Step {i}: stir the pot and count to {i * 3}." for i in range(1, 25))

SFT_ROWS: list[dict[str, Any]] = [
    {"messages": ["What is the capital of France?", "Paris."]},
    {"system": "You are a terse assistant.", "messages": ["Name two primes.", "2 and 3."]},
    {"messages": ["Hi!", "Hello! How can I help?", "Tell me a joke.", "Why did the chicken cross the road?",
                  "Why?", "To get to the other side."]},
    {"system": "Answer in German.", "messages": ["Good morning", "Guten Morgen!", "Thank you", "Danke schön."]},
    {"messages": ["  leading spaces and a trailing newline\n", "\nAn answer that starts with a newline."]},
    {"messages": ["Übersetze: «naïve café» — 東京", "Naive café — Tokyo (東京)."]},
    {"messages": ["How do I make soup? Give every step.", LONG]},
    {"system": "Be helpful.", "messages": [LONG, "That is a long list of steps.", "Summarise it.", "Stir and count."]},
    {"messages": ["Write code: print hello", "```python\nprint('hello')\n```"]},
    {"messages": ["1+1=", "2"]},
    # thoughts: kept, stripped or replaced by an empty one, depending on the template and enable_thinking
    {"messages": ["Is 7 prime?", "<think>\n7 has no divisor but 1 and 7.\n</think>\n\nYes.",
                  "And 8?", "No, 8 = 2 x 4."]},
]

# Tools: one bare function description, and a pair in both styles (OpenAI-wrapped and bare), with required
# and optional parameters, an enum and an array; calls with non-ASCII and list arguments. A message given as
# a dict has its role (function = an assistant's call, observation = the tool's answer); a string alternates.
WEATHER_TOOL = {"name": "get_weather", "description": "Look up the current weather of a city.",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}},
                    "required": ["city"]}}
NOTES_TOOLS = [
    {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
    {"name": "search_notes", "description": "Find notes that mention a phrase.", "parameters": {
        "type": "object", "properties": {
            "query": {"type": "string", "description": "Words to look for"},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "Only notes with these tags"}},
        "required": ["query"]}},
]


def _call(name: str, **arguments: Any) -> dict[str, str]:
    return {"role": "function", "content": json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)}


def _result(text: str) -> dict[str, str]:
    return {"role": "observation", "content": text}


TOOL_ROWS: list[dict[str, Any]] = [
    {"tools": json.dumps([WEATHER_TOOL]),
     "messages": ["What's the weather in Lyon?", _call("get_weather", city="Lyon", unit="celsius"),
                  _result('{"temperature": 18, "sky": "cloudy"}'), "It is 18 °C and cloudy in Lyon."]},
    {"system": "You keep notes for the user.", "tools": json.dumps(NOTES_TOOLS, ensure_ascii=False),
     "messages": ["Add 2 and 40.", _call("add", a=2, b=40), _result("42"), "2 + 40 = 42.",
                  "Find my notes about Ünïcode.", _call("search_notes", query="Ünïcode", tags=["dev", "text"]),
                  _result('[{"id": 7, "title": "UTF-8 tips"}]'), "One note: UTF-8 tips (#7)."]},
    # an empty tool list still opens the system block in LLaMA-Factory
    {"tools": "[]", "messages": ["Hello there", "Hi! No tools needed."]},
    {"system": "Be brief.", "tools": "[]", "messages": ["Ping?", "Pong."]},
    # the conversation ends with the call (a row that teaches only when to call)
    {"tools": json.dumps([WEATHER_TOOL]), "messages": ["Is it raining in Oslo?", _call("get_weather", city="Oslo")]},
]
SFT_ROWS += TOOL_ROWS

# Call turns that some templates cannot write, each set in a variant of its own (a row LF cannot encode
# fails its whole case, and both sides refusing counts as agreeing): a thought or prose around the call
# (LF's Llama2Template family, llama2/mistral/gemma, takes the whole turn as JSON), and parallel calls
# (the glm4 format has none).
_WEATHER_CALL = json.dumps({"name": "get_weather", "arguments": {"city": "Rome"}})
ROW_SETS: dict[str, list[dict[str, Any]]] = {
    "tool_thought": [
        {"tools": json.dumps([WEATHER_TOOL]),
         "messages": ["Weather in Rome?", {"role": "function", "content": "<think>\nThe weather tool answers this.\n"
                                                                          "</think>\n\n" + _WEATHER_CALL},
                      _result('{"temperature": 25}'), "Sunny, 25 °C."]},
        {"tools": json.dumps([WEATHER_TOOL]),
         "messages": ["And in Rome?", {"role": "function", "content": f"I'll look it up.\n<tool_call>\n{_WEATHER_CALL}"
                                                                      "\n</tool_call>"},
                      _result('{"temperature": 25}'), "25 °C in Rome."]},
    ],
    "tool_parallel": [
        {"tools": json.dumps(NOTES_TOOLS),
         "messages": ["Add 1+2 and 3+4.", {"role": "function", "content": json.dumps(
             [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "add", "arguments": {"a": 3, "b": 4}}])},
             _result("3"), "3 and 7."]},
    ],
}

PAIR_ROWS: list[dict[str, Any]] = [
    {"messages": ["Which is bigger, 9.11 or 9.9?"], "chosen": "9.9 is bigger.", "rejected": "9.11 is bigger."},
    {"system": "You are polite.", "messages": ["Say hi", "Hi!", "Again, please."],
     "chosen": "Hello again!", "rejected": "No."},
    {"messages": ["Explain soup making."], "chosen": LONG, "rejected": "Boil water."},
    {"messages": [LONG], "chosen": "Stir and count.", "rejected": LONG},
    {"messages": ["Café?"], "chosen": " Oui, un café.", "rejected": "\nNon."},
    {"messages": ["Is 9 prime?", "<think>\n9 = 3 x 3.\n</think>\n\nNo.", "And 11?"],
     "chosen": "<think>\nNo divisor up to 3.\n</think>\n\nYes.", "rejected": "No."},
    # tools: after a call and its result, the better answer uses the result; then a call against a guess
    {"tools": json.dumps([WEATHER_TOOL]),
     "messages": ["Weather in Lyon?", _call("get_weather", city="Lyon"), _result('{"temperature": 18}')],
     "chosen": "18 degrees in Lyon.", "rejected": "Probably sunny."},
    {"system": "Use tools when they help.", "tools": json.dumps(NOTES_TOOLS),
     "messages": ["What is 19 + 23?"], "chosen": _call("add", a=19, b=23), "rejected": "About 40."},
]


def _turns(texts: list[str | dict[str, str]]) -> list[dict[str, str]]:
    return [_message(t, "user" if i % 2 == 0 else "assistant") for i, t in enumerate(texts)]


def _message(text: str | dict[str, str], role: str) -> dict[str, str]:
    """A message of LF's aligned form: a dict keeps its role (function, observation), a string gets `role`."""
    return dict(text) if isinstance(text, dict) else {"role": role, "content": text}


def lf_row(row: dict[str, Any], stage: str) -> dict[str, Any]:
    """A row in LLaMA-Factory's aligned form (`_prompt`, `_response`, `_system`, `_tools`)."""
    messages = _turns(row["messages"])
    if stage == "sft":
        prompt, response = messages[:-1], messages[-1:]
    else:
        prompt = messages
        response = [_message(row["chosen"], "assistant"), _message(row["rejected"], "assistant")]
    return {"prompt": prompt, "response": response, "system": row.get("system", ""), "tools": row.get("tools", "")}


def our_sample(row: dict[str, Any], stage: str, index: int) -> Sample:
    """The same row as kubetune's `Sample`."""
    lf = lf_row(row, stage)
    return Sample(
        prompt=[Message(m["role"], m["content"]) for m in lf["prompt"]],
        response=[Message(m["role"], m["content"]) for m in lf["response"]],
        system=lf["system"],
        tools=lf["tools"],
        row=index,
        source="conformance",
    )


# (case suffix, stage, options): what each template is checked under.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("sft", "sft", {"cutoff_len": 1024}),
    ("sft_train_on_prompt", "sft", {"cutoff_len": 1024, "train_on_prompt": True}),
    ("sft_mask_history", "sft", {"cutoff_len": 1024, "mask_history": True}),
    ("sft_cutoff_40", "sft", {"cutoff_len": 40}),
    ("pairwise", "rm", {"cutoff_len": 1024}),
    ("pairwise_cutoff_40", "dpo", {"cutoff_len": 40}),
    ("sft_no_thinking", "sft", {"cutoff_len": 1024, "enable_thinking": False}),
    ("pairwise_no_thinking", "dpo", {"cutoff_len": 1024, "enable_thinking": False}),
    # the config's tool_format replaces the template's tool list and call format (and its call turn's slots)
    ("sft_tool_format_qwen", "sft", {"cutoff_len": 1024, "tool_format": "qwen"}),
    ("sft_tool_thought", "sft", {"cutoff_len": 1024, "row_set": "tool_thought"}),
    ("sft_tool_parallel", "sft", {"cutoff_len": 1024, "row_set": "tool_parallel"}),
]

TODAY = "2026-01-15"
"""The date both sides write into llama3's tool prompt ("Today Date: 15 Jan 2026"): fixed, so that the
oracle's cached answer stays comparable on later days."""


def rows_for(stage: str, row_set: str | None = None) -> list[dict[str, Any]]:
    """A variant's rows: its `row_set` (`ROW_SETS`) if it names one, else the stage's (SFT_ROWS or PAIR_ROWS)."""
    if row_set:
        return ROW_SETS[row_set]
    return SFT_ROWS if stage == "sft" else PAIR_ROWS
