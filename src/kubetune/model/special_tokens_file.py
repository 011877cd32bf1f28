"""`new_special_tokens_config`: the YAML file of new special tokens and their descriptions.

Without torch, so `kubetune validate` reads it before any work (`kubetune.validate.models`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kubetune.config import ModelArguments


def special_token_descriptions(args: ModelArguments) -> dict[str, str] | None:
    """`new_special_tokens_config` read: token -> description; None when the key is not set.

    Raises:
        ValueError: the file is missing, is not YAML, or is not a mapping of tokens to texts.
    """
    path = args.new_special_tokens_config
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"new_special_tokens_config: {path!r} does not exist — give a YAML file mapping each "
                         "new special token to its description (`<tool>: marks a tool call`)")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"new_special_tokens_config: {path!r} is not valid YAML ({err})") from None
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(k, str) for k in loaded):
        raise ValueError(f"new_special_tokens_config: {path!r} must map each new token to a description, e.g. "
                         f"`<tool>: marks a tool call`; got {type(loaded).__name__} {loaded!r:.80}")
    return {token: "" if text is None else str(text) for token, text in loaded.items()}
