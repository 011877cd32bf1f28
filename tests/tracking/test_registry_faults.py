"""The model registry under faults, against real `mlflow server`s with a sqlite and a PostgreSQL store.

- a model whose export did not finish is never registered nor promoted (a clear error naming the path);
- a register step retried (after a kill mid-upload, or a create sent twice) makes no second version;
- two promotions racing for `champion` (real processes, one of them on a slow link so its stale write
  lands last) end with the better model as champion.

Each scenario runs on sqlite (fast, in `make test`) and on PostgreSQL, the production chart's store
(`slow`: its server's first start runs every migration, ~30 s; skipped where PostgreSQL is not installed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from delay_proxy import DelayProxy

from kubetune.export_marker import EXPORT_MARKER, IncompleteExportError, mark_complete
from kubetune.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    REGISTRATION_KEY_TAG,
    alias_version,
    promote,
    register_model,
)

WORKER = Path(__file__).with_name("registry_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _export_dir(tmp_path: Path, name: str, size: int = 64, complete: bool = True) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(os.urandom(size))
    if complete:
        mark_complete(folder)
    return folder


def _run(client: Any, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client.create_run(experiment_id, run_name="pipeline").info.run_id


def _live_versions(client: Any, name: str) -> list[Any]:
    return list(client.search_model_versions(f"name = '{name}'"))


class Worker:
    """A `registry_worker.py` process: commands in on stdin, JSON answers out on stdout."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})})

    def ready(self) -> Worker:
        line = self.process.stdout.readline()
        assert line.strip() == "ready", f"worker did not start: {line!r}"
        return self

    def send(self, **command: Any) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait()}"
        return json.loads(line)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


# --- an unfinished export ----------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.s3
def test_an_unfinished_export_is_never_registered_nor_promoted(chaos_row: Any, store: str, backend: str,
                                                               tmp_path: Path, unique: str, bucket: str,
                                                               client: Any) -> None:
    row = chaos_row(f"register/promote on an unfinished export ({backend} store)")
    mlflow = _client(store)
    name, run = f"unfinished-{unique}", _run(mlflow, f"faults-{unique}")
    bad_versions = 0

    # a local export killed before its marker: shards there, no _SUCCESS
    partial = _export_dir(tmp_path, "killed", complete=False)
    row.runs += 1
    with pytest.raises(IncompleteExportError, match=f"{partial}.*no {EXPORT_MARKER} marker.*Rerun the export"):
        register_model(store, name, partial, run_id=run)
    # finished, then a shard cut short (a copy that died half-way): the manifest notices
    damaged = _export_dir(tmp_path, "damaged")
    (damaged / "model.safetensors").write_bytes(b"\0" * 10)
    row.runs += 1
    with pytest.raises(IncompleteExportError, match="model.safetensors is 10 bytes, the export wrote 64"):
        register_model(store, name, damaged, run_id=run)
    # an S3 upload that stopped before its _SUCCESS object
    client.put_object(Bucket=bucket, Key="models/half/model.safetensors", Body=b"\0" * 64)
    row.runs += 1
    with pytest.raises(IncompleteExportError, match=f"s3://{bucket}/models/half/ has no {EXPORT_MARKER}"):
        register_model(store, name, f"s3://{bucket}/models/half/")
    bad_versions += len(_live_versions(mlflow, name))
    assert list(mlflow.search_registered_models(f"name = '{name}'")) == []  # nothing was created at all

    # a version made behind kubetune's back on that half upload: promote refuses it, champion stays unset
    mlflow.create_registered_model(name)
    foreign = mlflow.create_model_version(name, f"s3://{bucket}/models/half/").version
    row.runs += 1
    with pytest.raises(IncompleteExportError, match=f"refusing to promote {name} v{foreign}.*no {EXPORT_MARKER}"):
        promote(store, name, foreign, "rouge", metrics={"rouge": 1.0})
    assert alias_version(mlflow, name, CHAMPION) is None

    # the export finishes (its marker written last): now it registers and promotes
    mark_complete(partial)
    row.runs += 1
    version = register_model(store, name, partial, run_id=run)
    assert promote(store, name, version, "rouge", metrics={"rouge": 1.0}).promoted
    assert mlflow.get_model_version(name, version).tags["export_complete"] == "true"
    row.data_lost = bad_versions  # versions a server would have pointed at a half-written model
    assert row.data_lost == 0


