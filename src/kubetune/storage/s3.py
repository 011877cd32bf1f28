"""Fetch `s3://` objects and prefixes into the node cache (uploads are `kubetune.storage.publish`).

Works with AWS S3 and any S3 API (MinIO, moto): the endpoint comes from `AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL` or `S3_ENDPOINT_URL`, credentials from the usual AWS variables (or a profile or
pod role), and the region from `AWS_REGION` / `AWS_DEFAULT_REGION` (default `us-east-1`).

Cache layout under `root` (`cache_root()/s3` unless a `cache_dir` is given):

    <bucket>/<key>               the downloaded file, or folder for a prefix
    .meta/<bucket>/<key>.json    manifest: ETag and size of every object the copy was made from
    .meta/<bucket>/<key>.lock    held while one process checks or downloads that entry
    .tmp/                        downloads in progress; renamed into place when complete

The manifest is written only after the copy is in place, so an entry with a manifest that
matches the remote is complete: a killed download leaves at most a stray `.tmp/` folder, which the
next download of the same entry removes.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
from tqdm.auto import tqdm

from kubetune.paths import cache_root
from kubetune.storage.manifest import Listed, mismatches, parse_manifest
from kubetune.storage.retry import is_transient
from kubetune.storage.uri import is_s3, local_path, split_s3

logger = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
"""Object written last by `upload_dir`: the manifest of the upload (`kubetune.storage.manifest`)."""

PROGRESS_MIN_BYTES = 64 * 1024**2
"""Transfers smaller than this (in total) show no progress bar: they finish before one is useful."""

_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
_MANIFEST_VERSION = 1


class StorageError(OSError):
    """A storage operation failed; the message says which URI, which endpoint, and what to check."""


class S3NotFoundError(StorageError, FileNotFoundError):
    """The bucket, key or prefix does not exist (also a `FileNotFoundError`, like a missing local path)."""


class S3AccessError(StorageError, PermissionError):
    """No credentials were found, or they are not allowed to do the request."""


class IncompleteUploadError(StorageError):
    """A prefix holds no complete upload (no `_SUCCESS` marker, or objects its manifest lists are missing or
    changed) although the caller asked for one."""


@dataclass(frozen=True)
class _RemoteObject:
    """One object to fetch: its full key, its path relative to the localized root, and identity."""

    key: str
    rel: str
    etag: str
    size: int


# ----------------------------------------------------------------------------- client and errors


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment, or `None` for AWS's own.

    Reads `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`, then `S3_ENDPOINT_URL` (MinIO's habit).
    """
    return next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)


def region_name() -> str:
    """The region from `AWS_REGION` or `AWS_DEFAULT_REGION`, default `us-east-1`."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_client() -> Any:
    """A boto3 S3 client configured from the current environment.

    botocore tries each request `AWS_MAX_ATTEMPTS` times (default 5, `standard` mode). Clients are
    cached per (endpoint, region, credentials) so repeated calls are cheap, while a
    changed environment (another endpoint, rotated keys) gets a fresh client.
    """
    env = os.environ
    return _client(
        endpoint_url(),
        region_name(),
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
        env.get("AWS_SESSION_TOKEN"),
        env.get("AWS_PROFILE"),
        env.get("AWS_MAX_ATTEMPTS", ""),
    )


@lru_cache(maxsize=8)
def _client(
    endpoint: str | None,
    region: str,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    profile: str | None,
    max_attempts: str = "",
) -> Any:
    # Custom endpoints (MinIO, moto, an IP) rarely resolve virtual-hosted bucket names: use paths.
    s3_options = {"addressing_style": "path"} if endpoint else {}
    # botocore's own variable, honoured here because a Config's value would otherwise override it. An outage
    # longer than these tries is ridden out by `retry_through_outage` around whole uploads.
    attempts = int(max_attempts) if max_attempts.strip().isdigit() else 5
    config = Config(retries={"max_attempts": attempts, "mode": "standard"}, s3=s3_options)
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        profile_name=profile if not access_key else None,
        region_name=region,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def _where() -> str:
    return f"endpoint {endpoint_url() or 'AWS default'}"


def _error_code(err: ClientError) -> str:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(status) if status in (403, 404) and code not in _NOT_FOUND_CODES | _DENIED_CODES else code


def _is_not_found(err: ClientError) -> bool:
    return _error_code(err) in _NOT_FOUND_CODES


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn botocore's exceptions into `StorageError`s that say what to check."""
    try:
        yield
    except NoCredentialsError as err:
        raise S3AccessError(
            f"no S3 credentials found for {uri} ({_where()}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the pod an IAM role)"
        ) from err
    except EndpointConnectionError as err:
        raise StorageError(
            f"cannot reach {_where()} for {uri}: check AWS_ENDPOINT_URL / S3_ENDPOINT_URL and the network"
        ) from err
    except ClientError as err:
        code = _error_code(err)
        if code in _NOT_FOUND_CODES:
            raise S3NotFoundError(f"{uri} not found ({_where()}): check the URI and credentials") from err
        if code in _DENIED_CODES:
            raise S3AccessError(
                f"access to {uri} denied ({_where()}, {code}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY and the bucket policy"
            ) from err
        raise StorageError(f"S3 request for {uri} failed ({_where()}): {err}") from err
    except S3UploadFailedError as err:
        # boto3's upload manager flattens the ClientError into this message-only exception.
        if "NoSuchBucket" in str(err):
            raise S3NotFoundError(f"{uri} not found ({_where()}): the bucket does not exist") from err
        raise StorageError(f"upload to {uri} failed ({_where()}): {err}") from err
    except BotoCoreError as err:
        raise StorageError(f"S3 request for {uri} failed ({_where()}): {err}") from err


