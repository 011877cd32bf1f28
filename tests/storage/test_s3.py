"""kubetune.storage against a real moto_server: round trips, caching, atomicity, errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.storage import (
    SUCCESS_MARKER,
    IncompleteUploadError,
    S3AccessError,
    S3NotFoundError,
    is_s3,
    join,
    localize,
    split_s3,
    upload_dir,
    upload_file,
)
from kubetune.storage import s3 as s3_module

pytestmark = pytest.mark.s3


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small folder shaped like a model export: nested files, binary content."""
    root = tmp_path / "model"
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 32}')
    (root / "model.safetensors").write_bytes(os.urandom(4096))
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    return root


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys downloaded from S3 from now on, in order."""
    seen: list[str] = []
    real = s3_module._download_object

    def counting(client: Any, bucket: str, key: str, local: Path, callback: Any) -> None:
        seen.append(key)
        real(client, bucket, key, local, callback)

    monkeypatch.setattr(s3_module, "_download_object", counting)
    return seen


def test_upload_dir_then_localize_round_trips_files(bucket: str, client: Any, model_dir: Path) -> None:
    uri = upload_dir(model_dir, f"s3://{bucket}/runs/sft")
    assert uri == f"s3://{bucket}/runs/sft/"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"runs/sft/{SUCCESS_MARKER}" in keys

    local = localize(uri, require_complete=True)

    assert local == Path(os.environ["KUBETUNE_CACHE"]) / "s3" / bucket / "runs" / "sft"
    # The marker is a fact about the remote prefix, not a file of the model.
    assert _tree(local) == _tree(model_dir)


def test_second_localize_downloads_nothing(bucket: str, model_dir: Path, downloads: list[str]) -> None:
    uri = upload_dir(model_dir, f"s3://{bucket}/m/")
    first = localize(uri)
    assert len(downloads) == 3
    weights = first / "model.safetensors"
    stamp = (weights.stat().st_ino, weights.stat().st_mtime_ns)

    again = localize(f"s3://{bucket}/m")  # same prefix, written without the trailing slash

    assert again == first
    assert len(downloads) == 3
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == stamp


def test_changed_remote_object_is_fetched_again(
    bucket: str, client: Any, model_dir: Path, downloads: list[str]
) -> None:
    uri = upload_dir(model_dir, f"s3://{bucket}/m/")
    local = localize(uri)
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"hidden_size": 64}')
    downloads.clear()

    assert localize(uri) == local

    assert (local / "config.json").read_text() == '{"hidden_size": 64}'
    assert downloads == ["m/config.json"]  # unchanged objects are reused, not downloaded again
    assert _tree(local)["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()


def test_damaged_local_copy_is_repaired(bucket: str, model_dir: Path, downloads: list[str]) -> None:
    local = localize(upload_dir(model_dir, f"s3://{bucket}/m/"))
    (local / "tokenizer" / "vocab.txt").unlink()
    downloads.clear()

    localize(f"s3://{bucket}/m/")

    assert downloads == ["m/tokenizer/vocab.txt"]
    assert _tree(local) == _tree(model_dir)


def test_interrupted_download_leaves_no_complete_looking_entry(
    bucket: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = upload_dir(model_dir, f"s3://{bucket}/m/")
    real = s3_module._download_object
    calls = []

    def dies_on_second(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a killed pod looks like from inside the process
        real(*args)

    monkeypatch.setattr(s3_module, "_download_object", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        localize(uri)
    cache = Path(os.environ["KUBETUNE_CACHE"]) / "s3"
    assert not (cache / bucket / "m").exists()

    monkeypatch.setattr(s3_module, "_download_object", real)
    assert _tree(localize(uri)) == _tree(model_dir)
    assert list((cache / ".tmp").iterdir()) == []


def test_single_object_localize_and_refresh(bucket: str, tmp_path: Path, client: Any) -> None:
    src = tmp_path / "data.jsonl"
    src.write_text('{"instruction": "hi"}\n')
    uri = upload_file(src, f"s3://{bucket}/datasets/")
    assert uri == f"s3://{bucket}/datasets/data.jsonl"

    local = localize(uri, cache_dir=tmp_path / "elsewhere")
    assert local == tmp_path / "elsewhere" / bucket / "datasets" / "data.jsonl"
    assert local.read_text() == src.read_text()

    client.put_object(Bucket=bucket, Key="datasets/data.jsonl", Body=b"changed\n")
    assert localize(uri, cache_dir=tmp_path / "elsewhere").read_text() == "changed\n"


def test_missing_key_and_bucket_say_what_to_check(bucket: str, s3_env: dict[str, str]) -> None:
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    with pytest.raises(S3NotFoundError) as missing_key:
        localize(f"s3://{bucket}/no/such/key")
    assert str(missing_key.value) == (
        f"s3://{bucket}/no/such/key not found (endpoint {endpoint}): check the URI and credentials"
    )
    assert isinstance(missing_key.value, FileNotFoundError)  # callers can treat S3 like local paths

    with pytest.raises(S3NotFoundError, match=r"s3://no-such-bucket-kt/x not found \(endpoint http"):
        localize("s3://no-such-bucket-kt/x")


def test_prefix_without_marker_is_refused_only_when_required(bucket: str, client: Any) -> None:
    client.put_object(Bucket=bucket, Key="half/part-0", Body=b"0")
    uri = f"s3://{bucket}/half/"

    with pytest.raises(IncompleteUploadError, match=SUCCESS_MARKER):
        localize(uri, require_complete=True)
    assert (localize(uri) / "part-0").read_bytes() == b"0"


def test_failed_reupload_removes_the_old_marker(
    bucket: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = upload_dir(model_dir, f"s3://{bucket}/m/")
    real_client = s3_module.s3_client()

    class FailsOnSecondUpload:
        uploads = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(real_client, name)

        def upload_file(self, *args: Any, **kwargs: Any) -> None:
            self.uploads += 1
            if self.uploads == 2:
                raise ConnectionError("network went away")
            real_client.upload_file(*args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(ConnectionError):
        patch.setattr(s3_module, "s3_client", FailsOnSecondUpload)
        upload_dir(model_dir, uri)

    # Readers that insist on a complete upload must not mistake the half-rewritten prefix for one.
    with pytest.raises(IncompleteUploadError):
        localize(uri, require_complete=True)


def test_upload_dir_delete_extra_removes_stale_objects(bucket: str, client: Any, model_dir: Path) -> None:
    client.put_object(Bucket=bucket, Key="m/model-00002-of-00002.safetensors", Body=b"old shard")
    upload_dir(model_dir, f"s3://{bucket}/m/", delete_extra=True)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="m/")["Contents"]}
    assert keys == {"m/config.json", "m/model.safetensors", "m/tokenizer/vocab.txt", f"m/{SUCCESS_MARKER}"}


def test_no_credentials_names_the_variables(
    bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # else botocore waits on an instance role

    with pytest.raises(S3AccessError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        localize(f"s3://{bucket}/k")


def test_local_paths_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "base").mkdir()
    assert localize("~/base") == tmp_path / "base"
    assert localize(f"file://{tmp_path}/base") == tmp_path / "base"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/missing does not exist"):
        localize(tmp_path / "missing")


def test_uri_helpers() -> None:
    assert is_s3("s3://b/k") and not is_s3("/data/s3://x") and not is_s3(Path("s3:/b"))
    assert split_s3("s3://b/a/b/") == ("b", "a/b/")
    assert split_s3("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="no bucket"):
        split_s3("s3:///k")
    assert join("s3://b/runs/", "/sft/", "adapter") == "s3://b/runs/sft/adapter"
    assert join("/tmp/out", "sft") == "/tmp/out/sft"


def test_reader_waits_for_a_writer_still_uploading(bucket: str, client: Any) -> None:
    import threading
    import time

    client.put_object(Bucket=bucket, Key="late/part-0", Body=b"0")
    writer = threading.Timer(1.0, lambda: (client.put_object(Bucket=bucket, Key="late/part-1", Body=b"1"),
                                           client.put_object(Bucket=bucket, Key=f"late/{SUCCESS_MARKER}", Body=b"")))
    writer.start()
    start = time.monotonic()
    local = localize(f"s3://{bucket}/late/", require_complete=True, wait_seconds=20)
    writer.join()
    assert 0.9 < time.monotonic() - start < 20
    assert sorted(p.name for p in local.iterdir()) == ["part-0", "part-1"]
