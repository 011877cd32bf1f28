"""The export's completion marker: `_SUCCESS`, written last, so nothing registers a half-written model.

`kubetune export` removes a stale marker before it writes the first file and writes a new one after the
last, atomically (a temporary name, then a rename). Locally the marker is a small JSON manifest: an id
for this export (so registering the same export twice is recognisably the same model) and every file's
size (so files changed or removed after the export are noticed). On S3 it is `upload_dir`'s `_SUCCESS`
manifest (every object's ETag and size), also written last.

```python
from kubetune.export_marker import clear_marker, mark_complete, require_complete

clear_marker(out); save_everything(out); mark_complete(out)
stamp = require_complete("s3://models/kubi/2025/")  # raises IncompleteExportError when unfinished
```
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from kubetune.storage import SUCCESS_MARKER

EXPORT_MARKER = SUCCESS_MARKER
"""The marker's file (and S3 object) name; the same name `upload_dir` writes last on S3."""

__all__ = ["EXPORT_MARKER", "IncompleteExportError", "clear_marker", "mark_complete", "require_complete"]


class IncompleteExportError(FileNotFoundError):
    """A model folder or prefix has no completion marker (or its files no longer match it): the export that
    wrote it did not finish. The message names the path and what to do."""


def clear_marker(folder: str | os.PathLike[str]) -> None:
    """Remove the marker a previous export left in `folder`, before the first file of a new one is written."""
    Path(folder, EXPORT_MARKER).unlink(missing_ok=True)


def mark_complete(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the marker into `folder`, last: a manifest of every file's size and a fresh export id.

    Args:
        folder (`str` or `os.PathLike`):
            The finished export.

    Returns:
        `dict`: the manifest written (`export_id`, `files`: relative path → bytes).
    """
    root = Path(folder)
    files = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != EXPORT_MARKER and not p.name.startswith(f".{EXPORT_MARKER}")}
    manifest = {"export_id": uuid.uuid4().hex, "files": files}
    tmp = root / f".{EXPORT_MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, root / EXPORT_MARKER)  # atomic: a reader sees no marker or a whole one
    return manifest


def require_complete(model: str | os.PathLike[str]) -> str:
    """Check that the export at `model` finished; return a stamp that identifies that export.

    A local folder needs its marker, and every file the marker lists at its listed size (an empty marker,
    as a folder fetched from S3 has, lists none). An `s3://` prefix needs its `_SUCCESS` object. A single
    local file is complete by itself. Other URIs (`runs:/`, `models:/`, `mlflow-artifacts:/`) are MLflow's
    own, written whole before they are named, and are not checked.

    Args:
        model (`str` or `os.PathLike`):
            A local folder or file, or a URI.

    Returns:
        `str`: the export id of a local manifest, the S3 marker's modification time, or `""` when there is
        nothing to tell exports apart by (a file, an unchecked URI).

    Raises:
        IncompleteExportError: no marker, or files missing or changed since the marker was written.
        FileNotFoundError: a local path that does not exist.
    """
    text = str(model)
    if text.startswith("s3://"):
        return _require_s3_marker(text)
    if "://" in text or text.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return ""
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"cannot register {path}: no such file or folder")
    if path.is_file():
        return ""
    marker = path / EXPORT_MARKER
    if not marker.is_file():
        raise IncompleteExportError(
            f"{path} has no {EXPORT_MARKER} marker: the export that wrote it did not finish (killed, or still "
            "running). Rerun the export step; it writes the marker after the last file. (A complete folder not made "
            "by kubetune export: write one with kubetune.export_marker.mark_complete.)")
    manifest = _read_manifest(marker)
    problems = []
    for rel, size in manifest.get("files", {}).items():
        found = path / rel
        if not found.is_file():
            problems.append(f"{rel} is missing")
        elif found.stat().st_size != size:
            problems.append(f"{rel} is {found.stat().st_size} bytes, the export wrote {size}")
    if problems:
        raise IncompleteExportError(
            f"{path} does not match its {EXPORT_MARKER} manifest ({'; '.join(problems[:5])}): the folder was "
            "changed after the export finished. Rerun the export step.")
    return str(manifest.get("export_id", ""))


def _read_manifest(marker: Path) -> dict[str, Any]:
    text = marker.read_text(encoding="utf-8").strip()
    if not text:
        return {}  # S3's empty marker, carried into a local copy
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise IncompleteExportError(f"{marker} is not the manifest kubetune export writes ({err}): "
                                    "rerun the export step") from err
    return manifest if isinstance(manifest, dict) else {}


def _require_s3_marker(uri: str) -> str:
    """The upload's stamp when the prefix holds a complete upload: its `_SUCCESS` manifest, written last by
    `upload_dir`, and every object it lists unchanged (`storage.complete_upload_stamp`)."""
    from kubetune.storage import IncompleteUploadError
    from kubetune.storage.s3 import complete_upload_stamp

    try:
        return complete_upload_stamp(uri)
    except IncompleteUploadError as err:
        raise IncompleteExportError(
            f"{uri}: the upload of that export did not finish ({err}); the marker is written after the last "
            "file. Rerun the export step.") from err
