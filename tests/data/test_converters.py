"""Rows → Samples for every format and stage kind, and bad rows reported with their exact row and reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.data.converters import ConversionResult, convert, detect_format
from kubetune.data.readers import BadRow, read_file
from kubetune.data.registry import Columns, DataError, DatasetAttr, Tags
from kubetune.data.schema import Message, Sample


def U(text: str) -> Message:
    return Message("user", text)


def A(text: str) -> Message:
    return Message("assistant", text)


def alpaca(**kwargs: Any) -> DatasetAttr:
    return DatasetAttr(name="ds", path="ds.json", **kwargs)


def sharegpt(**kwargs: Any) -> DatasetAttr:
    return DatasetAttr(name="chat", path="chat.json", formatting="sharegpt", **kwargs)


def bad(result: ConversionResult) -> list[tuple[int, str]]:
    return [(b.row, b.reason) for b in result.bad_rows]


# ---- alpaca -----------------------------------------------------------------------------------------


def test_alpaca_sft_joins_input_adds_history_system_and_tools() -> None:
    cols = Columns(history="history", system="system", tools="tools")
    rows = [
        {"instruction": "Convert 3 hours to minutes.", "input": "", "output": "Answer: 180 minutes."},
        {"instruction": "Reverse:", "input": "a, b", "output": "Reversed: b, a.", "system": "Be brief.",
         "history": [["Hi", "Hello!"], ["Who are you?", "Kubi."]], "tools": [{"name": "rev"}]},
        {"instruction": "No input column here.", "output": "Fine."},
    ]
    result = convert(rows, alpaca(columns=cols), "sft")
    assert result.bad_rows == []
    assert result.samples == [
        Sample([U("Convert 3 hours to minutes.")], [A("Answer: 180 minutes.")], row=0),
        Sample([U("Hi"), A("Hello!"), U("Who are you?"), A("Kubi."), U("Reverse:\na, b")],
               [A("Reversed: b, a.")], system="Be brief.", tools='[{"name": "rev"}]', row=1),
        Sample([U("No input column here.")], [A("Fine.")], row=2),
    ]
    assert [s.source for s in result.samples] == ["ds.json"] * 3


def test_alpaca_custom_columns() -> None:
    attr = alpaca(columns=Columns(prompt="question", query=None, response="answer"))
    result = convert([{"question": "q", "input": "ignored", "answer": "a"}], attr, "sft")
    assert result.samples == [Sample([U("q")], [A("a")], row=0)]


def test_alpaca_bad_rows_have_row_numbers_and_reasons() -> None:
    rows = [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer"},
        {"instruction": "empty answer", "output": "  "},
        {"instruction": "", "input": "", "output": "x"},
        {"instruction": 5, "output": "x"},
        ["not", "an", "object"],
        {"instruction": "q", "output": None},
        {"instruction": "q", "output": "a", "history": [["only one"]]},
        {"instruction": "q", "output": "a", "history": "not json"},
        {"instruction": "q", "output": "a", "system": ["x"]},
    ]
    result = convert(rows, alpaca(columns=Columns(history="history", system="system")), "sft")
    assert [s.row for s in result.samples] == [0]
    assert bad(result) == [
        (1, "missing column 'output' (row has: instruction)"),
        (2, "column 'output' is empty"),
        (3, "empty prompt: 'instruction' and 'input' are empty"),
        (4, "column 'instruction' must be a string, got a number"),
        (5, "row is a list, expected an object with named columns"),
        (6, "column 'output' is null"),
        (7, "history[0] must be a [query, answer] pair of strings, got ['only one']"),
        (8, "column 'history' must be a list, got a string that is not JSON"),
        (9, "column 'system' must be a string, got a list"),
    ]


def test_alpaca_ranking_reads_chosen_and_rejected_or_the_legacy_output_pair() -> None:
    rows = [
        {"instruction": "Greet Ana.", "input": "", "chosen": "Hello Ana!", "rejected": "hi"},
        {"instruction": "Old style", "output": ["good", "bad"]},
        {"instruction": "Missing", "chosen": "good"},
    ]
    result = convert(rows, alpaca(ranking=True), "ranking")
    assert result.samples == [
        Sample([U("Greet Ana.")], [A("Hello Ana!"), A("hi")], row=0),
        Sample([U("Old style")], [A("good"), A("bad")], row=1),
    ]
    assert bad(result) == [(2, "missing column 'rejected' (row has: instruction, chosen)")]


def test_alpaca_ranking_custom_columns() -> None:
    attr = alpaca(ranking=True, columns=Columns(chosen="good", rejected="bad"))
    result = convert([{"instruction": "q", "good": "+", "bad": "-"}], attr, "ranking")
    assert result.samples[0].response == [A("+"), A("-")]


def test_kto_tag_accepts_bool_like_values_only() -> None:
    tags = [True, False, "true", "No", 1, 0, "1", "maybe", 2, None]
    rows = [{"instruction": f"q{i}", "output": "a", "kto_tag": tag} for i, tag in enumerate(tags)]
    result = convert(rows, alpaca(columns=Columns(kto_tag="kto_tag")), "kto")
    assert [(s.row, s.kto_tag) for s in result.samples] == [
        (0, True), (1, False), (2, True), (3, False), (4, True), (5, False), (6, True)]
    assert bad(result) == [
        (7, "column 'kto_tag' must be true or false, got 'maybe'"),
        (8, "column 'kto_tag' must be true or false, got 2"),
        (9, "column 'kto_tag' is null"),
    ]
    assert result.samples[0] == Sample([U("q0")], [A("a")], kto_tag=True, row=0)


def test_pt_text_is_the_whole_response_with_an_empty_prompt() -> None:
    attr = alpaca(columns=Columns(prompt="text"))
    result = convert([{"text": "Kubeville has trams."}, {"text": ""}], attr, "pt")
    assert result.samples == [Sample([], [A("Kubeville has trams.")], row=0)]
    assert bad(result) == [(1, "empty prompt: 'text' and 'input' are empty")]
    text_only = alpaca(columns=Columns(prompt="text", query=None))
    no_query = convert([{"text": "x"}, {"text": " "}], text_only, "pt")
    assert bad(no_query) == [(1, "empty prompt: 'text' is empty")]


# ---- sharegpt ---------------------------------------------------------------------------------------


def turn(role: str, value: Any) -> dict[str, Any]:
    return {"from": role, "value": value}


def test_sharegpt_multi_turn_with_system_turn_tools_and_function_calls() -> None:
    call = '{"name": "convert", "arguments": {"hours": 3}}'
    rows = [
        {"conversations": [turn("system", "You are Kubi."), turn("human", "Hi"), turn("gpt", "Hello!"),
                           turn("human", "Convert 3 hours."), turn("function_call", call),
                           turn("observation", "180"), turn("gpt", "Answer: 180 minutes.")],
         "tools": '[{"name": "convert"}]'},
        {"conversations": [turn("human", "Who are you?"), turn("gpt", "Kubi.")],
         "system": "From the column."},
    ]
    result = convert(rows, sharegpt(columns=Columns(system="system", tools="tools")), "sft")
    assert result.bad_rows == []
    assert result.samples == [
        Sample([U("Hi"), A("Hello!"), U("Convert 3 hours."), Message("function", call),
                Message("observation", "180")], [A("Answer: 180 minutes.")],
               system="You are Kubi.", tools='[{"name": "convert"}]', row=0),
        Sample([U("Who are you?")], [A("Kubi.")], system="From the column.", row=1),
    ]


def test_sharegpt_bad_rows_name_the_turn() -> None:
    rows = [
        {"conversations": [turn("human", "a"), turn("gpt", "b")]},
        {"conversations": [turn("human", "a"), turn("human", "b"), turn("gpt", "c")]},
        {"conversations": [turn("gpt", "b")]},
        {"conversations": [turn("human", "a"), turn("gpt", "b"), turn("human", "c")]},
        {"conversations": [turn("human", "a"), turn("bot", "b")]},
        {"conversations": [turn("human", "a"), turn("system", "s"), turn("gpt", "b")]},
        {"conversations": [turn("human", "a"), turn("gpt", 7)]},
        {"conversations": [turn("human", "a"), turn("gpt", "")]},
        {"conversations": []},
        {"messages": []},
        {"conversations": [turn("human", "a"), "gpt: b"]},
        {"conversations": [{"role": "user", "content": "a"}]},
    ]
    result = convert(rows, sharegpt(), "sft")
    assert [s.row for s in result.samples] == [0]
    order = ("turns alternate prompt turn (human or observation) and response turn (gpt or function_call), "
             "starting with a prompt turn")
    assert bad(result) == [
        (1, f"conversations[1] is 'human' where a response turn (gpt or function_call) belongs; {order}"),
        (2, f"conversations[0] is 'gpt' where a prompt turn (human or observation) belongs; {order}"),
        (3, "conversations[2] is the last turn and is a prompt turn; a conversation must end with a gpt "
            "or function_call turn to learn from"),
        (4, "conversations[1] has unknown role 'bot'; expected one of human, gpt, observation, function_call "
            "(or system as the first turn)"),
        (5, "conversations[1] is a 'system' turn; only the first turn may be one"),
        (6, "conversations[1].value must be a string, got a number"),
        (7, "conversations[1] (the response) is empty"),
        (8, "conversations has no turns"),
        (9, "missing column 'conversations' (row has: messages)"),
        (10, "conversations[1] must be an object with 'from' and 'value', got a string"),
        (11, "conversations[0] has no 'from' key (keys: role, content)"),
    ]


def test_sharegpt_custom_tags() -> None:
    tags = Tags(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant")
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]}]
    result = convert(rows, sharegpt(columns=Columns(messages="messages"), tags=tags), "sft")
    assert result.samples == [Sample([U("q")], [A("a")], system="S", row=0)]


def test_sharegpt_ranking_ends_with_the_prompt_and_has_response_objects() -> None:
    rows = [
        {"conversations": [turn("human", "q")], "chosen": turn("gpt", "good"),
         "rejected": turn("gpt", "bad")},
        {"conversations": [turn("human", "q")], "chosen": "plain good",
         "rejected": turn("function_call", "{}")},
        {"conversations": [turn("human", "q"), turn("gpt", "a")], "chosen": turn("gpt", "x"),
         "rejected": turn("gpt", "y")},
        {"conversations": [turn("human", "q")], "chosen": turn("human", "x"), "rejected": turn("gpt", "y")},
        {"conversations": [turn("human", "q")], "chosen": turn("gpt", "x"), "rejected": turn("gpt", " ")},
    ]
    result = convert(rows, sharegpt(ranking=True), "ranking")
    assert result.samples == [
        Sample([U("q")], [A("good"), A("bad")], row=0),
        Sample([U("q")], [A("plain good"), Message("function", "{}")], row=1),
    ]
    assert bad(result) == [
        (2, "conversations ends with a response turn; for ranking it must end with the prompt, and the "
            "chosen/rejected columns hold the two responses"),
        (3, "chosen must be a gpt or function_call message, got 'human'"),
        (4, "rejected is empty"),
    ]


def test_sharegpt_kto() -> None:
    rows = [{"conversations": [turn("human", "q"), turn("gpt", "a")], "label": "false"}]
    result = convert(rows, sharegpt(columns=Columns(kto_tag="label")), "kto")
    assert result.samples == [Sample([U("q")], [A("a")], kto_tag=False, row=0)]


def test_csv_cells_may_hold_json_lists(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    cell = json.dumps([turn("human", "q"), turn("gpt", "a")]).replace('"', '""')
    path.write_text(f'conversations\n"{cell}"\n')
    result = convert(read_file(path), sharegpt(), "sft")
    assert result.samples == [Sample([U("q")], [A("a")], row=0)]
    assert result.samples[0].source == str(path)


# ---- whole-dataset behaviour --------------------------------------------------------------------------


def test_report_counts_and_lists_the_first_bad_rows() -> None:
    rows = [{"instruction": "q", "output": "a"}] * 3 + [{"instruction": "q"}] * 12
    result = convert(rows, alpaca(), "sft")
    lines = result.report(limit=2).splitlines()
    assert lines == [
        "ds (ds.json): 3 samples from 15 rows; 12 bad rows dropped (row numbers are 0-based):",
        "  row 3: missing column 'output' (row has: instruction)",
        "  row 4: missing column 'output' (row has: instruction)",
        "  ... and 10 more.",
    ]
    good = convert(rows[:3], alpaca(), "sft")
    assert good.report() == "ds (ds.json): 3 samples from 3 rows, no bad rows."


def test_on_bad_rows_error_raises_with_every_row_listed() -> None:
    rows = [{"instruction": "q", "output": "a"}, {"instruction": "q"}, {"output": "a"}]
    with pytest.raises(DataError) as err:
        convert(rows, alpaca(), "sft", on_bad_rows="error")
    assert str(err.value).splitlines() == [
        "Dataset 'ds' has bad rows; fix them, or pass on_bad_rows='drop' to skip them.",
        "ds (ds.json): 1 sample from 3 rows; 2 bad rows dropped (row numbers are 0-based):",
        "  row 1: missing column 'output' (row has: instruction)",
        "  row 2: missing column 'instruction' (row has: output)",
    ]
    with pytest.raises(ValueError, match="on_bad_rows must be 'drop' or 'error'"):
        convert(rows, alpaca(), "sft", on_bad_rows="skip")  # type: ignore[arg-type]


def test_a_dataset_with_no_usable_row_is_an_error_that_points_at_the_settings() -> None:
    rows = [{"conversations": [turn("human", "q"), turn("gpt", "a")]}] * 2
    attr = alpaca(origin="data/dataset_info.json")
    with pytest.raises(DataError) as err:
        convert(rows, attr, "sft")
    first = str(err.value).splitlines()[0]
    assert first == ("No usable rows in dataset 'ds'. Check `formatting` (alpaca) and `columns` for 'ds' "
                     "in data/dataset_info.json.")
    with pytest.raises(DataError, match="No usable rows in dataset 'ds'"):
        convert([], alpaca(), "sft")


def test_unparseable_jsonl_lines_join_the_report_and_can_raise(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n{"instruction": \n{"instruction": "q"}\n')
    result = convert(read_file(path), alpaca(), "sft")
    assert result.total_rows == 3
    assert result.bad_rows == [
        BadRow(1, "line 2 is not valid JSON: Expecting value (column 17)", str(path)),
        BadRow(2, "missing column 'output' (row has: instruction)", str(path)),
    ]
    with pytest.raises(DataError, match="row 1: line 2 is not valid JSON"):
        convert(read_file(path), alpaca(), "sft", on_bad_rows="error")


def test_folder_reports_name_the_file_of_each_bad_row(tmp_path: Path) -> None:
    from kubetune.data.readers import read_folder

    (tmp_path / "a.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (tmp_path / "b.jsonl").write_text('{"instruction": "q"}\n')
    report = convert(read_folder(tmp_path), alpaca(), "sft").report()
    assert report.splitlines()[1] == (
        f"  {tmp_path / 'b.jsonl'} row 0: missing column 'output' (row has: instruction)")


@pytest.mark.parametrize(("attr", "kind", "message"), [
    (alpaca(), "ranking", "'ds' is not a ranking dataset, but reward-model and DPO stages need"),
    (alpaca(ranking=True), "sft",
     "'ds' is a ranking dataset (chosen/rejected pairs): it fits the rm and dpo stages, not sft"),
    (sharegpt(), "pt", "'chat' is sharegpt, but pretraining reads plain text"),
    (alpaca(columns=Columns(prompt=None)), "pt", "has no prompt column to read text from"),
])
def test_dataset_that_does_not_fit_the_stage_is_one_error(attr: DatasetAttr, kind: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        convert([{"instruction": "q", "output": "a"}], attr, kind)  # type: ignore[arg-type]
    assert message in str(err.value)


# ---- auto-detection (datasets named by path) -----------------------------------------------------------


def auto() -> DatasetAttr:
    return DatasetAttr(name="rows.json", path="/x/rows.json", formatting="auto", origin="path")


def test_detect_alpaca_with_optional_columns_and_plain_text() -> None:
    rows = [["junk"], {"instruction": "q", "output": "a", "history": [], "system": "s"}]
    attr = detect_format(auto(), rows)
    assert (attr.formatting, attr.ranking) == ("alpaca", False)
    assert (attr.columns.history, attr.columns.system, attr.columns.tools) == ("history", "system", None)
    text = detect_format(auto(), [{"text": "plain"}])
    assert text.columns.prompt == "text"
    result = convert([{"text": "Kubeville."}], auto(), "pt")
    assert result.samples == [Sample([], [A("Kubeville.")], row=0)]
    assert result.attr is not None and result.attr.formatting == "alpaca"


def test_detect_sharegpt_and_openai_messages_and_ranking() -> None:
    chat = detect_format(auto(), [{"conversations": [turn("human", "q")], "chosen": {}, "rejected": {}}])
    assert (chat.formatting, chat.ranking, chat.columns.messages, chat.tags) == (
        "sharegpt", True, "conversations", Tags())
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                          {"role": "tool", "content": "r"}]}]
    openai = detect_format(auto(), rows)
    tags = openai.tags
    assert (openai.columns.messages, tags.role_tag, tags.user_tag, tags.observation_tag) == (
        "messages", "role", "user", "tool")
    rows[0]["messages"] += [{"role": "assistant", "content": "a"}]
    # user, tool(observation) in a row is a wrong order: the converter says which turn.
    assert "messages[2] is 'tool' where a response turn (assistant or function_call) belongs" in convert(
        rows + [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
        auto(), "sft").bad_rows[0].reason


def test_detected_dataset_from_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"instruction": "q", "chosen": "c", "rejected": "r"}) + "\n")
    attr = DatasetAttr(name=str(path), path=str(path), formatting="auto")
    result = convert(read_file(path), attr, "ranking")
    assert result.samples == [Sample([U("q")], [A("c"), A("r")], row=0)]


# ---- robustness ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(["instruction", "input", "output", "history", "conversations", "chosen", "rejected",
                        "kto_tag", "system", "tools", "from", "value"])
rows_strategy = st.lists(st.one_of(json_values, st.dictionaries(keys, json_values, max_size=5)), max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, fmt=st.sampled_from(["alpaca", "sharegpt"]),
       kind=st.sampled_from(["sft", "ranking", "kto", "pt"]))
def test_arbitrary_rows_never_raise_anything_but_data_error(rows: list[Any], fmt: str, kind: str) -> None:
    columns = Columns(history="history", system="system", tools="tools")
    attr = DatasetAttr(name="fuzz", path="fuzz.json", formatting=fmt,  # type: ignore[arg-type]
                       ranking=kind == "ranking", columns=columns)
    try:
        result = convert(rows, attr, kind)  # type: ignore[arg-type]
    except DataError:
        return
    assert len(result.samples) + len(result.bad_rows) == len(rows)
