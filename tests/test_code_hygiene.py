"""One definition of each shared helper, no dead code, no private cross-module names.

The review of issue 12 found helpers copied two to four times and private names reached across
modules; these checks keep the copies from coming back (docs/architecture.md, "The rooms").
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    p
    for base in ("toolguard", "integrations")
    for p in (ROOT / base).rglob("*.py")
    if "tests" not in p.parts
)


@functools.cache
def _lines(path: Path) -> list[str]:
    """A source file's lines, read once for all the tests here."""
    return path.read_text(encoding="utf-8").splitlines()


@functools.cache
def _tree(path: Path) -> ast.Module:
    """A source file's syntax tree, parsed once for all the tests here (they only read it)."""
    return ast.parse(path.read_text(encoding="utf-8"))


def _where(pattern: str) -> list[str]:
    found = []
    for path in SOURCES:
        for number, line in enumerate(_lines(path), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    return found


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        pytest.param(r'Literal\["message", "raise"\]', "toolguard/engine.py", id="OnDeny"),
        pytest.param(r'r"\\\{\(\[A-Za-z_\]', "toolguard/text.py", id="placeholder-regex"),
        pytest.param(r"math\.isfinite", "toolguard/numbers.py", id="finite-number-check"),
        pytest.param(
            r"def seconds_to_midnight|% 86400|// 86400", "toolguard/budget.py", id="day-arithmetic"
        ),
    ],
)
def test_a_shared_helper_has_one_definition(pattern: str, home: str) -> None:
    found = _where(pattern)
    assert found and all(f.startswith(home + ":") for f in found), found


@pytest.mark.slow
def test_no_module_level_cache_is_keyed_by_id() -> None:
    # id() keys are only safe while the object lives; caches hang derived data on the object
    for path in SOURCES:
        tree = _tree(path)
        module_dicts = {
            t.id
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_dicts
                and isinstance(node.slice, ast.Call)
                and getattr(node.slice.func, "id", None) == "id"
            ) or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in module_dicts
                and node.args
                and isinstance(node.args[0], ast.Call)
                and getattr(node.args[0].func, "id", None) == "id"
            ):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} keys a module cache by id()")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "iter_chain", "first_seq_since", "loads_list", "_TASK_ONLY", "_SHAPES",
        "_task_of", "_identity_of",  # budget scopes were strings parsed back (a Spend's owner)
    ],
)  # fmt: skip
def test_dead_code_stays_removed(name: str) -> None:
    assert not _where(rf"\b{name}\b"), name


@pytest.mark.slow
def test_no_private_name_is_reached_across_modules() -> None:
    # guard._on_task_end, TaskSession._adopt, tools._build, redaction._JWT were
    assert not _where(r"\b(guard|TaskSession)\._(on_task_end|adopt)\b")
    found = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = node.module or ""
            if node.level and (not module or module.split(".")[-1].startswith("_")):
                continue  # a package's own private module (cli/_base.py) is the package's
            if node.level == 0 and not module.startswith("toolguard"):
                continue  # third-party private names go through toolguard/_langchain_compat.py
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    assert not found


def test_the_fake_model_loader_is_defined_once() -> None:
    # the scripted model of examples/ is loaded by tests/conftest.py:fake_model only
    tests = Path(__file__).resolve().parent
    copies = [
        str(p.relative_to(ROOT))
        for p in tests.rglob("*.py")
        if p.name != "test_code_hygiene.py"
        and 'spec_from_file_location("_fake_model"' in p.read_text(encoding="utf-8")
    ]
    assert copies == ["tests/conftest.py"], copies


PURE = ("config", "location", "intent", "policy", "budget", "text", "numbers", "durations", "chain",
        "redaction", "scrub", "errors")  # fmt: skip
FORBIDDEN_IN_PURE = ("sqlite3", "langchain", "langgraph", "httpx", "click", "rich")
FORBIDDEN_SIBLINGS = ("store", "engine", "task", "audit", "cli", "integrity", "incident",
                      "tools", "viewer", "export", "brokers", "credentials", "keys")  # fmt: skip


def _imports(path: Path) -> list[str]:
    """Every module a file imports (absolute names; ``.x`` relative names as ``.x``)."""
    names = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_decision_modules_import_no_io_and_no_orchestration(module: str) -> None:
    # docs/architecture.md, "The rooms and what each may import"
    imported = _imports(ROOT / "toolguard" / f"{module}.py")
    bad = [
        name
        for name in imported
        if name.split(".")[0] in FORBIDDEN_IN_PURE
        or (
            name.lstrip(".").split(".")[0] in FORBIDDEN_SIBLINGS
            and (name.startswith(".") or name.startswith("toolguard."))
        )
    ]
    assert not bad, f"toolguard/{module}.py imports {bad}"


def test_only_the_store_and_the_documented_exceptions_speak_sql() -> None:
    speaking = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "toolguard").rglob("*.py")
        if "store" not in path.parts and "sqlite3" in _imports(path)
    )
    # cli/_base.py only catches sqlite3.Error, as a last resort (the store wraps its own)
    assert speaking == ["toolguard/cli/_base.py"], speaking


def test_no_sql_outside_the_store() -> None:
    """Only toolguard/store/ speaks SQL (its backends, SQLite and PostgreSQL, behind one API):
    no statement, no ``execute`` anywhere else."""
    pattern = (
        r"\.execute(many)?\(|\bUPDATE \w+ SET\b"
        r"|\b(SELECT|INSERT INTO|DELETE FROM|CREATE (TABLE|INDEX)|BEGIN IMMEDIATE)\b"
    )
    found = [f for f in _where(pattern) if not f.startswith("toolguard/store/")]
    assert not found, found


@pytest.mark.slow
def test_the_store_is_reached_only_through_its_interface() -> None:
    """Outside toolguard/store/, a store is a ``StoreProtocol`` (or one of its sides,
    toolguard/store/protocol.py): nothing reaches its connection, its raw queries or its
    private writes, imports a backend's modules, or names the concrete SQLite ``Store``."""
    outside = [p for p in SOURCES if not p.is_relative_to(ROOT / "toolguard" / "store")]
    reached = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in outside
        for number, line in enumerate(_lines(path), 1)
        if re.search(r"\bstore\.(conn|query|iter_query|_write|_append|_local|_writer)\b", line)
    ]
    assert not reached, reached
    backends = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in outside
        for name in _imports(path)
        if re.search(r"(^|\.)store\.(sqlite|postgres)\b", name)
    ]
    assert not backends, backends
    concrete = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in outside
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").endswith("store")
        and any(a.name == "Store" for a in node.names)
    ]
    assert not concrete, concrete