@contextmanager
def _s3_errors_passing_outages(uri: str) -> Iterator[None]:
    """Like `_s3_errors`, but an outage's error (`retry.is_transient`) goes up as is, for the retry loop."""
    try:
        yield
    except Exception as err:
        if is_transient(err):
            raise
        with _s3_errors(uri):
            raise


# ----------------------------------------------------------------------------- listing


def _prefix_of(key: str) -> str:
    """The listing prefix for a key naming a "folder": `a/b` and `a/b/` → `a/b/`, `""` → `""`."""
    stripped = key.strip("/")
    return f"{stripped}/" if stripped else ""


def _list_prefix(client: Any, bucket: str, prefix: str) -> list[_RemoteObject]:
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            rel = item["Key"][len(prefix) :]
            # Zero-byte keys ending in "/" are folder placeholders made by S3 consoles, not files.
            if rel and not rel.endswith("/"):
                objects.append(_RemoteObject(item["Key"], rel, item["ETag"], int(item["Size"])))
    return objects


def _resolve(client: Any, uri: str) -> tuple[bool, list[_RemoteObject]]:
    """What `uri` names: `(False, [the object])` for a file, `(True, objects)` for a prefix.

    A key without a trailing `/` is tried as an object first, then as a prefix, so
    `s3://b/models/qwen` works for a folder too.
    """
    bucket, key = split_s3(uri)
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return False, [_RemoteObject(key, "", head["ETag"], int(head["ContentLength"]))]
        except ClientError as err:
            if not _is_not_found(err):
                raise
    objects = _list_prefix(client, bucket, _prefix_of(key))
    if not objects:
        raise S3NotFoundError(f"{uri} not found ({_where()}): check the URI and credentials")
    return True, objects


# ----------------------------------------------------------------------------- localize


