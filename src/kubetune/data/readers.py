"""Read a dataset's rows from json, jsonl, csv, parquet, txt files or a folder of them.

Rows come back as they are in the file (dicts, usually); checking them is the converter's job, so that
every problem with a row is reported the same way, with its row number.

Row numbers are 0-based and point into the file: the index in a JSON list, the line index in a JSONL or
txt file (blank lines are skipped but still counted, so `row + 1` is the line an editor shows), the data
row in a CSV file (the header is not a row), the row in a parquet file.

A JSONL line that is not valid JSON does not stop the read: it is skipped and reported as a `BadRow`
with its line number, and `kubetune.data.converters.convert` merges it into its report (and raises on it
with `on_bad_rows="error"`). So is a JSONL, txt or CSV line holding bytes that are not UTF-8, and a JSON
row that names one key twice (JSON parsers keep the last silently; which one the author meant is unknown).
JSONL and txt files are read a line at a time, and a line over `MAX_ROW_BYTES` is a bad row that is
never held whole in memory (`converters.convert` drops rows of other files over the same bound before
they are tokenised: a 10 MB string costs hundreds of MB as tokens). A JSON file that does not parse has
no usable rows, so it raises `DataError` with the line and column.
"""

from __future__ import annotations

import codecs
import csv
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, overload

from kubetune.data.registry import READABLE_SUFFIXES, DataError, DatasetAttr

T = TypeVar("T")

# A row this large is refused (a bad row, reported): 4 MiB of text is about a million tokens, eight times
# the longest context (128k tokens) models train on, and tokenising it costs hundreds of MB.
MAX_ROW_BYTES = 4 << 20
_LINE_CHUNK = 1 << 20


@dataclass
class BadRow:
    """A source row that could not be used.

    Attributes:
        row (`int`): 0-based row number in `source` (the module docstring says what a row is per type).
        reason (`str`): what is wrong with it, for a person.
        source (`str`): the file it came from.
    """

    row: int
    reason: str
    source: str


@dataclass
class ReadResult:
    """The rows of a dataset and where each came from.

    Attributes:
        rows (`list`): the rows, in file order (the files of a folder in sorted order).
        origins (`list[tuple[str, int]]`): `(file, row number)` for each entry of `rows`.
        bad_rows (`list[BadRow]`): rows that could not even be parsed (bad JSONL lines, ragged CSV lines).
        source (`str`): the file or folder read, for reports.
    """

    rows: list[Any] = field(default_factory=list)
    origins: list[tuple[str, int]] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    source: str = ""

    def extend(self, other: ReadResult) -> None:
        """Append another file's rows (reading a folder)."""
        self.rows += other.rows
        self.origins += other.origins
        self.bad_rows += other.bad_rows


def read_rows(attr: DatasetAttr, dataset_dir: str | Path = ".") -> ReadResult:
    """Read all rows of a dataset (a local file or folder, or an s3:// file or folder).

    Args:
        attr (`DatasetAttr`): the dataset, from `resolve_datasets`.
        dataset_dir (`str` or `Path`, *optional*, defaults to `"."`):
            Folder that a relative `attr.path` is under.

    Returns:
        `ReadResult`: the rows with their origins, and the rows that could not be parsed.

    Raises:
        DataError: missing path, unsupported file type, a JSON file that does not parse, a folder with no
            (or mixed) readable files, or an s3:// dataset without `kubetune.storage`.
    """
    path = _localize(attr) if attr.is_remote else attr.local_path(dataset_dir)
    if not path.exists():
        raise DataError(f"Dataset {attr.name!r}: {path} does not exist.")
    if path.is_dir():
        return read_folder(path, attr.split)
    if attr.split != "train":
        raise DataError(f"Dataset {attr.name!r}: split {attr.split!r} was asked for, but {path} is a single "
                        f"file; splits select files in a folder (e.g. {attr.split}-00000.parquet).")
    return read_file(path)


def _localize(attr: DatasetAttr) -> Path:
    # Imported here: kubetune.storage pulls in boto3, which only s3:// datasets need.
    try:
        from kubetune.storage import localize
    except ImportError as e:
        raise DataError(f"Dataset {attr.name!r}: reading {attr.path} needs kubetune.storage.localize, "
                        f"which is not available ({e}).") from e
    try:
        return Path(localize(attr.path))
    except FileNotFoundError as e:
        # Other storage errors (credentials, access) already say what to do; a missing object needs the name.
        raise DataError(f"Dataset {attr.name!r}: {e}") from e


