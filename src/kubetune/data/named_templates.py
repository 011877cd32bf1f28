"""The named chat templates (`template: chatml`, `llama3`, ...): format strings for each model family.

The names and formats are LLaMA-Factory 0.9.5's, so that a LLaMA-Factory config's `template:` means the
same tokens here (`make conformance` checks them against LLaMA-Factory's own preprocessing). As there,
a user format ends with the header that opens the assistant's turn, and a format without
`{{eos_token}}` ends the turn with a stop word instead. Tools and tool calls are written in each
template's `tool_format` (LLaMA-Factory's `default` unless the family has its own).
"""

from __future__ import annotations

from typing import Any

from kubetune.data.templates import DEFAULT_THOUGHT_WORDS, Template

# LLaMA-Factory's default thought markers (reasoning templates that do not set their own).
_THINK = DEFAULT_THOUGHT_WORDS


def _t(name: str, user: str, assistant: str | None = None, system: str = "{{content}}", **rest: Any) -> Template:
    """A template with LLaMA-Factory's defaults: an assistant turn ends with EOS (none with `efficient_eos`),
    the system prompt is written as it is, a tool result is formatted as a user turn, a tool call as an
    assistant turn, both in the `default` tool format."""
    if assistant is None:
        assistant = "{{content}}" if rest.get("efficient_eos") else "{{content}}{{eos_token}}"
    return Template(name=name, format_user=user, format_assistant=assistant, format_system=system, **rest)


def _chatml(name: str, user_role: str = "user", assistant_role: str = "assistant", **rest: Any) -> Template:
    """The `<|im_start|>role\\n...<|im_end|>\\n` family (chatml, qwen, yi, smollm, ...)."""
    rest.setdefault("format_observation", "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n")
    return _t(
        name,
        f"<|im_start|>{user_role}\n{{{{content}}}}<|im_end|>\n<|im_start|>{assistant_role}\n",
        "{{content}}<|im_end|>\n",
        "<|im_start|>system\n{{content}}<|im_end|>\n",
        **rest,
    )


def _qwen(name: str, tool_format: str = "qwen", **rest: Any) -> Template:
    """Qwen's chatml: tool results come back as a user turn, calls as <tool_call> JSON (qwen3_5: XML)."""
    return _chatml(
        name,
        format_observation=(
            "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        ),
        tool_format=tool_format,
        stop_words=["<|im_end|>"],
        replace_eos=True,
        **rest,
    )


def _gemma(name: str, **rest: Any) -> Template:
    return _t(
        name,
        "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
        "{{content}}<end_of_turn>\n",
        "{{content}}\n\n",
        format_observation="<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
        format_prefix="{{bos_token}}",
        system_in_user=True,
        **rest,
    )


def _glm(name: str, tool_format: str = "glm4", **rest: Any) -> Template:
    """GLM-4's turns; a tool call is written without the assistant turn's leading newline."""
    return _t(
        name,
        "<|user|>\n{{content}}<|assistant|>",
        "\n{{content}}",
        "<|system|>\n{{content}}",
        format_observation="<|observation|>\n{{content}}<|assistant|>",
        format_function="{{content}}",
        format_prefix="[gMASK]<sop>",
        stop_words=["<|user|>", "<|observation|>"],
        efficient_eos=True,
        tool_format=tool_format,
        **rest,
    )


def _glm47(name: str, **rest: Any) -> Template:
    """GLM-4.7: GLM-4.5's tool format, `<think>`/`</think>` thoughts and an empty thought of `</think>` alone."""
    return _glm(name, tool_format="glm4_moe", thought_words=["<think>", "</think>"], empty_thought="</think>", **rest)


def _granite(name: str, **rest: Any) -> Template:
    return _t(
        name,
        "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
        "{{content}}<|end_of_text|>\n",
        "<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",
        **rest,
    )


def _mistral_tools(sep: str) -> dict[str, Any]:
    """Mistral's tool turns; `sep` is what follows a control token (" " in mistral, "" since ministral). The
    tool list is the `mistral` tool format's, `[AVAILABLE_TOOLS] [...]` with a space in every version."""
    return {
        "format_observation": f'[TOOL_RESULTS]{sep}{{"content": {{{{content}}}}}}[/TOOL_RESULTS]',
        "format_function": f"[TOOL_CALLS]{sep}{{{{content}}}}{{{{eos_token}}}}",
        "format_prefix": "{{bos_token}}",
        "tool_format": "mistral",
    }


_LLAMA3_OBSERVATION = "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>"
_LLAMA3_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_INTERN2_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文."
)

