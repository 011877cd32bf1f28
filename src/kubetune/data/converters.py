"""Convert source rows (alpaca or sharegpt, plain, ranking or KTO) into `Sample`s.

What each stage kind makes of a row:

- `sft`: `prompt` = earlier turns + the last prompt turn, `response` = [the assistant answer].
- `ranking` (reward model, DPO): `response` = [chosen, rejected]. Alpaca rows hold them as strings in
  the `chosen`/`rejected` columns; sharegpt rows end their `conversations` with the prompt and hold the
  two answers as message objects (a plain string is accepted too).
- `kto`: like sft, plus `kto_tag` from its column (true/false, 1/0, "yes"/"no").
- `pt` (pretraining): the text is the alpaca prompt column (`columns: {prompt: text}`), with the
  `query` column appended after a newline if present; the sample is `prompt=[]`,
  `response=[assistant: text]`, so the whole text is trained on. Sharegpt data cannot be used for pt.

Alpaca: `instruction` and `input` are joined with a newline into the user turn; `history` is a list of
`[query, answer]` pairs placed before it. Sharegpt: turns alternate a prompt role (user/observation) and a
response role (assistant/function), starting with a prompt role; a system turn is allowed first and
overrides the `system` column. In CSV files, list columns (`history`, `conversations`) may hold JSON text.

A row that cannot be used is dropped and reported as a `BadRow` with its row number and the reason
(missing column, wrong turn order, empty response, non-string content, ...). With `on_bad_rows="error"`
any bad row raises `DataError` listing them; a dataset left with no usable rows always raises, since that
is nearly always a wrong `formatting` or `columns` setting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kubetune.data.readers import MAX_ROW_BYTES, BadRow, ReadResult, too_large_reason
from kubetune.data.registry import Columns, DataError, DatasetAttr, Tags
from kubetune.data.schema import PROMPT_ROLES, RESPONSE_ROLES, Message, Role, Sample

StageKind = Literal["sft", "pt", "ranking", "kto"]
OnBadRows = Literal["drop", "error"]
STAGE_KINDS = ("sft", "pt", "ranking", "kto")

__all__ = ["BadRow", "ConversionResult", "convert", "detect_format", "STAGE_KINDS"]


class _RowError(Exception):
    """Why one row cannot be used; `convert` turns it into a `BadRow`."""


@dataclass
class ConversionResult:
    """The samples of one dataset and the rows that were dropped.

    Attributes:
        samples (`list[Sample]`): converted samples in source order; each keeps its `row` and `source`.
        bad_rows (`list[BadRow]`): dropped rows, sorted by source and row.
        dataset (`str`): the dataset's name, for reports.
        source (`str`): the file or folder read, for reports.
        total_rows (`int`): rows in the source, bad ones included.
        attr (`DatasetAttr`): the dataset as converted (formatting and columns filled in if auto-detected).
    """

    samples: list[Sample] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    dataset: str = ""
    source: str = ""
    total_rows: int = 0
    attr: DatasetAttr | None = None

    def report(self, limit: int = 10) -> str:
        """A readable summary: sample count, bad-row count, and the first `limit` bad rows with reasons.

        Args:
            limit (`int`, *optional*, defaults to 10):
                How many bad rows to list, one per line; the rest are counted.
        """
        name = self.dataset
        if self.source and self.source != self.dataset:
            name = f"{self.dataset} ({self.source})"
        head = f"{name}: {_count(len(self.samples), 'sample')} from {_count(self.total_rows, 'row')}"
        if not self.bad_rows:
            return f"{head}, no bad rows."
        lines = [f"{head}; {_count(len(self.bad_rows), 'bad row')} dropped (row numbers are 0-based):"]
        # Name the file on each line only when a folder spread the bad rows over several files.
        per_file = any(bad.source != self.source for bad in self.bad_rows)
        for bad in self.bad_rows[:limit]:
            lines.append(f"  {bad.source + ' ' if per_file else ''}row {bad.row}: {bad.reason}")
        if len(self.bad_rows) > limit:
            lines.append(f"  ... and {len(self.bad_rows) - limit} more.")
        return "\n".join(lines)


def convert(
    rows: Sequence[Any] | ReadResult,
    attr: DatasetAttr,
    stage_kind: StageKind,
    *,
    on_bad_rows: OnBadRows = "drop",
    source: str = "",
) -> ConversionResult:
    """Convert a dataset's rows into `Sample`s for one kind of stage.

    Args:
        rows (`ReadResult` or `Sequence`):
            A `ReadResult` from `read_rows` (keeps file names, row numbers and unparseable lines), or
            plain rows, numbered from 0.
        attr (`DatasetAttr`):
            The dataset, from `resolve_datasets`; `formatting="auto"` is decided from the rows.
        stage_kind (`str`):
            `"sft"`, `"pt"`, `"ranking"` (rm, dpo) or `"kto"`.
        on_bad_rows (`str`, *optional*, defaults to `"drop"`):
            `"drop"` drops bad rows and lists them in the result; `"error"` raises on any.
        source (`str`, *optional*, defaults to `attr.path`):
            File name for reports when `rows` is a plain list.

    Returns:
        `ConversionResult`: the samples and the dropped rows.

    Raises:
        DataError: the dataset does not fit the stage kind (e.g. non-ranking data for DPO), any bad row
            with `on_bad_rows="error"`, or no usable row at all.
    """
    if on_bad_rows not in ("drop", "error"):
        raise ValueError(f"on_bad_rows must be 'drop' or 'error', got {on_bad_rows!r}")
    read = rows if isinstance(rows, ReadResult) else _numbered(rows, source or attr.path)
    if attr.formatting == "auto":
        attr = detect_format(attr, read.rows)
    _check_fits(attr, stage_kind)
    to_sample = _alpaca_sample if attr.formatting == "alpaca" else _sharegpt_sample

    result = ConversionResult(dataset=attr.name, source=read.source, attr=attr,
                              total_rows=len(read.rows) + len(read.bad_rows))
    bad = list(read.bad_rows)
    for row, (src, number) in zip(read.rows, read.origins, strict=True):
        if (size := _text_size(row)) > MAX_ROW_BYTES:  # rows of JSON lists, CSV, parquet: before tokenising
            bad.append(BadRow(number, too_large_reason(size, unit="characters"), src))
            continue
        try:
            sample = to_sample(row, attr, stage_kind)
        except _RowError as e:
            bad.append(BadRow(number, str(e), src))
            continue
        sample.row, sample.source = number, src
        result.samples.append(sample)
    result.bad_rows = sorted(bad, key=lambda b: (b.source, b.row))
    _raise_if_unusable(result, attr, on_bad_rows)
    return result


def _text_size(row: Any) -> int:
    """Characters of text in a row: its keys and strings, nested ones too."""
    size, stack = 0, [row]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return size


def _numbered(rows: Sequence[Any], source: str) -> ReadResult:
    return ReadResult(rows=list(rows), origins=[(source, i) for i in range(len(rows))], source=source)


def _raise_if_unusable(result: ConversionResult, attr: DatasetAttr, on_bad_rows: OnBadRows) -> None:
    if not result.samples and not result.total_rows:
        raise DataError(f"No usable rows in dataset {attr.name!r}: {result.source or attr.path} holds no rows at all "
                        f"(an empty file?).")
    if not result.samples:
        hint = (f" Check `formatting` ({attr.formatting}) and `columns` for {attr.name!r}"
                f"{' in ' + attr.origin if attr.origin.endswith('.json') else ''}.")
        raise DataError(f"No usable rows in dataset {attr.name!r}.{hint if result.bad_rows else ''}\n"
                        + result.report(limit=20))
    if result.bad_rows and on_bad_rows == "error":
        raise DataError(f"Dataset {attr.name!r} has bad rows; fix them, or pass on_bad_rows='drop' to "
                        f"skip them.\n" + result.report(limit=20))


def _check_fits(attr: DatasetAttr, kind: str) -> None:
    """Whole-dataset mismatches are one error, not a bad-row report on every row."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"stage_kind must be one of {', '.join(STAGE_KINDS)}, got {kind!r}")
    where = f" in {attr.origin}" if attr.origin.endswith(".json") else ""
    if kind == "ranking" and not attr.ranking:
        raise DataError(f"Dataset {attr.name!r} is not a ranking dataset, but reward-model and DPO stages "
                        f"need a chosen and a rejected response per row. Set \"ranking\": true and its "
                        f"chosen/rejected columns{where}, or use a preference dataset.")
    if kind != "ranking" and attr.ranking:
        raise DataError(f"Dataset {attr.name!r} is a ranking dataset (chosen/rejected pairs): it fits the "
                        f"rm and dpo stages, not {kind}.")
    if kind == "pt" and attr.formatting == "sharegpt":
        raise DataError(f"Dataset {attr.name!r} is sharegpt, but pretraining reads plain text: use an alpaca "
                        f"dataset with \"columns\": {{\"prompt\": \"text\"}}{where}.")
    if kind == "pt" and not attr.columns.prompt:
        raise DataError(f"Dataset {attr.name!r} has no prompt column to read text from for pretraining; "
                        f"set \"columns\": {{\"prompt\": \"text\"}}{where}.")


