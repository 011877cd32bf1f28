"""Read a config file plus command-line overrides into a validated `RunConfig`.

Every problem is collected and reported together — a user fixing a YAML file should see all
of its mistakes in one run, not one per run.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.config.config_text import parse_config_text, shape_problem
from kubetune.config.errors import ConfigError, Problem, shown_key, shown_value
from kubetune.config.refused_keys import IGNORED, NO_EFFECT, REFUSED, REFUSED_VALUES, refusal
from kubetune.config.schema import GROUPS, RunConfig, field_owner
from kubetune.config.secrets import REDACTED, is_secret_key, url_password_problems

logger = logging.getLogger(__name__)

CLI = "command line"

# Spellings from simpler fine-tuning scripts, mapped onto LLaMA-Factory's keys.
RENAMED = {
    "lora_r": "lora_rank",
    "lora_target_modules": "lora_target",
    "evaluation_strategy": "eval_strategy",
    "model_name": "model_name_or_path",
    "model_path": "model_name_or_path",
    "max_seq_length": "cutoff_len",
}
# LLaMA-Factory's own negations of our keys: key -> the key it negates.
NEGATED = {"disable_gradient_checkpointing": "gradient_checkpointing"}


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Build a validated `RunConfig`.

    Args:
        path: YAML or JSON file (None: only `base` and `overrides`).
        overrides: `key=value` / `--key value` strings from the command line, or a mapping.
        base: keys applied before the file (used by tests and by pipeline stage overrides).

    Raises:
        ConfigError: listing every problem found, each with its key, value, origin and a fix.
    """
    problems: list[Problem] = []
    raw: dict[str, tuple[Any, str]] = {}  # key -> (value, where it came from)
    for key, value in (base or {}).items():
        raw[key] = (value, "defaults")
    if isinstance(overrides, Mapping):
        cli = dict(overrides)
    else:
        cli = parse_overrides(overrides, problems)
    config_file = cli.pop("config_file", None)
    if path is None and config_file is not None:
        path = str(config_file)
    source = str(path) if path is not None else ""
    if path is not None:
        for key, value in read_config_file(Path(path)).items():
            raw[key] = (value, source)
    for key, value in cli.items():
        raw[key] = (value, CLI)
    return validate_raw(raw, source, problems)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a flat mapping (`config_text.parse_config_text` says what is refused)."""
    if not path.is_file():
        raise ConfigError([Problem(str(path), None, str(path), "config file not found",
                                   "check the path (relative paths are from the current directory)")])
    return parse_config_text(path.read_bytes(), str(path), json_file=path.suffix == ".json")


def parse_overrides(args: Sequence[str], problems: list[Problem]) -> dict[str, Any]:
    """`lora_rank=32`, `--lora_rank 32`, `--lora_rank=32`, `--do_train` (a bare flag = true)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                has_value = i + 1 < len(args) and not args[i + 1].startswith("--") and "=" not in args[i + 1]
                value = args[i + 1] if has_value else "true"
                i += has_value
        elif "=" in arg:
            key, _, value = arg.partition("=")
        else:
            problems.append(Problem(shown_key(arg), None, CLI, "not a key=value pair",
                                    "write overrides as key=value or --key value"))
            i += 1
            continue
        out[key.replace("-", "_")] = _parse_scalar(value)
        i += 1
    return out


def _parse_scalar(text: str) -> Any:
    # YAML gives `true`, `3`, `null`, lists; numbers like 3e-4 stay strings and pydantic converts them.
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an integer too long for Python to read
        return text


def canonical_keys(keys: Mapping[str, Any]) -> dict[str, Any]:
    """`keys` under LLaMA-Factory's names, as the loader reads them (`model_name` → `model_name_or_path`,
    `use_qlora` / `finetuning_type: qlora` → lora + `quantization_bit: 4`, ...); a spelling it refuses is dropped."""
    return {key: value for key, (value, _) in _apply_aliases({k: (v, "") for k, v in keys.items()}, []).items()}


