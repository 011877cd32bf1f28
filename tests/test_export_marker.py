"""The export's completion marker: written last by `kubetune export`, checked before anything registers it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.export_marker import EXPORT_MARKER, IncompleteExportError, clear_marker, mark_complete, require_complete


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "merged"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 32)
    (folder / "sub" / "extra.json").write_text("{}")
    return folder


def test_the_marker_lists_every_file_and_identifies_the_export(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    manifest = mark_complete(folder)
    assert manifest["files"] == {"model.safetensors": 32, "sub/extra.json": 2}
    assert json.loads((folder / EXPORT_MARKER).read_text()) == manifest
    assert require_complete(folder) == manifest["export_id"]
    assert mark_complete(folder)["export_id"] != manifest["export_id"]  # a new export is a new model
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_an_unfinished_or_changed_export_is_refused_naming_the_path(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(IncompleteExportError, match=f"{folder} has no {EXPORT_MARKER} marker.*Rerun the export"):
        require_complete(folder)
    mark_complete(folder)
    (folder / "sub" / "extra.json").unlink()
    with pytest.raises(IncompleteExportError, match="sub/extra.json is missing"):
        require_complete(folder)
    (folder / EXPORT_MARKER).write_text("not json")
    with pytest.raises(IncompleteExportError, match="not the manifest"):
        require_complete(folder)
    clear_marker(folder)
    assert not (folder / EXPORT_MARKER).exists()
    clear_marker(folder)  # none there: no error


def test_what_has_nothing_to_check(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / EXPORT_MARKER).write_text("")  # S3's empty marker, carried into a local copy
    assert require_complete(folder) == ""
    assert require_complete(folder / "model.safetensors") == ""  # a single file is whole
    assert require_complete("runs:/abc/model") == "" and require_complete("mlflow-artifacts:/1/x") == ""
    with pytest.raises(FileNotFoundError, match="nowhere"):
        require_complete(tmp_path / "nowhere")


def test_export_writes_the_marker_last_and_removes_a_stale_one(tiny_model_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import PreTrainedTokenizerBase

    from kubetune.config import load_config
    from kubetune.export import export

    out = tmp_path / "merged"
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "export_dir": str(out)})
    export(cfg)
    manifest = json.loads((out / EXPORT_MARKER).read_text())
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != EXPORT_MARKER}
    assert set(manifest["files"]) == written and "tokenizer.json" in written
    assert (out / EXPORT_MARKER).stat().st_mtime_ns >= max((out / f).stat().st_mtime_ns for f in written)

    def disk_full(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ARG001
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export(cfg)  # the second export dies after the weights, before the tokenizer
    assert not (out / EXPORT_MARKER).exists()  # the first export's marker no longer vouches for the folder
    with pytest.raises(IncompleteExportError):
        require_complete(out)
