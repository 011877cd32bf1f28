"""The house rules of the source tree (issue 15), checked on the tree itself so that they cannot rot.

Each check parses the files (`ast`), so a new import, a new file in stages/ or a copied set-up
fails here with the file named.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "kubetune"
CODE_DIRS = (REPO / "src", REPO / "components", REPO / "pipelines")
MAX_LINES = 600


def python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "egg-info" not in str(p))


def module_name(path: Path) -> str:
    root = REPO / "src" if path.is_relative_to(REPO / "src") else REPO  # bench/ imports as `bench`
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """kubetune modules `path` imports anywhere (top level or inside functions: a lazy import still ties them)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` inside package a.b: a.b (level 1), a (level 2)
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs: all of the tree but `if TYPE_CHECKING:` blocks (imports for type checkers only)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def test_no_source_file_is_over_600_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in python_files(*CODE_DIRS)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job (at most {MAX_LINES} lines): {long}"


def test_no_import_circle_under_src_or_bench() -> None:
    files = {module_name(p): p for p in python_files(REPO / "src", REPO / "bench")}
    known = set(files)
    graph = {name: imported_modules(path, known) - {name} for name, path in files.items()}
    # a package's __init__ importing its own submodules is how packages expose them, not a circle of jobs
    graph = {name: {dep for dep in deps if not dep.startswith(name + ".")} for name, deps in graph.items()}
    circles = strongly_connected(graph)
    assert not circles, f"import circles: {circles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of two or more modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_circle_check_finds_a_circle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_stages_holds_only_recipes() -> None:
    assert {p.name for p in (SRC / "stages").glob("*.py")} == {
        "__init__.py", "sft.py", "rm.py", "dpo.py", "kto.py", "ppo.py"}


def test_one_place_fixes_the_tokenizer() -> None:
    callers = [str(p.relative_to(REPO)) for p in python_files(*CODE_DIRS, REPO / "bench", REPO / "scripts")
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "fix_tokenizer"]
    assert callers == ["src/kubetune/data/setup.py"]


def test_pipelines_compute_no_hash_of_their_own() -> None:
    """The preprocess step's KFP cache key is the data pipeline's content hash, not a second one."""
    users = [str(p.relative_to(REPO)) for p in python_files(REPO / "pipelines")
             if "hashlib" in imported_names(p)]
    assert not users


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names
