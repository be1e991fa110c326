"""``examples/quickstart.py`` runs offline and shows, in plain words, what issue 2 promises.

(Other examples have their own tests next to their features.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import toolguard as tg

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"
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
        env={"PATH": "/usr/bin:/bin", "PYTHONUTF8": "1", "NO_COLOR": "1"},
    )
    return result, workdir


def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def _index(lines: list[str], pattern: str) -> int:
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no line matches {pattern!r} in:\n" + "\n".join(lines))


def test_quickstart_exits_cleanly(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quickstart
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "toolguard:" not in result.stderr, result.stderr  # no warnings from the library


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
        r"^See it again: toolguard audit show [0-9a-f]{32} --db .*audit\.db$",
    ]
    positions = [_index(lines, step) for step in steps]
    assert positions == sorted(positions)


def test_quickstart_prints_the_timeline_with_the_viewer(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quickstart
    lines = _lines(result)
    start = _index(lines, r"^Audit timeline of the task:$")
    timeline = lines[start + 1 : _index(lines, r"^See it again:")]
    kinds = [line.split()[1] for line in timeline if re.match(r"^\d\d:\d\d:\d\d\.\d{3} ", line)]
    assert kinds == ["task_start", "request", "request", "request", "denied", "task_end"]
    assert any("agents:jobs:43:result" in line and "DENIED" in line for line in timeline)


def test_quickstart_trail_verifies_and_holds_no_token(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, workdir = quickstart
    assert TOKEN_PREFIX not in result.stdout.encode()
    for path in workdir.iterdir():
        if path.is_file() and not path.name.endswith(".pem"):
            assert TOKEN_PREFIX not in path.read_bytes(), path.name
    config = tg.load_config(ROOT / "examples" / "quickstart.yaml").model_copy(
        update={"base_dir": str(workdir)}
    )
    with tg.Guard(config) as guard:
        report = guard.audit.verify()
        tasks = guard.audit.tasks()
    assert report.ok, report.to_dict()
    assert sorted(t["intent"] for t in tasks) == ["process-job", "seed-demo"]
    assert {t["status"] for t in tasks} == {"ok"}


def test_quickstart_timeline_command_works(
    quickstart: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quickstart
    command = _lines(result)[_index(_lines(result), r"^See it again: ")]
    task_id, db = re.findall(r"show (\S+) --db (\S+)$", command)[0]
    shown = subprocess.run(
        [sys.executable, "-m", "toolguard", "audit", "show", task_id, "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert shown.returncode == 0, shown.stderr
    assert "agents:jobs:43:result" in shown.stdout
    assert "task_end" in shown.stdout


def test_quickstart_model_script_quotes_the_denial() -> None:
    """The scripted model's last turn depends on what the tools answered."""
    sys.path.insert(0, str(QUICKSTART.parent))
    try:
        import quickstart as module
    finally:
        sys.path.remove(str(QUICKSTART.parent))
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