_OPENAI_TAGS = Tags(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant",
                    observation_tag="tool", function_tag="function_call", system_tag="system")


def detect_format(attr: DatasetAttr, rows: Sequence[Any]) -> DatasetAttr:
    """Decide formatting and columns of a dataset named by path, from its first object row.

    Sharegpt if the row holds a `conversations` or `messages` list (OpenAI-style messages with
    `role`/`content`, roles user/assistant/system and `tool` for tool results, get matching tags); else
    alpaca, reading `text` as the prompt when there is no `instruction` (plain-text files). Optional
    columns (`system`, `tools`, `history`, `chosen`/`rejected`, `kto_tag`) are used when present;
    `chosen` and `rejected` together make it a ranking dataset.

    Args:
        attr (`DatasetAttr`): the dataset; returned changed only if its formatting is `"auto"`.
        rows (`Sequence`): its rows.

    Returns:
        `DatasetAttr`: a copy with formatting, ranking, columns and tags set.
    """
    if attr.formatting != "auto":
        return attr
    first = next((row for row in rows if isinstance(row, dict)), {})
    optional = ("system", "tools", "chosen", "rejected", "kto_tag")
    columns = Columns(**{col: col for col in optional if col in first})
    ranking = "chosen" in first and "rejected" in first
    messages = next((key for key in ("conversations", "messages") if isinstance(first.get(key), list)), None)
    if messages is not None:
        columns.messages = messages
        turns = first[messages]
        openai = bool(turns) and isinstance(turns[0], dict) and "role" in turns[0] and "content" in turns[0]
        tags = _OPENAI_TAGS if openai else Tags()
        return replace(attr, formatting="sharegpt", ranking=ranking, columns=columns, tags=tags)
    if "history" in first:
        columns.history = "history"
    if "instruction" not in first and "text" in first:
        columns.prompt = "text"
    return replace(attr, formatting="alpaca", ranking=ranking, columns=columns)


