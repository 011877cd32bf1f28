"""Every library folder is installed: a subpackage missing from pyproject's list would vanish from wheels."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"kubetune." + ".".join(p.parent.relative_to(REPO / "src" / "kubetune").parts)
             for p in (REPO / "src" / "kubetune").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found} | {"kubetune.components", "kubetune.pipelines"}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
