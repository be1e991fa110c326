"""``examples/quickstart.py`` runs offline and shows, in plain words, what issue 2 promises.

(Other examples have their own tests next to their features.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import toolguard as tg

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"
# This checkout's code first, whatever the interpreter has installed.
PYTHONPATH = os.pathsep.join(
    str(p) for p in (ROOT, ROOT / "integrations" / "langchain", ROOT / "integrations" / "starlette")
)
# Every toolguard token starts with this: base64url of '{"alg":"EdDSA","typ":"at+jwt",'.
TOKEN_PREFIX = b"eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIs"


@pytest.fixture(scope="module")
def quickstart(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("quickstart")
    result = subprocess.run(
        [sys.executable, str(QUICKSTART), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONUTF8": "1", "NO_COLOR": "1", "PYTHONPATH": PYTHONPATH},
    )
    return result, workdir


def _module() -> ModuleType:
    sys.path.insert(0, str(QUICKSTART.parent))
    try:
        import quickstart as module
    finally:
        sys.path.remove(str(QUICKSTART.parent))
    return module


def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def _index(lines: list[str], pattern: str) -> int:
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no line matches {pattern!r} in:\n" + "\n".join(lines))


@pytest.mark.slow
def test_quickstart_exits_cleanly(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quickstart
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "toolguard:" not in result.stderr, result.stderr  # no warnings from the library


@pytest.mark.slow
def test_quickstart_tells_the_story_in_order(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quickstart
    lines = _lines(result)
    steps = [
        r"^toolguard quickstart: scripted model, key-value service at http://127\.0\.0\.1:\d+$",
        r"^Task [0-9a-f]{32} started: intent process-job, identity agent-runner, job_id=42$",
        r"^  ALLOWED read agents:context:style -> 'one line, plain words'$",
        r"^  ALLOWED read agents:jobs:42:input -> 'count the words in report\.txt'$",
        r"^  ALLOWED write agents:jobs:42:result -> 'stored'$",
        r"^  DENIED  write agents:jobs:43:result — write on 'agents:jobs:43:result' is outside "
        r"what this task may do \(intent 'process-job' allows write only on 'agents:jobs:42:\*'\)$",
        r"^Task ended \(ok\): 3 credentials revoked$",
        r"^Model's final answer: .*refused: \"Denied by toolguard: write on "
        r"'agents:jobs:43:result' is outside what this task may do",
        r"^Replay after the task: service answered 401 \(credential was revoked: .*task ended",
        r"^Audit timeline of the task:$",
        r"^Files of this run \(config, signing key, audit trail\): \S+$",
        r"^See it again:$",
        r"^  cd \S+ +# toolguard finds \./toolguard\.yaml",
        r"^  toolguard audit show [0-9a-f]{32}$",
    ]
    positions = [_index(lines, step) for step in steps]
    assert positions == sorted(positions)


@pytest.mark.slow
def test_quickstart_prints_the_timeline_with_the_viewer(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quickstart
    lines = _lines(result)
    start = _index(lines, r"^Audit timeline of the task:$")
    timeline = lines[start + 1 : _index(lines, r"^Files of this run")]
    kinds = [line.split()[1] for line in timeline if re.match(r"^\d\d:\d\d:\d\d\.\d{3} ", line)]
    assert kinds == ["task_start", "request", "request", "request", "denied", "task_end"]
    assert any("agents:jobs:43:result" in line and "DENIED" in line for line in timeline)


@pytest.mark.slow
def test_quickstart_trail_verifies_and_holds_no_token(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, workdir = quickstart
    assert TOKEN_PREFIX not in result.stdout.encode()
    for path in workdir.iterdir():
        if path.is_file() and not path.name.endswith(".pem"):
            assert TOKEN_PREFIX not in path.read_bytes(), path.name
    assert sorted(p.name for p in workdir.iterdir()) == [
        "args-hmac.key",
        "audit.db",
        "audit.db-wake",  # the writers' wake-up counter (docs/budgets.md, "Many writers")
        "audit.db.checkpoints",
        "signing-key.pem",
        "toolguard.yaml",
    ]
    with tg.Guard.from_config(workdir / "toolguard.yaml") as guard:
        report = guard.audit.verify()
        tasks = guard.audit.tasks()
    assert report.ok, report.to_dict()
    assert sorted(t["intent"] for t in tasks) == ["process-job", "seed-demo"]
    assert {t["status"] for t in tasks} == {"ok"}


@pytest.mark.slow
def test_quickstart_see_again_commands_work_as_printed(
    quickstart: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """The closing lines run as printed, in order, in one shell: get the command, go to the
    folder, show the task, list the tasks, export the report."""
    result, workdir = quickstart
    lines = _lines(result)
    start = _index(lines, r"^See it again:$")
    printed = [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]
    commands = [re.sub(r"\s+#\s.*$", "", line) for line in printed]
    assert commands[0].startswith(". ") and commands[0].endswith("/bin/activate")
    activate = Path(shlex.split(commands[0])[1])
    assert activate.is_file() and (activate.parent / "toolguard").exists()
    assert shlex.split(commands[1]) == ["cd", str(workdir)]
    assert [c.split()[:3] for c in commands[2:]] == [
        ["toolguard", "audit", "show"],
        ["toolguard", "audit", "tasks"],
        ["toolguard", "audit", "export"],
    ]
    # As printed, with `toolguard` running this checkout's code (what activate gives a user).
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "toolguard").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m toolguard "$@"\n', encoding="utf-8"
    )
    (shim / "toolguard").chmod(0o755)
    script = "set -e\n" + "\n".join(commands[1:]) + "\n"
    shown = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": f"{shim}:/usr/bin:/bin", "PYTHONPATH": PYTHONPATH, "NO_COLOR": "1"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "agents:jobs:43:result" in shown.stdout
    assert "task_end" in shown.stdout
    assert "seed-demo" in shown.stdout
    assert "<html" in (workdir / "report.html").read_text(encoding="utf-8").lower()
    (workdir / "report.html").unlink()  # leave the folder as the run left it


def test_quickstart_folder_keeps_its_key_and_starts_a_fresh_trail(tmp_path: Path) -> None:
    """A second run in the same folder reuses the signing key and starts a new trail."""
    module = _module()
    workdir = tmp_path / "demo"
    config_path = module.prepare(workdir)
    with tg.Guard.from_config(config_path) as guard:
        kid = guard.keys.active.kid
        with guard.task("seed-demo"):
            pass
        assert len(guard.audit.tasks()) == 1
    assert module.prepare(workdir) == config_path
    with tg.Guard.from_config(config_path) as guard:
        assert guard.keys.active.kid == kid
        assert guard.audit.tasks() == []
        assert guard.audit.verify().ok


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    module = _module()
    (tmp_path / "audit.db").write_bytes(b"somebody else's trail")
    with pytest.raises(SystemExit, match="not a folder of this demo"):
        module.prepare(tmp_path)
    assert (tmp_path / "audit.db").read_bytes() == b"somebody else's trail"
    assert not (tmp_path / "toolguard.yaml").exists()


def test_make_demo_uses_a_fixed_settable_folder_that_git_ignores() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "WORKDIR ?= .toolguard/demo" in makefile
    assert '$(PY) examples/quickstart.py --workdir "$(WORKDIR)"' in makefile
    assert _module().DEFAULT_WORKDIR == ROOT / ".toolguard" / "demo"
    assert ".toolguard/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", ".toolguard/demo/toolguard.yaml"], cwd=ROOT
        )
        assert ignored.returncode == 0


def test_quickstart_model_script_quotes_the_denial() -> None:
    """The scripted model's last turn depends on what the tools answered."""
    module = _module()
    from langchain_core.messages import HumanMessage, ToolMessage

    history: list[object] = [HumanMessage("Process job 42.")]
    replies = ["plain", "the input", "stored", "Denied by toolguard: no"]
    turns = []
    for reply in replies:
        turn = module.next_turn(history)  # type: ignore[arg-type]
        turns.append(turn)
        call = turn.tool_calls[0]
        history += [turn, ToolMessage(reply, tool_call_id=call["id"])]
    final = module.next_turn(history)  # type: ignore[arg-type]

    assert [(t.tool_calls[0]["name"], t.tool_calls[0]["args"]["key"]) for t in turns] == [
        ("kv_get", "agents:context:style"),
        ("kv_get", "agents:jobs:42:input"),
        ("kv_set", "agents:jobs:42:result"),
        ("kv_set", "agents:jobs:43:result"),
    ]
    assert turns[2].tool_calls[0]["args"]["value"] == "THE INPUT [plain]"
    assert not final.tool_calls
    assert 'refused: "Denied by toolguard: no"' in str(final.content)


