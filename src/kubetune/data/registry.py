"""Dataset registry: names in a config → `DatasetAttr`s describing where the rows are and how to read them.

Datasets are registered in `<dataset_dir>/dataset_info.json`, in LLaMA-Factory's schema, so an existing
LLaMA-Factory data folder works unchanged. One entry per dataset name:

    "kubi_sft": {
      "file_name": "kubi_sft_train.json",      # or hf_hub_url / ms_hub_url / om_hub_url / script_url /
                                               #    cloud_file_name; "s3://..." is allowed in file_name
      "formatting": "alpaca",                  # or "sharegpt"
      "ranking": false,                        # true: rows hold a chosen and a rejected response
      "split": "train", "subset": null, "folder": null, "num_samples": null,
      "columns": {"prompt": "instruction", "query": "input", "response": "output", ...},
      "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", ...}   # sharegpt only
    }

A dataset name that is not registered but is a path to a data file or folder (json, jsonl, csv, parquet,
txt) is used directly; so is an `s3://` URI. Such datasets get `formatting="auto"`: the converter looks at
the first row and picks sharegpt if it holds a `conversations` or `messages` list (OpenAI-style
`role`/`content` messages included), else alpaca, and uses the optional columns it finds (`system`,
`tools`, `history`, `chosen`/`rejected`, `kto_tag`, `text`). See `kubetune.data.converters.detect_format`.

The hubs are not reachable from the machines kubetune runs on: an entry that only names a hub must have a
local copy under `dataset_dir` (or be moved to S3); the error says how.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from kubetune.paths import cache_root

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset_info.json"
READABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
"""File types `kubetune.data.readers` can read."""

Formatting = Literal["alpaca", "sharegpt", "auto"]
LoadFrom = Literal["file", "cloud_file"]

_SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_HUB_KEYS = {"hf_hub_url": "Hugging Face Hub", "ms_hub_url": "ModelScope Hub", "om_hub_url": "Modelers Hub"}
_ENTRY_KEYS = (*_SOURCE_KEYS, "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns",
               "tags")


class DataError(ValueError):
    """A dataset problem a person can fix; the message says what is wrong, where, and what to do."""


@dataclass
class Columns:
    """Which source column holds which part of a sample (`columns` in dataset_info.json).

    Attributes:
        prompt (`str`, *optional*, defaults to `"instruction"`):
            Alpaca instruction column; for pt, the text column.
        query (`str`, *optional*, defaults to `"input"`):
            Alpaca input column, appended to the instruction after a newline; may be absent in a row.
        response (`str`, *optional*, defaults to `"output"`):
            Alpaca answer column.
        history (`str`, *optional*, defaults to `None`):
            Alpaca column with earlier `[query, answer]` pairs; None reads no history.
        messages (`str`, *optional*, defaults to `"conversations"`):
            Sharegpt column with the list of turns.
        system (`str`, *optional*, defaults to `None`):
            Column with the system prompt.
        tools (`str`, *optional*, defaults to `None`):
            Column with tool descriptions (a JSON string, list or object).
        images (`str`, *optional*, defaults to `None`):
            Multimodal column: refused (multimodal models are not supported yet).
        videos (`str`, *optional*, defaults to `None`): as `images`.
        audios (`str`, *optional*, defaults to `None`): as `images`.
        chosen (`str`, *optional*, defaults to `None`):
            Ranking: column with the preferred response; None reads `"chosen"`.
        rejected (`str`, *optional*, defaults to `None`):
            Ranking: column with the dispreferred response; None reads `"rejected"`.
        kto_tag (`str`, *optional*, defaults to `None`):
            KTO: column with the desirable/undesirable flag; None reads `"kto_tag"`.
    """

    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = None
    messages: str = "conversations"
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


@dataclass
class Tags:
    """How sharegpt messages name their keys and roles (`tags` in dataset_info.json).

    Attributes:
        role_tag (`str`, *optional*, defaults to `"from"`): key holding the speaker.
        content_tag (`str`, *optional*, defaults to `"value"`): key holding the text.
        user_tag (`str`, *optional*, defaults to `"human"`): role value of a user turn.
        assistant_tag (`str`, *optional*, defaults to `"gpt"`): role value of an assistant turn.
        observation_tag (`str`, *optional*, defaults to `"observation"`): role value of a tool result.
        function_tag (`str`, *optional*, defaults to `"function_call"`): role value of a tool call.
        system_tag (`str`, *optional*, defaults to `"system"`):
            Role value of a system turn, allowed only as the first turn.
    """

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"


@dataclass
class DatasetAttr:
    """One resolved dataset: where its rows are and how to turn them into `Sample`s.

    Attributes:
        name (`str`):
            The name used in the config: a dataset_info.json key, a path or an `s3://` URI.
        path (`str`):
            The file or folder: relative to `dataset_dir` as written in dataset_info.json, absolute for
            datasets named by path, or an `s3://` URI.
        load_from (`str`, *optional*, defaults to `"file"`):
            `"file"` (local) or `"cloud_file"` (`s3://`, fetched through `kubetune.storage.localize`).
        formatting (`str`, *optional*, defaults to `"alpaca"`):
            `"alpaca"`, `"sharegpt"`, or `"auto"` (datasets named by path: decided from the first row by
            `kubetune.data.converters.detect_format`).
        ranking (`bool`, *optional*, defaults to `False`):
            True if each row holds a chosen and a rejected response.
        subset (`str`, *optional*, defaults to `None`):
            Dataset config name on a hub: a local hub copy is read from its sub-folder of that name (the path
            includes it); unused for file_name entries, as in LLaMA-Factory.
        split (`str`, *optional*, defaults to `"train"`):
            Which split to read from a folder whose files are named by split.
        folder (`str`, *optional*, defaults to `None`):
            Sub-folder of a local hub copy to read.
        num_samples (`int`, *optional*, defaults to `None`):
            Use only this many rows (None: all); the caller applies it with `readers.take`.
        columns (`Columns`): source column names.
        tags (`Tags`): sharegpt key and role names.
        hub_url (`str`, *optional*, defaults to `None`):
            The hub id a local copy came from, for lineage.
        origin (`str`, *optional*, defaults to `""`):
            Where the dataset was defined: the dataset_info.json path, `"path"` or `"data_path"`.
    """

    name: str
    path: str
    load_from: LoadFrom = "file"
    formatting: Formatting = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    columns: Columns = field(default_factory=Columns)
    tags: Tags = field(default_factory=Tags)
    hub_url: str | None = None
    origin: str = ""

    @property
    def is_remote(self) -> bool:
        """True for an `s3://` dataset, read through `kubetune.storage.localize`."""
        return self.load_from == "cloud_file"

    def local_path(self, dataset_dir: str | Path) -> Path:
        """The file or folder on this machine (not for remote datasets).

        Args:
            dataset_dir (`str` or `Path`):
                The folder holding dataset_info.json; relative `path`s are under it.
        """
        return Path(dataset_dir) / self.path


def resolve_datasets(
    names: str | list[str] | None, dataset_dir: str | Path, data_path: str | None = None
) -> list[DatasetAttr]:
    """Turn the config's dataset names into `DatasetAttr`s, checking each one exists.

    Args:
        names (`str` or `list[str]`, *optional*):
            Comma-separated names (`"kubi_sft,kubi_chat"`) or a list of them; each is a key of
            `<dataset_dir>/dataset_info.json`, a path to a data file or folder, or an `s3://` URI.
            None or empty: no datasets from names.
        dataset_dir (`str` or `Path`):
            Folder holding dataset_info.json and the files it names.
        data_path (`str`, *optional*, defaults to `None`):
            A JSON/JSONL file (or `s3://` URI) used directly, as in simpler fine-tuning scripts;
            appended after `names`.

    Returns:
        `list[DatasetAttr]`: one per name, in order.

    Raises:
        DataError: unknown name (with the known names and a "did you mean"), missing or invalid
            dataset_info.json, an entry with unknown keys or bad values, a missing file, or a hub-only
            entry without a local copy.
    """
    wanted = _split_names(names)
    hub_names = [name for name in wanted if not name.startswith("s3://")]
    if str(dataset_dir).startswith("REMOTE:") and hub_names:
        attrs = _resolve_remote(str(dataset_dir), wanted)
    elif str(dataset_dir) == "ONLINE":
        # every name is a hub dataset repo, read as an alpaca-layout hf_hub_url entry (as LLaMA-Factory does)
        attrs = [_resolve_one(name, _Registry(Path("."))) if name.startswith("s3://") else
                 parse_entry(name, {"hf_hub_url": name}, cache_root(), "dataset_dir = 'ONLINE'") for name in wanted]
    else:
        registry = _Registry(Path(dataset_dir))
        attrs = [_resolve_one(name, registry) for name in wanted]
    if data_path:
        attrs.append(_resolve_data_path(data_path))
    return attrs


def _resolve_remote(dataset_dir: str, wanted: list[str]) -> list[DatasetAttr]:
    """`dataset_dir: REMOTE:<repo>`: the repo's dataset_info.json, then the files its wanted entries name, from the
    hub into the cache; their paths are made absolute (the rest of kubetune sees ordinary local files)."""
    repo = dataset_dir[len("REMOTE:"):]
    snapshot = _download(repo, [DATASET_INFO], f"dataset_dir = {dataset_dir!r}",
                         "download that repo (dataset_info.json and its data files) into a folder and set dataset_dir "
                         "to it, or copy it to s3:// and name the files")
    registry = _Registry(snapshot)
    entries = registry.entries()
    files = [entries[name]["file_name"] for name in wanted
             if isinstance(entries.get(name), dict) and isinstance(entries[name].get("file_name"), str)
             and "://" not in entries[name]["file_name"] and not any(entries[name].get(k) for k in _HUB_KEYS)]
    if files:
        _download(repo, [pattern for f in files for pattern in (f, f"{f}/*")], f"dataset_dir = {dataset_dir!r}",
                  "download the repo's data files next to its dataset_info.json and set dataset_dir to that folder")
    attrs = [_resolve_one(name, registry) for name in wanted]
    return [replace(a, path=str(snapshot / a.path)) if a.load_from == "file" else a for a in attrs]


def _download(repo: str, patterns: list[str] | None, what: str, how: str) -> Path:
    """`hub_download.download_dataset_files`, its failures as DataErrors that name `what` and say `how` to fix it."""
    from kubetune.data.hub_download import HubRepoMissing, HubUnreachable, download_dataset_files

    try:
        return download_dataset_files(repo, patterns)
    except HubRepoMissing as err:
        raise DataError(f"{what}: the Hugging Face Hub has no dataset repo {repo!r} ({err}); check the name, or set "
                        f"HF_TOKEN if it is private or gated.") from err
    except HubUnreachable as err:
        raise DataError(f"{what} names the Hugging Face dataset repo {repo!r}, and the hub is not reachable from "
                        f"here: {err}. {how[0].upper()}{how[1:]}.") from err


def _split_names(names: str | list[str] | None) -> list[str]:
    if names is None:
        return []
    parts = names.split(",") if isinstance(names, str) else names
    return [part.strip() for part in parts if part and part.strip()]


class _Registry:
    """dataset_info.json, read only when a name needs it (path-only configs need no registry)."""

    def __init__(self, dataset_dir: Path) -> None:
        self.dataset_dir = dataset_dir
        self.info_path = dataset_dir / DATASET_INFO
        self._entries: dict[str, Any] | None = None

    @property
    def exists(self) -> bool:
        return self.info_path.is_file()

    def entries(self) -> dict[str, Any]:
        if self._entries is None:
            self._entries = load_dataset_info(self.info_path)
        return self._entries


def load_dataset_info(info_path: str | Path) -> dict[str, Any]:
    """Read a dataset_info.json: a JSON object mapping dataset names to entries.

    Args:
        info_path (`str` or `Path`): path of the file.

    Raises:
        DataError: the file is missing, is not valid JSON (line and column given), or is not an object.
    """
    info_path = Path(info_path)
    if not info_path.is_file():
        raise DataError(
            f"{info_path} does not exist. Put a dataset_info.json in the dataset_dir "
            f"({info_path.parent}), set dataset_dir to the folder that has one, or name data files directly."
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{info_path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path} must be a JSON object mapping dataset names to entries, "
                        f"got a {type(info).__name__}.")
    return info


def _resolve_one(name: str, registry: _Registry) -> DatasetAttr:
    # A registered name wins over a file of the same name: the entry says how to read it.
    if registry.exists and name in registry.entries():
        return parse_entry(name, registry.entries()[name], registry.dataset_dir, str(registry.info_path))
    if name.startswith("s3://"):
        return DatasetAttr(name=name, path=name, load_from="cloud_file", formatting="auto", origin="path")
    found = _find_path(name, registry.dataset_dir)
    if found is not None:
        return DatasetAttr(name=name, path=str(found.absolute()), formatting="auto", origin="path")
    raise _unknown_name_error(name, registry)


def _resolve_data_path(data_path: str) -> DatasetAttr:
    if data_path.startswith("s3://"):
        return DatasetAttr(name=data_path, path=data_path, load_from="cloud_file", formatting="auto",
                           origin="data_path")
    path = Path(data_path)
    if not path.is_file():
        raise DataError(f"data_path {data_path} is not a file. Give a JSON or JSONL file, or register the "
                        f"data in dataset_info.json and name it in `dataset`.")
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"data_path {data_path} must be a .json or .jsonl file; for other types name the "
                        f"file in `dataset` instead.")
    return DatasetAttr(name=data_path, path=str(path.absolute()), formatting="auto", origin="data_path")


def _find_path(name: str, dataset_dir: Path) -> Path | None:
    """A readable file or folder called `name`, relative to the working directory, then dataset_dir."""
    for candidate in (Path(name), dataset_dir / name):
        if candidate.is_dir() or (candidate.is_file() and candidate.suffix in READABLE_SUFFIXES):
            return candidate
    return None


def _unknown_name_error(name: str, registry: _Registry) -> DataError:
    looks_like_path = "/" in name or Path(name).suffix in READABLE_SUFFIXES
    if looks_like_path:
        where = (f"no readable file or folder at {name} "
                 f"(looked in the working directory and {registry.dataset_dir})")
        if Path(name).is_file():
            where = (f"{name} is a {Path(name).suffix or 'suffix-less'} file; readable types are "
                     f"{', '.join(READABLE_SUFFIXES)}")
        return DataError(f"Dataset {name!r}: {where}.")
    if not registry.exists:
        return DataError(f"Dataset {name!r} is not a file, and {registry.info_path} does not exist to "
                         f"register it. Set dataset_dir to the folder holding dataset_info.json.")
    known = sorted(registry.entries())
    return DataError(
        f"Dataset {name!r} is not in {registry.info_path}.{did_you_mean(name, known)} "
        f"Known datasets: {', '.join(known) or '(none)'}. Register it there or name a data file directly."
    )


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """` Did you mean 'x'?` for the closest choice, or "" if none is close (difflib ratio ≥ 0.6).

    Args:
        word (`str`): what the person wrote.
        choices (`list[str]` or `tuple[str, ...]`): the valid spellings.
    """
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_entry(name: str, entry: Any, dataset_dir: str | Path, origin: str = DATASET_INFO) -> DatasetAttr:
    """Validate one dataset_info.json entry and build its `DatasetAttr`.

    Every problem in the entry is listed in one error, so a person fixes them in one pass.

    Args:
        name (`str`): the entry's key.
        entry (`Any`): the entry's value (should be an object).
        dataset_dir (`str` or `Path`): folder the entry's relative paths are under.
        origin (`str`, *optional*, defaults to `"dataset_info.json"`):
            The dataset_info.json path, for messages.

    Raises:
        DataError: unknown or mistyped keys, no source, a missing file, or a hub-only entry with no
            local copy.
    """
    where = f"{origin}, dataset {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: an entry must be a JSON object, got {type(entry).__name__}.")
    problems = _check_keys(entry, _ENTRY_KEYS, "key")
    problems += _check_types(entry)
    columns, column_problems = _build(Columns, entry.get("columns"), "columns")
    tags, tag_problems = _build(Tags, entry.get("tags"), "tags")
    problems += column_problems + tag_problems
    if not any(key in entry for key in _SOURCE_KEYS):
        problems.append(f"no data source: give one of {', '.join(_SOURCE_KEYS)}")
    media = [key for key in ("images", "videos", "audios") if getattr(columns, key)]
    if media:
        problems.append(f"columns {', '.join(media)}: multimodal models are not supported yet; train on a "
                        f"text-only dataset, or remove {', '.join(f'columns.{k}' for k in media)} to train on the "
                        f"text alone")
    if problems:
        raise DataError(f"{where}:\n" + "\n".join(f"  - {p}" for p in problems))

    load_from, path, hub_url = _locate(name, entry, Path(dataset_dir), where)
    return DatasetAttr(
        name=name,
        path=path,
        load_from=load_from,
        formatting=entry.get("formatting", "alpaca"),
        ranking=entry.get("ranking", False),
        subset=entry.get("subset"),
        split=entry.get("split", "train"),
        folder=entry.get("folder"),
        num_samples=entry.get("num_samples"),
        columns=columns,
        tags=tags,
        hub_url=hub_url,
        origin=origin,
    )


def _check_keys(given: dict[str, Any], allowed: tuple[str, ...], what: str) -> list[str]:
    return [
        f"unknown {what} {key!r}.{did_you_mean(key, allowed)} Allowed: {', '.join(allowed)}"
        for key in given
        if key not in allowed
    ]


def _check_types(entry: dict[str, Any]) -> list[str]:
    problems = []
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
        problems.append(f"formatting must be 'alpaca' or 'sharegpt', got {entry['formatting']!r}")
    if not isinstance(entry.get("ranking", False), bool):
        problems.append(f"ranking must be true or false, got {entry['ranking']!r}")
    num = entry.get("num_samples")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
        problems.append(f"num_samples must be a positive integer, got {num!r}")
    for key in (*_SOURCE_KEYS, "subset", "split", "folder"):
        if key in entry and entry[key] is not None and not isinstance(entry[key], str):
            problems.append(f"{key} must be a string, got {entry[key]!r}")
    return problems


def _build(cls: type[Columns] | type[Tags], given: Any, key: str) -> tuple[Any, list[str]]:
    """`cls` with the entry's overrides, and the problems found in them."""
    if given is None:
        return cls(), []
    if not isinstance(given, dict):
        return cls(), [f"{key} must be an object, got {type(given).__name__}"]
    allowed = tuple(f.name for f in fields(cls))
    problems = _check_keys(given, allowed, f"{key} key")
    problems += [
        f"{key}.{k} must be a string, got {v!r}"
        for k, v in given.items()
        if k in allowed and v is not None and not isinstance(v, str)
    ]
    if problems:
        return cls(), problems
    return cls(**given), []


