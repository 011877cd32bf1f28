"""Hostile dataset rows: each bad row counted, reported with its file and line, dropped or fatal by `on_bad_rows`.

Malformed JSON lines, wrong types, 10 MB rows, bytes that are not UTF-8, empty files, prompt-only rows and
duplicate keys, in JSONL, JSON, CSV, txt and parquet files. The good rows around them all survive, and
preprocessing a file of 10 MB rows keeps its memory bounded (peak RSS measured in a subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.data.converters import convert
from kubetune.data.readers import MAX_ROW_BYTES, read_file
from kubetune.data.registry import DataError, resolve_datasets

REPO = Path(__file__).resolve().parents[2]
GOOD = {"instruction": "hi", "output": "there"}
HUGE = "word " * (2 << 20)  # 10 MiB


def _attr(path: Path):
    return resolve_datasets([str(path)], str(path.parent))[0]


def _hostile_jsonl(path: Path) -> tuple[int, dict[int, str]]:
    """A JSONL of good rows and every kind of bad one: (good row count, {line: what the reason must say})."""
    lines: list[bytes] = []
    bad: dict[int, str] = {}

    def add(raw: bytes, reason: str | None = None) -> None:
        lines.append(raw)
        if reason is not None:
            bad[len(lines)] = reason

    add(json.dumps(GOOD).encode())
    add(b'{"instruction": "broken", ', "is not valid JSON")
    add(json.dumps({"instruction": 5, "output": "x"}).encode(), "'instruction' must be a string, got a number")
    add('{"instruction": "café", "output": "x"}'.encode("latin-1"), "is not UTF-8 text (byte 0xe9")
    add(json.dumps({"instruction": "only a prompt"}).encode(), "missing column 'output'")
    add(b'{"instruction": "a", "instruction": "b", "output": "x"}', "the key 'instruction' appears twice")
    add(b"[1, 2]", "row is a list")
    add(b"null", "row is null")
    add(json.dumps({"instruction": HUGE, "output": "x"}).encode(), "over the 4,194,304 a row may hold")
    add(json.dumps({"instruction": "x", "output": ""}).encode(), "column 'output' is empty")
    add(b"[" * 100_000, "nests JSON too deeply")
    good = 1
    for i in range(5):
        add(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}).encode())
        good += 1
    path.write_bytes(b"\n".join(lines) + b"\n")
    return good, bad


@pytest.mark.chaos
def test_hostile_jsonl_rows_are_counted_and_reported_by_line(chaos_row, tmp_path: Path) -> None:
    row = chaos_row("Hostile dataset rows (JSONL: bad JSON, types, 10 MB, non-UTF-8, duplicate keys)")
    row.detail = "data lost = good rows dropped"
    path = tmp_path / "hostile.jsonl"
    good, bad = _hostile_jsonl(path)
    row.runs += 1
    result = convert(read_file(path), _attr(path), "sft")
    row.data_lost = good - len(result.samples)
    assert row.data_lost == 0
    # each bad row once, at its line (row + 1: JSONL rows are 0-based line indices), with its reason
    reported = {b.row + 1: b.reason for b in result.bad_rows}
    assert reported.keys() == bad.keys()
    for line, expected in bad.items():
        assert expected in reported[line], (line, reported[line])
    assert all(b.source == str(path) for b in result.bad_rows)
    assert f"{len(bad)} bad rows dropped" in result.report()
    # fatal when asked: the error lists the bad rows with their lines
    row.runs += 1
    with pytest.raises(DataError, match="has bad rows") as err:
        convert(read_file(path), _attr(path), "sft", on_bad_rows="error")
    assert "row 3: line 4 is not UTF-8 text" in str(err.value)


def test_bad_rows_in_json_csv_txt_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dup = tmp_path / "dup.json"
    dup.write_bytes(b'[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "c", "output": "d"},'
                    + json.dumps({"instruction": HUGE, "output": "x"}).encode() + b"]")
    result = convert(read_file(dup), _attr(dup), "sft")
    assert len(result.samples) == 1
    assert [(b.row, b.reason[:30]) for b in result.bad_rows] == [
        (1, "the key 'output' appears twice"), (2, "the row holds 10,485,778 chara")]

    csv_path = tmp_path / "rows.csv"
    csv_path.write_bytes(b'instruction,output\nhi,there\ncaf\xe9,x\nonly prompt,\na,b,c\nok,fine\n')
    result = convert(read_file(csv_path), _attr(csv_path), "sft")
    assert [s.row for s in result.samples] == [0, 4]
    assert [(b.row, b.reason) for b in result.bad_rows] == [
        (1, "line 3 is not UTF-8 text (byte 0xe9)"), (2, "column 'output' is empty"),
        (3, "line 5: 3 cells, the header has 2")]

    txt = tmp_path / "text.txt"
    txt.write_bytes(b"good line\ncaf\xe9\n\n" + b"x" * (MAX_ROW_BYTES + 10) + b"\nlast\n")
    result = convert(read_file(txt), _attr(txt), "pt")
    assert [s.row for s in result.samples] == [0, 4]
    assert [b.reason[:27] for b in result.bad_rows] == ["line 2 is not UTF-8 text (b", "line 4 holds 4,194,314 byte"]

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"instruction": ["a", None, "c", "d"], "output": ["x", "y", None, HUGE]}), parquet)
    result = convert(read_file(parquet), _attr(parquet), "sft")
    assert [s.row for s in result.samples] == [0]
    assert [b.reason[:24] for b in result.bad_rows] == [
        "column 'instruction' is ", "column 'output' is null", "the row holds 10,485,778"]


@pytest.mark.parametrize("content", [b"", b"  \n", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".txt"])
def test_an_empty_file_says_it_is_empty(tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match="holds no rows at all"):
        convert(read_file(path), _attr(path), "sft")


def test_a_non_utf8_json_file_names_the_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'[\n{"instruction": "caf\xe9", "output": "x"}]')
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
        read_file(path)
    # JSON Lines saved as .json: the bad line is one bad row
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "x"}\n')
    assert [b.reason[:25] for b in read_file(path).bad_rows] == ["line 2 is not UTF-8 text "]


_RSS_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
from transformers import AutoTokenizer
from kubetune.config import load_config
from kubetune.data.pipeline import tokenized
from kubetune.data.template_registry import get_template
from kubetune.model.embedded import embedded_model_dir

path, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(embedded_model_dir())
data = load_config(None, {"model_name_or_path": "x", "dataset": str(path), "template": "chatml", "cutoff_len": 64,
                          "tokenized_path": str(out), "overwrite_cache": True}).data
template = get_template("chatml", tok)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = tokenized(data, tok, template, stage="sft", seed=0, train=True, evaluate=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mib": (after - before) / 1024, "peak_mib": after / 1024,
                  "rows": len(result.train["input_ids"])}))
"""


@pytest.mark.slow
@pytest.mark.chaos
def test_preprocessing_10mb_rows_keeps_memory_bounded(chaos_row, tmp_path: Path) -> None:
    """Three 10 MiB rows among 40 good ones: preprocessing (read, convert, tokenise, cache) grows peak RSS by
    under 64 MiB (measured: 0 MiB; before the row bound it was +527 MiB, the rows tokenised whole). Slow: 20 s
    here, mostly the subprocess importing transformers; the fast test above covers the bound's rows."""
    row = chaos_row("Hostile dataset rows (three 10 MB rows: peak RSS bounded)")
    row.detail = "data lost = good rows dropped"
    path = tmp_path / "huge.jsonl"
    with path.open("w") as f:
        for i in range(40):
            f.write(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n")
            if i % 13 == 5:
                f.write(json.dumps({"instruction": HUGE, "output": "short"}) + "\n")
    row.runs += 1
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(tmp_path / "tok")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    row.data_lost = 40 - measured["rows"]
    row.detail += f"; peak RSS grew {measured['peak_growth_mib']:.0f} MiB"
    assert row.data_lost == 0
    assert measured["peak_growth_mib"] < 64, measured
