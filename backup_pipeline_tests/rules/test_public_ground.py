"""The package stands on public ground: only public names of the standard library and its
dependencies, and no upper bound on the Python it runs on.

A private name (`zipfile._EndRecData`, `client._http`, `from dagster._core import ...`) of
someone else's code pins us to one version of it. The scan reads every module of
backup_pipeline/ with `ast`: an attribute or an imported name that starts with one underscore
is ours only if backup_pipeline/ defines that name somewhere (a function, class, assignment,
attribute set, argument or import alias); anything else is someone else's private name.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import backup_pipeline

PACKAGE = Path(backup_pipeline.__file__).parent
OWN_MODULES = ("backup_pipeline",)

# Underscored names that are documented public API, each with where it is documented.
DOCUMENTED = {
    "_exit": "os._exit (Python's os docs: the way a forked child leaves without cleanup)",
}


def _private(name: str) -> bool:
    """'_x', not '__x__' (a dunder is the language's, public) and not '_' alone."""
    return (
        name.startswith("_") and name != "_" and not (name.startswith("__") and name.endswith("__"))
    )


def _defined_names(trees: Iterable[ast.AST]) -> set[str]:
    """Every name our own code defines, wherever: the names we may use after a dot."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _own_module(module: str | None, level: int) -> bool:
    return level > 0 or (module is not None and module.split(".")[0] in OWN_MODULES)


def private_uses(sources: dict[str, str]) -> Iterator[str]:
    """'path:line: what' for each use of another library's private name in `sources`."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    ours = _defined_names(trees.values())
    for path, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                if _private(node.attr) and node.attr not in ours:
                    yield f"{where}: .{node.attr}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] not in OWN_MODULES and any(_private(p) for p in parts):
                        yield f"{where}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom) and not _own_module(node.module, node.level):
                module = node.module or ""
                if any(_private(part) for part in module.split(".")):
                    yield f"{where}: from {module} import ..."
                for alias in node.names:
                    if _private(alias.name):
                        yield f"{where}: from {module} import {alias.name}"


def _package_sources() -> dict[str, str]:
    return {
        str(path.relative_to(PACKAGE.parent)): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_the_package_uses_no_private_name_of_another_library():
    sources = _package_sources()
    assert len(sources) > 50  # the scan did read the package
    found: dict[str, set[str]] = {}
    for use in private_uses(sources):
        path, _line, what = use.split(":", 2)
        if what.strip().lstrip(".") not in DOCUMENTED:
            found.setdefault(path, set()).add(what.strip())
    assert found == {}


def test_the_scan_finds_private_names_of_libraries_and_lets_ours_be():
    found = list(
        private_uses(
            {
                "theirs.py": (
                    "import zipfile\n"
                    "import dagster._core.storage\n"
                    "from dagster._core.events import DagsterEvent\n"
                    "from zipfile import _EndRecData\n"
                    "zipfile.ZipInfo('a')._encodeFilenameFlags()\n"
                    "def f(worksheet):\n"
                    "    return worksheet._write_string\n"
                ),
                "ours.py": (
                    "from backup_pipeline.archive.prefetch import _missing\n"
                    "from . import _helpers\n"
                    "class Writer:\n"
                    "    def __init__(self):\n"
                    "        self._sink = None\n"
                    "    def _helper(self):\n"
                    "        return self._sink, other._helper(), type(self).__name__\n"
                ),
            }
        )
    )
    assert found == [
        "theirs.py:2: import dagster._core.storage",
        "theirs.py:3: from dagster._core.events import ...",
        "theirs.py:4: from zipfile import _EndRecData",
        "theirs.py:5: ._encodeFilenameFlags",
        "theirs.py:7: ._write_string",
    ]


def test_requires_python_has_a_floor_and_no_ceiling():
    # The ceiling was there because the zip writer copied CPython 3.11's zipfile internals.
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["requires-python"] == ">=3.11"
