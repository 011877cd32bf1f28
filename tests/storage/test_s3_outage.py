"""S3 outages against a real `moto_server`: stopped mid-upload and restarted, or gone for good.

The client talks to moto through a `CuttingForwarder` on a fixed port (the endpoint in its environment).
"Down" is both: the forwarder stops listening (new connections are refused, as from a dead host) and cuts
the connections it holds, and the moto_server process is terminated. "Up again" restarts moto_server on its
same port and only then lets the forwarder listen again, as a Service routes to a pod once it is ready.

moto keeps its state in memory, so a restarted moto_server is empty. The bucket is created again before
the endpoint takes traffic; the objects sent before the outage are gone. That is the harshest restart an
uploader can meet (a store that came back without what it had acknowledged): the upload must notice and
send those files again, and the manifest check must keep readers off the prefix until it has.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto_server import MotoServer, _wait_until_up, free_port, moto_server_binary
from outage_proxies import CuttingForwarder

from kubetune.storage import (
    SUCCESS_MARKER,
    IncompleteUploadError,
    S3NotFoundError,
    StorageError,
    UploadGaveUpError,
    complete_upload_stamp,
    localize,
    s3_client,
    upload_dir,
    upload_file,
)
from kubetune.storage.manifest import manifest_body

pytestmark = pytest.mark.s3


class FlakyS3:
    """A moto_server behind a forwarder on a fixed port, which a test can take down and bring back."""

    def __init__(self, log_dir: Path) -> None:
        self.moto_port = free_port()
        self.log_dir = log_dir
        self.buckets: list[str] = []
        self.server = self._start_moto()
        self.proxy = CuttingForwarder(("127.0.0.1", self.moto_port))
        self.proxy.start()
        self.outages = 0

    @property
    def endpoint(self) -> str:
        return self.proxy.url

    def direct(self) -> Any:
        """A client straight to moto (not through the forwarder), for arranging and inspecting."""
        return boto3.client("s3", endpoint_url=self.server.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> None:
        self.buckets.append(name)
        self.direct().create_bucket(Bucket=name)

    def down(self) -> None:
        """Refuse new connections, then terminate moto_server (cutting requests in flight)."""
        self.outages += 1
        self.proxy.stop()
        self.server.stop()

    def up(self) -> None:
        """Restart moto_server on the same port (empty: state is in memory), re-create the buckets, route again."""
        self.server = self._start_moto()
        for name in self.buckets:
            self.direct().create_bucket(Bucket=name)
        self.proxy = CuttingForwarder(("127.0.0.1", self.moto_port), port=self.proxy.port)
        self.proxy.start()

    def cut(self) -> None:
        """Cut the network only: moto_server (and what it holds) stays."""
        self.outages += 1
        self.proxy.stop()

    def reconnect(self) -> None:
        self.proxy = CuttingForwarder(("127.0.0.1", self.moto_port), port=self.proxy.port)
        self.proxy.start()

    def close(self) -> None:
        self.proxy.stop()
        self.server.stop()

    def _start_moto(self) -> MotoServer:
        log = self.log_dir / f"moto-{time.monotonic_ns()}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen([moto_server_binary(), "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                       stdout=handle, stderr=subprocess.STDOUT)
        server = MotoServer(endpoint=f"http://127.0.0.1:{self.moto_port}", process=process, log_path=log)
        try:
            _wait_until_up(server, 30)
        except BaseException:
            server.stop()
            raise
        return server


@pytest.fixture
def flaky_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A `FlakyS3` that kubetune's client reaches through the forwarder; one botocore try per request.

    `AWS_MAX_ATTEMPTS=1` leaves the whole outage to kubetune's own retry loop, so the timings are its own.
    """
    s3 = FlakyS3(tmp_path)
    for var in ("AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    yield s3
    s3.close()


def _model_dir(root: Path, files: int, size: int) -> Path:
    """A folder shaped like a sharded export: config, tokenizer, `files` random shards of `size` bytes."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 32}')
    (root / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}')
    for index in range(files):
        (root / f"model-{index:05d}-of-{files:05d}.safetensors").write_bytes(os.urandom(size))
    return root


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _lost(expected: dict[str, str], copy: Path) -> int:
    """Files of `expected` missing from `copy` or different there, plus files `copy` has that it should not."""
    got = _digests(copy)
    return sum(got.get(rel) != digest for rel, digest in expected.items()) + len(set(got) - set(expected))


def _on_file_put(client: Any, prefix: str, action: Any, marker_too: bool = False) -> Any:
    """Call `action(n)` as the n-th PutObject under `prefix` (of a file; or the marker too) is about to be sent."""
    count = {"n": 0}

    def before_send(request: Any, **_: Any) -> None:
        path = request.url.split("?")[0]
        if f"/{prefix}" in path and (marker_too or not path.endswith(SUCCESS_MARKER)):
            count["n"] += 1
            action(count["n"])

    client.meta.events.register("before-send.s3.PutObject", before_send)
    return before_send


def _upload_in_thread(local: Path, uri: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            outcome["uri"] = upload_dir(local, uri)
        except BaseException as err:  # handed to the test thread
            outcome["error"] = err
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.chaos
def test_s3_stopped_mid_upload_and_restarted_completes_and_readers_never_see_half(
    chaos_row: Any, flaky_s3: FlakyS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """moto_server terminated as the 4th of 8 files goes up, restarted (empty, bucket re-created) 1.5 s later.

    The upload retries with back-off and completes; the files sent before the outage, lost by the restart,
    are sent again. A reader during the outage gets an error, one right after the restart a refusal (no
    manifest yet) or the whole model, never part of it.
    """
    row = chaos_row("S3 stopped mid-upload, restarted")
    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "60")
    caplog.set_level(logging.INFO, logger="kubetune.storage")
    flaky_s3.create_bucket("models")
    local = _model_dir(tmp_path / "merged", files=6, size=256 * 1024)
    expected = _digests(local)
    uri = "s3://models/runs/sft/merged/"
    went_down = threading.Event()

    def outage(n: int) -> None:
        if n == 4 and not went_down.is_set():
            flaky_s3.down()
            went_down.set()

    handler = _on_file_put(s3_client(), "runs/sft/merged/", outage)
    try:
        uploader, outcome = _upload_in_thread(local, uri)
        assert went_down.wait(60), "the upload never reached its 4th file"
        row.runs += 1
        partial_reads = 0
        with pytest.raises(StorageError, match="cannot reach"):
            localize(uri, require_complete=True, cache_dir=tmp_path / "during")  # an error, not a partial copy
        time.sleep(1.5)  # the outage lasts: the uploader backs off and retries
        flaky_s3.up()
        try:
            early = localize(uri, require_complete=True, cache_dir=tmp_path / "early")
            partial_reads += _lost(expected, early) > 0
        except (IncompleteUploadError, S3NotFoundError):
            pass  # refused: the restarted store is empty, or the upload has not written its manifest yet
        uploader.join(90)
    finally:
        s3_client().meta.events.unregister("before-send.s3.PutObject", handler)
    assert not uploader.is_alive(), "the upload hung"
    assert "error" not in outcome, f"the upload failed: {outcome.get('error')!r}"
    copy = localize(uri, require_complete=True, cache_dir=tmp_path / "after")
    row.data_lost = _lost(expected, copy) + partial_reads
    row.detail = f"upload resumed, done {outcome['seconds']:.1f} s after start"
    assert row.data_lost == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("S3 outage during upload" in m and "retrying in" in m for m in messages)
    assert any("S3 is back" in m for m in messages)
    keys = {o["Key"] for o in flaky_s3.direct().list_objects_v2(Bucket="models")["Contents"]}
    assert keys == {f"runs/sft/merged/{rel}" for rel in expected} | {f"runs/sft/merged/{SUCCESS_MARKER}"}


@pytest.mark.chaos
def test_s3_gone_for_good_fails_after_the_budget_naming_bucket_key_and_local_copy(
    chaos_row: Any, flaky_s3: FlakyS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto_server terminated as the 2nd file goes up and never restarted: the upload gives up after the budget."""
    row = chaos_row("S3 stopped mid-upload, never back")
    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "3")
    flaky_s3.create_bucket("models")
    local = _model_dir(tmp_path / "merged", files=3, size=64 * 1024)
    expected = _digests(local)
    went_down = threading.Event()

    def outage(n: int) -> None:
        if n == 2 and not went_down.is_set():
            flaky_s3.down()
            went_down.set()

    handler = _on_file_put(s3_client(), "runs/sft/merged/", outage)
    start = time.monotonic()
    try:
        row.runs += 1
        with pytest.raises(UploadGaveUpError) as gave_up:
            upload_dir(local, "s3://models/runs/sft/merged")
    finally:
        s3_client().meta.events.unregister("before-send.s3.PutObject", handler)
    spent = time.monotonic() - start
    message = str(gave_up.value)
    row.data_lost = _lost(expected, local)  # the local folder is all there is now: it must be intact
    row.detail = f"gave up after {spent:.1f} s, budget 3 s"
    assert row.data_lost == 0
    assert went_down.is_set() and 2.5 < spent < 15
    assert "bucket 'models'" in message and "prefix 'runs/sft/merged/'" in message
    assert f"still in {local}" in message and "Nothing is lost" in message
    assert "KUBETUNE_S3_RETRY_SECONDS" in message and flaky_s3.endpoint in message


