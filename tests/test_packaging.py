"""The distributions carry every module: a wheel built from a copy of the sources holds each
subpackage (``toolguard.store``, ``toolguard.cli``), the type marker, and the entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