def test_readme_shows_the_lines_make_demo_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "see it again" block is what `make demo` (run from the checkout) prints."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_readme import parse
    finally:
        sys.path.remove(str(ROOT / "tests"))
    readme = parse((ROOT / "README.md").read_text(encoding="utf-8"))
    block = next(b for b in readme if b.language == "sh" and ".venv/bin/activate" in b.code)
    shown = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.code.splitlines()]
    monkeypatch.chdir(ROOT)
    printed = [re.sub(r"\s+#\s.*$", "", line) for line in _module().see_again(
        _module().DEFAULT_WORKDIR, "TASK_ID"
    )]  # fmt: skip
    assert shown[0] == ". .venv/bin/activate"
    assert shown[1:] == [line for line in printed if not line.startswith(". ")][: len(shown) - 1]


@pytest.mark.slow
def test_the_approvals_example_runs_offline() -> None:
    """``examples/approvals.py``: an approver approves one delete and rejects another; a
    LangGraph agent pauses with the request and resumes approved; the trail verifies."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "approvals.py")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONUTF8": "1", "NO_COLOR": "1",
             "PYTHONPATH": PYTHONPATH},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = _lines(result)
    assert "  deleted agents:jobs:42:tmp" in lines
    assert (
        "  Denied by toolguard: a person rejected this call (rejected by alice: temp data only);"
        " it did not run"
    ) in lines
    resumed = lines[_index(lines, "^  paused: kv_delete") + 1]
    assert resumed == "  resumed: deleted agents:jobs:7:cache"
    counts = "approval_requested x3, approved x2, rejected x1, request x2, denied x1"
    assert f"audit events: {counts}" in lines
    assert "trail verifies: True" in lines
    assert lines[-1] == "deleted: ['agents:jobs:42:tmp', 'agents:jobs:7:cache']"