@pytest.mark.chaos
@pytest.mark.slow
def test_an_export_killed_mid_write_is_refused_until_rerun(chaos_row: Any, mlflow_server: str,
                                                          tiny_model_dir: Path, tmp_path: Path, unique: str) -> None:
    row = chaos_row("export killed mid-write (SIGKILL), then register")
    mlflow, name = _client(mlflow_server), f"killed-export-{unique}"
    run = _run(mlflow, f"faults-{unique}")
    out = tmp_path / "merged"
    worker = Worker().ready()
    try:
        row.runs += 1
        worker.send(op="export", model=str(tiny_model_dir), out=str(out), stall_tokenizer=True)
        assert worker.answer() == {"stalled": True}  # the weights are written, the tokenizer's write hangs
        assert list(out.glob("*.safetensors"))
    finally:
        worker.kill()  # a real SIGKILL: no cleanup, no marker
    with pytest.raises(IncompleteExportError, match=f"{out} has no {EXPORT_MARKER}"):
        register_model(mlflow_server, name, out, run_id=run)
    refused = len(_live_versions(mlflow, name))

    rerun = Worker().ready()  # the retried export step, into the same folder
    try:
        row.runs += 1
        rerun.send(op="export", model=str(tiny_model_dir), out=str(out))
        assert "exported" in rerun.answer()
    finally:
        rerun.close()
    assert (out / EXPORT_MARKER).is_file() and (out / "tokenizer.json").is_file()
    version = register_model(mlflow_server, name, out, run_id=run)
    assert [v.version for v in _live_versions(mlflow, name)] == [version]
    row.data_lost = refused
    assert row.data_lost == 0


# --- a retried register step -----------------------------------------------------------------------------


@pytest.mark.chaos
def test_a_retried_register_makes_no_second_version(chaos_row: Any, store: str, backend: str, tmp_path: Path,
                                                    unique: str) -> None:
    row = chaos_row(f"register retried, create sent twice ({backend} store)")
    mlflow, name = _client(store), f"retried-{unique}"
    run = _run(mlflow, f"faults-{unique}")
    merged = _export_dir(tmp_path, "merged")
    tags = {"kfp_run_id": "kfp-1", "data_hash": "d1"}

    versions = []
    for _ in range(3):  # the step, then two KFP retries of it
        row.runs += 1
        versions.append(register_model(store, name, merged, run_id=run, tags=tags))
    assert versions == ["1", "1", "1"]
    assert len(mlflow.list_artifacts(run)) == 1  # uploaded once, into model/

    # a create whose answer was lost and that was sent again: two versions with one key; the next
    # registration (or the racing one) keeps the first and deletes the duplicate
    key = mlflow.get_model_version(name, "1").tags[REGISTRATION_KEY_TAG]
    mlflow.create_model_version(name, mlflow.get_model_version(name, "1").source, run_id=run,
                                tags={REGISTRATION_KEY_TAG: key})
    row.runs += 1
    assert register_model(store, name, merged, run_id=run, tags=tags) == "1"
    assert [v.version for v in _live_versions(mlflow, name)] == ["1"]

    # a new export (a new marker) of the same run is a new model, not a retry
    (merged / "model.safetensors").write_bytes(os.urandom(64))
    mark_complete(merged)
    assert register_model(store, name, merged, run_id=run, tags=tags) == "3"
    # ... and another pipeline run registering the same export is its own version too
    assert register_model(store, name, merged, run_id=run, tags={**tags, "kfp_run_id": "kfp-2"}) == "4"
    row.data_lost = len(_live_versions(mlflow, name)) - 3  # duplicate versions left behind
    row.detail = "duplicates counted as lost"
    assert row.data_lost == 0


@pytest.mark.chaos
def test_register_killed_mid_upload_then_retried(chaos_row: Any, store: str, backend: str, tmp_path: Path,
                                                 unique: str) -> None:
    row = chaos_row(f"register killed mid-upload (SIGKILL), retried ({backend} store)")
    mlflow, name = _client(store), f"killed-upload-{unique}"
    run = _run(mlflow, f"faults-{unique}")
    merged = _export_dir(tmp_path, "merged", size=48 * 1024**2)  # big enough to be killed on its way up
    tags = {"kfp_run_id": "kfp-kill"}

    worker = Worker().ready()
    try:
        row.runs += 1
        worker.send(op="register", uri=store, name=name, model=str(merged), run_id=run, tags=tags)
        deadline = time.monotonic() + 60
        while not any(k.startswith("kubetune.registration_upload.") for k in mlflow.get_run(run).data.tags):
            assert time.monotonic() < deadline, "the worker never reserved its upload folder"
            time.sleep(0.02)
        time.sleep(0.1)  # the upload is under way
    finally:
        worker.kill()
    killed_before_version = _live_versions(mlflow, name) == []

    row.runs += 1
    version = register_model(store, name, merged, run_id=run, tags=tags)  # the KFP retry
    live = _live_versions(mlflow, name)
    assert [v.version for v in live] == [version]
    uploaded = {a.path: a.file_size for a in mlflow.list_artifacts(run, "model")}
    expected = {f"model/{p.name}": p.stat().st_size for p in merged.iterdir()}
    assert [a.path for a in mlflow.list_artifacts(run)] == ["model"]  # the retry reused the killed upload's folder
    row.detail = "killed before its version" if killed_before_version else "killed after its version"
    row.data_lost = len(live) - 1 + sum(uploaded.get(path) != size for path, size in expected.items())
    assert row.data_lost == 0


# --- racing promotions -----------------------------------------------------------------------------------


def _is_alias_write(method: str, path: str) -> bool:
    return method == "POST" and path.split("?")[0].endswith("/registered-models/alias")


