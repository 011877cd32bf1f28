"""Where kubetune keeps things on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of kubetune's caches: `$KUBETUNE_CACHE`, else `~/.cache/kubetune`.

    On a cluster this is a PVC mount, so base weights are fetched once per node.
    """
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune")).expanduser()
