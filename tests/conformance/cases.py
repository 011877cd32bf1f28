"""Our own conformance data: conversations that exercise what a chat template decides.

Each row is written once, in a neutral form (`messages` alternating user/assistant, an optional
`system`, and for pairs `chosen`/`rejected`), and converted to LLaMA-Factory's aligned form (for the
oracle) and to our `Sample` (for kubetune's encoder). The texts are ours, chosen to hit tokenizer
boundaries: leading spaces and newlines, punctuation next to a turn marker, non-ASCII, a long answer
that a short cutoff must cut.
"""

from __future__ import annotations

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

PAIR_ROWS: list[dict[str, Any]] = [
    {"messages": ["Which is bigger, 9.11 or 9.9?"], "chosen": "9.9 is bigger.", "rejected": "9.11 is bigger."},
    {"system": "You are polite.", "messages": ["Say hi", "Hi!", "Again, please."],
     "chosen": "Hello again!", "rejected": "No."},
    {"messages": ["Explain soup making."], "chosen": LONG, "rejected": "Boil water."},
    {"messages": [LONG], "chosen": "Stir and count.", "rejected": LONG},
    {"messages": ["Café?"], "chosen": " Oui, un café.", "rejected": "\nNon."},
    {"messages": ["Is 9 prime?", "<think>\n9 = 3 x 3.\n</think>\n\nNo.", "And 11?"],
     "chosen": "<think>\nNo divisor up to 3.\n</think>\n\nYes.", "rejected": "No."},
]


def _turns(texts: list[str]) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def lf_row(row: dict[str, Any], stage: str) -> dict[str, Any]:
    """A row in LLaMA-Factory's aligned form (`_prompt`, `_response`, `_system`, `_tools`)."""
    messages = _turns(row["messages"])
    if stage == "sft":
        prompt, response = messages[:-1], messages[-1:]
    else:
        prompt = messages
        response = [{"role": "assistant", "content": row["chosen"]}, {"role": "assistant", "content": row["rejected"]}]
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
]


def rows_for(stage: str) -> list[dict[str, Any]]:
    return SFT_ROWS if stage == "sft" else PAIR_ROWS
