"""The public surface: ``toolguard.__all__`` is complete, sorted within its commented groups,
and every module declares ``__all__`` (httpx ``tests/test_exported_members.py``)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

import pytest

import toolguard

INIT = Path(toolguard.__file__)


def _groups() -> list[tuple[str, list[str]]]:
    """The ``__all__`` list of ``__init__.py`` as ``(comment, names)`` groups, in order."""
    source = INIT.read_text(encoding="utf-8")
    match = re.search(r"^__all__ = \[\n(.*?)^\]", source, re.DOTALL | re.MULTILINE)
    assert match, "toolguard/__init__.py must define __all__ as a bracketed list"
    groups: list[tuple[str, list[str]]] = []
    for line in match.group(1).splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            groups.append((line.lstrip("# "), []))
            continue
        name = ast.literal_eval(line.rstrip(","))
        assert groups, f"{name!r} comes before the first group comment in __all__"
        groups[-1][1].append(name)
    return groups


def _modules() -> list[str]:
    """Every module and package under toolguard (as ``pkgutil.walk_packages`` lists them), found
    on disk: walking packages imports them, at collection, in every process (psycopg too)."""
    root = Path(toolguard.__file__).parent
    names = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        inside = all(
            (root.parent.joinpath(*parts[:depth]) / "__init__.py").is_file()
            for depth in range(1, len(parts))
        )
        if inside and len(parts) > 1 and parts[-1] != "__main__":
            names.append(".".join(parts))
    return sorted(names)


def test_the_module_list_is_what_walking_the_packages_finds() -> None:
    walked = [
        info.name
        for info in pkgutil.walk_packages(toolguard.__path__, prefix="toolguard.")
        if not info.name.endswith("__main__")
    ]
    assert _modules() == sorted(walked)


def test_all_names_exist() -> None:
    missing = [name for name in toolguard.__all__ if not hasattr(toolguard, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(toolguard.__all__) == len(set(toolguard.__all__))


def test_all_is_complete() -> None:
    """Every public class and function reachable as ``toolguard.X`` is exported."""
    public = {
        name
        for name, value in vars(toolguard).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith("toolguard")
    }
    assert sorted(public - set(toolguard.__all__)) == []


def test_all_is_grouped_and_sorted_within_groups() -> None:
    groups = _groups()
    assert [name for _, names in groups for name in names] == list(toolguard.__all__)
    for comment, names in groups:
        assert names, f"group {comment!r} is empty"
        assert names == sorted(names), f"group {comment!r} is not sorted"
    comments = [comment for comment, _ in groups]
    assert len(comments) == len(set(comments))


def test_exported_objects_have_docstrings() -> None:
    undocumented = [
        name
        for name in toolguard.__all__
        if (inspect.isclass(getattr(toolguard, name)) or callable(getattr(toolguard, name)))
        and not inspect.getdoc(getattr(toolguard, name))
    ]
    assert undocumented == []


def test_version_is_a_string() -> None:
    assert isinstance(toolguard.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", toolguard.__version__)


@pytest.mark.parametrize("module_name", _modules())
def test_every_module_declares_all_and_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names missing attributes"
