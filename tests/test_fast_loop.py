"""`make test-fast` checks no less than it selects: the shortcuts of docs/architecture.md ("The
tests") change when and where modules are imported, never which tests run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _POSTGRES_MODULE, _SLOW_MODULE, _deselects_every, _deselects_every_slow_test

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join(
    str(p)
    for p in (
        ROOT,
        *(
            ROOT / "integrations" / name
            for name in ("langchain", "starlette", "openai-agents", "pydantic-ai", "mcp")
        ),
    )
)


@pytest.mark.parametrize(
    "text",
    [
        "pytestmark = pytest.mark.slow\n",
        "pytestmark = pytest.mark.slow  # subprocesses\n",
        "import x\n\npytestmark = [\n    pytest.mark.skipif(not x, reason='y'),\n"
        "    pytest.mark.slow,  # z\n]\n",
    ],
)
def test_a_module_marked_slow_as_a_whole_is_recognised(text: str) -> None:
    assert _SLOW_MODULE.search(text)


@pytest.mark.parametrize(
    "text",
    [
        "@pytest.mark.slow\ndef test_one() -> None: ...\n",
        "pytestmark = pytest.mark.skipif(True, reason='slow')\n",
        "pytestmark = pytest.mark.xdist_group('slow')\n",
        "pytestmark = [pytest.mark.slowish]\n",
        "    pytestmark = pytest.mark.slow\n",
    ],
)
def test_a_module_with_some_slow_tests_is_collected(text: str) -> None:
    assert not _SLOW_MODULE.search(text)


@pytest.mark.parametrize(
    ("markexpr", "skips_slow_modules"),
    [
        ("not slow", True),
        ("not slow and not postgres", True),  # make test-fast
        ("not (slow or postgres)", True),
        ("not slow or postgres", False),  # a slow test marked postgres is selected
        ("(not slow) or (slow and no_such_mark)", False),
        ("slow", False),
        ("postgres", False),
        ("", False),
    ],
)
def test_only_an_expression_deselecting_every_slow_test_skips_slow_modules(
    markexpr: str, skips_slow_modules: bool
) -> None:
    assert _deselects_every_slow_test(markexpr) is skips_slow_modules


@pytest.mark.parametrize(
    ("markexpr", "skips_postgres_modules"),
    [
        ("not slow and not postgres", True),  # make test-fast
        ("not postgres", True),
        ("not slow", False),
        ("not postgres or slow", False),
        ("", False),
    ],
)
def test_a_module_marked_postgres_as_a_whole_is_skipped_only_when_no_postgres_test_is_selected(
    markexpr: str, skips_postgres_modules: bool
) -> None:
    assert _deselects_every(markexpr, "postgres") is skips_postgres_modules
    assert _POSTGRES_MODULE.search("import x\n\npytestmark = pytest.mark.postgres\n")
    assert not _POSTGRES_MODULE.search("@pytest.mark.postgres\ndef test_one() -> None: ...\n")
    for file in ("test_store_postgres.py", "test_store_postgres_pipeline.py"):
        assert _POSTGRES_MODULE.search((ROOT / "tests" / file).read_text(encoding="utf-8"))


def _collect(*args: str, plugins: Path | None = None) -> str:
    """``pytest --collect-only -q ARGS`` in a subprocess (with the plugin modules found in the
    folder ``plugins``): its output."""
    path = PYTHONPATH + (os.pathsep + str(plugins) if plugins is not None else "")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _ids(output: str) -> list[str]:
    return [line for line in output.splitlines() if "::" in line]


@pytest.mark.slow
def test_the_fast_loop_selects_every_test_not_marked_slow() -> None:
    # make test-fast's -m skips importing wholly slow modules; this one, selecting the same
    # tests (no test is marked no_such_mark), imports them all
    fast = _ids(_collect("-m", "not slow and not postgres"))
    reference = _ids(_collect("-m", "(not slow and not postgres) or (slow and no_such_mark)"))
    assert fast == reference
    assert len(fast) > 1000
    assert not any(n.startswith(("tests/test_mcp.py", "tests/test_crash.py")) for n in fast)
    assert not any(n.startswith("tests/test_store_postgres") for n in fast)
    assert any(n.startswith("tests/test_store_postgres.py") for n in _ids(_collect()))


@pytest.mark.slow
def test_collecting_the_sdk_tests_imports_no_sdk(tmp_path: Path) -> None:
    (tmp_path / "sdk_probe.py").write_text(
        "import sys\n\n"
        "def pytest_collection_finish(session):\n"
        "    loaded = sorted(m for m in ('agents', 'pydantic_ai') if m in sys.modules)\n"
        "    print('SDK-LOADED', loaded)\n",
        encoding="utf-8",
    )
    output = _collect(
        "-p", "sdk_probe", "tests/test_openai_agents.py", "tests/test_pydantic_ai.py",
        plugins=tmp_path,
    )  # fmt: skip
    assert len(_ids(output)) > 40
    assert "SDK-LOADED []" in output, output[-2000:]


def test_the_sdk_modules_are_one_unit_of_work_of_loadfile() -> None:
    # they import the same agent SDKs: on one worker, imported once
    from conftest import SHARED_WORKER, xdist_scope

    scopes = {xdist_scope(f"{file}::test_x[a::b]") for file in SHARED_WORKER}
    assert len(scopes) == 1 and len(SHARED_WORKER) == 3
    assert all((ROOT / file).is_file() for file in SHARED_WORKER)
    assert xdist_scope("tests/test_cli.py::test_x[a::b]") == "tests/test_cli.py"
    assert xdist_scope("tests/faults/test_fault_store.py::C::test_y") == (
        "tests/faults/test_fault_store.py"
    )


@pytest.mark.slow
def test_the_fast_loop_runs_the_sdk_modules_on_one_worker(tmp_path: Path) -> None:
    """Through xdist itself: the tests of two SDK modules (two files: one worker each, before)
    report from the same worker."""
    (tmp_path / "worker_probe.py").write_text(
        "import os\n\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.when == 'call':\n"
        "        print('RAN', report.nodeid.split('::')[0], getattr(report, 'node', None)"
        " and report.node.gateway.id, flush=True)\n",
        encoding="utf-8",
    )
    path = PYTHONPATH + os.pathsep + str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "worker_probe", "-n", "2",
         "--dist", "loadfile", "-m", "not slow and not postgres", "-k", "docs_section",
         "tests/test_openai_agents.py", "tests/test_pydantic_ai.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ran = [line.split("RAN ", 1)[1].split() for line in done.stdout.splitlines() if "RAN " in line]
    assert {file for file, _ in ran} == {"tests/test_openai_agents.py", "tests/test_pydantic_ai.py"}
    assert len({worker for _, worker in ran}) == 1, done.stdout[-2000:]
