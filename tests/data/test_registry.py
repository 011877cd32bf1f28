"""dataset_info.json → DatasetAttr: names, paths, s3 URIs, hub-only entries, and the errors people see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.data.registry import Columns, DataError, Tags, did_you_mean, resolve_datasets

INFO = {
    "alpaca_demo": {"file_name": "alpaca.json"},
    "chat_demo": {
        "file_name": "chat.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "system": "system_prompt"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"},
    },
    "pref_demo": {"file_name": "pref.json", "ranking": True, "num_samples": 5,
                  "columns": {"chosen": "good", "rejected": "bad"}},
    "remote_demo": {"file_name": "s3://bucket/data/train.jsonl"},
    "cloud_demo": {"cloud_file_name": "s3://bucket/folder/"},
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "dataset_info.json").write_text(json.dumps(INFO, indent=2))
    for name in ("alpaca.json", "chat.jsonl", "pref.json"):
        (tmp_path / name).write_text("[]")
    return tmp_path


def write_info(folder: Path, info: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def test_comma_separated_names_resolve_in_order_with_entry_settings(data_dir: Path) -> None:
    alpaca, chat, pref = resolve_datasets(" alpaca_demo, chat_demo,pref_demo ,", data_dir)

    assert (alpaca.name, alpaca.path, alpaca.load_from, alpaca.formatting) == (
        "alpaca_demo", "alpaca.json", "file", "alpaca")
    assert alpaca.columns == Columns() and alpaca.split == "train" and not alpaca.ranking
    assert alpaca.local_path(data_dir) == data_dir / "alpaca.json"
    assert alpaca.origin == str(data_dir / "dataset_info.json")

    assert chat.formatting == "sharegpt"
    assert chat.columns.messages == "messages" and chat.columns.system == "system_prompt"
    assert chat.tags == Tags(role_tag="role", content_tag="content", user_tag="user",
                             assistant_tag="assistant")

    assert pref.ranking and pref.num_samples == 5
    assert (pref.columns.chosen, pref.columns.rejected, pref.columns.prompt) == ("good", "bad", "instruction")


def test_list_of_names_and_empty_names(data_dir: Path) -> None:
    names = ["pref_demo", "alpaca_demo"]
    assert [a.name for a in resolve_datasets(names, data_dir)] == names
    assert resolve_datasets(None, data_dir) == []
    assert resolve_datasets(" , ", data_dir) == []


def test_s3_uris_are_kept_for_the_reader(data_dir: Path) -> None:
    remote, cloud, direct = resolve_datasets("remote_demo,cloud_demo,s3://other/rows.json", data_dir)
    assert (remote.load_from, remote.path, remote.is_remote) == (
        "cloud_file", "s3://bucket/data/train.jsonl", True)
    assert (cloud.load_from, cloud.path) == ("cloud_file", "s3://bucket/folder/")
    assert (direct.load_from, direct.path, direct.formatting) == (
        "cloud_file", "s3://other/rows.json", "auto")


def test_other_remote_schemes_are_refused(tmp_path: Path) -> None:
    write_info(tmp_path, {"gcs": {"file_name": "gs://bucket/x.json"}})
    with pytest.raises(DataError, match=r"gs://bucket/x.json — only s3:// URIs are supported"):
        resolve_datasets("gcs", tmp_path)


def test_unknown_name_names_the_file_the_known_names_and_a_guess(data_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        resolve_datasets("alpaca_demo,alpaca_dmeo", data_dir)
    message = str(err.value)
    assert f"Dataset 'alpaca_dmeo' is not in {data_dir / 'dataset_info.json'}." in message
    assert "Did you mean 'alpaca_demo'?" in message
    assert "Known datasets: alpaca_demo, chat_demo, cloud_demo, pref_demo, remote_demo." in message


def test_unknown_name_without_a_close_match_has_no_guess(data_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        resolve_datasets("zzzzzz", data_dir)
    assert "Did you mean" not in str(err.value)


def test_missing_dataset_info_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not a file, and .*dataset_info.json does not exist"):
        resolve_datasets("kubi_sft", tmp_path / "nowhere")


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text('{\n  "a": {"file_name": "a.json"}\n  "b": {}\n}\n')
    with pytest.raises(DataError) as err:
        resolve_datasets("a", tmp_path)
    assert str(err.value) == (f"{tmp_path / 'dataset_info.json'} is not valid JSON: "
                              f"Expecting ',' delimiter at line 3, column 3.")


def test_dataset_info_must_be_an_object(tmp_path: Path) -> None:
    write_info(tmp_path, ["a"])
    with pytest.raises(DataError, match="must be a JSON object mapping dataset names to entries, got a list"):
        resolve_datasets("a", tmp_path)


def test_every_problem_in_an_entry_is_listed_once_with_guesses(tmp_path: Path) -> None:
    write_info(tmp_path, {"bad": {
        "file_name": "x.json", "colums": {}, "ranking": "yes", "num_samples": 0, "formatting": "openai",
    }, "bad_cols": {"file_name": "x.json", "columns": {"promt": "q"}, "tags": {"role": "r", "user_tag": 1}}})
    with pytest.raises(DataError) as err:
        resolve_datasets("bad", tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{tmp_path / 'dataset_info.json'}, dataset 'bad':"
    assert lines[1].startswith("  - unknown key 'colums'. Did you mean 'columns'? Allowed: file_name, ")
    assert lines[2:] == [
        "  - formatting must be 'alpaca' or 'sharegpt', got 'openai'",
        "  - ranking must be true or false, got 'yes'",
        "  - num_samples must be a positive integer, got 0",
    ]
    with pytest.raises(DataError) as err:
        resolve_datasets("bad_cols", tmp_path)
    message = str(err.value)
    assert "unknown columns key 'promt'. Did you mean 'prompt'?" in message
    assert "unknown tags key 'role'. Did you mean 'role_tag'?" in message
    assert "tags.user_tag must be a string, got 1" in message


def test_entry_without_a_source_or_with_a_missing_file(tmp_path: Path) -> None:
    write_info(tmp_path, {"nosrc": {"formatting": "alpaca"}, "gone": {"file_name": "gone.json"}})
    with pytest.raises(DataError, match="no data source: give one of file_name, hf_hub_url"):
        resolve_datasets("nosrc", tmp_path)
    with pytest.raises(DataError, match=r"'gone': file_name 'gone.json' does not exist \(looked for "):
        resolve_datasets("gone", tmp_path)


def test_hub_only_entry_explains_how_to_get_a_local_copy(tmp_path: Path) -> None:
    write_info(tmp_path, {"alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"},
                          "ms": {"ms_hub_url": "AI-ModelScope/alpaca"}})
    with pytest.raises(DataError) as err:
        resolve_datasets("alpaca_en", tmp_path)
    message = str(err.value)
    assert ("hf_hub_url 'llamafactory/alpaca_en' is on the Hugging Face Hub, which is not reachable from here"
            in message)
    target = tmp_path / "llamafactory/alpaca_en"
    assert f"hf download llamafactory/alpaca_en --repo-type dataset --local-dir {target}" in message
    assert '"file_name": "s3://<bucket>/<key>"' in message
    with pytest.raises(DataError, match="ModelScope Hub.*modelscope download --dataset AI-ModelScope/alpaca"):
        resolve_datasets("ms", tmp_path)


def test_hub_entry_uses_a_local_copy_when_there_is_one(tmp_path: Path) -> None:
    write_info(tmp_path, {
        "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "folder": "data"},
        "with_file": {"hf_hub_url": "org/ds", "file_name": "copy.jsonl"},
    })
    (tmp_path / "llamafactory/alpaca_en/data").mkdir(parents=True)
    (tmp_path / "copy.jsonl").write_text("")
    hub, with_file = resolve_datasets("alpaca_en,with_file", tmp_path)
    assert (hub.path, hub.load_from, hub.hub_url) == (
        "llamafactory/alpaca_en/data", "file", "llamafactory/alpaca_en")
    assert (with_file.path, with_file.hub_url) == ("copy.jsonl", "org/ds")


def test_script_url_needs_a_folder_of_data_files(tmp_path: Path) -> None:
    write_info(tmp_path, {"scripted": {"script_url": "scripted"}})
    (tmp_path / "scripted").mkdir()
    (tmp_path / "scripted/scripted.py").write_text("")
    with pytest.raises(DataError, match="needs a dataset loading script, which `datasets` no longer runs"):
        resolve_datasets("scripted", tmp_path)
    (tmp_path / "scripted/train.jsonl").write_text("")
    assert resolve_datasets("scripted", tmp_path)[0].path == "scripted"


def test_a_file_path_works_as_a_name_and_its_format_is_detected_later(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "rows.jsonl"
    outside.parent.mkdir()
    outside.write_text("")
    by_path, in_dir = resolve_datasets([str(outside), "alpaca.json"], data_dir)
    assert (by_path.path, by_path.formatting, by_path.origin) == (str(outside), "auto", "path")
    # A registered name wins over a file of the same name; an unregistered file in dataset_dir is found there.
    assert in_dir.path == str((data_dir / "alpaca.json").absolute())


def test_a_registered_name_wins_over_a_file_with_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_info(tmp_path / "d", {"rows.json": {"file_name": "real.json", "formatting": "sharegpt"}})
    (tmp_path / "d/real.json").write_text("[]")
    (tmp_path / "rows.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    attr = resolve_datasets("rows.json", tmp_path / "d")[0]
    assert (attr.path, attr.formatting) == ("real.json", "sharegpt")


def test_a_path_like_name_that_does_not_exist_says_so(data_dir: Path) -> None:
    message = r"Dataset 'missing/rows.jsonl': no readable file or folder at missing/rows.jsonl"
    with pytest.raises(DataError, match=message):
        resolve_datasets("missing/rows.jsonl", data_dir)


def test_data_path_is_a_json_or_jsonl_file_used_directly(data_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "train.jsonl"
    rows.write_text("")
    attrs = resolve_datasets("alpaca_demo", data_dir, data_path=str(rows))
    assert [(a.name, a.formatting, a.origin) for a in attrs] == [
        ("alpaca_demo", "alpaca", str(data_dir / "dataset_info.json")), (str(rows), "auto", "data_path")]
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(DataError, match="must be a .json or .jsonl file"):
        resolve_datasets(None, data_dir, data_path=str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="is not a file"):
        resolve_datasets(None, data_dir, data_path=str(tmp_path / "nope.json"))


def test_did_you_mean() -> None:
    assert did_you_mean("kubi_stf", ["kubi_sft", "kubi_pt"]) == " Did you mean 'kubi_sft'?"
    assert did_you_mean("xyz", ["kubi_sft"]) == ""


def test_multimodal_columns_are_refused_not_ignored(tmp_path: Path) -> None:
    write_info(tmp_path, {"mm": {"file_name": "mm.json", "formatting": "sharegpt",
                                 "columns": {"messages": "messages", "images": "images", "videos": "clips"}}})
    (tmp_path / "mm.json").write_text("[]")
    with pytest.raises(DataError, match=r"columns images, videos: multimodal models are not supported yet; "
                                        r"train on a text-only dataset, or remove columns.images, columns.videos"):
        resolve_datasets("mm", tmp_path)


def test_a_hub_copy_reads_the_subset_folder_and_says_when_there_is_none(tmp_path: Path) -> None:
    write_info(tmp_path, {"en": {"hf_hub_url": "org/multi", "subset": "en"},
                          "nested": {"hf_hub_url": "org/multi", "subset": "de"},
                          "fr": {"hf_hub_url": "org/multi", "subset": "fr"}})
    (tmp_path / "org/multi/en").mkdir(parents=True)
    (tmp_path / "org/multi/data/de").mkdir(parents=True)
    en, de = resolve_datasets("en,nested", tmp_path)
    assert (en.path, en.subset, de.path) == ("org/multi/en", "en", "org/multi/data/de")
    with pytest.raises(DataError, match=r"subset 'fr' was asked for, but the local copy .*org/multi has no folder "
                                        r"'fr' \(nor data/fr\)\. Point file_name at that subset's files"):
        resolve_datasets("fr", tmp_path)


def test_llama_factorys_hub_dataset_dirs_say_what_to_download_when_offline() -> None:
    with pytest.raises(DataError, match=r"dataset repo 'llamafactory/demo_data', and the hub is not reachable from "
                                        r"here: HF_HUB_OFFLINE=1 is set\. Download that repo"):
        resolve_datasets("identity", "REMOTE:llamafactory/demo_data")
    with pytest.raises(DataError, match=r"hf_hub_url 'llamafactory/alpaca_en' is on the Hugging Face Hub, which is "
                                        r"not reachable from here \(HF_HUB_OFFLINE=1 is set\)"):
        resolve_datasets("llamafactory/alpaca_en", "ONLINE")
    assert resolve_datasets("s3://bucket/rows.jsonl", "ONLINE")[0].load_from == "cloud_file"  # no hub needed
