"""Hub datasets load where the hub answers and fail clearly where it does not: an `hf_hub_url` entry with no local
copy, `dataset_dir: REMOTE:<repo>` (dataset_info.json and the files it names) and `dataset_dir: ONLINE`.

No hub is reachable here: `tests/hub_server.py` is a stand-in for the Hugging Face Hub's file API, serving repos
from folders this test writes, and huggingface_hub itself does the downloading against it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import start_hub

from kubetune.config import load_config
from kubetune.data.readers import read_rows
from kubetune.data.registry import DataError, resolve_datasets
from kubetune.validate.preflight import preflight, purpose

ROWS = [{"instruction": f"Name the number after {i}.", "output": str(i + 1)} for i in range(3)]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Two repos on the stand-in hub, and kubetune's cache and huggingface_hub pointed at it (online)."""
    demo = tmp_path / "repos" / "demo"
    (demo / "rows").mkdir(parents=True)
    (demo / "rows" / "train.json").write_text(json.dumps(ROWS))
    (demo / "unused.json").write_text("[]")
    (demo / "dataset_info.json").write_text(json.dumps({
        "counting": {"file_name": "rows/train.json"},
        "counting_hub": {"hf_hub_url": "org/plain", "folder": "data"}}))
    plain = tmp_path / "repos" / "plain" / "data"
    plain.mkdir(parents=True)
    (plain / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[:2]))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with start_hub({"org/demo": demo, "org/plain": plain.parent}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_an_hf_hub_url_entry_without_a_local_copy_downloads_its_folder(hub, tmp_path: Path) -> None:
    info = tmp_path / "info"
    info.mkdir()
    (info / "dataset_info.json").write_text(json.dumps({"two": {"hf_hub_url": "org/plain", "folder": "data"}}))
    (attr,) = resolve_datasets("two", info)
    assert attr.hub_url == "org/plain" and Path(attr.path).is_relative_to(tmp_path / "cache" / "hub")
    assert read_rows(attr, info).rows == ROWS[:2]


def test_remote_dataset_dir_reads_the_repos_dataset_info_and_only_the_files_it_needs(hub, tiny_model_dir: Path,
                                                                                    tmp_path: Path) -> None:
    counting, counting_hub = resolve_datasets("counting,counting_hub", "REMOTE:org/demo")
    assert read_rows(counting, "REMOTE:org/demo").rows == ROWS
    assert read_rows(counting_hub, "REMOTE:org/demo").rows == ROWS[:2]
    fetched = [r.split("/resolve/", 1)[1] for r in hub.requests if r.startswith("GET /datasets/org/demo/resolve/")]
    assert sorted(f.split("/", 1)[1] for f in fetched) == ["dataset_info.json", "rows/train.json"]  # not unused.json
    # a whole config passes preflight (which reads the rows) against it, as LLaMA-Factory's Ray example's does
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "dataset": "counting,counting_hub",
                             "dataset_dir": "REMOTE:org/demo", "template": "chatml",
                             "output_dir": str(tmp_path / "out")})
    preflight(cfg, purpose(cfg))


def test_online_reads_each_name_as_a_hub_repo(hub) -> None:
    with pytest.raises(DataError, match=r"has no dataset repo 'org/missing'"):
        resolve_datasets("org/missing", "ONLINE")
    (attr,) = resolve_datasets("org/plain", "ONLINE")
    assert read_rows(attr, "ONLINE").rows == ROWS[:2]


def test_a_missing_repo_and_an_unreachable_hub_say_which_repo_and_what_to_do(hub, monkeypatch) -> None:
    with pytest.raises(DataError, match=r"has no dataset repo 'org/nothing'.*HF_TOKEN"):
        resolve_datasets("x", "REMOTE:org/nothing")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError, match=r"repo 'org/demo', and the hub is not reachable from here: "
                                        r"http://127\.0\.0\.1:9 did not answer.*Download that repo"):
        resolve_datasets("counting", "REMOTE:org/demo")


def test_offline_mode_asks_nothing_of_the_hub(hub, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"not reachable from here \(HF_HUB_OFFLINE=1 is set\)"):
        resolve_datasets("org/plain", "ONLINE")
    assert hub.requests == []
