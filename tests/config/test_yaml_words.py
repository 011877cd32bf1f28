"""YAML reads `no`/`off`/`yes`/`on` as booleans; a choice key takes them back as the word the user wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from kubetune.config import ConfigError, load_config
from kubetune.config.schema import GROUPS, bool_words

BASE = {"model_name_or_path": "some/model"}


def test_llama_factory_spelling_of_no_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("model_name_or_path: some/model\neval_strategy: no\nsave_strategy: no\n")
    cfg = load_config(path)
    assert (cfg.train.eval_strategy, cfg.train.save_strategy) == ("no", "no")


def test_command_line_no_is_the_word_too() -> None:
    cfg = load_config(None, ["save_strategy=no", "--eval_strategy", "no"], base=BASE)
    assert (cfg.train.eval_strategy, cfg.train.save_strategy) == ("no", "no")


def test_every_choice_key_with_a_boolean_word_takes_the_boolean_back() -> None:
    # every schema key whose choices include no/off/false/yes/on/true, not only the two strategies
    keys = {name: bool_words(info.annotation) for model in GROUPS.values()
            for name, info in model.model_fields.items() if bool_words(info.annotation)}
    assert {"eval_strategy", "save_strategy"} <= keys.keys()
    for key, words in keys.items():
        for flag, word in words.items():
            extra = {"val_size": 0.1} if key == "eval_strategy" and word != "no" else {}
            flat = load_config(None, {key: flag, **extra}, base=BASE).to_flat()
            assert flat[key] == word, key


def test_a_true_where_only_no_is_a_choice_is_still_refused() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"eval_strategy": True}, base=BASE)
    assert err.value.keys() == ["eval_strategy"]


def test_words_follow_the_choices() -> None:
    assert bool_words(Literal["on", "off", "auto"]) == {False: "off", True: "on"}
    assert bool_words(Literal["no", "steps"] | None) == {False: "no"}
    assert bool_words(Literal["steps", "epoch"]) == {}
    assert bool_words(bool | Literal["no"]) == {}  # a key that takes a bool keeps it