# ---- alpaca ---------------------------------------------------------------------------------------


def _alpaca_sample(row: Any, attr: DatasetAttr, kind: str) -> Sample:
    row = _object(row)
    cols = attr.columns
    if kind == "pt":
        return Sample(prompt=[], response=[Message("assistant", _alpaca_query(row, cols))])
    prompt = [*_history(row, cols.history), Message("user", _alpaca_query(row, cols))]
    if kind == "ranking":
        chosen, rejected = _alpaca_pair(row, cols)
        response = [Message("assistant", chosen), Message("assistant", rejected)]
    else:
        response = [Message("assistant", _text(row, cols.response or "output", nonempty=True))]
    return Sample(
        prompt=prompt,
        response=response,
        system=_optional_text(row, cols.system),
        tools=_tools(row, cols.tools),
        kto_tag=_kto_tag(row, cols.kto_tag or "kto_tag") if kind == "kto" else None,
    )


def _alpaca_query(row: dict[str, Any], cols: Columns) -> str:
    """Instruction, then input on a new line; either may be empty, not both."""
    instruction = _text(row, cols.prompt or "instruction")
    extra = _optional_text(row, cols.query)
    content = "\n".join(part for part in (instruction, extra) if part)
    if not content.strip():
        both = f"{cols.prompt!r} and {cols.query!r} are" if cols.query else f"{cols.prompt!r} is"
        raise _RowError(f"empty prompt: {both} empty")
    return content