def read_folder(folder: Path, split: str = "train") -> ReadResult:
    """Read every data file under `folder` (recursively, sorted by path) as one dataset.

    Files named after a split (`train.json`, `train-00000-of-00002.parquet`, `train/part.jsonl`) are
    picked by `split`; if none is named after any split, all files are read. Hidden files and folders
    (`.cache`, `.gitattributes`) and non-data files (README.md) are ignored.

    Args:
        folder (`Path`): the folder.
        split (`str`, *optional*, defaults to `"train"`):
            Which split's files to read when files are named by split.

    Raises:
        DataError: no readable files, files of more than one type, or no files for a non-train split.
    """
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix in READABLE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DataError(f"{folder} has no readable data files ({', '.join(READABLE_SUFFIXES)}).")
    files = _pick_split(files, folder, split)
    suffixes = sorted({p.suffix for p in files})
    if len(suffixes) > 1:
        raise DataError(f"{folder} mixes file types ({', '.join(suffixes)}); "
                        f"keep one type per dataset folder.")
    result = ReadResult(source=str(folder))
    for path in files:
        result.extend(read_file(path))
    return result


def _pick_split(files: list[Path], folder: Path, split: str) -> list[Path]:
    def named_for(path: Path, name: str) -> bool:
        parts = [*path.relative_to(folder).parent.parts, path.stem]
        return any(p == name or p.startswith((f"{name}-", f"{name}_", f"{name}.")) for p in parts)

    chosen = [p for p in files if named_for(p, split)]
    if chosen:
        return chosen
    if split != "train":
        raise DataError(f"{folder} has no files for split {split!r} (expected names like {split}.jsonl or "
                        f"{split}-00000-of-00001.parquet).")
    return files