def _locate(
    name: str, entry: dict[str, Any], dataset_dir: Path, where: str
) -> tuple[LoadFrom, str, str | None]:
    """(load_from, path, hub_url) for an entry; hub entries must have a local copy."""
    hub_key = next((key for key in _HUB_KEYS if entry.get(key)), None)
    if hub_key is not None:
        return _local_hub_copy(name, entry, hub_key, dataset_dir, where)
    if entry.get("script_url"):
        return _script_folder(entry["script_url"], dataset_dir, where)
    uri = entry.get("cloud_file_name") or entry.get("file_name") or ""
    if not uri:
        raise DataError(f"{where}: file_name is empty; give the data file's path relative to {dataset_dir}.")
    if "://" in uri:
        if not uri.startswith("s3://"):
            raise DataError(f"{where}: {uri} — only s3:// URIs are supported for remote files.")
        return "cloud_file", uri, None
    path = dataset_dir / uri
    if not path.exists():
        raise DataError(f"{where}: file_name {uri!r} does not exist (looked for {path}).")
    return "file", uri, None


def _local_hub_copy(
    name: str, entry: dict[str, Any], hub_key: str, dataset_dir: Path, where: str
) -> tuple[LoadFrom, str, str | None]:
    hub_id = entry[hub_key]
    # A copy downloaded by hand may sit where file_name points, under the hub id, or under the name.
    candidates = [c for c in (entry.get("file_name"), hub_id, name) if c]
    for candidate in candidates:
        path = Path(candidate)
        if entry.get("folder") and (dataset_dir / path).is_dir():
            path = path / entry["folder"]
        if (dataset_dir / path).exists():
            return "file", str(_subset_folder(path, entry.get("subset"), dataset_dir, where)), hub_id
    target = dataset_dir / hub_id
    how = (f"`hf download {hub_id} --repo-type dataset --local-dir {target}`" if hub_key == "hf_hub_url"
           else f"`modelscope download --dataset {hub_id} --local_dir {target}`" if hub_key == "ms_hub_url"
           else "the hub's download tool")
    why = "kubetune downloads from the Hugging Face Hub only"  # ModelScope's and Modelers' clients are not deps
    if hub_key == "hf_hub_url":
        from kubetune.data.hub_download import HubRepoMissing, HubUnreachable, download_dataset_files

        folder = entry.get("folder")
        try:
            snapshot = download_dataset_files(hub_id, [f"{folder}/*"] if folder else None)
        except HubRepoMissing as err:
            raise DataError(f"{where}: the Hugging Face Hub has no dataset repo {hub_id!r} ({err}); check "
                            f"hf_hub_url, or set HF_TOKEN if it is private or gated.") from err
        except HubUnreachable as err:
            why = str(err)
        else:
            path = snapshot / folder if folder else snapshot
            return "file", str(_subset_folder(path, entry.get("subset"), dataset_dir, where)), hub_id
    raise DataError(
        f"{where}: {hub_key} {hub_id!r} is on the {_HUB_KEYS[hub_key]}, which is not reachable from here ({why}). "
        f"On a machine that can reach it, download it into {target} (e.g. {how}) and copy that folder here, "
        f"or upload the files to S3 and set \"file_name\": \"s3://<bucket>/<key>\". "
        f"Looked for a local copy at: {', '.join(str(dataset_dir / c) for c in candidates)}."
    )


