"""Parse and build storage URIs: `s3://bucket/key` or a local path (optionally `file://`)."""

from __future__ import annotations

import os
from pathlib import Path

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """Whether `uri` names an object or prefix in S3 (or any S3 API: MinIO, moto).

    Args:
        uri (`str` or `os.PathLike`):
            A URI or local path. Paths are never S3, even if a folder is called `s3:`.
    """
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/some/key` into `("bucket", "some/key")`.

    The key keeps a trailing `/` (it marks a prefix); it is `""` for the whole bucket.

    Args:
        uri (`str`):
            An `s3://` URI.

    Raises:
        ValueError: if `uri` is not `s3://` or has no bucket name.
    """
    if not is_s3(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket name: write s3://<bucket>/<key>")
    return bucket, key


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path segments onto a local path or an `s3://` URI, like `os.path.join`.

    Args:
        uri (`str` or `os.PathLike`):
            The base: `s3://bucket/prefix` (with or without a trailing `/`) or a local path.
        *parts (`str`):
            Segments to append; leading/trailing `/` on them are ignored for S3.

    Returns:
        `str`: the joined URI (S3) or path (local).
    """
    if not is_s3(uri):
        return str(Path(local_path(uri), *parts))
    base = str(uri).rstrip("/")
    cleaned = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([base, *cleaned])


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The local `Path` for a plain path or a `file://` URI, with `~` expanded.

    Args:
        uri (`str` or `os.PathLike`):
            A local path or `file://` URI.
    """
    text = os.fspath(uri)
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
    return Path(text).expanduser()