def read_file(path: Path) -> ReadResult:
    """Read one data file; its type is taken from the suffix.

    Args:
        path (`Path`): a .json, .jsonl, .csv, .parquet or .txt file.

    Raises:
        DataError: missing file, unsupported suffix, text that is not UTF-8, unparseable JSON or parquet.
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    reader = _READERS.get(path.suffix)
    if reader is None:
        raise DataError(f"{path}: cannot read {path.suffix or 'suffix-less'} files; "
                        f"use one of {', '.join(READABLE_SUFFIXES)}.")
    try:
        return reader(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8.") from None


class _DuplicateKeys(dict):
    """A JSON object that named a key more than once (`duplicates`); its row is reported, not used."""

    duplicates: list[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    flagged = _DuplicateKeys(out)
    flagged.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return flagged


def _loads(text: str) -> Any:
    """json.loads, marking objects with a repeated key (`_DuplicateKeys`)."""
    return json.loads(text, object_pairs_hook=_object)


def _duplicate_key_reason(row: Any) -> str | None:
    """Why a parsed row cannot be trusted because an object in it repeats a key, or None."""
    stack = [row]
    while stack:
        item = stack.pop()
        if isinstance(item, _DuplicateKeys):
            return f"the key {item.duplicates[0]!r} appears twice in one object (JSON keeps only the last)"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _not_utf8_reason(raw: bytes, line: int) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"line {line} is not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
    return None


def _read_json(path: Path) -> ReadResult:
    data_bytes = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    if not data_bytes.strip():
        return ReadResult(source=str(path))  # an empty file: no rows (convert says so)
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        if _first_line_is_object(data_bytes):  # JSON Lines in a .json file: the bad line is one bad row
            return _read_jsonl_lines(data_bytes.splitlines(), str(path))
        line = data_bytes[:e.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (byte {data_bytes[e.start]:#04x} on line {line}); re-save it "
                        f"as UTF-8.") from None
    del data_bytes
    try:
        data = _loads(text)
    except json.JSONDecodeError as e:
        # JSON Lines saved as .json is common; `datasets` reads it, so do we.
        if e.msg == "Extra data" and _first_line_is_object(text.encode()):
            return _read_jsonl_lines(text.encode().splitlines(), str(path))
        raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
    except RecursionError:
        raise DataError(f"{path} nests JSON too deeply to read.") from None
    result = ReadResult(source=str(path))
    for i, row in enumerate(_rows_of(data, path)):
        _add_row(result, row, i, str(path))
    return result


def _add_row(result: ReadResult, row: Any, number: int, source: str, where: str = "") -> None:
    reason = _duplicate_key_reason(row)
    if reason is not None:
        result.bad_rows.append(BadRow(number, f"{where}{reason}", source))
    else:
        result.rows.append(row)
        result.origins.append((source, number))


def _first_line_is_object(data: bytes) -> bool:
    first = next((line for line in data.splitlines() if line.strip()), b"")
    try:
        return isinstance(json.loads(first), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _rows_of(data: Any, path: Path) -> list[Any]:
    """A JSON file holds a list of rows, or an object with exactly one list of rows (`{"data": [...]}`)."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) == 1:
            return data[lists[0]]
        raise DataError(f"{path}: expected a list of rows or an object holding one list; the object has "
                        f"{len(lists)} list-valued keys ({', '.join(lists) or 'none'}).")
    kind = {str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
    raise DataError(f"{path}: expected a list of rows, got a JSON {kind}.")


def _read_jsonl(path: Path) -> ReadResult:
    with path.open("rb") as f:  # a line at a time: a file of 10 MB rows holds one raw line at once
        return _read_jsonl_lines(f, str(path))


def _lines(lines: Iterable[bytes] | BinaryIO) -> Iterator[tuple[int, bytes | int]]:
    """(0-based line index, the line without its end and the file's byte-order mark).

    From a file, a line over `MAX_ROW_BYTES` comes as its length instead, read past in chunks, never whole.
    """
    source = _bounded_lines(lines) if hasattr(lines, "readline") else lines
    for i, raw in enumerate(source):
        if i == 0 and isinstance(raw, bytes):
            raw = raw.removeprefix(codecs.BOM_UTF8)
        yield i, raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw


def _bounded_lines(f: BinaryIO) -> Iterator[bytes | int]:
    while True:
        raw = f.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_ROW_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        size = len(raw)
        while raw and not raw.endswith(b"\n"):  # the rest of the long line, a chunk at a time
            raw = f.readline(_LINE_CHUNK)
            size += len(raw)
        yield size - raw.endswith(b"\n")  # the line's own bytes, without its end


def too_large_reason(size: int, line: int | None = None, unit: str = "bytes") -> str:
    """The bad-row reason for a row of `size` bytes (a line) or characters (a parsed row) over `MAX_ROW_BYTES`."""
    where = f"line {line} " if line is not None else "the row "
    return (f"{where}holds {size:,} {unit} of text, over the {MAX_ROW_BYTES:,} a row may hold (about a million "
            f"tokens); split the document into smaller rows")


def _read_jsonl_lines(lines: Iterable[bytes], source: str) -> ReadResult:
    result = ReadResult(source=source)
    for i, raw in _lines(lines):
        if isinstance(raw, int):
            result.bad_rows.append(BadRow(i, too_large_reason(raw, i + 1), source))
            continue
        if not raw.strip():
            continue
        if (reason := _not_utf8_reason(raw, i + 1)) is not None:
            result.bad_rows.append(BadRow(i, reason, source))
            continue
        try:
            row = _loads(raw.decode("utf-8"))
        except json.JSONDecodeError as e:
            result.bad_rows.append(BadRow(i, f"line {i + 1} is not valid JSON: {e.msg} (column {e.colno})",
                                          source))
            continue
        except RecursionError:
            result.bad_rows.append(BadRow(i, f"line {i + 1} nests JSON too deeply to read", source))
            continue
        _add_row(result, row, i, source, where=f"line {i + 1}: ")
    return result


def _read_csv(path: Path) -> ReadResult:
    result = ReadResult(source=str(path))
    # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate, found per row below
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        width = len(reader.fieldnames or [])
        if any(_escaped_byte(name) is not None for name in reader.fieldnames or []):
            raise DataError(f"{path}: the header line is not UTF-8 text; re-save the file as UTF-8.")
        try:
            start = reader.line_num + 1
            for i, row in enumerate(reader):
                line, start = start, reader.line_num + 1
                byte = next((b for v in row.values() if isinstance(v, str) and (b := _escaped_byte(v)) is not None),
                            None)
                if byte is not None:
                    result.bad_rows.append(BadRow(i, f"line {line} is not UTF-8 text (byte {byte:#04x})", str(path)))
                    continue
                # DictReader files surplus cells under None and fills missing ones with None.
                if None in row or None in row.values():
                    cells = width + len(row.get(None) or []) - sum(v is None for v in row.values())
                    reason = f"line {reader.line_num}: {cells} cells, the header has {width}"
                    result.bad_rows.append(BadRow(i, reason, str(path)))
                    continue
                result.rows.append(row)
                result.origins.append((str(path), i))
        except csv.Error as e:
            raise DataError(f"{path} is not valid CSV: {e} (line {reader.line_num}).") from None
    return result


def _read_parquet(path: Path) -> ReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} is not a readable parquet file: {e}") from None
    return ReadResult(rows=rows, origins=[(str(path), i) for i in range(len(rows))], source=str(path))


_ESCAPED = re.compile("[\udc80-\udcff]")


def _escaped_byte(text: str) -> int | None:
    """The first byte that was not UTF-8 in text decoded with errors="surrogateescape", or None."""
    found = _ESCAPED.search(text)
    return None if found is None else ord(found.group()) - 0xDC00


