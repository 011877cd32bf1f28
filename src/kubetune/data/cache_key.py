"""The content hash of a stage's tokenised data: the name of its cache entry and its KFP cache key.

The key covers everything that changes the tokens — data bytes, dataset attributes, the template
(and a custom `template_file`'s bytes), the tokenizer, cutoff, masking and packing flags, seed
and library version — so equal keys mean equal rows, and any change to those inputs rebuilds.
`pipeline.tokenized` computes it at run time; `stage_key.preprocess_cache_key` computes the same
key at compile time, for the pipeline's preprocess step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import kubetune
from kubetune.config import DataArguments
from kubetune.data.dataset_rows import row_plan
from kubetune.data.registry import DatasetAttr

# The data settings that change the tokens (the others — workers, batch sizes, caching — do not).
_TOKEN_SETTINGS = {"cutoff_len", "train_on_prompt", "mask_history", "max_samples", "val_size", "default_system",
                   "on_bad_rows", "data_path", "template", "mix_strategy", "interleave_probs"}


@dataclass(frozen=True)
class DataKey:
    """The two names of a stage's tokenised data.

    Attributes:
        content: hash of what decides the tokens of each row (data, template, tokenizer, settings).
            A `tokenized_path` is checked against it.
        key: `content` plus which splits were asked for (train, eval): the cache entry's name and the
            preprocess step's KFP cache key.
    """

    content: str
    key: str


def data_key(data: DataArguments, attrs: list[DatasetAttr], *, stage: str, seed: int, splits: tuple[bool, bool],
             tokenizer: str, template: str) -> DataKey:
    """The content hash of a stage's tokenised data.

    Args:
        data: the data arguments.
        attrs: the resolved datasets (train, then eval); the bytes of their local files are hashed.
        stage: pt, sft, rm, dpo, kto or ppo (the row form).
        seed: seed of the validation split and of `max_samples` sampling.
        splits: (train, evaluate): which splits are built.
        tokenizer: the tokenizer's fingerprint (`tokenizer_fingerprint`), or a stand-in naming it
            when it cannot be loaded (compile time without a network).
        template: the template's fingerprint (`repr` of the `Template`), or a stand-in naming it.
    """
    h = hashlib.sha256()

    def add(obj: Any) -> None:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
        h.update(b"\0")

    add(["kubetune", kubetune.__version__, stage, seed, row_plan(data, stage).key()])
    add(data.model_dump(include=_TOKEN_SETTINGS))
    for attr in attrs:
        add(asdict(attr) if is_dataclass(attr) else vars(attr))
        for path in data_files(attr, data.dataset_dir):
            add(file_digest(path))
    add(template)
    if data.template == "custom" and data.template_file:
        # the parsed template is in `template` already; the file's bytes make a stand-in exact too
        file = Path(data.template_file)
        add(file_digest(file) if file.is_file() else f"missing template_file {data.template_file}")
    add(tokenizer)
    content = h.hexdigest()
    return DataKey(content=content, key=hashlib.sha256(json.dumps([content, list(splits)]).encode()).hexdigest())


def data_files(attr: DatasetAttr, dataset_dir: str) -> list[Path]:
    """The local files of a dataset, sorted; [] for s3 (named by URI only) or a path that does not exist.

    Args:
        attr: the resolved dataset.
        dataset_dir: the folder its relative path is under.
    """
    if attr.is_remote:
        return []  # s3 objects are fingerprinted by the storage layer's ETag manifest when localised
    path = attr.local_path(dataset_dir)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides the tokenizer's ids and special tokens.

    Args:
        tokenizer: a Hugging Face tokenizer (after `Template.fix_tokenizer`).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = _backend_state(tokenizer, backend) if backend is not None else json.dumps(tokenizer.get_vocab(),
                                                                                       sort_keys=True)
    extra = json.dumps([tokenizer.__class__.__name__, tokenizer.special_tokens_map, tokenizer.chat_template,
                        tokenizer.pad_token_id, tokenizer.eos_token_id], sort_keys=True, default=str)
    return hashlib.sha256((body + extra).encode()).hexdigest()


def _backend_state(tokenizer: Any, backend: Any) -> str:
    """Everything that decides a fast tokenizer's ids, as text to hash.

    Serialising the whole backend (`to_str`) takes ~25 ms for a 50k vocabulary, a fifth of a cold
    400-row preprocessing run, and nearly all of it is the vocabulary and merges. When the
    tokenizer was loaded from a folder with a `tokenizer.json`, those come from that file, so
    its bytes stand for them (~3 ms to hash). What can change in memory is read from the live
    object: added tokens, normalizer, pre-tokenizer, post-processor, decoder, model options and
    vocabulary size. Other tokenizers (built in memory, converted from other files) are
    serialised whole.

    Args:
        tokenizer: the Hugging Face tokenizer.
        backend: its `backend_tokenizer`.
    """
    folder = Path(tokenizer.name_or_path) if getattr(tokenizer, "name_or_path", "") else None
    if folder is None or not (folder / "tokenizer.json").is_file():
        return backend.to_str()
    model = backend.model
    options = {name: getattr(model, name) for name in dir(model)
               if not name.startswith("_") and not callable(getattr(model, name))}
    components = [getattr(backend, name) for name in ("normalizer", "pre_tokenizer", "post_processor", "decoder")]
    return json.dumps([
        file_digest(folder / "tokenizer.json"), type(model).__name__, options,
        backend.get_vocab_size(with_added_tokens=True),
        [(i, str(token)) for i, token in sorted(backend.get_added_tokens_decoder().items())],
        [c.__getstate__().decode() if c is not None else None for c in components],
        [backend.truncation, backend.padding],
    ], sort_keys=True, default=str)
