"""Tool formats: the exact text of each family's tool list and tool calls, and how a template uses them.

The expected strings are written out from LLaMA-Factory 0.9.5's definitions (tool_utils.py): a format that
drifted by one character fails here; `make conformance` checks the same through LF's own preprocessing.
"""

from __future__ import annotations

import json

import pytest

from kubetune.data import tool_formats
from kubetune.data.tool_formats import TOOL_FORMATS, FunctionCall, parse_calls, render_function, render_tools

ADD = {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "description": "first"}, "b": {"type": "integer"}},
    "required": ["a"]}}
ADD_JSON = json.dumps(ADD)
WRAPPED_JSON = json.dumps({"type": "function", "function": ADD})
CALL = FunctionCall("add", {"a": 1, "b": 2})


def tools(fmt: str, listed=(ADD,)) -> str:
    return render_tools(json.dumps(list(listed)), fmt)


def calls(fmt: str, *made: FunctionCall) -> str:
    return TOOL_FORMATS[fmt].calls(list(made or [CALL]))


def test_default_lists_tools_as_text_and_calls_as_action_lines():
    assert tools("default") == (
        "You have access to the following tools:\n"
        "> Tool Name: add\nTool Description: Add two integers.\nTool Args:\n"
        "  - a (integer, required): first\n  - b (integer): \n\n"
        "Use the following format if using a tool:\n```\nAction: tool name (one of [add])\n"
        "Action Input: the input to the tool, in a JSON format representing the kwargs "
        '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n')
    assert calls("default", CALL, FunctionCall("neg", {"x": 3})) == (
        'Action: add\nAction Input: {"a": 1, "b": 2}\nAction: neg\nAction Input: {"x": 3}')


def test_default_notes_enums_and_array_items_and_unwraps_openai_style():
    properties = {"colour": {"type": "string", "enum": ["red", "blue"]},
                  "tags": {"type": "array", "items": {"type": "string"}}}
    spec = {"type": "function", "function": {"name": "pick", "parameters": {"properties": properties}}}
    text = tools("default", [spec])
    assert "> Tool Name: pick\nTool Description: \nTool Args:\n" in text
    assert "  - colour (string): , should be one of [red, blue]\n" in text
    assert "  - tags (array): , where each item should be string\n" in text