def _read_txt(path: Path) -> ReadResult:
    result = ReadResult(source=str(path))
    with path.open("rb") as f:
        for i, raw in _lines(f):
            if isinstance(raw, int):
                result.bad_rows.append(BadRow(i, too_large_reason(raw, i + 1), str(path)))
                continue
            if not raw.strip():
                continue
            if (reason := _not_utf8_reason(raw, i + 1)) is not None:
                result.bad_rows.append(BadRow(i, reason, str(path)))
                continue
            result.rows.append({"text": raw.decode("utf-8")})
            result.origins.append((str(path), i))
    return result


_READERS = {
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}


# A JSON file that is not a list of rows (`{"data": [...]}`) must be parsed whole to find its first row:
# larger ones are not peeked at.
WHOLE_FILE_PEEK_LIMIT = 64 << 20
_PEEK_CHUNK = 1 << 16


def first_row(path: Path) -> dict[str, Any] | None:
    """The first object row of a data file, read without reading the rest (to look at its columns).

    jsonl, csv, txt and parquet files are read up to their first usable row; a .json list up to the end of
    its first element. A .json file of another shape (an object holding the list, JSON Lines) is read whole
    when it is below `WHOLE_FILE_PEEK_LIMIT`.

    Args:
        path (`Path`): a local data file of a readable type.

    Returns:
        The row, or None when the file's first row is not an object, it has none, is of another type, or
        cannot be read (the data pipeline reports that, with the row).
    """
    try:
        if path.suffix == ".json":
            return _first_json_row(path)
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8-sig", errors="replace") as f:  # a peek at the columns only
                return next((row for row in map(_loads_or_none, f) if isinstance(row, dict)), None)
        if path.suffix == ".csv":
            with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
                return next((row for row in csv.DictReader(f) if None not in row and None not in row.values()),
                            None)
        if path.suffix == ".txt":
            with path.open(encoding="utf-8-sig", errors="replace") as f:
                return next(({"text": line.rstrip("\r\n")} for line in f if line.strip()), None)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
                return next(iter(batch.to_pylist()), None)
    except (OSError, UnicodeDecodeError, csv.Error, DataError, ValueError):
        return None  # pyarrow's errors are ValueErrors or OSErrors
    return None


def _loads_or_none(line: str) -> Any:
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _first_json_row(path: Path) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig") as f:
        text = f.read(_PEEK_CHUNK)
        start = len(text) - len(text.lstrip())
        if text[start:start + 1] == "[":  # a list of rows: decode its first element, reading more as needed
            while True:
                body = text[start + 1:].lstrip()
                try:
                    row, _ = decoder.raw_decode(body)
                    return row if isinstance(row, dict) else None
                except json.JSONDecodeError:
                    more = f.read(_PEEK_CHUNK)
                    if not more:
                        return None
                    text += more
    if path.stat().st_size > WHOLE_FILE_PEEK_LIMIT:
        return None
    return next((row for row in read_file(path).rows if isinstance(row, dict)), None)


@overload
def take(items: ReadResult, n: int | None, seed: int | None = None, *, repeat: bool = False) -> ReadResult: ...
@overload
def take(items: Sequence[T], n: int | None, seed: int | None = None, *, repeat: bool = False) -> list[T]: ...


def take(items: ReadResult | Sequence[T], n: int | None, seed: int | None = None, *,
         repeat: bool = False) -> ReadResult | list[T]:
    """The first `n` items, after a seeded shuffle if `seed` is given (`num_samples`, `max_samples`).

    Works on a `ReadResult` (rows and their origins stay paired, so reports keep exact row numbers; the
    unparseable rows are kept, as they are problems in the file whichever rows are used) or on any
    sequence, such as converted samples.

    Args:
        items (`ReadResult` or `Sequence`): rows or samples.
        n (`int`, *optional*): how many to keep; None keeps all.
        seed (`int`, *optional*, defaults to `None`):
            Shuffle with `random.Random(seed)` first; None keeps file order.
        repeat (`bool`, *optional*, defaults to `False`):
            An `n` larger than the dataset repeats rows, as LLaMA-Factory's `num_samples` does: every row
            once (shuffled), then rows drawn at random with replacement up to `n`. False: at most all rows.

    Returns:
        `ReadResult` for a `ReadResult`, else a `list`.
    """
    size = len(items.rows) if isinstance(items, ReadResult) else len(items)
    order = list(range(size))
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)
    if n is not None:
        order = order[: max(n, 0)]
        if repeat and size and n > size:
            order += rng.choices(range(size), k=n - size)
    if isinstance(items, ReadResult):
        return ReadResult(rows=[items.rows[i] for i in order], origins=[items.origins[i] for i in order],
                          bad_rows=list(items.bad_rows), source=items.source)
    return [items[i] for i in order]