def _subset_folder(path: Path, subset: str | None, dataset_dir: Path, where: str) -> Path:
    """A hub copy's `subset` (the hub's config name): the copy's sub-folder of that name, as hub datasets lay
    their configs out (`<copy>/<subset>/train-00000-of-00001.parquet`). Reading the whole copy instead would
    mix every subset into one dataset."""
    if not subset:
        return path
    for folder in (path / subset, path / "data" / subset):
        if (dataset_dir / folder).is_dir():
            return folder
    raise DataError(
        f"{where}: subset {subset!r} was asked for, but the local copy {dataset_dir / path} has no folder "
        f"{subset!r} (nor data/{subset}). Point file_name at that subset's files (a file or folder under "
        f"{dataset_dir}) and remove subset, or remove subset to read the whole copy."
    )


def _script_folder(script_url: str, dataset_dir: Path, where: str) -> tuple[LoadFrom, str, str | None]:
    # Loading scripts are gone from `datasets` (4.0+); a folder of data files is still readable.
    folder = dataset_dir / script_url
    if folder.is_dir() and any(p.suffix in READABLE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        return "file", script_url, None
    raise DataError(
        f"{where}: script_url {script_url!r} needs a dataset loading script, which `datasets` no longer "
        f"runs. Convert the data to json/jsonl/csv/parquet files in {folder} (or point file_name at them)."
    )
