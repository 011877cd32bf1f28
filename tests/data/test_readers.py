"""Reading rows from json, jsonl, csv, parquet, txt and folders, with row numbers that point into the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubetune.data.readers import BadRow, first_row, read_file, read_folder, read_rows, take
from kubetune.data.registry import DataError, DatasetAttr


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_json_list_and_object_holding_one_list(tmp_path: Path) -> None:
    rows = [{"instruction": "a"}, {"instruction": "b"}]
    listed = read_file(write(tmp_path / "list.json", json.dumps(rows)))
    wrapped = read_file(write(tmp_path / "wrapped.json", json.dumps({"version": 2, "data": rows})))
    for result, name in ((listed, "list.json"), (wrapped, "wrapped.json")):
        assert result.rows == rows
        assert result.origins == [(str(tmp_path / name), 0), (str(tmp_path / name), 1)]
        assert result.bad_rows == []


@pytest.mark.parametrize(("content", "message"), [
    ({"a": [], "b": []}, "the object has 2 list-valued keys (a, b)"),
    ({"a": 1}, "the object has 0 list-valued keys (none)"),
    ("rows", "expected a list of rows, got a JSON string"),
])
def test_json_without_one_list_of_rows(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        read_file(write(tmp_path / "x.json", json.dumps(content)))


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.json", '[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    with pytest.raises(DataError) as err:
        read_file(path)
    assert str(err.value) == (
        f"{path} is not valid JSON: Expecting property name enclosed in double quotes at line 3, column 11.")


def test_json_lines_saved_as_json_are_read_as_jsonl(tmp_path: Path) -> None:
    result = read_file(write(tmp_path / "lines.json", '{"a": 1}\n{"a": 2}\n'))
    assert result.rows == [{"a": 1}, {"a": 2}]


def test_jsonl_bad_line_is_skipped_and_reported_with_its_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.jsonl", '{"a": 1}\n\n{"a": 2\n{"a": 3}\n[1, 2]\n')
    result = read_file(path)
    # The blank line is skipped but counted: row numbers are line indices.
    assert result.rows == [{"a": 1}, {"a": 3}, [1, 2]]
    assert [row for _, row in result.origins] == [0, 3, 4]
    assert result.bad_rows == [
        BadRow(2, "line 3 is not valid JSON: Expecting ',' delimiter (column 8)", str(path))]


def test_csv_rows_and_a_ragged_line(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", 'instruction,output\nhi,"hello, you"\nonly-one\na,b,c\nq,r\n')
    result = read_file(path)
    assert result.rows == [{"instruction": "hi", "output": "hello, you"}, {"instruction": "q", "output": "r"}]
    assert [row for _, row in result.origins] == [0, 3]
    assert result.bad_rows == [
        BadRow(1, "line 3: 1 cells, the header has 2", str(path)),
        BadRow(2, "line 4: 3 cells, the header has 2", str(path)),
    ]


def test_parquet_with_nested_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "n": 1},
            {"conversations": [], "n": 2}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    assert read_file(tmp_path / "rows.parquet").rows == rows


def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a readable parquet file"):
        read_file(write(tmp_path / "bad.parquet", "not parquet"))


def test_txt_is_one_row_per_non_blank_line(tmp_path: Path) -> None:
    result = read_file(write(tmp_path / "corpus.txt", "first line\n\n  \nsecond line\r\n"))
    assert result.rows == [{"text": "first line"}, {"text": "second line"}]
    assert [row for _, row in result.origins] == [0, 3]


def test_unsupported_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read .xlsx files; use one of .json, .jsonl, .csv, .parquet"):
        read_file(write(tmp_path / "rows.xlsx", ""))
    with pytest.raises(DataError, match="does not exist"):
        read_file(tmp_path / "nope.json")
    # a line of a line-based file that is not UTF-8 is one bad row (tests/data/test_hostile_rows.py); a .json
    # file is parsed whole, so there it is fatal, naming the byte and its line
    (tmp_path / "latin.txt").write_bytes("café\n".encode("latin-1"))
    assert read_file(tmp_path / "latin.txt").bad_rows == [
        BadRow(0, "line 1 is not UTF-8 text (byte 0xe9 at column 4)", str(tmp_path / "latin.txt"))]
    (tmp_path / "latin.json").write_bytes('[{"a": "café"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 0xe9 on line 1\)"):
        read_file(tmp_path / "latin.json")


def test_folder_reads_files_in_sorted_order_and_ignores_hidden_and_docs(tmp_path: Path) -> None:
    write(tmp_path / "ds/b.jsonl", '{"i": 2}\n')
    write(tmp_path / "ds/a.jsonl", '{"i": 1}\n')
    write(tmp_path / "ds/sub/c.jsonl", '{"i": 3}\n')
    write(tmp_path / "ds/.cache/x.jsonl", '{"i": 99}\n')
    write(tmp_path / "ds/README.md", "# docs")
    result = read_folder(tmp_path / "ds")
    assert result.rows == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert [Path(src).name for src, _ in result.origins] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert result.source == str(tmp_path / "ds")


def test_folder_split_selects_files_named_after_it(tmp_path: Path) -> None:
    write(tmp_path / "hub/data/train-00000-of-00002.jsonl", '{"s": "train0"}\n')
    write(tmp_path / "hub/data/train-00001-of-00002.jsonl", '{"s": "train1"}\n')
    write(tmp_path / "hub/data/test-00000-of-00001.jsonl", '{"s": "test"}\n')
    assert [r["s"] for r in read_folder(tmp_path / "hub").rows] == ["train0", "train1"]
    assert [r["s"] for r in read_folder(tmp_path / "hub", "test").rows] == ["test"]
    with pytest.raises(DataError, match="has no files for split 'validation'"):
        read_folder(tmp_path / "hub", "validation")


def test_folder_problems(tmp_path: Path) -> None:
    write(tmp_path / "mixed/a.json", "[]")
    write(tmp_path / "mixed/b.parquet", "")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"mixes file types \(.json, .parquet\)"):
        read_folder(tmp_path / "mixed")
    with pytest.raises(DataError, match="has no readable data files"):
        read_folder(tmp_path / "empty")


def test_read_rows_joins_dataset_dir_and_checks_the_split(tmp_path: Path) -> None:
    write(tmp_path / "rows.json", '[{"a": 1}]')
    assert read_rows(DatasetAttr(name="d", path="rows.json"), tmp_path).rows == [{"a": 1}]
    with pytest.raises(DataError, match="split 'test' was asked for, but .* is a single file"):
        read_rows(DatasetAttr(name="d", path="rows.json", split="test"), tmp_path)
    with pytest.raises(DataError, match=r"Dataset 'd': .*gone.json does not exist"):
        read_rows(DatasetAttr(name="d", path="gone.json"), tmp_path)


def test_s3_datasets_are_read_through_storage_localize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = pytest.importorskip("kubetune.storage")
    if not hasattr(storage, "localize"):
        pytest.skip("kubetune.storage.localize is not written yet")
    local = write(tmp_path / "cache/bucket/rows.jsonl", '{"a": 1}\n')
    fetched = []

    def fake_localize(uri: str) -> Path:
        fetched.append(uri)
        if uri.endswith("missing.jsonl"):
            raise FileNotFoundError(f"{uri}: no such object")
        return local

    monkeypatch.setattr(storage, "localize", fake_localize)
    attr = DatasetAttr(name="remote", path="s3://bucket/rows.jsonl", load_from="cloud_file")
    assert read_rows(attr).rows == [{"a": 1}]
    assert fetched == ["s3://bucket/rows.jsonl"]
    missing = DatasetAttr(name="remote", path="s3://bucket/missing.jsonl", load_from="cloud_file")
    with pytest.raises(DataError, match="Dataset 'remote': s3://bucket/missing.jsonl: no such object"):
        read_rows(missing)


def test_take_first_n_or_seeded_sample() -> None:
    items = list(range(10))
    assert take(items, None) == items
    assert take(items, 3) == [0, 1, 2]
    assert take(items, 50) == items
    sampled = take(items, 4, seed=7)
    assert sampled == take(items, 4, seed=7)
    assert len(set(sampled)) == 4 and sampled != [0, 1, 2, 3]
    assert take(items, 4, seed=8) != sampled


def test_take_keeps_rows_and_origins_paired_in_a_read_result(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.jsonl", "".join(f'{{"i": {i}}}\n' for i in range(6)) + "{bad\n")
    taken = take(read_file(path), 3, seed=1)
    assert [(row["i"], origin[1]) for row, origin in zip(taken.rows, taken.origins, strict=True)] == [
        (row["i"], row["i"]) for row in taken.rows]
    assert len(taken.rows) == 3 and taken.source == str(path)
    assert [b.row for b in taken.bad_rows] == [6]


def test_first_row_reads_only_as_far_as_the_first_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = tmp_path / "list.json"  # the rest of the file is never parsed: its broken tail does not matter
    listed.write_text('[\n  {"chosen": "a", "rejected": "b"},\n  {"broken": ' + "x" * 200_000)
    assert first_row(listed) == {"chosen": "a", "rejected": "b"}
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"instruction": "q"}]}))
    assert first_row(wrapped) == {"instruction": "q"}
    lines = tmp_path / "rows.jsonl"
    lines.write_text('\nnot json\n{"kto_tag": true}\n{"broken": ')
    assert first_row(lines) == {"kto_tag": True}
    table = tmp_path / "rows.csv"
    table.write_text("instruction,output\nq,a\n")
    assert first_row(table) == {"instruction": "q", "output": "a"}
    pq.write_table(pa.table({"chosen": ["a", "c"], "rejected": ["b", "d"]}), tmp_path / "pairs.parquet")
    assert first_row(tmp_path / "pairs.parquet") == {"chosen": "a", "rejected": "b"}
    assert first_row(tmp_path / "missing.jsonl") is None
    (tmp_path / "empty.json").write_text("[]")
    assert first_row(tmp_path / "empty.json") is None


def test_take_with_repeat_uses_every_row_then_draws_more_as_num_samples_does() -> None:
    items = list(range(4))
    upsampled = take(items, 10, seed=3, repeat=True)
    assert len(upsampled) == 10 and sorted(upsampled[:4]) == items  # every row once, then repeats
    assert upsampled == take(items, 10, seed=3, repeat=True)
    assert take(items, 10, seed=3) == take(items, 4, seed=3)  # without repeat: at most all rows
    assert sorted(take(items, 2, seed=3, repeat=True)) == sorted(take(items, 2, seed=3))


@pytest.mark.s3
def test_a_cloud_file_name_entry_is_read_from_s3(tmp_path: Path, bucket: str, client) -> None:
    """dataset_info.json's cloud_file_name (and an s3:// file_name) read through kubetune.storage, here
    against a real S3 API (moto_server)."""
    from kubetune.data.registry import resolve_datasets

    client.put_object(Bucket=bucket, Key="sets/rows.jsonl", Body=b'{"instruction": "q", "output": "a"}\n')
    write(tmp_path / "dataset_info.json", json.dumps({
        "cloud": {"cloud_file_name": f"s3://{bucket}/sets/rows.jsonl"},
        "gone": {"cloud_file_name": f"s3://{bucket}/sets/missing.jsonl"}}))
    attr, gone = resolve_datasets("cloud,gone", tmp_path)
    assert (attr.load_from, attr.path) == ("cloud_file", f"s3://{bucket}/sets/rows.jsonl")
    assert read_rows(attr, tmp_path).rows == [{"instruction": "q", "output": "a"}]
    with pytest.raises(DataError, match=f"Dataset 'gone': .*s3://{bucket}/sets/missing.jsonl"):
        read_rows(gone, tmp_path)
