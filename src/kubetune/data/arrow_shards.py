"""Write tokenised rows to disk chunk by chunk, in the folder layout `datasets.load_from_disk` reads.

Holding every tokenised row in Python before one `save_to_disk` costs ~10 KB of memory per row (a token
id is a 28-byte int object behind an 8-byte pointer), so preprocessing a million rows needed ~10 GB.
`ShardWriter` turns each chunk of rows into an Arrow table and appends it to a shard file on disk
(`data-00000-of-00002.arrow`, the names and `state.json`/`dataset_info.json` that `save_to_disk` writes),
so only one chunk is ever in memory. The columns and types are those `datasets.Dataset.from_list` gives
the same rows (`rows_to_table`), so a cached split reads back exactly as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

# Columns `datasets.Dataset.from_list` narrows from int64 (token ids and masks always fit).
_NARROW_INTS = {"input_ids": pa.int32(), "attention_mask": pa.int8(), "special_tokens_mask": pa.int8(),
                "token_type_ids": pa.int8()}


def rows_to_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pa.Table:
    """The Arrow table `datasets.Dataset.from_list(rows)` holds: same columns, same types.

    Arrow infers the types from the Python values as `from_list` does, and the columns that `from_list`
    stores in narrower integers are narrowed here too. (`from_list` would also fingerprint the table by
    hashing all of it, which the content-addressed cache key makes needless.)

    Args:
        rows: the rows.
        columns: the columns (a row without one holds None there); default: the first row's keys, as
            `from_list` takes them.
    """
    table = pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in columns or rows[0]})
    for index, name in enumerate(table.column_names):
        narrow = _NARROW_INTS.get(name)
        column_type = table.schema.field(index).type
        if narrow is not None and pa.types.is_list(column_type) and pa.types.is_int64(column_type.value_type):
            table = table.set_column(index, name, table[name].cast(pa.list_(narrow)))
    return table


class ShardWriter:
    """One split's rows, written as a `datasets` dataset folder chunk by chunk.

    Chunks are appended to the current shard file until it holds `shard_bytes`; then a new shard starts.

    Args:
        folder: the split's folder (created; it must not hold another dataset).
        fingerprint: the dataset's fingerprint, stored in `state.json` (`datasets` names its caches after it).
        shard_bytes: start a new shard file after this many bytes of Arrow data. Default 256 MiB.

    Example:
        >>> writer = ShardWriter(Path("out/train"), fingerprint="0123abcd")
        >>> for chunk in chunks:
        ...     writer.write(encode(chunk))
        >>> writer.close()  # state.json and dataset_info.json; `datasets.load_from_disk("out/train")`
    """

    def __init__(self, folder: Path, fingerprint: str, shard_bytes: int = 256 << 20) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.shard_bytes = shard_bytes
        self.rows = 0
        self.columns: list[str] | None = None  # the first row's keys: every chunk has the same columns
        self._shards: list[tuple[Path, pa.Schema]] = []
        self._open: Any = None  # the ArrowWriter of the last shard, while it takes more chunks
        self._open_bytes = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append `rows` (one chunk) to the current shard; an empty chunk writes nothing."""
        if not rows:
            return
        self.columns = self.columns or list(rows[0])
        table = rows_to_table(rows, self.columns)
        if self._open is not None:
            table = _cast_or_none(table, self._shards[-1][1])
            if table is None or self._open_bytes >= self.shard_bytes:  # another type (see `close`), or full
                self._close_shard()
                table = rows_to_table(rows, self.columns)
        if self._open is None:
            self._open_shard(table.schema)
        self._open.write_table(table)
        self._open_bytes += table.nbytes
        self.rows += len(rows)

    def _open_shard(self, schema: pa.Schema) -> None:
        from datasets import Features
        from datasets.arrow_writer import ArrowWriter

        path = self.folder / f".shard-{len(self._shards):05d}.arrow"
        self._open = ArrowWriter(features=Features.from_arrow_schema(schema), path=str(path))
        self._open_bytes = 0
        self._shards.append((path, schema))

    def _close_shard(self) -> None:
        if self._open is not None:
            try:
                self._open.finalize()
            finally:
                self._open.close()
                self._open = None

    def close(self) -> int:
        """Name the shards as `save_to_disk` does and write the dataset's metadata.

        A shard started because a chunk's columns came out as another type (a column that is None in every
        row of a chunk has Arrow's null type) is cast to the type the shards share, one shard at a time.

        Returns:
            How many rows were written. With none, nothing is written and the folder is removed.
        """
        import datasets
        from datasets.utils.py_utils import asdict  # the one save_to_disk uses (it leaves out unset fields)

        self._close_shard()
        if not self._shards:
            self.folder.rmdir()
            return 0
        schemas = [schema for _, schema in self._shards]
        schema = pa.unify_schemas(schemas, promote_options="permissive") if len(set(schemas)) > 1 else schemas[0]
        names = []
        for index, (path, shard_schema) in enumerate(self._shards):
            if shard_schema != schema:  # written beside it: the table read is memory-mapped from `path`
                cast = path.with_suffix(".cast")
                _write_table(cast, _read_table(path).cast(schema))
                cast.replace(path)
            name = f"data-{index:05d}-of-{len(self._shards):05d}.arrow"
            path.rename(self.folder / name)
            names.append(name)
        info = asdict(datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(schema)))
        state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": self.fingerprint,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        # `save_to_disk` sorts only the first level of keys (nested features keep their column order)
        (self.folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2),
                                                       encoding="utf-8")
        return self.rows


def _cast_or_none(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """`table` in `schema`'s types, or None when its values cannot take them (a column of another type)."""
    if table.schema == schema:
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return None


def _write_table(path: Path, table: pa.Table) -> None:
    """An Arrow stream file, the format `datasets` memory-maps (with its features in the schema metadata)."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    writer = ArrowWriter(features=Features.from_arrow_schema(table.schema), path=str(path))
    try:
        writer.write_table(table)
        writer.finalize()
    finally:
        writer.close()


def _read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()