def _apply_aliases(raw: dict[str, tuple[Any, str]], problems: list[Problem]) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    implied_bits: tuple[Any, str] | None = None  # qlora spellings imply 4 bits unless the user says otherwise
    for key, (value, origin) in raw.items():
        if key in RENAMED:
            out[RENAMED[key]] = (value, origin)
        elif key in NEGATED:
            _negate(key, value, origin, raw, out, problems)
        elif key == "gradient_checkpointing_kwargs":  # transformers' spelling, in LLaMA-Factory's examples
            if isinstance(value, Mapping) and set(value) <= {"use_reentrant"}:
                if "use_reentrant" in value:
                    out["use_reentrant_gc"] = (value["use_reentrant"], origin)
            else:
                problems.append(Problem(key, value, origin, "only use_reentrant is supported",
                                        "write gradient_checkpointing_kwargs: {use_reentrant: false}, or "
                                        "use_reentrant_gc: false"))
        elif key == "finetuning_type" and value == "qlora":
            out["finetuning_type"] = ("lora", origin)
            implied_bits = (4, origin)
        elif key in ("load_in_4bit", "load_in_8bit"):  # `kubetune chat --load_in_4bit`, as in HF scripts
            if value is True:
                out["quantization_bit"] = (4 if key == "load_in_4bit" else 8, origin)
            elif value is not False:
                problems.append(Problem(key, value, origin, "expected true or false", f"write --{key}"))
        elif key in ("use_lora", "use_qlora"):
            if not isinstance(value, bool):
                problems.append(Problem(key, value, origin, "expected true or false", f"write {key}: true"))
            elif value:
                out["finetuning_type"] = ("lora", origin)
                if key == "use_qlora":
                    implied_bits = (4, origin)
        else:
            out[key] = (value, origin)
    if implied_bits is not None and "quantization_bit" not in out:
        out["quantization_bit"] = implied_bits
    if "fsdp_transformer_layer_cls_to_wrap" in out:
        _fsdp_wrap_classes(out, problems)
    return out


def _fsdp_wrap_classes(out: dict[str, tuple[Any, str]], problems: list[Problem]) -> None:
    """transformers 4's `fsdp_transformer_layer_cls_to_wrap` (in LLaMA-Factory's examples) is now an fsdp_config key."""
    key = "fsdp_transformer_layer_cls_to_wrap"
    value, origin = out.pop(key)
    classes = [c.strip() for c in value.split(",") if c.strip()] if isinstance(value, str) else value
    settings, settings_origin = out.get("fsdp_config", (None, origin))
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        problems.append(Problem(key, value, origin, f"cannot be added to the fsdp_config file {settings!r}",
                                "write transformer_layer_cls_to_wrap in that file instead"))
        return
    if "transformer_layer_cls_to_wrap" in settings and settings["transformer_layer_cls_to_wrap"] != classes:
        problems.append(Problem(key, value, origin, "contradicts fsdp_config's transformer_layer_cls_to_wrap",
                                "keep one of them"))
        return
    out["fsdp_config"] = ({**settings, "transformer_layer_cls_to_wrap": classes}, settings_origin)


def _negate(key: str, value: Any, origin: str, raw: Mapping[str, tuple[Any, str]], out: dict[str, tuple[Any, str]],
            problems: list[Problem]) -> None:
    """`disable_gradient_checkpointing: true` is `gradient_checkpointing: false`; both given must agree."""
    ours = NEGATED[key]
    if not isinstance(value, bool):
        problems.append(Problem(key, value, origin, "expected true or false", f"write {key}: true"))
    elif ours in raw and raw[ours][0] != (not value):
        problems.append(Problem(key, value, origin, f"contradicts {ours}: {raw[ours][0]} ({raw[ours][1]})",
                                f"keep one of {key} and {ours}"))
    elif ours not in raw:
        out[ours] = (not value, origin)


