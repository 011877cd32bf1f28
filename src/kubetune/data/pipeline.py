"""From dataset names to tokenised train/eval splits: read, convert, split, encode, pack, cache.

The cache key (`cache_key.data_key`) is a hash of everything that changes the tokens — data bytes,
dataset attributes, template, tokenizer, cutoff, masking and packing flags, seed and library
version — so a second run with the same inputs loads Arrow files instead of re-tokenising, and any
change to those inputs rebuilds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets

import kubetune
from kubetune.config import DataArguments
from kubetune.data.arrow_shards import ShardWriter
from kubetune.data.cache_key import DataKey, data_key, tokenizer_fingerprint
from kubetune.data.converters import convert
from kubetune.data.dataset_rows import preprocessing_batches, row_plan, stage_rows
from kubetune.data.encode import BatchEncoder
from kubetune.data.mixing import mix
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
        seed: seed of the validation split, of `num_samples` sampling and of interleaving.
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
    with _CacheEntry(out, keys) as entry:
        # a preprocessing batch at a time, written as it is encoded: memory holds a few batches' rows, not all
        train_count = entry.write_split("train", encoder.batch_rows(train_samples, for_eval=False))
        if train and not train_count:
            raise DataError(f"no usable training rows in {', '.join(a.name for a in train_attrs)}"
                            + (f"\n{report}" if report else ""))
        eval_count = entry.write_split("eval", encoder.batch_rows(eval_samples, for_eval=True))
        entry.finish(report, train_rows=train_count, eval_rows=eval_count)
    result = _load(out, start)
    result.cache_hit = False
    logger.info("tokenised %d train / %d eval rows in %.1fs", train_count, eval_count, result.seconds)
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
    """The samples of these datasets, each read, sampled and converted, then mixed (`mix_strategy`)."""
    parts: list[list[Sample]] = []
    reports = []
    kind = CONVERTER_KIND[stage]
    for attr in attrs:
        rows = read_rows(attr, data.dataset_dir)
        # as in LLaMA-Factory: the entry's num_samples first (a seeded random pick, repeating rows to reach it),
        # then max_samples: the first rows, in file order (LF's `select(range(max_samples))`)
        if attr.num_samples:
            rows = take(rows, attr.num_samples, seed, repeat=True)
        if data.max_samples:
            rows = take(rows, data.max_samples)
        result = convert(rows, attr, kind, on_bad_rows=data.on_bad_rows)
        parts.append(result.samples)
        if result.bad_rows:
            reports.append(result.report())
            logger.warning(result.report())
    return mix(parts, data.mix_strategy, data.interleave_probs, seed), "\n".join(reports)


class _Encoder:
    """Encodes samples with the one production encoder (`BatchEncoder`) into a stage's rows (`dataset_rows`:
    pt blocks, sft knapsacks, KTO's KL partners), one preprocessing batch at a time; picklable so batches can
    run in worker processes. A sample that cannot be encoded raises `encode.RowError`, naming its row and dataset."""

    def __init__(self, tokenizer: Any, template: Any, data: DataArguments, stage: str) -> None:
        self.plan = row_plan(data, stage, tokenizer)
        self.batch = BatchEncoder(template, tokenizer, stage, self.plan.cutoff_len,
                                  train_on_prompt=data.train_on_prompt, mask_history=data.mask_history,
                                  whole_documents=self.plan.pack)

    def batch_rows(self, samples: list[Sample], *, for_eval: bool) -> Iterator[list[dict]]:
        """Each preprocessing batch's rows, in order (`dataset_rows.preprocessing_batches`: LF's batches, within
        `preprocessing_num_workers` contiguous shards). Whatever needs several rows (packing, KTO's pairing) sees
        one batch, as in LF; with workers, each takes whole batches, at most two each ahead of the writer, so
        memory holds a few batches' rows."""
        batches = preprocessing_batches(len(samples), self.plan.batch_size, self.plan.workers)
        workers = self.plan.workers or 1
        if workers < 2 or len(batches) < 2:
            yield from (self._one_batch(samples[b.start:b.stop], for_eval=for_eval) for b in batches)
            return
        # each worker gets the encoder (tokenizer and all) once, then only each batch's samples
        with ProcessPoolExecutor(workers, initializer=_install_encoder, initargs=(self,)) as pool:
            pending: deque[Future[list[dict]]] = deque()
            for b in batches:
                pending.append(pool.submit(_encode_in_worker, samples[b.start:b.stop], for_eval))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def encode_all(self, samples: list[Sample], *, for_eval: bool) -> list[dict]:
        """Every row of `samples` (`batch_rows`, joined): for tests and the conformance harness."""
        return [row for rows in self.batch_rows(samples, for_eval=for_eval) for row in rows]

    def _one_batch(self, samples: list[Sample], *, for_eval: bool) -> list[dict]:
        one_batch = dataclasses.replace(self.plan, batch_size=max(1, len(samples)), workers=None)
        return stage_rows(samples, partial(self.batch.encode, for_eval=for_eval), one_batch, for_eval=for_eval)


_WORKER_ENCODER: _Encoder | None = None  # the encoder of this worker process (`_Encoder.batch_rows`)


def _install_encoder(encoder: _Encoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder


def _encode_in_worker(samples: list[Sample], for_eval: bool) -> list[dict]:
    assert _WORKER_ENCODER is not None, "the pool's initializer installs the encoder"
    return _WORKER_ENCODER._one_batch(samples, for_eval=for_eval)


class _CacheEntry:
    """A cache entry (or `tokenized_path`) being written: into a temp folder renamed to `out` by `finish`, so a
    killed run never leaves an entry that looks complete; a failed build leaves nothing behind.

    Args:
        out: the entry's folder.
        keys: the cache keys, stored in meta.json (and hashed into each split's fingerprint).
    """

    def __init__(self, out: Path, keys: DataKey) -> None:
        self.out, self.keys = out, keys
        self.tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")

    def __enter__(self) -> _CacheEntry:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # gone already when `finish` renamed it

    def write_split(self, split: str, chunks: Iterable[list[dict]]) -> int:
        """Write a split's rows, chunk by chunk; returns how many rows it has (0: no folder is written)."""
        fingerprint = hashlib.sha256(f"{self.keys.key}/{split}".encode()).hexdigest()[:16]
        writer = ShardWriter(self.tmp / split, fingerprint=fingerprint)
        for rows in chunks:
            writer.write(rows)
        return writer.close()

    def finish(self, report: str, *, train_rows: int, eval_rows: int) -> None:
        """Write meta.json (which marks the entry complete) and move the entry into place."""
        (self.tmp / "meta.json").write_text(json.dumps({
            "key": self.keys.key, "content": self.keys.content, "report": report, "run": _this_run(),
            "version": kubetune.__version__, "train_rows": train_rows, "eval_rows": eval_rows}))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # an entry being replaced (overwrite_cache) is renamed aside, not deleted in place: a reader never finds
        # `out` half-deleted with its meta.json still there, only the old entry whole or the new one
        old = self.out.with_name(f".{self.out.name}.old{os.getpid()}")
        if self.out.exists():
            self.out.rename(old)
        self.tmp.rename(self.out)
        shutil.rmtree(old, ignore_errors=True)


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