@pytest.mark.chaos
def test_s3_network_cut_mid_upload_resumes_without_sending_files_twice(
    chaos_row: Any, flaky_s3: FlakyS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network cut as the 4th of 8 files goes up, back 1 s later; the store kept what it had received.

    The retry sends only what the prefix lacks: each of the first three files goes up once.
    """
    row = chaos_row("S3 network cut mid-upload, back")
    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "60")
    flaky_s3.create_bucket("models")
    local = _model_dir(tmp_path / "merged", files=6, size=64 * 1024)
    expected = _digests(local)
    puts: list[str] = []

    def outage(n: int) -> None:
        if n == 4 and not flaky_s3.outages:
            flaky_s3.cut()
            threading.Timer(1.0, flaky_s3.reconnect).start()

    client = s3_client()
    handler = _on_file_put(client, "m/", outage)
    record = lambda request, **_: puts.append(request.url.split("?")[0].rsplit("/m/", 1)[-1])  # noqa: E731
    client.meta.events.register("before-send.s3.PutObject", record)
    try:
        row.runs += 1
        uri = upload_dir(local, "s3://models/m/")
    finally:
        for registered in (handler, record):
            client.meta.events.unregister("before-send.s3.PutObject", registered)
    copy = localize(uri, require_complete=True)
    row.data_lost = _lost(expected, copy)
    assert row.data_lost == 0
    sent_before_cut = sorted(expected)[:3]
    assert [puts.count(rel) for rel in sent_before_cut] == [1, 1, 1], puts
    assert puts.count(sorted(expected)[3]) >= 2  # the one cut in flight is tried again until it goes up


def test_single_file_upload_gives_up_naming_the_file_kept(flaky_s3: FlakyS3, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "1")
    report = tmp_path / "run_summary.json"
    report.write_text("{}")
    flaky_s3.down()
    with pytest.raises(StorageError, match=rf"bucket 'models', key 'r/run_summary.json'.*still at {report}"):
        upload_file(report, "s3://models/r/")
    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "soon")
    with pytest.raises(ValueError, match="KUBETUNE_S3_RETRY_SECONDS='soon' is not a number of seconds"):
        upload_file(report, "s3://models/r/")


def test_reader_refuses_a_prefix_whose_objects_do_not_match_the_manifest(
    flaky_s3: FlakyS3, tmp_path: Path
) -> None:
    """A marker over objects that changed or went missing since (e.g. a store that lost writes) is refused."""
    flaky_s3.create_bucket("models")
    local = _model_dir(tmp_path / "merged", files=2, size=1024)
    uri = upload_dir(local, "s3://models/m/")
    direct = flaky_s3.direct()
    stamp = complete_upload_stamp(uri)
    assert stamp and complete_upload_stamp("s3://models/m") == stamp  # the same upload, the same stamp
    direct.put_object(Bucket="models", Key="m/model-00000-of-00002.safetensors", Body=b"overwritten")
    with pytest.raises(IncompleteUploadError, match=r"1 object\(s\) differ from the manifest \(model-00000"):
        localize(uri, require_complete=True)
    with pytest.raises(IncompleteUploadError, match="differ from the manifest"):
        complete_upload_stamp(uri)
    direct.delete_object(Bucket="models", Key="m/config.json")
    with pytest.raises(IncompleteUploadError, match=r"1 listed object\(s\) missing \(config.json\)"):
        localize(uri, require_complete=True)

    # Objects the manifest does not list (an earlier export's extra shard) are not part of the model.
    fresh = upload_dir(local, "s3://models/n/")
    assert complete_upload_stamp(fresh) == stamp  # the stamp names the content: the same files as m/
    direct.put_object(Bucket="models", Key="n/model-00002-of-00003.safetensors", Body=b"stale")
    copy = localize(fresh, require_complete=True)
    assert _digests(copy) == _digests(local)

    # An empty marker (other tools write those) still means "complete".
    direct.put_object(Bucket="models", Key="o/part-0", Body=b"0")
    direct.put_object(Bucket="models", Key=f"o/{SUCCESS_MARKER}", Body=b"")
    assert (localize("s3://models/o/", require_complete=True) / "part-0").read_bytes() == b"0"
    assert manifest_body({"b": ("e2", 2), "a": ("e1", 1)}) == manifest_body({"a": ("e1", 1), "b": ("e2", 2)})


def test_reader_discards_a_copy_whose_upload_is_rewritten_while_it_downloads(
    flaky_s3: FlakyS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.storage import s3 as s3_module

    flaky_s3.create_bucket("models")
    local = _model_dir(tmp_path / "merged", files=2, size=1024)
    uri = upload_dir(local, "s3://models/m/")
    real = s3_module._download_object
    rewritten = []

    def download_then_rewrite(client: Any, bucket: str, key: str, path: Path, callback: Any) -> None:
        real(client, bucket, key, path, callback)
        if not rewritten:  # a new upload of the prefix starts while the reader is half-way
            rewritten.append(key)
            (local / "config.json").write_text('{"hidden_size": 64}')
            upload_dir(local, uri)

    monkeypatch.setattr(s3_module, "_download_object", download_then_rewrite)
    with pytest.raises(IncompleteUploadError, match="rewritten while it was being downloaded"):
        localize(uri, require_complete=True)
    assert not (tmp_path / "cache" / "s3" / "models" / "m").exists()  # the mixed copy never took the entry's place
    monkeypatch.setattr(s3_module, "_download_object", real)
    assert _digests(localize(uri, require_complete=True)) == _digests(local)


@pytest.mark.chaos
@pytest.mark.slow
def test_s3_outages_at_random_moments_of_a_long_upload(
    chaos_row: Any, flaky_s3: FlakyS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three outages, each cutting requests in flight at a random file (the marker included), 0.5-3 s long.

    A reader polls the prefix all along; every copy it is handed must be the whole model.
    """
    row = chaos_row("S3 down 3x at random moments of an upload")
    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "120")
    flaky_s3.create_bucket("models")
    local = _model_dir(tmp_path / "merged", files=24, size=512 * 1024)
    expected = _digests(local)
    uri = "s3://models/runs/long/"
    rng = random.Random(18)
    at = sorted(rng.sample(range(2, len(expected) + 2), 3))  # PUT counts (over all attempts) to fail at
    outages: list[threading.Thread] = []

    in_outage = threading.Event()  # PUTs retried during an outage count too: one outage at a time

    def cut_soon(n: int) -> None:
        if at and n >= at[0] and not in_outage.is_set():
            at.pop(0)
            in_outage.set()

            def outage() -> None:
                time.sleep(rng.uniform(0.0, 0.05))  # the PUT is on its way
                flaky_s3.down()
                time.sleep(rng.uniform(0.5, 3.0))
                flaky_s3.up()
                in_outage.clear()

            thread = threading.Thread(target=outage, daemon=True)
            outages.append(thread)
            thread.start()

    stop_reading = threading.Event()
    reads = {"complete": 0, "partial": 0, "refused": 0}

    def reader() -> None:
        while not stop_reading.is_set():
            try:
                copy = localize(uri, require_complete=True, cache_dir=tmp_path / f"read-{time.monotonic_ns()}")
                reads["partial" if _lost(expected, copy) else "complete"] += 1
            except (StorageError, FileNotFoundError):
                reads["refused"] += 1
            time.sleep(0.2)

    handler = _on_file_put(s3_client(), "runs/long/", cut_soon, marker_too=True)
    reading = threading.Thread(target=reader, daemon=True)
    reading.start()
    try:
        uploader, outcome = _upload_in_thread(local, uri)
        uploader.join(300)
        for thread in outages:
            thread.join(30)
        deadline = time.monotonic() + 20
        while not reads["complete"] and time.monotonic() < deadline:  # a reader gets the model once it is whole
            time.sleep(0.2)
    finally:
        s3_client().meta.events.unregister("before-send.s3.PutObject", handler)
        stop_reading.set()
        reading.join(60)
    row.runs = flaky_s3.outages
    assert "error" not in outcome, f"the upload failed: {outcome.get('error')!r}"
    copy = localize(uri, require_complete=True, cache_dir=tmp_path / "after", wait_seconds=30)
    row.data_lost = _lost(expected, copy) + reads["partial"]
    row.detail = f"{flaky_s3.outages} outages, reader: {reads}"
    assert row.data_lost == 0 and flaky_s3.outages == 3 and reads["complete"] >= 1
