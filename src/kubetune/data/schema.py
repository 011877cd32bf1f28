"""The one internal form every dataset format is converted into.

Converters (alpaca, sharegpt, ranking, kto) produce `Sample`s; templates and tokenisers
consume them. Keeping a single form means a new format is one converter, and a new
template works for every format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant", "observation", "function"]
"""`function` is an assistant turn that calls a tool; `observation` is the tool's answer."""

PROMPT_ROLES = ("user", "observation")
RESPONSE_ROLES = ("assistant", "function")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass
class Sample:
    """One training example.

    Attributes:
        prompt: the conversation so far, alternating prompt roles (user/observation) and
            response roles (assistant/function), starting and ending with a prompt role.
            Earlier assistant turns live here: multi-turn SFT trains on them too.
        response: what the model should say next. SFT and pt: one message. Ranking
            (reward model, DPO): two — `[chosen, rejected]`. KTO: one, judged by `kto_tag`.
        system: the system prompt ("" = the template's default).
        tools: tool descriptions as a JSON string ("" = none).
        kto_tag: KTO only — True if the response is desirable, False if not.
        row: 0-based row number in the source file, so errors and reports can point at it.
    """

    prompt: list[Message]
    response: list[Message]
    system: str = ""
    tools: str = ""
    kto_tag: bool | None = None
    row: int = -1
    source: str = field(default="", compare=False)

    def turns(self) -> list[tuple[Message, Message]]:
        """(prompt, response) pairs: every earlier exchange, then the final one.

        For ranking samples the final pair uses the chosen response.
        """
        msgs = [*self.prompt, self.response[0]]
        return [(msgs[i], msgs[i + 1]) for i in range(0, len(msgs), 2)]