def validate_raw(raw: dict[str, tuple[Any, str]], source: str, problems: list[Problem] | None = None) -> RunConfig:
    """Validate (key -> (value, origin)) pairs; raise ConfigError with every problem."""
    problems = list(problems or [])
    raw = _apply_aliases(raw, problems)
    owner = field_owner()
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    origins: dict[str, str] = {}
    for key, (value, origin) in raw.items():
        group = owner.get(key)
        if (bad_shape := shape_problem(str(key), value, origin)) is not None:  # self-referring, or an alias bomb
            problems.append(bad_shape)
            continue
        if key in REFUSED_VALUES and (refused := refusal(key, value)) is not None:
            problems.append(Problem(key, value, origin, refused.reason, refused.hint))  # finetuning_type: oft
            continue
        if group is None and key in IGNORED:
            if (ignored := refusal(key, value)) is not None:
                shown = REDACTED if is_secret_key(str(key)) else shown_value(value)
                logger.warning("%s = %s (%s) is not used: %s — %s", key, shown, origin, ignored.reason, ignored.hint)
            continue
        if group is None and (key in REFUSED or key in NO_EFFECT):
            # LLaMA-Factory keys without a field: refused unless at LF's default, or already true here
            if (refused := refusal(key, value)) is not None:
                problems.append(Problem(key, value, origin, refused.reason, refused.hint))
            continue
        if group is None:
            problems.append(_unknown_key(key, value, origin, owner))
            continue
        grouped[group][key] = value
        origins[key] = origin

    for key, (value, origin) in raw.items():  # reward_model: https://user:key@host would reach MLflow's params
        problems += url_password_problems({str(key): value}, origin)
    groups: dict[str, Any] = {}
    for group, model in GROUPS.items():
        try:
            groups[group] = model(**grouped[group])
        except ValidationError as err:
            problems.extend(_from_pydantic(err, grouped[group], origins, source))
    if problems:
        raise ConfigError(problems, source)

    if "max_length" in raw and "cutoff_len" not in raw:
        # simpler fine-tuning scripts call the training sequence length max_length; LLaMA-Factory does not
        logger.warning("max_length = %s (%s) is LLaMA-Factory's generation length, which max_new_tokens overrides: it "
                       "does not cut training rows. For the training sequence length set cutoff_len (default %d)",
                       shown_value(raw["max_length"][0]), raw["max_length"][1], groups["data"].cutoff_len)
    if groups["train"].fp8_enable_fsdp_float8_all_gather and not groups["train"].fp8:
        logger.warning("fp8_enable_fsdp_float8_all_gather = true (%s) needs fp8: training with fp8: true, as "
                       "LLaMA-Factory does", origins.get("fp8_enable_fsdp_float8_all_gather", source))
        groups["train"] = groups["train"].model_copy(update={"fp8": True})
    cfg = RunConfig(**groups, source=source, origins=origins)
    from kubetune.config.rules import check_rules

    problems.extend(check_rules(cfg))
    if problems:
        raise ConfigError(problems, source)
    return cfg


def known_keys() -> list[str]:
    """Every key a config may hold: the schema's fields, their aliases, and LLaMA-Factory's refused/no-effect keys."""
    return [*field_owner(), *RENAMED, *NEGATED, *REFUSED, *NO_EFFECT, *IGNORED, "gradient_checkpointing_kwargs",
            "fsdp_transformer_layer_cls_to_wrap", "use_lora", "use_qlora", "load_in_4bit", "load_in_8bit",
            "config_file"]


def _unknown_key(key: str, value: Any, origin: str, owner: Mapping[str, str]) -> Problem:
    close = difflib.get_close_matches(str(key), known_keys(), n=1, cutoff=0.75)
    hint = f"did you mean '{close[0]}'?" if close else "see `kubetune keys` for every accepted key"
    return Problem(shown_key(key), value, origin, "unknown key", hint)  # a blank key must still show


def _from_pydantic(err: ValidationError, values: Mapping[str, Any], origins: Mapping[str, str],
                   source: str) -> list[Problem]:
    problems = []
    for item in err.errors():
        key = str(item["loc"][0]) if item["loc"] else "?"
        value = values.get(key, None)
        if item["type"] == "missing":
            problems.append(Problem(key, None, source or CLI, "is required", f"set {key}: <value>"))
            continue
        expected = item["msg"]
        if item["type"] == "literal_error":
            expected = expected.replace("Input should be", "expected one of")
        else:
            expected = expected.replace("Input should be", "expected").replace("Value error, ", "")
        problems.append(Problem(key, value, origins.get(key, source or CLI), expected))
    return problems