def _history(row: dict[str, Any], column: str | None) -> list[Message]:
    if not column or row.get(column) is None:
        return []
    messages: list[Message] = []
    for i, pair in enumerate(_list(row, column)):
        ok = isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        if not ok:
            raise _RowError(f"{column}[{i}] must be a [query, answer] pair of strings, got {_short(pair)}")
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    return messages


def _alpaca_pair(row: dict[str, Any], cols: Columns) -> tuple[str, str]:
    # Older LLaMA-Factory data kept [chosen, rejected] in the output column; accept it when no
    # chosen column is configured or present.
    legacy = row.get(cols.response or "output")
    if not cols.chosen and "chosen" not in row and isinstance(legacy, list) and len(legacy) == 2:
        if not all(isinstance(x, str) and x.strip() for x in legacy):
            raise _RowError(f"{cols.response!r} must hold two non-empty strings [chosen, rejected]")
        return legacy[0], legacy[1]
    return (_text(row, cols.chosen or "chosen", nonempty=True),
            _text(row, cols.rejected or "rejected", nonempty=True))


# ---- sharegpt -------------------------------------------------------------------------------------


def _sharegpt_sample(row: Any, attr: DatasetAttr, kind: str) -> Sample:
    row = _object(row)
    column, tags = attr.columns.messages, attr.tags
    turns = _list(row, column)
    system = _optional_text(row, attr.columns.system)
    first = 0
    if turns and isinstance(turns[0], dict) and turns[0].get(tags.role_tag) == tags.system_tag:
        system, first = _content(turns[0], f"{column}[0]", tags), 1
    messages = [_turn(turns[i], f"{column}[{i}]", tags) for i in range(first, len(turns))]
    _check_order(messages, column, first, tags)

    if kind == "ranking":
        if len(messages) % 2 == 0:
            raise _RowError(f"{column} ends with a response turn; for ranking it must end with the prompt, "
                            f"and the chosen/rejected columns hold the two responses")
        response = [_ranked(row, attr.columns.chosen or "chosen", tags),
                    _ranked(row, attr.columns.rejected or "rejected", tags)]
        prompt = messages
    else:
        if not messages:
            raise _RowError(f"{column} has no turns")
        if len(messages) % 2 == 1:
            last = f"{column}[{first + len(messages) - 1}]"
            raise _RowError(f"{last} is the last turn and is a prompt turn; a conversation must end with a "
                            f"{tags.assistant_tag} or {tags.function_tag} turn to learn from")
        if not messages[-1].content.strip():
            raise _RowError(f"{column}[{first + len(messages) - 1}] (the response) is empty")
        prompt, response = messages[:-1], [messages[-1]]
    return Sample(
        prompt=prompt,
        response=response,
        system=system,
        tools=_tools(row, attr.columns.tools),
        kto_tag=_kto_tag(row, attr.columns.kto_tag or "kto_tag") if kind == "kto" else None,
    )


def _role_names(tags: Tags) -> dict[str, Role]:
    return {tags.user_tag: "user", tags.assistant_tag: "assistant",
            tags.observation_tag: "observation", tags.function_tag: "function"}


