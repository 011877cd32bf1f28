"""From dataset names to tokenised train/eval splits: read, convert, split, encode, pack, cache.

The cache key (`cache_key.data_key`) is a hash of everything that changes the tokens — data bytes,
dataset attributes, template, tokenizer, cutoff, masking and packing flags, seed and library
version — so a second run with the same inputs loads Arrow files instead of re-tokenising, and any
change to those inputs rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

import kubetune
from kubetune.config import DataArguments
from kubetune.data.cache_key import DataKey, data_key, tokenizer_fingerprint
from kubetune.data.converters import convert
from kubetune.data.dataset_rows import row_plan, stage_rows
from kubetune.data.encode import BatchEncoder
from kubetune.data.readers import read_rows, take
from kubetune.data.registry import DataError, DatasetAttr, resolve_datasets
from kubetune.data.schema import Sample
from kubetune.paths import cache_root

logger = logging.getLogger(__name__)


# What each stage reads: the converter kind its rows must have.
CONVERTER_KIND = {"pt": "pt", "sft": "sft", "ppo": "sft", "rm": "ranking", "dpo": "ranking", "kto": "kto"}


@dataclass
class TokenizedData:
    """Tokenised splits ready for a Trainer.

    Attributes:
        train: rows with input_ids, labels (and position_ids when neat-packed); None if no training data.
        eval: unpacked rows with input_ids, labels, prompt_ids and reference (for prediction); or None.
        key: the cache key (content hash) of these splits.
        cache_hit: True when loaded from the cache instead of built.
        report: bad-row report ("" when every row was usable).
        seconds: time spent in this call.
    """

    train: datasets.Dataset | None
    eval: datasets.Dataset | None
    key: str
    cache_hit: bool
    report: str
    seconds: float


def tokenized(data: DataArguments, tokenizer: Any, template: Any, *, stage: str, seed: int,
              train: bool = True, evaluate: bool = False) -> TokenizedData:
    """Build (or load from cache) the tokenised splits for a stage.

    Args:
        data: data arguments (datasets, template flags, cutoff, packing, caching).
        tokenizer: the model's tokenizer (after `template.fix_tokenizer`).
        template: a `Template` from `kubetune.data.templates`.
        stage: pt, sft, rm, dpo, kto or ppo — decides the row form:
            pt/sft: input_ids, labels (+ position_ids when neat-packed);
            rm/dpo: chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels;
            kto: input_ids, labels, kto_tag, kl_input_ids, kl_labels (KL partner: the previous row's response);
            ppo: input_ids (the prompt, ending with the generation prompt), reference.
        seed: seed of the validation split and of `max_samples` sampling.
        train: build the training split (from `dataset`).
        evaluate: build an eval split (from `eval_dataset`, or `val_size` of `dataset`).
    """
    start = time.perf_counter()
    train_attrs, eval_attrs = stage_datasets(data, train=train, evaluate=evaluate)

    keys = data_key(data, train_attrs + eval_attrs, stage=stage, seed=seed, splits=(train, evaluate),
                    tokenizer=tokenizer_fingerprint(tokenizer), template=repr(template))
    cached = cache_root() / "tokenized" / keys.key
    out = Path(data.tokenized_path) if data.tokenized_path else cached
    if data.overwrite_cache and not _rebuilds(data):
        # another rank of this job rebuilds it: load what that one writes, not the entry it replaces
        _wait_for_this_run(out)
        return _load_existing(data, out, keys, start)
    if not data.overwrite_cache and (out / "meta.json").is_file():
        return _load_existing(data, out, keys, start)  # a finished entry is only read: no lock, read-only is fine
    with _only_one_builder(out):
        if not data.overwrite_cache and (out / "meta.json").is_file():  # built while this process waited
            return _load_existing(data, out, keys, start)
        return _build(data, tokenizer, template, keys, out, stage=stage, seed=seed, train=train, evaluate=evaluate,
                      train_attrs=train_attrs, eval_attrs=eval_attrs, start=start)


def _rebuilds(data: DataArguments) -> bool:
    """Under `overwrite_cache`, whether this process rebuilds: the job's rank 0 for a `tokenized_path` (a path
    the nodes may share), each node's first rank for the node's own cache; every process without a launcher."""
    rank = os.environ.get("RANK" if data.tokenized_path else "LOCAL_RANK", "0")
    return int(rank) == 0


def _this_run() -> str:
    """The launch this process belongs to (torchrun's run id, the same on every rank), or "" without one."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


def _wait_for_this_run(out: Path, poll_s: float = 1.0) -> None:
    meta = out / "meta.json"
    logger.info("waiting for the rank that rebuilds %s (overwrite_cache)", out)
    while True:
        try:
            if json.loads(meta.read_text()).get("run") == _this_run():
                return
        except (OSError, ValueError):  # not there yet, or being replaced
            pass
        time.sleep(poll_s)


def _load_existing(data: DataArguments, out: Path, keys: DataKey, start: float) -> TokenizedData:
    if data.tokenized_path:
        logger.info("loading tokenised data from tokenized_path %s", data.tokenized_path)
        return _load(out, start, expected=keys)
    logger.info("tokenised data cache hit (%s)", keys.key[:12])
    return _load(out, start)


@contextmanager
def _only_one_builder(out: Path) -> Iterator[None]:
    """Hold `<out>.lock` while building `out`: the ranks of a torchrun job (and concurrent runs sharing the
    cache) tokenise once; whoever comes second waits, then loads what the first wrote."""
    from filelock import FileLock, Timeout

    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out.with_name(f".{out.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process to tokenise %s", out)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(data: DataArguments, tokenizer: Any, template: Any, keys: DataKey, out: Path, *, stage: str,
           seed: int, train: bool, evaluate: bool, train_attrs: list[DatasetAttr],
           eval_attrs: list[DatasetAttr], start: float) -> TokenizedData:
    train_samples, report = _samples(train_attrs, data, stage, seed)
    eval_samples: list[Sample] = []
    if eval_attrs:
        eval_samples, eval_report = _samples(eval_attrs, data, stage, seed)
        report = "\n".join(r for r in (report, eval_report) if r)
    elif evaluate and data.val_size > 0:
        train_samples, eval_samples = split_validation(train_samples, data.val_size, seed)
    if not train:
        train_samples = []

    encoder = _Encoder(tokenizer, template, data, stage)
    train_rows = encoder.encode_all(train_samples, for_eval=False, workers=data.preprocessing_num_workers)
    eval_rows = encoder.encode_all(eval_samples, for_eval=True, workers=data.preprocessing_num_workers)
    if train and not train_rows:
        raise DataError(f"no usable training rows in {', '.join(a.name for a in train_attrs)}"
                        + (f"\n{report}" if report else ""))

    _save(out, train_rows, eval_rows, keys, report)
    result = _load(out, start)
    result.cache_hit = False
    logger.info("tokenised %d train / %d eval rows in %.1fs", len(train_rows), len(eval_rows), result.seconds)
    return result


def stage_datasets(data: DataArguments, *, train: bool, evaluate: bool) -> tuple[list[DatasetAttr], list[DatasetAttr]]:
    """The datasets a stage reads: (train datasets, eval datasets).

    Args:
        data: the data arguments.
        train: the training split is built (from `dataset` and `data_path`).
        evaluate: an eval split is built: from `eval_dataset`, else from `val_size` of `dataset`.

    Raises:
        DataError: an unknown dataset, a bad dataset_info.json or a missing file (see `resolve_datasets`).
    """
    train_attrs = resolve_datasets(data.dataset, data.dataset_dir, data.data_path) if train or (
        evaluate and not data.eval_dataset) else []
    eval_attrs = resolve_datasets(data.eval_dataset, data.dataset_dir) if evaluate and data.eval_dataset else []
    return train_attrs, eval_attrs


def split_validation(samples: list[Sample], val_size: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split: the same samples and seed always give the same validation rows."""
    count = int(val_size) if val_size >= 1 else max(1, round(len(samples) * val_size))
    if count >= len(samples):
        raise DataError(f"val_size {val_size} leaves no training rows ({len(samples)} rows in all)")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


def _samples(attrs: list[DatasetAttr], data: DataArguments, stage: str, seed: int) -> tuple[list[Sample], str]:
    samples: list[Sample] = []
    reports = []
    kind = CONVERTER_KIND[stage]
    for attr in attrs:
        rows = read_rows(attr, data.dataset_dir)
        limit = data.max_samples or attr.num_samples
        if limit:
            rows = take(rows, limit, seed)
        result = convert(rows, attr, kind, on_bad_rows=data.on_bad_rows)
        samples.extend(result.samples)
        if result.bad_rows:
            reports.append(result.report())
            logger.warning(result.report())
    return samples, "\n".join(reports)


class _Encoder:
    """Encodes samples with the one production encoder (`BatchEncoder`) into a stage's rows (`dataset_rows`:
    pt blocks, sft knapsacks, KTO's KL partners, per preprocessing batch); picklable so it can run in
    worker processes. A sample that cannot be encoded raises `encode.RowError`, naming its row and dataset."""

    def __init__(self, tokenizer: Any, template: Any, data: DataArguments, stage: str) -> None:
        self.plan = row_plan(data, stage, tokenizer)
        self.batch = BatchEncoder(template, tokenizer, stage, self.plan.cutoff_len,
                                  train_on_prompt=data.train_on_prompt, mask_history=data.mask_history,
                                  whole_documents=self.plan.pack)

    def encode_all(self, samples: list[Sample], *, for_eval: bool, workers: int | None) -> list[dict]:
        def encode(samples: list[Sample], partners: list) -> list[dict]:
            items = list(zip(samples, partners, strict=True))
            if workers and workers > 1 and len(items) >= 2 * workers:
                chunks = list(_chunks(items, max(1, len(items) // (workers * 4))))
                with ProcessPoolExecutor(workers) as pool:
                    parts = pool.map(self._encode_chunk, chunks, [for_eval] * len(chunks))
                    return [row for part in parts for row in part]
            return self._encode_chunk(items, for_eval)

        return stage_rows(samples, encode, self.plan, for_eval=for_eval)

    def _encode_chunk(self, items: list[tuple[Sample, Any]], for_eval: bool) -> list[dict]:
        return self.batch.encode([sample for sample, _ in items], [partner for _, partner in items],
                                 for_eval=for_eval)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _save(out: Path, train_rows: list[dict], eval_rows: list[dict], keys: DataKey, report: str) -> None:
    # write into a temp folder and rename, so a killed run never leaves a cache entry that looks complete
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        if rows:
            fingerprint = hashlib.sha256(f"{keys.key}/{split}".encode()).hexdigest()[:16]
            _to_dataset(rows, fingerprint=fingerprint).save_to_disk(str(tmp / split))
    (tmp / "meta.json").write_text(json.dumps({"key": keys.key, "content": keys.content, "report": report,
                                               "run": _this_run(),
                                               "version": kubetune.__version__, "train_rows": len(train_rows),
                                               "eval_rows": len(eval_rows)}))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)


# Columns `datasets.Dataset.from_list` narrows from int64 (token ids and masks always fit).
_NARROW_INTS = {"input_ids": pa.int32(), "attention_mask": pa.int8(), "special_tokens_mask": pa.int8(),
                "token_type_ids": pa.int8()}


def _to_dataset(rows: list[dict[str, Any]], fingerprint: str) -> datasets.Dataset:
    """`datasets.Dataset.from_list(rows)`, same columns and types, with a given fingerprint.

    `from_list` fingerprints a new dataset by pickling and hashing its whole table (~10 ms for
    400 rows, the first time), though the cache key already is a content hash. Arrow infers the
    types from the Python values as `from_list` does, and the columns that `from_list` stores
    in narrower integers are narrowed here too.

    Args:
        rows: the rows; the first row's keys are the columns.
        fingerprint: the dataset's fingerprint (datasets names its own caches after it).
    """
    table = pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in rows[0]})
    for index, name in enumerate(table.column_names):
        narrow = _NARROW_INTS.get(name)
        column_type = table.schema.field(index).type
        if narrow is not None and pa.types.is_list(column_type) and pa.types.is_int64(column_type.value_type):
            table = table.set_column(index, name, table[name].cast(pa.list_(narrow)))
    return datasets.Dataset(table, fingerprint=fingerprint)


def _load(path: Path, start: float, expected: DataKey | None = None) -> TokenizedData:
    """The tokenised splits stored in `path`.

    Args:
        path: a folder `_save` wrote (a cache entry or a `tokenized_path`).
        start: when the caller started (for `TokenizedData.seconds`).
        expected: for a `tokenized_path`: the keys of what this config would build; the stored rows must
            have the same content key. Which splits were built is not compared: the stored ones are used.

    Raises:
        DataError: `expected` is given and the stored rows were built from other inputs.
    """
    meta = json.loads((path / "meta.json").read_text())
    if expected is not None and meta.get("content") != expected.content:
        raise DataError(
            f"tokenized_path {path} holds tokenised data built from other inputs than this config's: its content "
            f"key {str(meta.get('content'))[:12]} (kubetune {meta.get('version', '?')}) is not "
            f"{expected.content[:12]}, the hash of this config's data files, dataset settings, template, "
            "tokenizer, cutoff_len, masking and packing flags, seed and kubetune version. Delete the folder "
            "or set overwrite_cache: true to rebuild it from this config."
        )
    splits = {s: datasets.load_from_disk(str(path / s)) if (path / s).is_dir() else None for s in ("train", "eval")}
    return TokenizedData(train=splits["train"], eval=splits["eval"], key=meta["key"], cache_hit=True,
                         report=meta.get("report", ""), seconds=time.perf_counter() - start)
