"""The distributions carry every module: a wheel built from a copy of the sources holds each
subpackage (``toolguard.store``, ``toolguard.cli``), the type marker, and the entry point; their
metadata states the license as an SPDX expression, and every runtime dependency is one the
library imports (and every import is declared)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(project: Path, tmp_path: Path) -> zipfile.ZipFile:
    """``pip wheel`` on a copy of ``project`` (so the tree gets no build/ or egg-info)."""
    source = tmp_path / "src"
    shutil.copytree(
        project, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
         "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.mark.slow
def test_the_core_wheel_holds_every_module_of_the_source_tree(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "toolguard", project / "toolguard")
    with _build_wheel(project, tmp_path) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    on_disk = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "toolguard").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= names, sorted(on_disk - names)
    assert {"toolguard/store/core.py", "toolguard/cli/__init__.py"} <= names
    assert "toolguard/py.typed" in names
    assert "toolguard = toolguard.cli:main" in scripts


@pytest.mark.slow
def test_the_integration_wheels_hold_their_package(tmp_path: Path) -> None:
    for name in ("langchain", "starlette"):
        with _build_wheel(ROOT / "integrations" / name, tmp_path / name) as wheel:
            names = set(wheel.namelist())
        package = f"toolguard_{name}"
        on_disk = {
            p.relative_to(ROOT / "integrations" / name).as_posix()
            for p in (ROOT / "integrations" / name / package).rglob("*.py")
        }
        assert on_disk <= names, sorted(on_disk - names)
        assert f"{package}/py.typed" in names


# -- metadata: the license as an SPDX expression, and every runtime dependency used ---------------

PROJECTS = {
    "agent-toolguard": (ROOT, ["toolguard"]),
    "toolguard-langchain": (ROOT / "integrations" / "langchain", ["toolguard_langchain"]),
    "toolguard-starlette": (ROOT / "integrations" / "starlette", ["toolguard_starlette"]),
    "toolguard-openai-agents": (
        ROOT / "integrations" / "openai-agents",
        ["toolguard_openai_agents"],
    ),
    "toolguard-pydantic-ai": (ROOT / "integrations" / "pydantic-ai", ["toolguard_pydantic_ai"]),
    "toolguard-mcp": (ROOT / "integrations" / "mcp", ["toolguard_mcp"]),
}


def _pyproject(project: Path) -> dict[str, Any]:
    with open(project / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``pyjwt[crypto]>=2`` -> ``pyjwt``)."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert found, requirement
    return re.sub(r"[-_.]+", "-", found.group(1)).lower()


def _imported_modules(packages: list[Path]) -> dict[str, set[str]]:
    """Each third-party module the packages import, with the distributions that provide it
    (``langgraph`` is spread over several)."""
    modules: set[str] = set()
    for package in packages:
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    owners = importlib.metadata.packages_distributions()
    local = {
        "toolguard",
        "toolguard_langchain",
        "toolguard_starlette",
        "toolguard_openai_agents",
        "toolguard_pydantic_ai",
        "toolguard_mcp",
    }
    found: dict[str, set[str]] = {}
    for module in sorted(modules - local - set(sys.stdlib_module_names)):
        if module == "tomli":  # Python 3.10 only: not installed on newer interpreters
            found[module] = {"tomli"}
            continue
        assert module in owners, f"{module} is imported but no installed distribution has it"
        found[module] = {_name(d) for d in owners[module]}
    return found


@pytest.mark.parametrize("distribution", sorted(PROJECTS))
def test_every_runtime_dependency_is_imported_and_every_import_declared(
    distribution: str,
) -> None:
    project, packages = PROJECTS[distribution]
    meta = _pyproject(project)["project"]
    declared = {_name(r) for r in meta["dependencies"]} - set(PROJECTS)
    extras = {_name(r) for rs in meta.get("optional-dependencies", {}).values() for r in rs}
    inherited = set()  # an integration may import what agent-toolguard brings
    if project != ROOT:
        inherited = {_name(r) for r in _pyproject(ROOT)["project"]["dependencies"]}
    imported = _imported_modules([project / p for p in packages])
    provided = set().union(*imported.values())
    assert declared <= provided, f"declared but never imported: {sorted(declared - provided)}"
    undeclared = {m for m, d in imported.items() if not d & (declared | extras | inherited)}
    assert not undeclared, f"imported but not declared: {sorted(undeclared)}"
    assert "pyjwt" not in declared


@pytest.mark.parametrize("distribution", sorted(PROJECTS))
def test_the_license_is_an_spdx_expression(distribution: str) -> None:
    project, _ = PROJECTS[distribution]
    data = _pyproject(project)
    assert data["project"]["license"] == "Apache-2.0"
    setuptools = next(r for r in data["build-system"]["requires"] if _name(r) == "setuptools")
    assert re.fullmatch(r"setuptools>=(7[7-9]|[89]\d)(\.\d+)*", setuptools), setuptools


@pytest.mark.slow
def test_the_wheels_carry_the_license_expression_and_build_without_warnings(
    tmp_path: Path,
) -> None:
    for distribution, (project, packages) in PROJECTS.items():
        source = tmp_path / distribution  # a copy: the build leaves build/ and egg-info behind
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (project / name).exists():
                shutil.copy(project / name, source / name)
        for package in packages:
            shutil.copytree(
                project / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        project = source
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(project), "--no-deps", "-v",
             "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist" / distribution)],
            capture_output=True, text=True, timeout=180,
            cwd=tmp_path,
        )  # fmt: skip
        assert build.returncode == 0, build.stderr
        assert "DeprecationWarning" not in build.stdout + build.stderr
        (wheel,) = (tmp_path / "dist" / distribution).glob("*.whl")
        with zipfile.ZipFile(wheel) as zipped:
            name = next(n for n in zipped.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = zipped.read(name).decode()
        assert "License-Expression: Apache-2.0" in metadata.splitlines(), distribution
        assert not re.search(r"^Requires-Dist: pyjwt\b(?!.*extra ==)", metadata, re.M | re.I)
