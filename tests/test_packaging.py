"""The distributions carry every module and say what they need.

``agent-toolguard-core`` (the root pyproject.toml) is the whole ``toolguard`` package with what
the guard and a verifier need; its extras ``langchain`` and ``cli`` bring LangChain and the
command line. ``agent-toolguard`` (packages/agent-toolguard) is the core with both extras and
the ``toolguard`` command; ``toolguard-starlette`` depends on the core alone. Checked here: a
wheel built from a copy of the sources holds each subpackage and the type marker, the command
is in the metapackage; the license is an SPDX expression; every runtime dependency is imported
and every import declared, module by module (the modules that need an extra are listed in
:data:`NEEDS_EXTRA`); and, in a subprocess that can import only the declared closure of the
core and toolguard-starlette, the guard, the store, revocation, exports and a verifier work,
while LangChain and the command say what to install (``MissingDependency``)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

import toolguard
from toolguard._extras import EXTRAS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
META = ROOT / "packages" / "agent-toolguard"


def _core_copy(project: Path) -> Path:
    """The core's files (pyproject.toml, README.md, toolguard/) copied into ``project``."""
    project.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "toolguard", project / "toolguard")
    return project


def _requires_dist(metadata: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:")]  # fmt: skip


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


def _wheel_path(project: Path, tmp_path: Path) -> Path:
    with _build_wheel(project, tmp_path) as wheel:
        assert wheel.filename is not None
        return Path(wheel.filename)


@pytest.mark.slow
def test_the_core_wheel_holds_every_module_of_the_source_tree(tmp_path: Path) -> None:
    with _build_wheel(_core_copy(tmp_path / "project"), tmp_path) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    on_disk = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "toolguard").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= names, sorted(on_disk - names)
    assert {"toolguard/store/sqlite/core.py", "toolguard/cli/__init__.py"} <= names
    assert "toolguard/py.typed" in names
    assert not any(n.endswith("entry_points.txt") for n in names)  # the command: agent-toolguard
    requires = _requires_dist(metadata.decode())
    unconditional = {_name(r) for r in requires if "extra ==" not in r}
    assert not unconditional & {"langchain-core", "click", "rich", "sqlite-utils"}, requires
    for extra, modules in EXTRAS.items():
        assert {_name(r) for r in requires if f'extra == "{extra}"' in r} == set(
            modules.values()
        ), extra


@pytest.mark.slow
def test_the_metapackage_wheel_is_the_core_with_both_extras_and_the_command(
    tmp_path: Path,
) -> None:
    with _build_wheel(META, tmp_path) as wheel:
        names = set(wheel.namelist())
        scripts = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert all(".dist-info/" in n for n in names), sorted(names)  # no modules of its own
    assert "toolguard = toolguard.cli:main" in scripts
    assert _requires_dist(metadata.decode()) == [
        f"agent-toolguard-core[cli,langchain]=={toolguard.__version__}",
        f'agent-toolguard-core[postgres]=={toolguard.__version__}; extra == "postgres"',
    ]


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
    "agent-toolguard-core": (ROOT, ["toolguard"]),
    "agent-toolguard": (META, []),  # no modules: the core with both extras, and the command
    "toolguard-langchain": (ROOT / "integrations" / "langchain", ["toolguard_langchain"]),
    "toolguard-starlette": (ROOT / "integrations" / "starlette", ["toolguard_starlette"]),
    "toolguard-openai-agents": (
        ROOT / "integrations" / "openai-agents",
        ["toolguard_openai_agents"],
    ),
    "toolguard-pydantic-ai": (ROOT / "integrations" / "pydantic-ai", ["toolguard_pydantic_ai"]),
    "toolguard-mcp": (ROOT / "integrations" / "mcp", ["toolguard_mcp"]),
}
LOCAL = {
    "toolguard",
    "toolguard_langchain",
    "toolguard_starlette",
    "toolguard_openai_agents",
    "toolguard_pydantic_ai",
    "toolguard_mcp",
}