def localize(
    uri: str | os.PathLike[str],
    cache_dir: Path | None = None,
    *,
    require_complete: bool = False,
    wait_seconds: float = 0.0,
) -> Path:
    """A local path for `uri`, downloading an `s3://` file or prefix into the cache once.

    Args:
        uri (`str` or `os.PathLike`):
            A local path (or `file://` URI), returned expanded as is; or `s3://bucket/key` for
            one object; or `s3://bucket/prefix/` for every object under a prefix (a folder).
            A key without a trailing `/` that is not an object is treated as a prefix.
        cache_dir (`Path`, *optional*, defaults to `cache_root() / "s3"`):
            Where downloads live, as `<cache_dir>/<bucket>/<key>`.
        require_complete (`bool`, *optional*, defaults to `False`):
            For a prefix: raise `IncompleteUploadError` unless it holds the `_SUCCESS` marker that
            `upload_dir` writes last and every object its manifest lists, unchanged; only those
            objects are fetched, and the copy is refused if the marker changes while it downloads
            (a new upload started). An empty marker (other tools write those) counts as complete.
            Ignored for single objects and local paths.
        wait_seconds (`float`, *optional*, defaults to `0`):
            With `require_complete`: wait up to this long for a complete upload (a writer still
            uploading, or retrying through an outage) before raising — readers of a step's output
            never see half of it.

    Returns:
        `Path`: the local file or folder. A folder holds the prefix's objects (minus `_SUCCESS`)
        at their relative keys.

    Raises:
        FileNotFoundError: a local path does not exist (`S3NotFoundError`, a subclass, for S3).
        S3AccessError: no credentials, or access denied.
        IncompleteUploadError: `require_complete` and no `_SUCCESS` marker, or objects its manifest lists
            are missing or changed.
        StorageError: any other S3 failure, with the endpoint in the message.

    The copy is fetched again only when the remote changed (ETag or size of any object) or the
    local copy lost a file; within a folder only the changed objects are downloaded.
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (from {os.fspath(uri)!r})")
        return path
    uri = str(uri)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "s3"
    bucket, key = split_s3(uri)
    dest = _entry(root, bucket, key)
    with _s3_errors(uri):
        client = s3_client()  # inside: a missing AWS_PROFILE fails here, and gets a clear message
        is_folder, objects = _resolve(client, uri)
        unchanged = None
        if is_folder and require_complete:
            objects, unchanged = _complete_upload(client, uri, objects, time.monotonic() + wait_seconds)
        elif is_folder:
            objects = [o for o in objects if o.rel != SUCCESS_MARKER]
        meta = _entry(root / ".meta", bucket, key)
        with _locked(meta.with_name(meta.name + ".lock")):
            manifest_path = meta.with_name(meta.name + ".json")
            old = _read_manifest(manifest_path)
            if _is_current(old, dest, is_folder, objects):
                logger.debug("%s is cached at %s", uri, dest)
                return dest
            _fetch(client, uri, bucket, dest, root / ".tmp", is_folder, objects, old, unchanged)
            _write_manifest(manifest_path, uri, is_folder, objects)
    return dest


def complete_upload_stamp(uri: str) -> str:
    """Check that the prefix `uri` holds a complete `upload_dir` upload now; return a stamp identifying it.

    The check of `localize(uri, require_complete=True)`, without downloading or waiting (e.g. before registering).

    Args:
        uri (`str`): `s3://bucket/prefix`.

    Returns:
        `str`: the `_SUCCESS` object's ETag: equal for uploads of the same files, different if any differs.

    Raises:
        IncompleteUploadError: no marker, or objects its manifest lists are missing or changed.
        S3NotFoundError: nothing under the prefix.
    """
    with _s3_errors(uri):
        client = s3_client()
        bucket, key = split_s3(uri)
        prefix_uri = f"s3://{bucket}/{_prefix_of(key)}"
        _, objects = _resolve(client, prefix_uri)
        problem, _, marker_etag = _check_complete(client, bucket, objects)
        if problem is not None:
            raise IncompleteUploadError(f"{prefix_uri} {problem} ({_where()}): the upload that wrote it did not "
                                        "finish, or is still retrying through an outage; re-run the upload")
        return marker_etag


def _complete_upload(
    client: Any, uri: str, objects: list[_RemoteObject], deadline: float
) -> tuple[list[_RemoteObject], Callable[[], None]]:
    """The objects of the complete upload at prefix `uri`, waiting until `deadline` for one; raises if none.

    Returns the objects to fetch (the manifest's; all but the marker for an empty one) and a check that
    raises `IncompleteUploadError` if the marker changed since (call it after downloading).
    """
    bucket, _ = split_s3(uri)
    while True:
        problem, chosen, marker_etag = _check_complete(client, bucket, objects)
        if problem is None:
            marker_key = next(o.key for o in objects if o.rel == SUCCESS_MARKER)
            return chosen, functools.partial(_marker_unchanged, client, uri, bucket, marker_key, marker_etag)
        if time.monotonic() >= deadline:
            raise IncompleteUploadError(
                f"{uri} {problem} ({_where()}): the upload that wrote it did not finish (or was not made with "
                "kubetune.storage.upload_dir), or is still retrying through an outage; re-run the upload, or "
                "wait for it (wait_seconds)"
            )
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        _, objects = _resolve(client, uri)


def _check_complete(
    client: Any, bucket: str, objects: list[_RemoteObject]
) -> tuple[str | None, list[_RemoteObject], str]:
    """(why the objects are no complete upload or `None`, the objects to fetch, the marker's ETag)."""
    marker = next((o for o in objects if o.rel == SUCCESS_MARKER), None)
    if marker is None:
        return f"has no {SUCCESS_MARKER} marker", [], ""
    try:
        response = client.get_object(Bucket=bucket, Key=marker.key)
    except ClientError as err:
        if _is_not_found(err):
            return f"lost its {SUCCESS_MARKER} marker a moment ago (a new upload started)", [], ""
        raise
    body, etag = response["Body"].read(), str(response["ETag"])
    manifest = parse_manifest(body)
    rest = [o for o in objects if o.rel != SUCCESS_MARKER]
    if manifest is None:
        return None, rest, etag
    problems = mismatches(manifest, [Listed(o.rel, o.etag, o.size) for o in rest])
    if problems:
        return f"does not hold the upload its {SUCCESS_MARKER} manifest lists: {'; '.join(problems)}", [], ""
    return None, [o for o in rest if o.rel in manifest], etag


def _marker_unchanged(client: Any, uri: str, bucket: str, marker_key: str, etag: str) -> None:
    # Every upload deletes the marker before it touches an object: the same marker means the same objects.
    try:
        now = str(client.head_object(Bucket=bucket, Key=marker_key)["ETag"])
    except ClientError as err:
        if not _is_not_found(err):
            raise
        now = ""
    if now != etag:
        raise IncompleteUploadError(
            f"{uri} was rewritten while it was being downloaded ({_where()}: its {SUCCESS_MARKER} marker changed); "
            "the copy was discarded: fetch it again once the new upload is complete"
        )


def _entry(root: Path, bucket: str, key: str) -> Path:
    """`root/<bucket>/<key>` with the key's surrounding `/` dropped (`root/<bucket>` for the bucket)."""
    return root / bucket / key.strip("/") if key.strip("/") else root / bucket


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so ranks on one node download an entry once, not once each."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("version") == _MANIFEST_VERSION else None


def _write_manifest(path: Path, uri: str, is_folder: bool, objects: list[_RemoteObject]) -> None:
    manifest = {
        "version": _MANIFEST_VERSION,
        "uri": uri,
        "folder": is_folder,
        "objects": {o.rel: {"etag": o.etag, "size": o.size} for o in objects},
    }
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def _local_file(dest: Path, rel: str) -> Path:
    return dest / rel if rel else dest


def _is_current(
    manifest: dict[str, Any] | None, dest: Path, is_folder: bool, objects: list[_RemoteObject]
) -> bool:
    """Whether `dest` is a complete copy of exactly `objects` (checked by manifest, then file sizes)."""
    if manifest is None or manifest.get("folder") != is_folder:
        return False
    if manifest["objects"] != {o.rel: {"etag": o.etag, "size": o.size} for o in objects}:
        return False
    # Sizes catch a copy someone edited or partly deleted after it was made.
    for obj in objects:
        local = _local_file(dest, obj.rel)
        if not local.is_file() or local.stat().st_size != obj.size:
            return False
    return True


def _reusable(manifest: dict[str, Any] | None, dest: Path, obj: _RemoteObject) -> Path | None:
    """The existing local copy of `obj` if the old manifest says it is unchanged, else `None`."""
    if manifest is None or not manifest.get("folder") or not dest.is_dir():
        return None
    if manifest["objects"].get(obj.rel) != {"etag": obj.etag, "size": obj.size}:
        return None
    local = dest / obj.rel
    return local if local.is_file() and local.stat().st_size == obj.size else None


def _fetch(
    client: Any,
    uri: str,
    bucket: str,
    dest: Path,
    tmp_root: Path,
    is_folder: bool,
    objects: list[_RemoteObject],
    old_manifest: dict[str, Any] | None,
    unchanged: Callable[[], None] | None = None,
) -> None:
    """Download into a temporary path, then swap it in, so `dest` is never half-written.

    `unchanged`, called after the downloads and before the swap, raises if the remote changed meanwhile.
    """
    tag = hashlib.sha1(str(dest).encode()).hexdigest()[:16]
    tmp_root.mkdir(parents=True, exist_ok=True)
    # We hold this entry's lock, so leftovers with its tag are from killed downloads.
    for stale in tmp_root.glob(f"{tag}-*"):
        _remove(stale)
    staging = tmp_root / f"{tag}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        target = staging / "data"
        pending = []
        for obj in objects:
            local = _local_file(target, obj.rel) if is_folder else target
            _check_inside(local, target, uri, obj.key)
            local.parent.mkdir(parents=True, exist_ok=True)
            reuse = _reusable(old_manifest, dest, obj)
            if reuse is not None:
                _link_or_copy(reuse, local)
            else:
                pending.append((obj, local))
        total = sum(obj.size for obj, _ in pending)
        with _progress(total, f"download {uri}") as bar:
            for obj, local in pending:
                _download_object(client, bucket, obj.key, local, bar.update)
        if is_folder:
            target.mkdir(exist_ok=True)  # a prefix whose only object was _SUCCESS
        if unchanged is not None:
            unchanged()
        _swap_into_place(target, dest, staging)
        logger.info("fetched %s → %s (%d of %d objects downloaded)", uri, dest, len(pending), len(objects))
    finally:
        _remove(staging)


def _progress(total_bytes: int, desc: str) -> tqdm:
    """A byte progress bar, shown only for transfers large enough to need one."""
    return tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=total_bytes < PROGRESS_MIN_BYTES
    )


def _download_object(client: Any, bucket: str, key: str, local: Path, callback: Any) -> None:
    """Download one object (multipart and retried by boto3's transfer manager)."""
    client.download_file(bucket, key, str(local), Callback=callback)


def _check_inside(local: Path, root: Path, uri: str, key: str) -> None:
    # A key like "a/../../x" must not write outside the cache entry.
    if not local.resolve().is_relative_to(root.resolve()):
        raise StorageError(f"refusing to download {key!r} from {uri}: its key points outside the prefix")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_into_place(new: Path, dest: Path, staging: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (dest.is_dir() or new.is_dir()):
        # One rename cannot replace a folder (or a file by a folder): move the old one aside first.
        os.rename(dest, staging / "old")
    os.replace(new, dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
