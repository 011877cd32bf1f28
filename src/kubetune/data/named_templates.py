"""The named chat templates (`template: chatml`, `llama3`, ...): format strings for each model family."""

from __future__ import annotations

from kubetune.data.templates import Template

_QWEN_TOOLS_FORMAT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{{tools}}\n"
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)

_CHATML = {
    "format_system": "<|im_start|>system\n{{content}}<|im_end|>\n",
    "format_user": "<|im_start|>user\n{{content}}<|im_end|>\n",
    "format_observation": "<|im_start|>tool\n{{content}}<|im_end|>\n",
    "format_generation": "<|im_start|>assistant\n",
    "format_assistant": "{{content}}<|im_end|>\n",
    "stop_words": ["<|im_end|>"],
    "replace_eos": True,
}
_QWEN = {
    **_CHATML,
    # Qwen2.5's own template: tool results come back as a user turn, calls as <tool_call> JSON.
    "format_observation": "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n",
    "format_function": "<tool_call>\n{{content}}\n</tool_call><|im_end|>\n",
    "format_tools": _QWEN_TOOLS_FORMAT,
}

NAMED_TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            name="default",
            format_system="System: {{content}}\n\n",
            format_user="Human: {{content}}\n",
            format_generation="Assistant: ",
            format_assistant="{{content}}{{eos_token}}\n",
        ),
        # Raw concatenation; the only EOS is the one `efficient_eos` appends at the end.
        Template(name="empty", efficient_eos=True),
        Template(
            name="alpaca",
            format_system="{{content}}\n\n",
            format_user="### Instruction:\n{{content}}\n\n",
            format_generation="### Response:\n",
            format_assistant="{{content}}{{eos_token}}\n\n",
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request."
            ),
        ),
        Template(name="chatml", **_CHATML),
        Template(
            name="qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", **_QWEN
        ),
        Template(name="qwen3", **_QWEN),
        Template(
            name="llama2",
            format_system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
            format_user="{{bos_token}}[INST] {{content}} [/INST]",
            format_assistant=" {{content}} {{eos_token}}",
            system_in_user=True,
        ),
        Template(
            name="llama3",
            format_prefix="{{bos_token}}",
            format_system="<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",
            format_user="<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>",
            format_observation="<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>",
            format_generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
            format_assistant="{{content}}<|eot_id|>",
            stop_words=["<|eot_id|>", "<|eom_id|>"],
            replace_eos=True,
        ),
        Template(
            name="mistral",
            format_prefix="{{bos_token}}",
            format_system="{{content}}\n\n",
            format_user="[INST] {{content}}[/INST]",
            format_observation="[TOOL_RESULTS] {{content}}[/TOOL_RESULTS]",
            format_function="[TOOL_CALLS] {{content}}{{eos_token}}",
            format_tools="\n\n[AVAILABLE_TOOLS] [{{tools}}][/AVAILABLE_TOOLS]",
            format_assistant="{{content}}{{eos_token}}",
            system_in_user=True,
        ),
        Template(
            name="gemma",
            format_prefix="{{bos_token}}",
            format_system="{{content}}\n\n",
            format_user="<start_of_turn>user\n{{content}}<end_of_turn>\n",
            format_observation="<start_of_turn>tool\n{{content}}<end_of_turn>\n",
            format_generation="<start_of_turn>model\n",
            format_assistant="{{content}}<end_of_turn>\n",
            system_in_user=True,
            stop_words=["<end_of_turn>"],
            replace_eos=True,
        ),
        # Baichuan2 marks turns with reserved tokens and ends only the whole sample with EOS.
        Template(
            name="baichuan2",
            format_user="<reserved_106>{{content}}",
            format_generation="<reserved_107>",
            efficient_eos=True,
        ),
        Template(
            name="phi",
            format_prefix="{{bos_token}}",
            format_system="<|system|>\n{{content}}<|end|>\n",
            format_user="<|user|>\n{{content}}<|end|>\n",
            format_generation="<|assistant|>\n",
            format_assistant="{{content}}<|end|>\n",
            stop_words=["<|end|>"],
            replace_eos=True,
        ),
    ]
}

TEMPLATE_NAMES: list[str] = sorted(NAMED_TEMPLATES)
"""Names `template_registry.get_template` accepts besides None (the tokenizer's own) and `custom` (a YAML file)."""
