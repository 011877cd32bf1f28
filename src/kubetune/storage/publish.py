"""Upload to S3 through outages: a folder, atomically for readers (`upload_dir`), or one file (`upload_file`).

One attempt: delete the old `_SUCCESS` marker (readers stop trusting the prefix), upload every file the
prefix does not already hold from an earlier attempt of this call, write the marker with the manifest
(`kubetune.storage.manifest`) last, then list the prefix and check it is what the manifest says, as a
reader would. An outage part-way (connection refused or reset, 5xx, a store that restarted and lost what
it had been sent) starts the attempt again after a back-off (`kubetune.storage.retry`); files that are
still there are not sent twice. When the budget is spent, the error names the bucket, the prefix and the
local folder, which is untouched: nothing is lost, the step can be re-run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kubetune.storage import s3
from kubetune.storage.manifest import Listed, manifest_body, mismatches
from kubetune.storage.retry import TransientStoreError, retry_budget_s, retry_through_outage
from kubetune.storage.uri import local_path, split_s3

logger = logging.getLogger(__name__)


class UploadGaveUpError(s3.StorageError):
    """S3 stayed unreachable for the whole retry budget; the message says what is kept locally."""


def upload_dir(local: str | os.PathLike[str], uri: str, *, delete_extra: bool = False,
               retry_seconds: float | None = None) -> str:
    """Upload a folder to an S3 prefix, then write the `_SUCCESS` marker (with the manifest) last.

    Readers that localize with `require_complete=True` therefore never see a half-finished upload: a
    marker left by an earlier upload is deleted before the first file goes up, and the marker lists the
    ETag and size of every object, so a prefix whose objects changed or went missing since is refused.

    Args:
        local (`str` or `os.PathLike`):
            The folder; every file under it is uploaded at its relative path.
        uri (`str`):
            `s3://bucket/prefix` (a trailing `/` is implied).
        delete_extra (`bool`, *optional*, defaults to `False`):
            Also delete objects under the prefix that are not in `local` (e.g. shards of an earlier,
            larger export), before writing the marker. Off by default: the prefix may be shared.
        retry_seconds (`float`, *optional*):
            How long to keep retrying through an outage, counted from the first failure;
            `KUBETUNE_S3_RETRY_SECONDS` (default 300) when `None`, 0 for a single attempt.

    Returns:
        `str`: the prefix URI, ending in `/`.

    Raises:
        UploadGaveUpError: S3 was unreachable for `retry_seconds`; the message names the local folder.
        S3NotFoundError, S3AccessError: no such bucket, or access denied (not retried).
    """
    root = local_path(local)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder: cannot upload it to {uri}")
    bucket, key = split_s3(uri)
    prefix = s3._prefix_of(key)
    prefix_uri = f"s3://{bucket}/{prefix}"
    files = {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*"))
             if path.is_file() and path.relative_to(root).as_posix() != s3.SUCCESS_MARKER}
    budget = retry_budget_s(retry_seconds)
    sent: dict[str, tuple[str, int]] = {}  # relative key → (ETag, size) of what this call uploaded

    def attempt() -> None:
        with s3._s3_errors_passing_outages(prefix_uri):
            _publish_once(s3.s3_client(), bucket, prefix, files, sent, delete_extra)

    def give_up(err: BaseException, spent: float, attempts: int) -> Exception:
        return UploadGaveUpError(
            f"upload of {root} to {prefix_uri} (bucket {bucket!r}, prefix {prefix!r}) gave up after {spent:.0f} s "
            f"and {attempts} attempts: {s3._where()} is unreachable ({_first_line(err)}). Nothing is lost: "
            f"the {len(files)} files are still in {root}, and no reader takes a partial copy of the prefix (its "
            f"{s3.SUCCESS_MARKER} manifest is written last). Re-run the step when S3 answers, or allow a longer "
            f"outage with KUBETUNE_S3_RETRY_SECONDS (now {budget:.0f})"
        )

    retry_through_outage(attempt, what=f"upload of {root} to {prefix_uri}", budget_s=budget, on_give_up=give_up)
    logger.info("uploaded %d files from %s to %s", len(files), root, prefix_uri)
    return prefix_uri


def upload_file(local: str | os.PathLike[str], uri: str) -> str:
    """Upload one file to S3.

    Args:
        local (`str` or `os.PathLike`):
            The file to upload.
        uri (`str`):
            `s3://bucket/key`; if it ends with `/`, the file's name is appended.

    Returns:
        `str`: the URI of the uploaded object.
    """
    path = local_path(local)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file: cannot upload it to {uri}")
    if uri.endswith("/"):
        uri = uri + path.name
    bucket, key = split_s3(uri)
    if not key:
        raise ValueError(f"{uri!r} has no key: write s3://{bucket}/<key>")
    size = path.stat().st_size

    def attempt() -> None:
        with s3._s3_errors_passing_outages(uri), s3._progress(size, f"upload {uri}") as bar:
            s3.s3_client().upload_file(str(path), bucket, key, Callback=bar.update)

    def give_up(err: BaseException, spent: float, attempts: int) -> Exception:
        return UploadGaveUpError(
            f"upload of {path} to {uri} (bucket {bucket!r}, key {key!r}) gave up after {spent:.0f} s and {attempts} "
            f"attempts: {s3._where()} is unreachable ({err}). Nothing is lost: the file is still at {path}; re-run "
            "the step when S3 answers, or allow a longer outage with KUBETUNE_S3_RETRY_SECONDS"
        )

    retry_through_outage(attempt, what=f"upload of {path} to {uri}", budget_s=retry_budget_s(), on_give_up=give_up)
    return uri


def _publish_once(client: Any, bucket: str, prefix: str, files: dict[str, Path],
                  sent: dict[str, tuple[str, int]], delete_extra: bool) -> None:
    marker = prefix + s3.SUCCESS_MARKER
    client.delete_object(Bucket=bucket, Key=marker)
    present = {o.rel: (o.etag, o.size) for o in s3._list_prefix(client, bucket, prefix)}
    pending = {rel: path for rel, path in files.items() if rel not in sent or present.get(rel) != sent[rel]}
    if sent and len(pending) < len(files):
        logger.info("resuming upload to s3://%s/%s: %d of %d files are there already", bucket, prefix,
                    len(files) - len(pending), len(files))
    total = sum(path.stat().st_size for path in pending.values())
    with s3._progress(total, f"upload s3://{bucket}/{prefix}") as bar:
        for rel, path in pending.items():
            sent.pop(rel, None)
            client.upload_file(str(path), bucket, prefix + rel, Callback=bar.update)
            head = client.head_object(Bucket=bucket, Key=prefix + rel)
            sent[rel] = (head["ETag"], int(head["ContentLength"]))
    if delete_extra:
        _delete_except(client, bucket, prefix, {prefix + rel for rel in files})
    manifest = {rel: sent[rel] for rel in files}
    client.put_object(Bucket=bucket, Key=marker, Body=manifest_body(manifest))
    # Read it back as a reader would: a store that restarted between our writes may have lost some.
    listed = [Listed(o.rel, o.etag, o.size) for o in s3._list_prefix(client, bucket, prefix)]
    problems = mismatches(manifest, listed)
    if problems or not any(o.rel == s3.SUCCESS_MARKER for o in listed):
        raise TransientStoreError(f"s3://{bucket}/{prefix} does not hold what was uploaded: "
                                  + ("; ".join(problems) or "the marker is missing"))


def _delete_except(client: Any, bucket: str, prefix: str, keep: set[str]) -> None:
    extra = [o.key for o in s3._list_prefix(client, bucket, prefix)
             if o.key not in keep and o.rel != s3.SUCCESS_MARKER]
    for start in range(0, len(extra), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in extra[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]
