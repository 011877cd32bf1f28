"""Templates with tools: the tool list in the system block, call and result turns, the config's `tool_format`,
and the templates that write tokens by name (chatglm3, yuan) or an empty thought of `</think>` (glm4_7, aeva)."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import AutoTokenizer

from kubetune.config import ConfigError, load_config
from kubetune.data.schema import Message
from kubetune.data.template_registry import get_template, load_template_file
from kubetune.data.tool_formats import TOOL_FORMATS

TOOLS = json.dumps([{"name": "add", "description": "Add.", "parameters": {"properties": {"a": {"type": "integer"}}}}])
CALL = json.dumps({"name": "add", "arguments": {"a": 1}})
TOOL_TURNS = [Message("user", "add 1"), Message("function", CALL), Message("observation", "1"),
              Message("assistant", "It is 1.")]


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def text(tokenizer, template, messages, **kw) -> str:
    turns = template.encode_turns(tokenizer, messages, **kw)
    return tokenizer.decode([t for p, r in turns for t in (*p, *r)])


def test_chatml_writes_the_default_tool_format(smol):
    template = get_template("chatml", smol)
    written = text(smol, template, TOOL_TURNS, tools=TOOLS)
    assert written.startswith("<|im_start|>system\nYou have access to the following tools:\n> Tool Name: add\n")
    assert '<|im_start|>assistant\nAction: add\nAction Input: {"a": 1}<|im_end|>\n' in written
    assert "<|im_start|>tool\n1<|im_end|>\n<|im_start|>assistant\nIt is 1." in written


def test_an_empty_tool_list_opens_an_empty_system_block(smol):
    template = get_template("chatml", smol)
    messages = [Message("user", "hi"), Message("assistant", "hello")]
    assert text(smol, template, messages, tools="[]").startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user")
    assert text(smol, template, messages).startswith("<|im_start|>user")


def test_phi4_mini_writes_the_tools_json_as_the_sample_has_it(smol):
    template = get_template("phi4_mini", smol)
    raw = '[{"name":"add"}]'  # compact, as written: not re-serialised
    assert text(smol, template, [Message("user", "q"), Message("assistant", "a")], tools=raw).startswith(
        '<|system|><|tool|>[{"name":"add"}]<|/tool|><|end|>')


def test_mistral_lists_tools_in_the_first_user_turn(smol):
    template = get_template("mistral", smol)
    written = text(smol, template, TOOL_TURNS, tools=TOOLS)
    assert '[INST] [AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "add"' in written
    assert '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}}]' in written
    assert '[TOOL_RESULTS] {"content": 1}[/TOOL_RESULTS]' in written


def _function_ids(tokenizer, template) -> list[int]:
    return template.encode_turns(tokenizer, TOOL_TURNS, tools=TOOLS)[0][1]


def test_the_config_tool_format_changes_the_call_and_tool_tokens(smollm2_dir, smol):
    from kubetune.data.setup import tokenizer_and_template

    base = {"model_name_or_path": str(smollm2_dir), "template": "chatml"}
    tokenizer, own = tokenizer_and_template(load_config(None, base))
    _, qwen = tokenizer_and_template(load_config(None, {**base, "tool_format": "qwen"}))
    assert qwen.tool_format == "qwen" and own.tool_format == "default"
    # LLaMA-Factory's override: the call is the bare call plus EOS (chatml's EOS is <|im_end|>), no "\n"
    assert tokenizer.decode(_function_ids(tokenizer, qwen)) == f"<tool_call>\n{CALL}\n</tool_call><|im_end|>"
    assert tokenizer.decode(_function_ids(tokenizer, own)) == 'Action: add\nAction Input: {"a": 1}<|im_end|>\n'
    prompt = tokenizer.decode(qwen.encode_turns(tokenizer, TOOL_TURNS, tools=TOOLS)[0][0])
    assert "<tools>\n" in prompt and "> Tool Name" not in prompt


def test_tool_format_keeps_efficient_eos_templates_without_eos(smol):
    glm = get_template("glm4", smol).with_tool_format("qwen")
    assert glm.format_function == "{{content}}"
    assert get_template("llama3", smol).with_tool_format("mistral").format_function == "{{content}}{{eos_token}}"


def test_tool_format_is_checked_by_name_and_needs_a_template(smollm2_dir):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"model_name_or_path": "m", "template": "qwen", "tool_format": "hermes"})
    assert {p.key for p in err.value.problems} == {"tool_format"}
    assert "qwen3_5" in str(err.value)  # the choices are listed
    with pytest.raises(ConfigError, match="template is not set"):
        load_config(None, {"model_name_or_path": "m", "tool_format": "qwen"})


def test_the_schema_lists_every_tool_format():
    from typing import get_args

    from kubetune.config.schema import ToolFormatName

    assert set(get_args(ToolFormatName)) == set(TOOL_FORMATS)


def test_a_custom_template_file_takes_a_tool_format(tmp_path, smol):
    path = tmp_path / "mine.yaml"
    path.write_text('format_user: "U: {{content}}\\n"\nformat_assistant: "A: {{content}}\\n"\ntool_format: llama3\n')
    assert load_template_file(path).tool_format == "llama3"
    path.write_text('format_user: "U: {{content}}\\n"\ntool_format: nope\n')
    with pytest.raises(ValueError, match="unknown tool_format 'nope'"):
        load_template_file(path)


@pytest.fixture(scope="module")
def glm_tokenizer(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens(["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<sep>"],
                         special_tokens=True)
    return tokenizer


def test_chatglm3_writes_markers_by_name_and_the_newline_apart(glm_tokenizer):
    tok = glm_tokenizer
    template = get_template("chatglm3", tok)
    ids = tok.convert_tokens_to_ids
    prompt, response = template.encode_turns(tok, [Message("user", "  hi"), Message("assistant", "\n")])[0]
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert prompt == [ids("[gMASK]"), ids("sop"), ids("<|user|>"), *enc("\n"), *enc("  hi"), ids("<|assistant|>")]
    assert response == enc("\n") + enc("\n")
    assert enc("\n") + enc("  hi") != enc("\n  hi") and enc("\n") * 2 != enc("\n\n")  # apart, they differ
    # tool results and calls: GLM-4's tool format, the call without the assistant's newline
    turns = template.encode_turns(tok, TOOL_TURNS, tools=TOOLS)
    assert tok.decode(turns[0][1]) == 'add\n{"a": 1}'
    assert turns[1][0][0] == ids("<|observation|>")


def test_chatglm3_with_a_tokenizer_without_its_tokens_writes_the_unknown_token(smol):
    template = get_template("chatglm3", smol)
    assert "<|system|>" in template.check_tokenizer(smol)  # (<|user|> is a stop word: fix_tokenizer adds it)
    prompt, _ = template.encode_turns(smol, [Message("user", "hi"), Message("assistant", "ok")])[0]
    assert prompt[:3] == [smol.unk_token_id] * 3  # as LLaMA-Factory's convert_tokens_to_ids


def test_yuan_ends_a_user_turn_with_sep(glm_tokenizer):
    template = get_template("yuan", glm_tokenizer)
    prompt, response = template.encode_turns(glm_tokenizer, [Message("user", "hi"), Message("assistant", "ok")])[0]
    assert prompt[-1] == glm_tokenizer.convert_tokens_to_ids("<sep>")
    assert glm_tokenizer.decode(response) == "ok<eod>\n"


@pytest.mark.parametrize("name", ["glm4_7", "aeva"])
def test_glm4_7_adds_an_empty_thought_of_the_closing_tag_alone(smol, name):
    template = get_template(name, smol)
    _, response = template.encode_turns(smol, [Message("user", "hi"), Message("assistant", "ok")])[0]
    assert smol.decode(response) == "</think>\nok"
    template.enable_thinking = False
    prompt, response = template.encode_turns(smol, [Message("user", "hi"), Message("assistant", "ok")])[0]
    assert smol.decode(prompt).endswith("<|assistant|></think>") and smol.decode(response) == "\nok"


def test_gemma4_is_a_text_template_and_gemma4n_is_refused(smol):
    template = get_template("gemma4", smol)
    written = text(smol, template, TOOL_TURNS, tools=TOOLS)
    assert written.startswith(f"{smol.bos_token}<|turn>system\n<|think|>You are a helpful assistant.declaration:add")
    assert "<|tool><|tool_call>call:add{a:1}<tool_call|><tool|>" in written
    with pytest.raises(ValueError, match="multimodal"):
        get_template("gemma4n", smol)


def test_each_template_keeps_its_own_thought_and_call_words_around_a_call(smol):
    lfm2 = get_template("lfm2", smol)
    turn = Message("function", f"Adding.\n<|tool_call_start|>{CALL}<|tool_call_end|>")
    _, response = lfm2.encode_turns(smol, [TOOL_TURNS[0], turn])[0]
    assert smol.decode(response) == "Adding.\n<|tool_call_start|>[add(a=1)]<|tool_call_end|><|im_end|>\n"
    gemma4 = get_template("gemma4", smol)
    turn = Message("function", f"<|channel>thought\nadd it<channel|>{CALL}")
    _, response = gemma4.encode_turns(smol, [TOOL_TURNS[0], turn])[0]
    assert smol.decode(response) == (
        "<|tool><|channel>thought\nadd it<channel|><|tool_call>call:add{a:1}<tool_call|><tool|>")


def test_a_function_turn_that_is_not_a_call_names_its_row(smol):
    from kubetune.data.encode import BatchEncoder, RowError
    from kubetune.data.schema import Sample

    tokenizer = copy.deepcopy(smol)
    template = get_template("qwen", tokenizer)
    template.fix_tokenizer(tokenizer)
    bad = Sample([Message("user", "add 1")], [Message("function", "add(1)")], tools=TOOLS, row=4)
    with pytest.raises(RowError, match="row 4: a function turn must be JSON"):
        BatchEncoder(template, tokenizer, "sft", 64).encode([bad], [None], for_eval=False)