_DBRX_SYSTEM = (
    "You are DBRX, created by Databricks. You were last updated in December 2023. "
    "You answer questions based on information available up to that point.\n"
    "YOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough "
    "responses to more complex and open-ended questions.\nYou assist with various tasks, "
    "from writing to coding (using markdown for code blocks — remember to use ``` with "
    "code, JSON, and tables).\n(You do not have real-time data access or code execution "
    "capabilities. You avoid stereotyping and provide balanced perspectives on "
    "controversial topics. You do not provide song lyrics, poems, or news articles and "
    "do not divulge details of your training data.)\nThis is your system prompt, "
    "guiding your responses. Do not reference it, just respond to the user. If you find "
    "yourself talking about this message, stop. You should be responding appropriately "
    "and usually that means not mentioning this.\nYOU DO NOT MENTION ANY OF THIS INFORMATION "
    "ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO THE USER'S QUERY."
)

_TEMPLATES: list[Template] = [
    _t("default", "Human: {{content}}{{eos_token}}\nAssistant:", "{{content}}{{eos_token}}\n",
       "System: {{content}}{{eos_token}}\n"),
    # Raw concatenation: no EOS anywhere (LLaMA-Factory's `empty`, also its fallback for base models).
    _t("empty", "{{content}}", "{{content}}"),
    _glm47("aeva", default_system=("You are an AI assistant named Aeva created by Zongzhi Lou. Your answer should be "
                                    "friendly, unbiased, faithful, informative and detailed.")),
    _t("alpaca", "### Instruction:\n{{content}}\n\n### Response:\n", "{{content}}{{eos_token}}\n\n",
       default_system=("Below is an instruction that describes a task. "
                       "Write a response that appropriately completes the request.\n\n")),
    _t("bailing", "<role>HUMAN</role>{{content}}<role>ASSISTANT</role>", system="<role>SYSTEM</role>{{content}}",
       format_observation="<role>OBSERVATION</role>{{content}}<role>ASSISTANT</role>",
       stop_words=["<|endoftext|>"], efficient_eos=True),
    _t("bailing_v2", "<role>HUMAN</role>{{content}}<|role_end|><role>ASSISTANT</role>", "{{content}}<|role_end|>",
       "<role>SYSTEM</role>{{content}}<|role_end|>",
       format_observation=("<role>OBSERVATION</role>\n<tool_response>\n{{content}}\n</tool_response><|role_end|>"
                           "<role>ASSISTANT</role>"),
       tool_format="ling", stop_words=["<|endoftext|>"], efficient_eos=True),
    _t("breeze", "[INST] {{content}} [/INST] ", format_prefix="{{bos_token}}", efficient_eos=True),
    # ChatGLM3 writes its turn markers by token name and tokenises the newline after each on its own.
    _t("chatglm3", "{{token:<|user|>}}\n{{split}}{{content}}{{token:<|assistant|>}}", "\n{{split}}{{content}}",
       "{{token:<|system|>}}\n{{split}}{{content}}", format_function="{{content}}",
       format_observation="{{token:<|observation|>}}\n{{split}}{{content}}{{token:<|assistant|>}}",
       format_prefix="{{token:[gMASK]}}{{token:sop}}", tool_format="glm4", stop_words=["<|user|>", "<|observation|>"],
       efficient_eos=True),
    _chatml("chatml", stop_words=["<|im_end|>", "<|im_start|>"], replace_eos=True),
    _chatml("chatml_de", default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
            stop_words=["<|im_end|>", "<|im_start|>"], replace_eos=True),
    _t("cohere", "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>"
       "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
       system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>", format_prefix="{{bos_token}}"),
    _chatml("cpm4", format_prefix="{{bos_token}}", stop_words=["<|im_end|>"]),
    _chatml("dbrx", default_system=_DBRX_SYSTEM, stop_words=["<|im_end|>"], replace_eos=True),
    _t("deepseek", "User: {{content}}\n\nAssistant:", system="{{content}}\n\n", format_prefix="{{bos_token}}"),
    _t("deepseek3", "<｜User｜>{{content}}<｜Assistant｜>", format_prefix="{{bos_token}}"),
    _t("deepseekr1", "<｜User｜>{{content}}<｜Assistant｜>", format_prefix="{{bos_token}}", thought_words=_THINK),
    _t("deepseekcoder", "### Instruction:\n{{content}}\n### Response:", "\n{{content}}\n<|EOT|>\n",
       format_prefix="{{bos_token}}",
       default_system=(
           "You are an AI programming assistant, utilizing the DeepSeek Coder model, "
           "developed by DeepSeek Company, and you only answer questions related to computer science. "
           "For politically sensitive questions, security and privacy issues, "
           "and other non-computer science questions, you will refuse to answer.\n")),
    _t("hy3", "<｜hy_User｜>{{content}}<｜hy_Assistant｜>", "{{content}}<｜hy_eos｜>", format_prefix="{{bos_token}}",
       stop_words=["<｜hy_eos｜>"], replace_eos=True, thought_words=["<think>", "</think>"]),
    _t("ernie", "<|im_start|>user\n{{content}}<|im_end|>\n\n<|im_start|>assistant\n", "{{content}}<|im_end|>\n\n",
       "<|im_start|>system\n{{content}}<|im_end|>\n\n",
       format_observation="<|im_start|>tool\n{{content}}<|im_end|>\n\n<|im_start|>assistant\n",
       default_system="<global_setting>\nthink_mode=True\n</global_setting>", stop_words=["<|im_end|>"]),
    _t("ernie_nothink", "User: {{content}}\nAssistant: ", "{{content}}<|end_of_sentence|>", "{{content}}\n",
       format_prefix="<|begin_of_sentence|>", stop_words=["<|end_of_sentence|>"]),
    _t("exaone", "[|user|]{{content}}\n[|assistant|]", "{{content}}{{eos_token}}\n",
       "[|system|]{{content}}[|endofturn|]\n"),
    _t("falcon", "User: {{content}}\nFalcon:", "{{content}}\n", efficient_eos=True),
    _chatml("falcon_h1", format_prefix="{{bos_token}}", stop_words=["<|im_end|>", "<|end_of_text|>"]),
    _t("fewshot", "{{content}}", "{{content}}\n\n", efficient_eos=True),
    _gemma("gemma", stop_words=["<end_of_turn>"], replace_eos=True),
    _gemma("gemma2", stop_words=["<eos>", "<end_of_turn>"], efficient_eos=True),
    _gemma("gemma3", stop_words=["<end_of_turn>"], replace_eos=True),
    # Gemma 4's text turns (its image/video tokens only appear with media, which kubetune does not take).
    _t("gemma4", "<|turn>user\n{{content}}<turn|>\n<|turn>model\n", "{{content}}<turn|>\n",
       "<|turn>system\n<|think|>{{content}}<turn|>\n",
       format_observation="<|turn>tool\n{{content}}<turn|>\n<|turn>model\n",
       format_function="<|tool>{{content}}<tool|>",
       format_prefix="{{bos_token}}", tool_format="gemma4", stop_words=["<turn|>"],
       default_system="You are a helpful assistant.", thought_words=["<|channel>thought\n", "<channel|>"],
       replace_eos=True),
    _glm("glm4"),
    _glm("glm4_moe", tool_format="glm4_moe", thought_words=_THINK),
    _glm47("glm4_7"),
    _glm("glmz1", thought_words=_THINK),
    _t("gpt_oss", "<|start|>user<|message|>{{content}}<|end|><|start|>assistant", "{{content}}",
       "<|start|>system<|message|>{{content}}<|end|>",
       default_system="You are ChatGPT, a large language model trained by OpenAI.", efficient_eos=True,
       thought_words=["<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final<|message|>"]),
    _granite("granite3"),
    _granite("granite4", format_observation=("<|start_of_role|>tool<|end_of_role|>{{content}}<|end_of_text|>\n"
                                             "<|start_of_role|>assistant\n"),
             stop_words=["<|end_of_text|>"],
             default_system="You are Granite, developed by IBM. You are a helpful AI assistant."),
    _t("index", "reserved_0{{content}}reserved_1", system="<unk>{{content}}", efficient_eos=True),
    _t("hunyuan", "{{content}}<|extra_0|>", "{{content}}<|eos|>", "{{content}}<|extra_4|>",
       format_prefix="<|startoftext|>", stop_words=["<|eos|>"]),
    _t("hunyuan_small", "<｜hy_User｜>{{content}}<｜hy_place▁holder▁no▁8｜>", "{{content}}<｜hy_place▁holder▁no▁2｜>",
       "{{content}}<｜hy_place▁holder▁no▁3｜>", format_prefix="<｜hy_begin▁of▁sentence｜>",
       stop_words=["<｜hy_place▁holder▁no▁2｜>"]),
    # InternLM answers tool results in a user turn (no `tool` role)
    _chatml("intern2", format_observation=None, format_prefix="{{bos_token}}", default_system=_INTERN2_SYSTEM,
            stop_words=["<|im_end|>"]),
    _chatml("intern_s1", format_observation=None, format_prefix="{{bos_token}}", stop_words=["<|im_end|>"]),
    _chatml("lfm2", format_observation=("<|im_start|>tool\n<|tool_response_start|>{{content}}<|tool_response_end|>"
                                        "<|im_end|>\n<|im_start|>assistant\n"),
            tool_format="lfm2", tool_call_words=["<|tool_call_start|>", "<|tool_call_end|>"],
            default_system="You are a helpful AI assistant.", stop_words=["<|im_end|>"], replace_eos=True),
    _t("llama2", "{{bos_token}}[INST] {{content}} [/INST]", system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
       system_in_user=True),
    _t("llama2_zh", "{{bos_token}}[INST] {{content}} [/INST]", system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
       system_in_user=True, default_system="You are a helpful assistant. 你是一个乐于助人的助手。"),
    _t("llama3", "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>" + _LLAMA3_HEADER,
       "{{content}}<|eot_id|>", "<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",
       format_observation=_LLAMA3_OBSERVATION + _LLAMA3_HEADER, format_prefix="{{bos_token}}", tool_format="llama3",
       stop_words=["<|eot_id|>", "<|eom_id|>"], replace_eos=True),
    _t("llama4", "<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
       "{{content}}<|eot|>", "<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>",
       format_observation=("<|header_start|>ipython<|header_end|>\n\n{{content}}<|eot|>"
                           "<|header_start|>assistant<|header_end|>\n\n"),
       format_prefix="{{bos_token}}", tool_format="llama3", stop_words=["<|eot|>", "<|eom|>"], replace_eos=True),
    _t("moonlight", "<|im_user|>user<|im_middle|>{{content}}<|im_end|><|im_assistant|>assistant<|im_middle|>",
       "{{content}}<|im_end|>", "<|im_system|>system<|im_middle|>{{content}}<|im_end|>",
       default_system="You are a helpful assistant provided by Moonshot-AI.", stop_words=["<|im_end|>"],
       replace_eos=True),
    _qwen("mimo", default_system="You are a helpful assistant.", thought_words=_THINK),
    _qwen("mimo_v2", default_system="You are MiMo, a helpful AI assistant engineered by Xiaomi.",
          thought_words=["<think>", "</think>"]),
    _t("minimax1", "<beginning_of_sentence>user name=user\n{{content}}<end_of_sentence>\n"
       "<beginning_of_sentence>ai name=assistant\n", "{{content}}<end_of_sentence>\n",
       "<beginning_of_sentence>system ai_setting=assistant\n{{content}}<end_of_sentence>\n",
       format_observation=("<beginning_of_sentence>tool name=tools\n{{content}}<end_of_sentence>\n"
                           "<beginning_of_sentence>ai name=assistant\n"),
       default_system="You are a helpful assistant.", tool_format="minimax1", stop_words=["<end_of_sentence>"]),
    _t("minimax2", "]~b]user\n{{content}}[e~[\n]~b]ai\n", "{{content}}[e~[\n", "]~!b[]~b]system\n{{content}}[e~[\n",
       format_observation="]~b]tool\n<response>{{content}}</response>[e~[\n]~b]ai\n",
       default_system="You are a helpful assistant. Your name is MiniMax-M2.1 and is built by MiniMax.",
       tool_format="minimax2", stop_words=["[e~["], thought_words=_THINK),
    _t("ministral", "[INST]{{content}}[/INST]", system="{{content}}\n\n", system_in_user=True, **_mistral_tools("")),
    _t("ministral3", "[INST]{{content}}[/INST]", system="{{content}}\n\n", system_in_user=True, **_mistral_tools("")),
    _t("mistral", "[INST] {{content}}[/INST]", " {{content}}{{eos_token}}", "{{content}}\n\n", system_in_user=True,
       **_mistral_tools(" ")),
    _t("mistral_small", "[INST]{{content}}[/INST]", system="[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]",
       **_mistral_tools("")),
    _t("olmo", "<|user|>\n{{content}}<|assistant|>\n", format_prefix="{{eos_token}}"),
    _t("openchat", "GPT4 Correct User: {{content}}{{eos_token}}GPT4 Correct Assistant:", format_prefix="{{bos_token}}"),
    _t("openchat-3.6", "<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\n{{content}}<|eot_id|>"
       "<|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n", format_prefix="{{bos_token}}",
       stop_words=["<|eot_id|>"]),
    _chatml("opencoder", default_system="You are OpenCoder, created by OpenCoder Team.", stop_words=["<|im_end|>"]),
    _t("phi", "<|user|>\n{{content}}<|end|>\n<|assistant|>\n", "{{content}}<|end|>\n",
       "<|system|>\n{{content}}<|end|>\n", stop_words=["<|end|>"], replace_eos=True),
    _t("phi_small", "<|user|>\n{{content}}<|end|>\n<|assistant|>\n", "{{content}}<|end|>\n",
       "<|system|>\n{{content}}<|end|>\n", stop_words=["<|end|>"], replace_eos=True),
    _t("phi4", "<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",
       "{{content}}<|im_end|>", "<|im_start|>system<|im_sep|>{{content}}<|im_end|>", stop_words=["<|im_end|>"],
       replace_eos=True),
    _t("phi4_mini", "<|user|>{{content}}<|end|><|assistant|>", "{{content}}<|end|>", "<|system|>{{content}}<|end|>",
       format_tools="<|tool|>{{tools}}<|/tool|>", stop_words=["<|end|>"], replace_eos=True),
    _qwen("qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    _qwen("qwen3", thought_words=_THINK),
    _qwen("qwen3_nothink"),
    _qwen("qwen3_5", "qwen3_5", thought_words=_THINK),
    _qwen("qwen3_5_nothink", "qwen3_5"),
    _qwen("qwen3_6", "qwen3_5", thought_words=_THINK),
    _chatml("sailor", "question", "answer", format_observation=None, stop_words=["<|im_end|>"],
            default_system=("You are an AI assistant named Sailor created by Sea AI Lab. "
                            "Your answer should be friendly, unbiased, faithful, informative and detailed.")),
    _t("seed_coder", "{{bos_token}}user\n{{content}}{{eos_token}}{{bos_token}}assistant\n",
       system="{{bos_token}}system\n{{content}}{{eos_token}}",
       default_system=(
           "You are an AI programming assistant, utilizing the Seed-Coder model, developed by ByteDance Seed, "
           "and you only answer questions related to computer science. For politically sensitive questions, "
           "security and privacy issues, and other non-computer science questions, you will refuse to answer.\n\n")),
    _t("seed_oss", "{{bos_token}}user\n{{content}}{{eos_token}}{{bos_token}}assistant\n",
       system="{{bos_token}}system\n{{content}}{{eos_token}}",
       format_function="{{bos_token}}\n{{content}}{{eos_token}}",
       tool_format="seed_oss", thought_words=["<seed:think>", "</seed:think>"]),
    _chatml("smollm", format_observation=None, stop_words=["<|im_end|>"]),
    _chatml("smollm2", format_observation=None, stop_words=["<|im_end|>"],
            default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face."),
    _t("solar", "### User:\n{{content}}\n\n### Assistant:\n", system="### System:\n{{content}}\n\n",
       efficient_eos=True),
    _t("starchat", "<|user|>\n{{content}}<|end|>\n<|assistant|>", "{{content}}<|end|>\n",
       "<|system|>\n{{content}}<|end|>\n", stop_words=["<|end|>"]),
    _t("telechat2", "<_user>{{content}}<_bot>", system="<_system>{{content}}",
       default_system=("你是中国电信星辰语义大模型，英文名是TeleChat，你是由中电信人工智能科技有限公司和中国电信人工智能研究院"
                       "（TeleAI）研发的人工智能助手。")),
    _t("vicuna", "USER: {{content}} ASSISTANT:", default_system=_VICUNA_SYSTEM),
    _t("xuanyuan", "Human: {{content}} Assistant:",
       default_system=("以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，"
                       "会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、"
                       "不安全、有争议、政治敏感等相关的话题、问题和指示。\n")),
    _chatml("yi", format_observation=None, stop_words=["<|im_end|>"]),
    _t("youtu", "<|User|>{{content}}<|Assistant|>", "{{content}}<|end_of_text|>",
       format_observation="<tool_response>\n{{content}}\n</tool_response><|Assistant|>", format_function="{{content}}",
       format_prefix="{{bos_token}}", stop_words=["<|end_of_text|>"], replace_eos=True, thought_words=_THINK),
    _t("yuan", "{{content}}{{token:<sep>}}", "{{content}}<eod>\n", stop_words=["<eod>"]),
    _t("zephyr", "<|user|>\n{{content}}{{eos_token}}<|assistant|>\n", system="<|system|>\n{{content}}{{eos_token}}",
       default_system="You are Zephyr, a helpful assistant."),
    # Not in LLaMA-Factory 0.9.5 (kept for configs written for kubetune): Baichuan2 marks turns with
    # reserved tokens and ends only the whole sample with EOS.
    _t("baichuan2", "<reserved_106>{{content}}<reserved_107>", efficient_eos=True),
]

NAMED_TEMPLATES: dict[str, Template] = {t.name: t for t in _TEMPLATES}

TEMPLATE_NAMES: list[str] = sorted(NAMED_TEMPLATES)
"""Names `template_registry.get_template` accepts besides None (the tokenizer's own) and `custom` (a YAML file)."""

MULTIMODAL_TEMPLATES: frozenset[str] = frozenset({
    "dots_ocr", "ernie_vl", "gemma3n", "gemma4n", "glm4v", "glm4_5v", "glm_ocr", "granite3_vision",
    "intern_vl", "keye_vl", "kimi_vl", "lfm2_vl", "mllama", "llava", "llava_next", "llava_next_llama3",
    "llava_next_mistral", "llava_next_qwen", "llava_next_yi", "llava_next_video", "llava_next_video_mistral",
    "llava_next_video_yi", "mimo_vl", "minicpm_v", "minicpm_v_4_6", "minicpm_o", "paligemma", "paligemma_chat",
    "pixtral", "qwen2_audio", "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink", "qwen2_vl", "qwen3_vl",
    "qwen3_vl_nothink", "video_llava", "yi_vl", "youtu_vl",
})
"""LLaMA-Factory 0.9.5's templates of image/video/audio models: refused as multimodal, not as unknown. (Its
multimodal templates that also serve text models, gemma3, gemma4, llama4, mistral_small, qwen3_5, ..., are
named templates above: without images their plugins change no text. gemma3n and gemma4n, the audio-first "n"
models, stay refused.)"""

MULTIMODAL_REFUSAL = "multimodal models are not supported yet"


def multimodal_refusal(name: str) -> str:
    """The error for a multimodal model's template."""
    return (f"template {name!r} is LLaMA-Factory's template for a multimodal (image/video/audio) model: "
            f"{MULTIMODAL_REFUSAL}; kubetune trains text models (use the family's text template if it has one)")
