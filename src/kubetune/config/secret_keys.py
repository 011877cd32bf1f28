"""Which config keys hold secrets: their values print as `<redacted>` (imports nothing, so errors.py can use it)."""

from __future__ import annotations

import re

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|api_key)$")
NOT_SECRETS = {"credentials_secret"}  # the *name* of a Kubernetes Secret (mlflow., s3.), not its contents


def is_secret_key(key: str) -> bool:
    """Whether a key (also `stages.sft: key` or `evaluation.key` as problems name them) holds a secret."""
    name = key.rpartition(": ")[2].rpartition(".")[2]
    return name not in NOT_SECRETS and bool(_SECRET_KEY.search(name))
