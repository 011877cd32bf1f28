"""Property test: junk in, a clean ConfigError out — never a traceback."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.config import ConfigError, load_config
from kubetune.config.schema import field_owner

KEYS = sorted(field_owner()) + ["lora_r", "use_qlora", "use_lora", "nonsense", "learning_rat"]
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), JUNK, max_size=8))
def test_random_configs_validate_or_fail_cleanly(raw: dict) -> None:
    try:
        cfg = load_config(None, raw)
    except ConfigError as err:
        assert err.problems, "a ConfigError must name at least one problem"
        for problem in err.problems:
            assert problem.key and problem.message
            str(problem)
    else:
        assert cfg.model.model_name_or_path


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=15), max_size=6))
def test_random_command_lines_fail_cleanly(args: list[str]) -> None:
    with contextlib.suppress(ConfigError):  # any other exception fails the test
        load_config(None, ["model_name_or_path=x", *args])
