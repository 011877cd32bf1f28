"""config/ is the ground floor: it imports nothing from the layers above it, nor torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import kubetune.config

CONFIG_DIR = Path(kubetune.config.__file__).parent
ABOVE = ("data", "model", "rl", "stages", "tracking", "validate")  # kubetune.<layer> sits above config
FORBIDDEN = (*(f"kubetune.{layer}" for layer in ABOVE), "torch")


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in FORBIDDEN)


def test_importing_config_pulls_in_no_layer_above_it() -> None:
    code = ("import json, sys\n"
            "import kubetune.config, kubetune.config.loader, kubetune.config.schema, kubetune.config.pipeline\n"
            "import kubetune.config.rules\n"
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    assert [name for name in loaded if _forbidden(name)] == []


def forbidden_imports(source: str, filename: str) -> list[str]:
    """`file:line imports module` for each import of a layer above config in `source`, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from kubetune import data` names the package in the alias
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found += [f"{filename}:{node.lineno} imports {name}" for name in names if _forbidden(name)]
    return found


def test_no_file_under_config_imports_a_layer_above_it() -> None:
    found = [line for path in sorted(CONFIG_DIR.rglob("*.py"))
             for line in forbidden_imports(path.read_text(encoding="utf-8"), path.name)]
    assert found == [], "config/ must not import the layers above it:\n" + "\n".join(found)


def test_the_static_check_sees_imports_inside_functions_too() -> None:
    source = ("import yaml\n\ndef f():\n    from kubetune.data.registry import resolve_datasets\n    import torch\n"
              "from kubetune import validate\n")
    assert sorted(forbidden_imports(source, "x.py")) == [
        "x.py:4 imports kubetune.data.registry", "x.py:4 imports kubetune.data.registry.resolve_datasets",
        "x.py:5 imports torch", "x.py:6 imports kubetune.validate"]
