"""Property tests: junk in, a clean ConfigError out — never a traceback of another exception.

Stage configs (`load_config`: a mapping, a command line, a YAML/JSON file's bytes) and nested
pipeline configs (`load_pipeline_config`: text, file, overrides) are fuzzed with hypothesis, in
values (wrong types, huge numbers, nested junk, unicode, YAML's `no`/`~`/dates/`!!binary`/`!!set`)
and in structure (non-mapping tops, non-string keys, duplicate keys, self-referring anchors, alias
bombs, bytes that are not UTF-8). Every failure must be a ConfigError whose problems name a key
and print in bounded length. Example counts are bounded so the file runs in seconds; the crashes
these found are pinned as plain regression cases below.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import types
import typing
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.config import ConfigError, load_config
from kubetune.config.loader import known_keys
from kubetune.config.pipeline import load_pipeline_config
from kubetune.config.schema import GROUPS, field_owner

KEYS = sorted(field_owner()) + ["lora_r", "use_qlora", "use_lora", "nonsense", "learning_rat"]
ALL_KEYS = sorted(set(known_keys()))
STAGES = ["sft", "rm", "ppo", "dpo", "kto", "pt"]
PIPELINE_SECTIONS = ["name", "pipeline", "alignment", "stages", "evaluation", "export", "promotion", "resources",
                     "mlflow", "s3", "images", "retry", "caching", "model_cache"]
YAML_WORDS = ["no", "~", "yes", "on", "off", "null", "1e400", "-1", "0", ".nan", ".inf", "2024-01-01",
              "2024-01-01 10:00:00", "", "a,,b", "é", "💥", "s3://", "pipeline:rm", "!!binary aGk=", "!!set {a, b}",
              "[1, [2, {x: ~}]]", "{a: 1}", "9" * 400, "'quoted'", "0x1F", "1_000", "&a [*a]", "\u202e"]
BASE = {"model_name_or_path": "some/model", "dataset": "alpaca_en_demo", "template": "default",
        "output_dir": "/tmp/fuzz-out", "finetuning_type": "lora"}

SCALAR = (st.none() | st.booleans() | st.integers() | st.sampled_from([10**30, -(10**30), 10**4000])
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | st.sampled_from(YAML_WORDS)
          | st.dates() | st.datetimes() | st.binary(max_size=8))
JUNK = st.recursive(
    SCALAR,
    lambda inner: (st.lists(inner, max_size=3) | st.frozensets(st.integers(), max_size=2)
                   | st.dictionaries(st.text(max_size=5) | st.integers() | st.none() | st.booleans(), inner,
                                     max_size=3)),
    max_leaves=6,
)
def bounded(examples: int) -> settings:
    """A bounded run: the file stays in seconds within `make test`."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _quiet_warnings():
    # ignored LLaMA-Factory keys log a warning each; thousands of them only slow the run down
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def assert_clean(err: ConfigError) -> None:
    """A ConfigError a person can act on: every problem names a key and prints in bounded length."""
    assert err.problems, "a ConfigError must name at least one problem"
    for problem in err.problems:
        assert str(problem.key).strip() and not str(problem.key).endswith(": "), problem
        assert problem.message
        assert len(str(problem)) < 5000, str(problem)[:300]
    assert len(str(err)) < 5000 * len(err.problems) + 200


