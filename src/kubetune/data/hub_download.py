"""Download Hugging Face Hub dataset repos (`hf_hub_url` entries, `dataset_dir: REMOTE:<repo>`) where the hub is
reachable, into kubetune's cache; say why not where it is not.

LLaMA-Factory reads `hf_hub_url` entries with `datasets.load_dataset(<repo>)` and `REMOTE:<repo>` by downloading
the repo's dataset_info.json. kubetune downloads the repo's files with huggingface_hub (only the ones asked for:
`allow_patterns`) and reads the snapshot folder like any local copy, so the same readers, splits, subsets and
cache keys apply. A copy downloaded by hand next to dataset_info.json is still used first (`registry`).

The hub is not reachable when `HF_HUB_OFFLINE=1` (set it in air-gapped clusters: no request is even tried) or
when the request fails; the caller then explains how to bring a copy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kubetune.paths import cache_root

logger = logging.getLogger(__name__)


class HubUnreachable(Exception):
    """The hub could not be asked (offline mode, network error); `str()` says why, for the caller's message."""


class HubRepoMissing(Exception):
    """The hub answered: no such dataset repo (or a gated/private one without a token)."""


def download_dataset_files(repo_id: str, patterns: list[str] | None = None) -> Path:
    """The local snapshot of dataset repo `repo_id` holding at least the files matching `patterns` (all if None).

    Args:
        repo_id: `owner/name` on the Hugging Face Hub (`HF_ENDPOINT` for a mirror; `HF_TOKEN` for private repos).
        patterns: glob patterns of the files needed (huggingface_hub's `allow_patterns`).

    Raises:
        HubUnreachable: offline mode, or the request failed before the hub answered.
        HubRepoMissing: the hub has no such repo (or it is gated/private and no token gave access).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise HubUnreachable("HF_HUB_OFFLINE=1 is set")
    # read now, not at huggingface_hub's import: a mirror set later in the process (or a test's hub) is used
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    logger.info("downloading %s from the dataset repo %s on %s", ", ".join(patterns or ["every file"]), repo_id,
                endpoint)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=patterns, endpoint=endpoint,
                                      cache_dir=cache_root() / "hub"))
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise HubRepoMissing(str(err).splitlines()[0]) from err
    except (HfHubHTTPError, OSError) as err:  # connection refused, DNS, timeouts (LocalEntryNotFoundError is one)
        reason = " ".join(str(err).split())[:300]
        raise HubUnreachable(f"{endpoint} did not answer ({reason})") from err