class ThisProcess:
    """A racer in the test's own process (a thread), with a `Worker`'s send/answer: one mlflow import fewer."""

    def __init__(self) -> None:
        self._answer: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    def ready(self) -> ThisProcess:
        return self

    def send(self, **command: Any) -> None:
        from registry_worker import OPS

        def run() -> None:
            try:
                self._answer = OPS[command["op"]](command)
            except Exception as err:  # as the worker answers
                self._answer = {"error": f"{type(err).__name__}: {err}"}

        self._thread = threading.Thread(target=run)
        self._thread.start()

    def answer(self) -> dict[str, Any]:
        assert self._thread is not None
        self._thread.join(timeout=120)
        return self._answer

    def close(self) -> None:
        pass


class Racers:
    """Two processes promoting versions of one model at the same instant (started once, raced often).

    Args:
        in_process (`bool`): the first racer is the test's own process, the second a `Worker`; else both are
            workers.
    """

    def __init__(self, store: str, name: str, run: str, tmp_path: Path, row: Any, in_process: bool = False) -> None:
        self.store, self.name, self.run, self.tmp_path, self.row = store, name, run, tmp_path, row
        self.workers: list[Any] = [ThisProcess() if in_process else Worker(), Worker()]
        for worker in self.workers:
            worker.ready()

    def version(self, value: float) -> str:
        """A complete export registered with its gate value, as the pipeline's register step tags it."""
        folder = _export_dir(self.tmp_path, f"m{value}-{len(list(self.tmp_path.iterdir()))}")
        return register_model(self.store, self.name, folder, run_id=self.run,
                              tags={"gate_metric": "rouge", "gate_metric_value": repr(value)})

    def race(self, *entries: tuple[str, float, str]) -> list[dict[str, Any]]:
        """Send each worker its (version, value, tracking URI) back to back; their answers."""
        self.row.runs += len(entries)
        for worker, (version, value, uri) in zip(self.workers, entries, strict=True):
            worker.send(op="promote", uri=uri, name=self.name, version=version, metric="rouge", value=value)
        answers = [worker.answer() for worker in self.workers]
        assert all("error" not in a for a in answers), answers
        return answers

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@pytest.mark.chaos
def test_two_racing_promotions_leave_the_better_model_champion(chaos_row: Any, store: str, backend: str,
                                                               tmp_path: Path, unique: str) -> None:
    row = chaos_row(f"two promotions race for champion, the worse write lands last ({backend} store)")
    mlflow, name = _client(store), f"race-{unique}"
    racers = Racers(store, name, _run(mlflow, f"faults-{unique}"), tmp_path, row, in_process=True)
    try:
        old = racers.version(50.0)
        promote(store, name, old, "rouge")
        better, worse = racers.version(60.0), racers.version(55.0)
        # both read v1 as champion; the better racer's alias write lands after 1 s, the worse one's (stale:
        # judged against v1) after 3 s, when the better one has finished: the write a plain read-then-set
        # loses to. Only each racer's first alias write is held back.
        with (DelayProxy(store, 1.0, _is_alias_write, times=1) as fast,
              DelayProxy(store, 3.0, _is_alias_write, times=1) as slow):
            won, lost = racers.race((better, 60.0, fast.url), (worse, 55.0, slow.url))
            assert slow.delayed and fast.delayed
    finally:
        racers.close()
    assert f"vs champion v{old}" in lost["reason"], "the worse racer must have judged the stale champion"
    assert (won["promoted"], lost["promoted"], lost["alias"]) == (True, False, CHALLENGER)
    assert "claimed champion at the same time" in lost["reason"]
    assert alias_version(mlflow, name, CHALLENGER) == worse
    assert mlflow.get_model_version(name, worse).tags["promotion_decision"] == CHALLENGER
    champion = alias_version(mlflow, name, CHAMPION)
    row.data_lost = int(champion != better)  # a worse champion serving: what the user loses
    row.detail = "a worse champion counted as lost"
    assert champion == better and row.data_lost == 0


@pytest.mark.chaos
@pytest.mark.slow
def test_simultaneous_promotions_round_after_round(chaos_row: Any, store: str, backend: str, tmp_path: Path,
                                                   unique: str) -> None:
    row = chaos_row(f"two promotions race for champion, 6 rounds at once ({backend} store)")
    mlflow, name = _client(store), f"rounds-{unique}"
    racers = Racers(store, name, _run(mlflow, f"faults-{unique}"), tmp_path, row)
    wrong = 0
    try:
        promote(store, name, racers.version(10.0), "rouge")
        # each round both beat the champion; the better one is sent first, then second, in turn
        for n in range(6):
            low, high = 20.0 + 10 * n, 25.0 + 10 * n
            pair = [(racers.version(v), v, store) for v in ((high, low) if n % 2 else (low, high))]
            racers.race(*pair)
            best = max(pair, key=lambda entry: entry[1])[0]
            wrong += alias_version(mlflow, name, CHAMPION) != best
    finally:
        racers.close()
    row.data_lost = wrong  # rounds that ended with the worse racer as champion
    row.detail = "a worse champion counted as lost"
    assert row.data_lost == 0