def for_annotation(annotation: object) -> st.SearchStrategy:
    """Values of (about) the right type for a schema field, extremes included: these reach the cross-field rules."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return st.sampled_from(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return st.one_of([for_annotation(a) for a in typing.get_args(annotation)])
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-3, 3) | st.integers() | st.sampled_from([2**31, 2**63, 10**30])
    if annotation is float:
        return st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 1.0, 1e-300, -1.0])
    if annotation is str:
        return st.text(max_size=12) | st.sampled_from(["", "a,b", "s3://b/p", "pipeline:rm", "all", "none", "llama3",
                                                       "http://127.0.0.1:1/score"])
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return st.lists(for_annotation(args[0]) if args else st.text(max_size=5), max_size=3)
    return st.none() | st.text(max_size=5) | st.integers() | st.dictionaries(st.text(max_size=4), st.integers(),
                                                                             max_size=2)


FIELDS = {name: info.annotation for model in GROUPS.values() for name, info in model.model_fields.items()}
TYPED_PAIR = st.sampled_from(sorted(FIELDS)).flatmap(lambda k: st.tuples(st.just(k), for_annotation(FIELDS[k])))


@bounded(200)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), JUNK, max_size=8))
def test_random_configs_validate_or_fail_cleanly(raw: dict) -> None:
    try:
        cfg = load_config(None, raw)
    except ConfigError as err:
        assert_clean(err)
    else:
        assert cfg.model.model_name_or_path


@bounded(200)
@given(st.sampled_from(STAGES), st.dictionaries(st.sampled_from(ALL_KEYS), JUNK, max_size=4))
def test_junk_in_a_valid_stage_config_fails_cleanly(stage: str, junk: dict) -> None:
    with contextlib.suppress(ConfigError):
        load_config(None, {**BASE, "stage": stage, **junk})


@bounded(150)
@given(st.sampled_from(STAGES), st.lists(TYPED_PAIR, max_size=6))
def test_well_typed_extremes_reach_the_rules_and_fail_cleanly(stage: str, pairs: list) -> None:
    try:
        load_config(None, {**BASE, "stage": stage, **dict(pairs)})
    except ConfigError as err:
        assert_clean(err)


@bounded(150)
@given(st.lists(st.text(max_size=15), max_size=6),
       st.lists(st.tuples(st.sampled_from(ALL_KEYS), st.sampled_from(YAML_WORDS)), max_size=4))
def test_random_command_lines_fail_cleanly(args: list[str], pairs: list) -> None:
    try:
        load_config(None, ["model_name_or_path=x", *args, *(f"{k}={v}" for k, v in pairs)])
    except ConfigError as err:
        assert_clean(err)


def _yaml_lines(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{k}: {v}\n" for k, v in pairs)


YAML_TEXT = (st.lists(st.tuples(st.sampled_from(ALL_KEYS[:80] + PIPELINE_SECTIONS), st.sampled_from(YAML_WORDS)),
                      max_size=6).map(_yaml_lines)
             | st.text(max_size=60)
             | st.sampled_from(["- a\n- b\n", "1\n", "~\n", "!!binary aGk=\n", "a: &x [*x]\n", "? [1]\n: 2\n",
                                "1: 2\n", "lora_rank: 8\nlora_rank: 9\n", "a: 1\n---\nb: 2\n", "a:\tb\n\tc: d\n",
                                "x: !!python/object/apply:os.system [echo]\n", "stages: {sft: &s {x: *s}}\n"]))


@bounded(150)
@given(YAML_TEXT, st.sampled_from(["", "\ufeff"]), st.sampled_from([".yaml", ".json"]))
def test_random_files_fail_cleanly(tmp_path_factory: pytest.TempPathFactory, text: str, bom: str, suffix: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"config{suffix}"
    path.write_text(bom + text, encoding="utf-8")
    for load in (load_config, load_pipeline_config):
        try:
            load(path)
        except ConfigError as err:
            assert_clean(err)


@bounded(60)
@given(st.binary(max_size=40))
def test_random_bytes_fail_cleanly(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(b"model_name_or_path: x\n" + data)
    try:
        load_config(path)
    except ConfigError as err:
        assert_clean(err)


NESTED = st.dictionaries(
    st.sampled_from([*STAGES, "default", "train-sft", "gpus", "nodes", "count", "tracking_uri", "dataset", ""]),
    JUNK | st.dictionaries(st.sampled_from([*ALL_KEYS, "gpus", "nodes"]), JUNK, max_size=3), max_size=3)


@bounded(100)
@given(st.dictionaries(st.sampled_from(PIPELINE_SECTIONS + ALL_KEYS[:40]) | st.text(max_size=5), JUNK | NESTED,
                       max_size=4))
def test_random_pipeline_configs_fail_cleanly(junk: dict) -> None:
    base = {**BASE, "pipeline": "sft", "evaluation": {"eval_dataset": "alpaca_en_demo"}}
    base.pop("output_dir")
    try:
        load_pipeline_config(overrides={**base, **junk})
    except ConfigError as err:
        assert_clean(err)


@bounded(80)
@given(YAML_TEXT)
def test_random_pipeline_text_fails_cleanly(text: str) -> None:
    try:
        load_pipeline_config(text=text)
    except ConfigError as err:
        assert_clean(err)


# --- the crashes fuzzing found, pinned (each raised something other than ConfigError before) ---

ALIAS_BOMB = "a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))  # 10**9 values once expanded


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("self-referring anchor", "fsdp_config: &r {a: *r}\n", "refers to itself"),
    ("alias bomb", ALIAS_BOMB, "holds more than"),
    ("duplicate key", "lora_rank: 8\nlora_rank: 16\n", "duplicate key 'lora_rank'"),
    ("latin-1 bytes", "template: caf\xe9\n".encode("latin-1"), "is not UTF-8 text: byte 0xe9"),
    ("utf-16 file", "lora_rank: 8\n".encode("utf-16"), "is not UTF-8 text"),
    ("an integer past Python's 4300 digits", "lora_rank: " + "9" * 5000 + "\n", "4300 digits"),
    ("a list at the top", "- a\n- b\n", "found list"),
    ("a number as a key", "1: 2\n", "the key 1 is not a name"),
])
def test_hostile_files_are_config_errors(tmp_path: Path, name: str, content: str | bytes, expected: str) -> None:
    path = tmp_path / "cfg.yaml"
    head = "" if name.startswith("a list") else "model_name_or_path: some/model\n"
    path.write_bytes(head.encode() + content if isinstance(content, bytes) else (head + content).encode())
    for load in (load_config, load_pipeline_config):
        with pytest.raises(ConfigError) as err:
            load(path)
        assert_clean(err.value)
        assert expected in str(err.value), (name, str(err.value))


def test_pipeline_text_is_checked_as_a_file_is() -> None:
    # load_pipeline_config(text=...) raised yaml's ScannerError and a TypeError for a list, before
    for text, expected in [("'unclosed", "cannot parse"), ("- a\n", "found list"), ("!Ø", "cannot parse")]:
        with pytest.raises(ConfigError, match=expected):
            load_pipeline_config(text=text)


def test_huge_values_print_bounded() -> None:
    # printing a >4300-digit integer raised ValueError from inside ConfigError's message
    with pytest.raises(ConfigError) as err:
        load_config(None, {"model_name_or_path": "x", "nonsense2": 10**5000, "nonsense": [[[["deep"] * 50] * 50]]})
    assert_clean(err.value)
    assert "an integer of about 5000 digits" in str(err.value)


def test_a_blank_pipeline_key_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(overrides={"model_name_or_path": "x", "": 1, "evaluation": {"eval_dataset": "x"}})
    assert "''" in err.value.keys()  # noqa: SIM118 — ConfigError.keys() lists the keys at fault


def test_self_referring_value_from_a_mapping() -> None:
    loop: dict = {}
    loop["a"] = loop
    with pytest.raises(ConfigError, match="fsdp_config.*refers to itself"):
        load_config(None, {"model_name_or_path": "x", "fsdp_config": loop})


def test_yaml_dates_and_tildes_are_named() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"model_name_or_path": "x", "dataset": datetime.date(2024, 1, 1), "learning_rate": None})
    assert set(err.value.keys()) == {"dataset", "learning_rate"}


HOSTILE_FILES = {
    "self-referring anchor": b"model_name_or_path: x\nfsdp_config: &r {a: *r}\n",
    "alias bomb": ("model_name_or_path: x\n" + ALIAS_BOMB).encode(),
    "duplicate key": b"model_name_or_path: x\nlora_rank: 8\nlora_rank: 16\n",
    "latin-1": b"model_name_or_path: caf\xe9\n",
    "utf-16": "model_name_or_path: x\n".encode("utf-16"),
    "NUL byte": b"model_name_or_path: x\x00\n",
    "5000-digit integer": b"model_name_or_path: x\nlora_rank: " + b"9" * 5000 + b"\n",
    "list top": b"- a\n",
    "number key": b"1: 2\n",
    "python tag": b"x: !!python/object/apply:os.system [echo]\n",
    "two documents": b"a: 1\n---\nb: 2\n",
    "tab indent": b"a:\tb\n\tc: d\n",
    "unclosed quote": b"model_name_or_path: 'x\n",
    "deep nesting": b"x: " + b"[" * 1500 + b"]" * 1500 + b"\n",
}


@pytest.mark.chaos
def test_hostile_config_files_never_crash(chaos_row, tmp_path: Path) -> None:
    """Every hostile file through both loaders: a ConfigError each, never another exception (`data_lost`: crashes)."""
    row = chaos_row("Hostile config files (stage + pipeline loaders)")
    row.detail = "data lost = tracebacks instead of a ConfigError"
    crashes = []
    for name, data in HOSTILE_FILES.items():
        path = tmp_path / "cfg.yaml"
        path.write_bytes(data)
        for load in (load_config, load_pipeline_config):
            row.runs += 1
            try:
                load(path)
            except ConfigError as err:
                assert_clean(err)
            except Exception as err:  # noqa: BLE001 — the point: anything else is a crash to count
                crashes.append(f"{name} / {load.__name__}: {type(err).__name__}: {err}"[:300])
    row.data_lost = len(crashes)
    assert not crashes, crashes