def _turn(turn: Any, ref: str, tags: Tags) -> Message:
    if not isinstance(turn, dict):
        raise _RowError(f"{ref} must be an object with {tags.role_tag!r} and {tags.content_tag!r}, "
                        f"got {_kind(turn)}")
    if tags.role_tag not in turn:
        raise _RowError(f"{ref} has no {tags.role_tag!r} key (keys: {_keys(turn)})")
    name = turn[tags.role_tag]
    if name == tags.system_tag:
        raise _RowError(f"{ref} is a {tags.system_tag!r} turn; only the first turn may be one")
    roles = _role_names(tags)
    if name not in roles:
        raise _RowError(f"{ref} has unknown role {_short(name)}; expected one of {', '.join(roles)} "
                        f"(or {tags.system_tag} as the first turn)")
    return Message(roles[name], _content(turn, ref, tags))


def _content(turn: dict[str, Any], ref: str, tags: Tags) -> str:
    if tags.content_tag not in turn:
        raise _RowError(f"{ref} has no {tags.content_tag!r} key (keys: {_keys(turn)})")
    content = turn[tags.content_tag]
    if not isinstance(content, str):
        raise _RowError(f"{ref}.{tags.content_tag} must be a string, got {_kind(content)}")
    return content


def _check_order(messages: list[Message], column: str, offset: int, tags: Tags) -> None:
    names = {role: name for name, role in _role_names(tags).items()}
    prompt = f"prompt turn ({' or '.join(names[r] for r in PROMPT_ROLES)})"
    response = f"response turn ({' or '.join(names[r] for r in RESPONSE_ROLES)})"
    for k, message in enumerate(messages):
        want_prompt = k % 2 == 0
        if (message.role in PROMPT_ROLES) != want_prompt:
            raise _RowError(f"{column}[{offset + k}] is {names[message.role]!r} where a "
                            f"{prompt if want_prompt else response} belongs; turns alternate {prompt} and "
                            f"{response}, starting with a prompt turn")


def _ranked(row: dict[str, Any], column: str, tags: Tags) -> Message:
    value = _field(row, column)
    if isinstance(value, str):
        message = Message("assistant", value)
    else:
        message = _turn(value, column, tags)
        if message.role not in RESPONSE_ROLES:
            raise _RowError(f"{column} must be a {tags.assistant_tag} or {tags.function_tag} message, "
                            f"got {value[tags.role_tag]!r}")
    if not message.content.strip():
        raise _RowError(f"{column} is empty")
    return message


# ---- fields ---------------------------------------------------------------------------------------


def _object(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _RowError(f"row is {_kind(row)}, expected an object with named columns")
    return row


def _field(row: dict[str, Any], column: str) -> Any:
    if column not in row:
        raise _RowError(f"missing column {column!r} (row has: {_keys(row)})")
    if row[column] is None:
        raise _RowError(f"column {column!r} is null")
    return row[column]


def _text(row: dict[str, Any], column: str, *, nonempty: bool = False) -> str:
    value = _field(row, column)
    if not isinstance(value, str):
        raise _RowError(f"column {column!r} must be a string, got {_kind(value)}")
    if nonempty and not value.strip():
        raise _RowError(f"column {column!r} is empty")
    return value


def _optional_text(row: dict[str, Any], column: str | None) -> str:
    if not column or row.get(column) is None:
        return ""
    return _text(row, column)


def _list(row: dict[str, Any], column: str) -> list[Any]:
    value = _field(row, column)
    if isinstance(value, str):
        # CSV cells are text; a list column may hold it as JSON.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _RowError(f"column {column!r} must be a list, got a string that is not JSON") from None
    if not isinstance(value, list):
        raise _RowError(f"column {column!r} must be a list, got {_kind(value)}")
    return value


def _tools(row: dict[str, Any], column: str | None) -> str:
    if not column or row.get(column) is None:
        return ""
    value = row[column]
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    raise _RowError(f"column {column!r} must be a JSON string, list or object, got {_kind(value)}")


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _kto_tag(row: dict[str, Any], column: str) -> bool:
    value = _field(row, column)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
        return value.strip().lower() in _TRUE
    raise _RowError(f"column {column!r} must be true or false, got {_short(value)}")


_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                           int: "a number", float: "a number", type(None): "null"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _keys(row: dict[str, Any], limit: int = 8) -> str:
    keys = [str(k) for k in row]
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "") if keys else "nothing"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