NEEDS_EXTRA = {
    "toolguard.tools": "langchain",
    "toolguard._langchain_compat": "langchain",
    "toolguard.viewer": "cli",
    "toolguard.cli": "cli",  # and its submodules
    "toolguard.store.postgres": "postgres",  # and its submodules
}
"""The core modules that import an extra's packages (and raise ``MissingDependency`` without
them, toolguard/_extras.py). Every other module of the core runs on the core's own
dependencies; imports under ``if TYPE_CHECKING:`` never run and only need to be declared
somewhere (``toolguard.engine`` names LangChain's ``BaseTool`` in annotations)."""

OPTIONAL = {"toolguard._langchain_compat": {"langgraph": "is_invalid_resume, on first use"}}
"""Imports that a module makes on first use and does without (no dependency declares them)."""


def _pyproject(project: Path) -> dict[str, Any]:
    with open(project / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``pyjwt[crypto]>=2`` -> ``pyjwt``)."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert found, requirement
    return re.sub(r"[-_.]+", "-", found.group(1)).lower()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """The top-level modules a file imports: (at run time, under ``TYPE_CHECKING`` only)."""
    runtime: set[str] = set()
    typing_only: set[str] = set()

    def visit(node: ast.AST, found: set[str]) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, typing_only)
            for child in node.orelse:
                visit(child, found)
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child, found)

    visit(ast.parse(path.read_text(encoding="utf-8")), runtime)
    third_party = set(sys.stdlib_module_names) | LOCAL
    return runtime - third_party, typing_only - third_party - runtime


