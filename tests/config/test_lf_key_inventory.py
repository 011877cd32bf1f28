"""Every key of LLaMA-Factory 0.9.5's argument classes is known to kubetune: a field, an alias, or refused with why.

The field names are read from LLaMA-Factory's own source in its venv (`make bench` installs it in tools/lf-venv;
KUBETUNE_LF_HPARAMS may point at another copy of its `llamafactory/hparams` folder), parsed with `ast`: LLaMA-Factory
is never imported, so its torch and transformers pins do not matter here.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from kubetune.config import load_config
from kubetune.config.loader import NEGATED, RENAMED
from kubetune.config.refused_keys import IGNORED, NO_EFFECT, REFUSED, REFUSED_VALUES
from kubetune.config.schema import GROUPS, field_owner

REPO = Path(__file__).resolve().parents[2]
# LLaMA-Factory's argument classes (mixins included), by file; TrainingArguments' own base is transformers'.
FILES = ("model_args.py", "data_args.py", "finetuning_args.py", "generating_args.py", "evaluation_args.py",
         "training_args.py")
BASE = {"model_name_or_path": "some/model"}
# Refused keys of LLaMA-Factory's main branch (2026-08) that 0.9.5 does not have yet.
NEWER_THAN_0_9_5 = {"kt_cpu_activation", "kt_non_expert_weight_path", "use_megatron_bridge", "megatron_bridge_args",
                    "hyper_parallel_cp_size"}


def _hparams_dir() -> Path | None:
    if env := os.environ.get("KUBETUNE_LF_HPARAMS"):
        return Path(env)
    found = sorted((REPO / "tools" / "lf-venv" / "lib").glob("python3*/site-packages/llamafactory/hparams"))
    return found[0] if found else None


def _folder() -> Path:
    folder = _hparams_dir()
    if folder is None or not (folder / FILES[0]).is_file():
        pytest.skip("LLaMA-Factory 0.9.5 is not installed in tools/lf-venv (`make bench` installs it)")
    return folder


def lf_fields() -> dict[str, tuple[str, ast.expr | None, ast.expr]]:
    """key -> (class that declares it, its `default=` expression, its annotation) for every field LF declares."""
    folder = _folder()
    fields: dict[str, tuple[str, ast.expr | None, ast.expr]] = {}
    for name in FILES:
        for node in ast.parse((folder / name).read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                # `_kt_config_handle` and the like are LF's private state, never read from a config
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and (
                        not item.target.id.startswith("_")):
                    fields.setdefault(item.target.id, (node.name, _default(item.value), item.annotation))
    assert len(fields) > 200, f"read only {len(fields)} keys from {folder}: has LLaMA-Factory's layout changed?"
    return fields


def lf_enums() -> dict[str, tuple[str, ...]]:
    """The string values of each StrEnum in LF's extras/constants.py (AttentionFunction, EngineName, ...)."""
    tree = ast.parse((_folder().parent / "extras" / "constants.py").read_text(encoding="utf-8"))
    return {node.name: tuple(item.value.value for item in node.body if isinstance(item, ast.Assign)
                             and isinstance(item.value, ast.Constant) and isinstance(item.value.value, str))
            for node in tree.body if isinstance(node, ast.ClassDef)}


def lf_choices(annotation: ast.expr, enums: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The string choices an LF annotation allows: `Literal[...]` (also inside Optional / `| None`), or an enum."""
    for node in ast.walk(annotation):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("Literal"):
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return tuple(i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str))
        if isinstance(node, ast.Name) and node.id in enums:
            return enums[node.id]
    return ()


def _default(value: ast.expr | None) -> ast.expr | None:
    if isinstance(value, ast.Call):  # field(default=..., metadata=...)
        return next((k.value for k in value.keywords if k.arg == "default"), None)
    return value


def _value(expr: ast.expr) -> object:
    """A default as LF writes it: a literal, a product (768 * 768), or an enum member (its value, lower-cased)."""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
        return _value(expr.left) * _value(expr.right)  # type: ignore[operator]
    if isinstance(expr, ast.Attribute):  # DownloadMode.REUSE_DATASET_IF_EXISTS
        return expr.attr.lower()
    return ast.literal_eval(expr)


def test_every_llama_factory_key_is_known() -> None:
    known = {*field_owner(), *RENAMED, *NEGATED, *REFUSED, *NO_EFFECT, *IGNORED}
    unknown = {key: cls for key, (cls, _, _) in lf_fields().items() if key not in known}
    assert unknown == {}, f"LLaMA-Factory keys kubetune has never heard of: {unknown}"


def test_refusals_name_llama_factory_keys_and_defaults() -> None:
    # a refused key at LF's default is accepted; the table's default must be LF's, or spelled-out defaults fail
    fields = lf_fields()
    assert set(REFUSED) - set(fields) - NEWER_THAN_0_9_5 == set(), "refusals of keys LLaMA-Factory does not have"
    assert set(IGNORED) - set(fields) == set(), "ignored keys LLaMA-Factory does not have"
    for key, refusal in {**REFUSED, **IGNORED}.items():
        expr = fields[key][1] if key in fields else None
        if expr is None:
            continue
        assert refusal.default == _value(expr), f"{key}: LLaMA-Factory's default is {ast.unparse(expr)}"


def test_each_refused_key_loads_at_its_default_and_is_refused_otherwise() -> None:
    for key, refusal in REFUSED.items():
        load_config(None, {key: refusal.default}, base=BASE)  # spelled-out default: accepted
        changed = "changed" if refusal.default is None or isinstance(refusal.default, str) else (
            not refusal.default if isinstance(refusal.default, bool) else refusal.default + 1)
        with pytest.raises(Exception) as err:
            load_config(None, {key: changed}, base=BASE)
        assert refusal.reason in str(err.value) and "unknown key" not in str(err.value), key


def test_every_choice_llama_factory_offers_for_our_keys_is_ours_or_refused() -> None:
    import typing

    enums = lf_enums()
    ours = {name: info.annotation for model in GROUPS.values() for name, info in model.model_fields.items()}
    missing = {}
    for key, (_, _, annotation) in lf_fields().items():
        if key not in ours:
            continue
        accepted = {a for arg in (ours[key], *typing.get_args(ours[key])) for a in typing.get_args(arg)}
        lost = [c for c in lf_choices(annotation, enums) if c not in accepted and c not in REFUSED_VALUES.get(key, {})]
        if lost:
            missing[key] = lost
    assert missing == {}, f"LLaMA-Factory choices kubetune neither accepts nor refuses with a reason: {missing}"
