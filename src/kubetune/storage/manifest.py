"""The `_SUCCESS` marker of an uploaded prefix: written last, it lists every object of the upload.

Its body is JSON, `{"kubetune_manifest": 1, "objects": {"<relative key>": {"etag": "...", "size": n}}}`.
A reader trusts a prefix only when every object the manifest lists is there with that ETag and size: a
marker alone could be a leftover of an earlier upload, or an upload whose objects the store lost since.
An empty marker (older kubetune, Hadoop and Spark write those) only says "complete": it is accepted as such.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MANIFEST_KEY = "kubetune_manifest"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Listed:
    """One object as a listing shows it: its key relative to the prefix, its ETag and size."""

    rel: str
    etag: str
    size: int


def manifest_body(objects: Mapping[str, tuple[str, int]]) -> bytes:
    """The marker's body for `objects` (relative key → (ETag, size)), sorted so equal uploads give equal bytes."""
    listed = {rel: {"etag": etag, "size": size} for rel, (etag, size) in sorted(objects.items())}
    return json.dumps({MANIFEST_KEY: MANIFEST_VERSION, "objects": listed}, indent=1).encode()


def parse_manifest(body: bytes) -> dict[str, tuple[str, int]] | None:
    """The objects a marker lists (relative key → (ETag, size)), or `None` for a presence-only marker.

    Raises:
        ValueError: the body is a kubetune manifest of a newer version than this kubetune reads.
    """
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        return None  # someone else's marker: presence only
    if not isinstance(data, dict) or MANIFEST_KEY not in data:
        return None
    if data[MANIFEST_KEY] != MANIFEST_VERSION:
        raise ValueError(f"manifest version {data[MANIFEST_KEY]!r} (this kubetune reads {MANIFEST_VERSION}): "
                         "upgrade kubetune to read this upload")
    return {rel: (str(entry["etag"]), int(entry["size"])) for rel, entry in data["objects"].items()}


def mismatches(manifest: Mapping[str, tuple[str, int]], listed: Iterable[Listed]) -> list[str]:
    """What keeps a prefix's objects from being the upload `manifest` describes, one phrase each (empty: none).

    Objects under the prefix that the manifest does not list are no problem: a reader takes only the
    listed ones (e.g. not the shards of an earlier, larger export).
    """
    present = {o.rel: (o.etag, o.size) for o in listed}
    missing = sorted(rel for rel in manifest if rel not in present)
    changed = sorted(rel for rel in manifest if rel in present and present[rel] != manifest[rel])
    problems = []
    if missing:
        problems.append(f"{len(missing)} listed object(s) missing ({_some(missing)})")
    if changed:
        problems.append(f"{len(changed)} object(s) differ from the manifest ({_some(changed)})")
    return problems


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
