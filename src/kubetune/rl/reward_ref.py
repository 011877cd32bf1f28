"""What a `reward_model` string names, parsed without importing torch (preflight, `kubetune.validate`, uses it too).

- `reward_model_type: lora | full`: a directory (an rm run's output_dir) or an `s3://` prefix.
- `reward_model_type: api`: an HTTP(S) scoring endpoint, or a Python function for rule-based
  rewards: `path/to/rewards.py` (function `reward_func`), `path/to/rewards.py:my_func`, or
  `package.module:my_func`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_FUNCTION = "reward_func"


@dataclass(frozen=True)
class RewardRef:
    """Attributes:
    kind: "http" (an endpoint URL), "file" (a .py file) or "module" (an importable module).
    target: the URL, file path or module name.
    function: the function's name ("" for http).
    """

    kind: Literal["http", "file", "module"]
    target: str
    function: str = ""


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def parse_api_reward(value: str) -> RewardRef:
    """Parse the `reward_model` of `reward_model_type: api`.

    Raises:
        ValueError: neither a URL, nor `file.py[:function]`, nor `module:function`.
    """
    if is_url(value):
        return RewardRef("http", value)
    target, sep, function = value.rpartition(":") if ":" in value else (value, "", "")
    if target.endswith(".py"):
        return RewardRef("file", target, function or DEFAULT_FUNCTION)
    if sep and function.isidentifier() and all(part.isidentifier() for part in target.split(".")):
        return RewardRef("module", target, function)
    raise ValueError(f"{value!r} is not an http(s):// URL, a file.py[:function] or a package.module:function")