def test_qwen_wraps_each_tool_and_writes_tool_call_json():
    text = tools("qwen")
    assert text.startswith("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.")
    assert f"<tools>\n{WRAPPED_JSON}\n</tools>" in text
    assert text.endswith('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    assert calls("qwen", CALL, CALL) == (
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')


def test_ling_is_qwen_without_the_leading_newlines_and_thinking_off():
    text = tools("ling")
    assert text.startswith("# Tools\n\n") and text.endswith("</tool_call>\ndetailed thinking off")
    assert calls("ling") == calls("qwen")


def test_qwen3_5_lists_bare_tools_and_writes_xml_parameters():
    assert f"<tools>\n{ADD_JSON}\n</tools>" in tools("qwen3_5")
    assert calls("qwen3_5", FunctionCall("find", {"q": "cats", "tags": ["a"]})) == (
        '<tool_call>\n<function=find>\n<parameter=q>\ncats\n</parameter>\n<parameter=tags>\n["a"]\n</parameter>\n'
        "</function>\n</tool_call>")


def test_llama3_writes_a_dated_prompt_and_parameters(monkeypatch):
    monkeypatch.setattr(tool_formats, "today", lambda: "15 Jan 2026")
    assert tools("llama3") == (
        "Cutting Knowledge Date: December 2023\nToday Date: 15 Jan 2026\n\n"
        "You have access to the following functions. To call a function, please respond with JSON for a function "
        'call. Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        'value}. Do not use variables.\n\n' + json.dumps({"type": "function", "function": ADD}, indent=4) + "\n\n")
    assert calls("llama3") == '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert calls("llama3", CALL, CALL).startswith('[{"name": "add"')  # parallel: a list


def test_mistral_lists_wrapped_tools_and_calls_as_one_json_list():
    assert tools("mistral") == f"[AVAILABLE_TOOLS] [{WRAPPED_JSON}][/AVAILABLE_TOOLS]"
    assert calls("mistral") == '[{"name": "add", "arguments": {"a": 1, "b": 2}}]'


def test_glm4_writes_indented_blocks_and_refuses_parallel_calls():
    text = tools("glm4")
    assert text.startswith("你是一个名为 ChatGLM 的人工智能助手。")
    assert text.endswith("# 可用工具\n\n## add\n\n" + json.dumps(ADD, indent=4, ensure_ascii=False)
                         + "\n在调用上述函数时，请使用 Json 格式表示调用的参数。")
    assert calls("glm4") == 'add\n{"a": 1, "b": 2}'
    with pytest.raises(ValueError, match="no parallel calls"):
        calls("glm4", CALL, CALL)


def test_glm4_moe_writes_arg_key_value_pairs():
    assert f"<tools>\n{WRAPPED_JSON}\n</tools>" in tools("glm4_moe")
    assert calls("glm4_moe", FunctionCall("add", {"a": 1, "s": "x"})) == (
        "\n<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n<arg_key>s</arg_key>\n<arg_value>x</arg_value>")


def test_minimax_formats():
    assert f"<tools>\n{ADD_JSON}\n</tools>" in tools("minimax1")
    assert calls("minimax1") == '<tool_calls>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_calls>'
    assert f"<tools>\n<tool>{ADD_JSON}</tool>\n</tools>" in tools("minimax2")
    assert calls("minimax2") == (
        '<invoke name="add">\n<parameter name="a">1</parameter>\n<parameter name="b">2</parameter>\n</invoke>')


def test_seed_oss_lists_the_tools_as_given_and_writes_seed_tool_calls():
    assert "these tools.\n" + json.dumps([ADD]) + "\n工具调用请遵循如下格式:" in tools("seed_oss")
    assert calls("seed_oss") == (
        "\n<seed:tool_call>\n<function=add\n<parameter=a>1</parameter>\n<parameter=b>2</parameter>\n</function>\n"
        "</seed:tool_call>")


def test_lfm2_writes_python_calls():
    assert tools("lfm2") == f"List of tools: <|tool_list_start|>[{ADD_JSON}]<|tool_list_end|>"
    assert calls("lfm2", FunctionCall("find", {"q": "x y", "n": 2}), CALL) == (
        '<|tool_call_start|>[find(q="x y", n=2), add(a=1, b=2)]<|tool_call_end|>')


def test_gemma4_declarations_and_calls():
    assert tools("gemma4") == (
        'declaration:add{description:<|"|>Add two integers.<|"|>,parameters:{properties:{a:{description:<|"|>first'
        '<|"|>,type:<|"|>INTEGER<|"|>},b:{type:<|"|>INTEGER<|"|>}},required:[<|"|>a<|"|>],type:<|"|>OBJECT<|"|>}}')
    made = FunctionCall("add", {"b": 2.5, "a": "x", "c": True, "d": None, "e": {"z": [1, "y"]}})
    assert calls("gemma4", made) == (
        '<|tool_call>call:add{a:<|"|>x<|"|>,b:2.5,c:true,d:null,e:{z:[1,<|"|>y<|"|>]}}<tool_call|>')


def test_an_empty_tool_list_writes_nothing_and_bad_tools_say_why():
    assert render_tools("[]", "qwen") == ""
    with pytest.raises(ValueError, match="JSON list of tool descriptions"):
        render_tools("[{oops", "qwen")
    with pytest.raises(ValueError, match=r"tools\[1\] must be an object with a 'name'"):
        render_tools(json.dumps([ADD, {"description": "no name"}]), "default")


def test_function_turns_parse_single_and_parallel_calls_and_refuse_bad_json():
    assert parse_calls('{"name": "add", "arguments": {"a": 1}}') == [FunctionCall("add", {"a": 1})]
    assert len(parse_calls('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]')) == 2
    with pytest.raises(ValueError, match="a function turn must be JSON"):
        parse_calls("add(1)")
    with pytest.raises(ValueError, match="needs 'name' and 'arguments'"):
        parse_calls('{"name": "add"}')


THINK = ["<think>\n", "\n</think>\n\n"]
CALL_WORDS = ["<tool_call>", "</tool_call>"]
CALL_JSON = '{"name": "add", "arguments": {"a": 1, "b": 2}}'


def test_a_thought_before_the_call_is_kept_before_it():
    content = "<think>\nI should add.\n</think>\n\n" + CALL_JSON
    assert render_function(content, "default", THINK, CALL_WORDS) == (
        '<think>\nI should add.\n</think>\n\nAction: add\nAction Input: {"a": 1, "b": 2}')


def test_prose_around_tool_call_words_is_kept_before_the_call():
    content = f"Let me add.\n<tool_call>{CALL_JSON}</tool_call>"
    assert render_function(content, "mistral", THINK, CALL_WORDS) == (
        'Let me add.\n[{"name": "add", "arguments": {"a": 1, "b": 2}}]')


def test_without_thought_words_the_whole_turn_must_be_the_call():
    # LLaMA-Factory's Llama2Template (llama2, mistral, gemma) passes no thought or call words
    with pytest.raises(ValueError, match="a function turn must be JSON"):
        render_function("<think>\nx\n</think>\n\n" + CALL_JSON, "mistral")