def _modules(project: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` in ``project``."""
    found = {}
    for path in sorted((project / package).rglob("*.py")):
        parts = path.relative_to(project).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _owners(module: str) -> set[str]:
    """The distributions that provide a top-level module (``langgraph`` is spread over
    several)."""
    if module == "tomli":  # Python 3.10 only: not installed on newer interpreters
        return {"tomli"}
    owners = _installed()
    assert module in owners, f"{module} is imported but no installed distribution has it"
    return {_name(d) for d in owners[module]}


def _requirements(meta: dict[str, Any], extras: Iterable[str] = ()) -> set[str]:
    """The distribution names a project's ``dependencies`` (and those ``extras``) require."""
    found = {_name(r) for r in meta.get("dependencies", [])}
    for extra in extras:
        found |= {_name(r) for r in meta.get("optional-dependencies", {}).get(extra, [])}
    return found


def _brought_by(requirement: str) -> set[str]:
    """What a requirement on a local project brings: its dependencies, with its extras."""
    req = Requirement(requirement)
    if _name(req.name) == "agent-toolguard":
        (core,) = _pyproject(META)["project"]["dependencies"]
        return _brought_by(core)
    if _name(req.name) == "agent-toolguard-core":
        return _requirements(_pyproject(ROOT)["project"], set(req.extras))
    return set()


CORE = _pyproject(ROOT)["project"]


@pytest.mark.slow
def test_the_core_declares_what_its_modules_import_module_by_module() -> None:
    extras = CORE["optional-dependencies"]
    declared = _requirements(CORE)
    modules = _modules(ROOT, "toolguard")
    used: set[str] = set()
    used_by_extra: dict[str, set[str]] = {extra: set() for extra in EXTRAS}
    for module, path in modules.items():
        runtime, typing_only = _imports(path)
        needs = next(
            (e for m, e in NEEDS_EXTRA.items() if module == m or module.startswith(m + ".")),
            None,
        )
        allowed = declared | (_requirements(CORE, {needs}) if needs else set())
        for imported in sorted(runtime):
            owners = _owners(imported)
            if imported in OPTIONAL.get(module, {}):
                continue
            assert owners & allowed, (
                f"{module} imports {imported} ({sorted(owners)}), which agent-toolguard-core "
                f"does not bring{f' with its {needs} extra' if needs else ''}: declare it, or "
                "list the module in NEEDS_EXTRA (and make it raise MissingDependency)"
            )
            used |= owners & declared
            if needs:
                used_by_extra[needs] |= owners & {_name(r) for r in extras[needs]}
        everything = _requirements(CORE, set(extras))
        for imported in typing_only:
            assert _owners(imported) & everything, f"{module}: {imported} is not declared"
    assert declared - {"tomli"} <= used, f"declared but never imported: {declared - used}"
    for extra, modules_of in EXTRAS.items():  # toolguard/_extras.py and the pyproject agree
        assert {_name(r) for r in extras[extra]} == set(modules_of.values()), extra
        assert used_by_extra[extra] == set(modules_of.values()), extra
    assert set(extras) == {*EXTRAS, "dev"}
    assert set(NEEDS_EXTRA.values()) == set(EXTRAS)
    assert "pyjwt" not in declared


def test_the_metapackage_is_the_core_at_this_version_with_both_extras_and_the_command() -> None:
    meta = _pyproject(META)["project"]
    assert meta["version"] == CORE["version"] == toolguard.__version__
    assert meta["dependencies"] == [f"agent-toolguard-core[cli,langchain]=={CORE['version']}"]
    assert meta["scripts"] == {"toolguard": "toolguard.cli:main"}
    assert "scripts" not in CORE  # a verifier-only install gets no command it cannot run
    assert not META.joinpath("toolguard").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "distribution", sorted(set(PROJECTS) - {"agent-toolguard-core", "agent-toolguard"})
)
def test_every_runtime_dependency_of_an_integration_is_imported_and_every_import_declared(
    distribution: str,
) -> None:
    project, packages = PROJECTS[distribution]
    meta = _pyproject(project)["project"]
    requirements = meta["dependencies"]
    declared = {_name(r) for r in requirements} - set(PROJECTS)
    extras = _requirements(meta, set(meta.get("optional-dependencies", {})))
    inherited = set().union(*(_brought_by(r) for r in requirements))  # via agent-toolguard(-core)
    imported: dict[str, set[str]] = {}
    for package in packages:
        for path in _modules(project, package).values():
            for module in set().union(*_imports(path)):
                imported[module] = _owners(module)
    provided = set().union(*imported.values())
    assert declared <= provided, f"declared but never imported: {sorted(declared - provided)}"
    undeclared = {m for m, d in imported.items() if not d & (declared | extras | inherited)}
    assert not undeclared, f"imported but not declared: {sorted(undeclared)}"


def test_the_verifier_integration_depends_on_the_core_alone() -> None:
    meta = _pyproject(ROOT / "integrations" / "starlette")["project"]
    assert {_name(r) for r in meta["dependencies"]} == {"agent-toolguard-core", "starlette"}
    assert not _brought_by(meta["dependencies"][0]) & {"langchain-core", "click", "rich"}
    for name in ("langchain", "openai-agents", "pydantic-ai"):  # agent frameworks: everything
        deps = _pyproject(ROOT / "integrations" / name)["project"]["dependencies"]
        assert "agent-toolguard" in {_name(r) for r in deps}, name


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


# -- a verifier-only install: the core and toolguard-starlette, nothing else -----------------------


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements bring, through the local projects' pyproject.toml
    and the installed distributions' metadata (markers evaluated here, extras followed)."""
    environment = default_environment()
    found: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({**environment, "extra": extra}):
            continue
        name = _name(req.name)
        if name in {"agent-toolguard-core", "agent-toolguard"}:
            project = ROOT if name == "agent-toolguard-core" else META
            meta = _pyproject(project)["project"]
            todo += [(r, "") for r in meta["dependencies"]]
            for wanted in req.extras:
                todo += [(r, "") for r in meta["optional-dependencies"][wanted]]
            found.add(name)
            continue
        if name in found:
            continue
        found.add(name)
        for sub in importlib.metadata.distribution(name).requires or []:
            marker = Requirement(sub).marker
            wanted = next(
                (e for e in ("", *req.extras)
                 if marker is None or marker.evaluate({**environment, "extra": e})),
                None,
            )  # fmt: skip
            if wanted is not None:
                todo.append((sub, wanted))
    return found


def _blocked(allowed: set[str]) -> list[str]:
    """Every installed top-level module that no ``allowed`` distribution provides."""
    return sorted(
        module
        for module, owners in _installed().items()
        if module not in LOCAL
        and module not in sys.stdlib_module_names
        and not {_name(o) for o in owners} & allowed
    )


VERIFIER_ONLY = ["agent-toolguard-core", "starlette>=0.40"]
"""What ``pip install ./ ./integrations/starlette`` asks for (toolguard-starlette's
dependencies)."""

_BLOCKER = """
import importlib.abc, json, sys

BLOCKED = frozenset(json.loads(open(sys.argv[1], encoding="utf-8").read()))


class _NotInstalled(importlib.abc.MetaPathFinder):  # as if pip had not installed them
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""

_CONFIG = """\
store: audit.db
issuer: {name: toolguard-local, audience: kv-service, ttl: 5m, key_file: keys/signing.pem}
identities:
  agent-runner:
    owner: data-platform
    allow: {read: ["agents:jobs:*"], write: ["agents:jobs:*"]}
tools:
  kv_set: {operation: write, resource: "{key}"}
intents:
  process-job:
    identity: agent-runner
    tools: [kv_set]
    allow: {write: ["agents:jobs:{job_id}:*"]}
"""

_GUARD_AND_VERIFIER = """
import importlib, io, json, sys, time
from pathlib import Path

import toolguard as tg
from toolguard.configcheck import check_config
from toolguard.export import write_csv, write_html, write_jsonl
from toolguard_starlette import verifier_from

work = Path(sys.argv[2])
out = {"toolguard": tg.__file__, "toolguard_starlette": sys.modules["toolguard_starlette"].__file__}
config = work / "toolguard.yaml"
out["check"] = [str(f) for f in check_config(config).errors]
guard = tg.Guard.from_config(config)
(work / "jwks.json").write_text(json.dumps(guard.keys.jwks()))
verifier = verifier_from(
    jwks=work / "jwks.json", store=work / "audit.db", issuer="toolguard-local",
    audience="kv-service",
)
with guard.task("process-job", job_id="42") as task:
    permit = guard.authorize("kv_set", {"key": "agents:jobs:42:state", "value": "v"})
    with permit as credential:
        token = credential.token
        claims = verifier.verify(token, operation="write", resource="agents:jobs:42:state")
        out["verified"] = claims["task_id"] == task.task_id
    guard.finish(permit)
    try:
        guard.authorize("kv_set", {"key": "agents:jobs:43:state", "value": "v"})
    except tg.PolicyDenied as exc:
        out["denied"] = exc.rule
try:
    verifier.verify(token, operation="write", resource="agents:jobs:42:state")
except tg.CredentialRevoked as exc:
    out["after_end"] = exc.rule
out["revoked"] = guard.revoke(identity="agent-runner", reason="drill", disable=True).scope
out["enabled"] = guard.enable("agent-runner", reason="drill over").identity
out["verify"] = guard.audit.verify().ok
out["jsonl"] = write_jsonl(guard.audit.iter_rows(), io.StringIO())
out["csv"] = write_csv(guard.audit.iter_rows(), io.StringIO())
out["html"] = write_html(guard.audit, io.StringIO(), now=time.time())

missing = {
    "tg.guard": lambda: tg.guard,
    "tg.GuardedTool": lambda: tg.GuardedTool,
    "guard.wrap": lambda: guard.wrap([]),
    "toolguard.tools": lambda: importlib.import_module("toolguard.tools"),
    "toolguard.cli": lambda: importlib.import_module("toolguard.cli"),
    "toolguard.cli.admin": lambda: importlib.import_module("toolguard.cli.admin"),
    "toolguard.viewer": lambda: importlib.import_module("toolguard.viewer"),
}
out["missing"] = {}
for what, attempt in missing.items():
    try:
        attempt()
    except tg.MissingDependency as exc:
        assert isinstance(exc, ModuleNotFoundError) and isinstance(exc, tg.ToolGuardError)
        out["missing"][what] = [exc.extra, str(exc)]
    else:
        out["missing"][what] = None
guard.close()
print(json.dumps(out))
"""


def _run_blocked(
    tmp_path: Path, code: str, *args: str, path: list[Path]
) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that can import the standard library, ``path`` and the
    declared closure of a verifier-only install; any other installed module is "not
    installed"."""
    blocked = tmp_path / "blocked.json"
    blocked.write_text(json.dumps(_blocked(_closure(VERIFIER_ONLY))), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + code, str(blocked), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_a_verifier_only_install_brings_no_langchain_click_rich_or_sqlite_utils() -> None:
    closure = _closure(VERIFIER_ONLY)
    assert {"agent-toolguard-core", "starlette", "pydantic", "cryptography"} <= closure
    assert not closure & {
        "agent-toolguard", "langchain-core", "langsmith", "click", "rich", "pygments",
        "sqlite-utils", "pip",
    }, sorted(closure)  # fmt: skip
    blocked = _blocked(closure)
    assert {"langchain_core", "click", "rich", "sqlite_utils"} <= set(blocked)


def _check_guard_and_verifier(tmp_path: Path, path: list[Path], root: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "toolguard.yaml").write_text(_CONFIG, encoding="utf-8")
    run = _run_blocked(tmp_path, _GUARD_AND_VERIFIER, str(work), path=path)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert Path(out["toolguard"]).is_relative_to(root)
    assert out["check"] == []
    assert out["verified"] is True
    assert out["denied"] == "intents.process-job.allow.write"
    assert out["after_end"] == "credential.revoked"
    assert (out["revoked"], out["enabled"], out["verify"]) == ("identity", "agent-runner", True)
    assert out["jsonl"] > 0 and out["csv"] > 0 and out["html"] == 1
    for what, found in out["missing"].items():
        assert found is not None, f"{what} worked without its extra"
        extra, message = found
        assert extra == ("cli" if "cli" in what or "viewer" in what else "langchain"), what
        assert "pip install agent-toolguard" in message, message
        assert f"agent-toolguard-core[{extra}]" in message, message


@pytest.mark.slow
def test_the_core_alone_runs_the_guard_and_a_verifier_and_says_what_langchain_and_the_cli_need(
    tmp_path: Path,
) -> None:
    """From the sources: only the core's (and toolguard-starlette's) declared dependencies."""
    sources = [ROOT, ROOT / "integrations" / "starlette"]
    _check_guard_and_verifier(tmp_path, sources, ROOT)


@pytest.mark.slow
def test_every_core_module_imports_without_the_extras_or_says_what_to_install(
    tmp_path: Path,
) -> None:
    code = """
import importlib, json, sys
found = {}
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        found[name] = [type(exc).__name__, getattr(exc, "extra", None), str(exc)]
    else:
        found[name] = None
print(json.dumps(found))
"""
    names = sorted(_modules(ROOT, "toolguard"))
    run = _run_blocked(tmp_path, code, json.dumps(names), path=[ROOT])
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    for name in names:
        needs = next(
            (e for m, e in NEEDS_EXTRA.items() if name == m or name.startswith(m + ".")), None
        )
        if needs is None:
            assert found[name] is None, f"{name} needs more than the core: {found[name]}"
        else:
            assert found[name] is not None, f"{name} imports without the {needs} extra"
            kind, extra, message = found[name]
            assert (kind, extra) == ("MissingDependency", needs), found[name]
            assert re.search(r"pip install [\"']?agent-toolguard", message), message


def test_python_m_toolguard_without_the_cli_extra_is_one_error_line_saying_what_to_install(
    tmp_path: Path,
) -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv[1:] = ['audit', 'tasks']\n"
        "runpy.run_module('toolguard', run_name='__main__')\n"
    )
    run = _run_blocked(tmp_path, code, path=[ROOT])
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: the toolguard command")
    assert "pip install agent-toolguard" in lines[0]
    assert "agent-toolguard-core[cli]" in lines[0]


@pytest.mark.slow
def test_the_core_and_starlette_wheels_run_a_verifier_without_langchain_click_or_rich(
    tmp_path: Path,
) -> None:
    """The built wheels, installed (without dependencies) into a folder of their own, with only
    their declared closure importable: what ``pip install ./ ./integrations/starlette`` gives."""
    wheels = [
        _wheel_path(_core_copy(tmp_path / "core-src"), tmp_path / "core"),
        _wheel_path(ROOT / "integrations" / "starlette", tmp_path / "starlette"),
    ]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), *map(str, wheels)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert not (target / "bin" / "toolguard").exists()
    _check_guard_and_verifier(tmp_path, [target], target)
