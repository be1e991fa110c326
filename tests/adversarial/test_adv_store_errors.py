"""Every public API against a damaged, locked or deleted database: the error that escapes is a
:class:`ToolGuardError` (``AuditError`` for the store) naming the database's path, never a raw
``sqlite3`` error; the CLI prints one ``Error: ...`` line and exits 2, without a traceback.

States:
- ``corrupt``: a leaf page of ``events`` overwritten while the guard's store was closed (it
  reopens on the next use and checks the pages again);
- ``locked``: another connection holds the write lock past the guard's ``busy_timeout``
  (reads still work in WAL mode: only the writes must fail, and cleanly);
- ``deleted``: the file (and its -wal, -shm) deleted under the open guard.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from langchain_core.tools import BaseTool, tool

import toolguard as tg
from toolguard.errors import ToolGuardError

STATES = ["corrupt", "locked", "deleted"]


def _config(root: Path, **overrides: Any) -> dict[str, Any]:
    """The test config without the identity's rate limits (the trail is made in a hurry)."""
    config = make_config(root, **overrides)
    del config["identities"]["agent-runner"]["limits"]
    return config


def _tools(guard: tg.Guard, tokens: list[str]) -> BaseTool:
    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value."""
        tokens.append(tg.current_credential().token)
        return "stored"

    return tg.guard(kv_set, guard)


@pytest.fixture(scope="module")
def base_trail(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A trail with enough events for several ``events`` leaf pages and one active task."""
    root = tmp_path_factory.mktemp("base")
    guard = tg.Guard(_config(root))
    tokens: list[str] = []
    put = _tools(guard, tokens)
    for n in range(40):
        with guard.task("process-job", job_id=str(n)):
            for i in range(4):
                put.invoke({"key": f"agents:jobs:{n}:{i}", "value": "x" * 200})
    active = guard.task("process-job", job_id="42").start()
    guard.close()
    return root, active.task_id


@dataclass
class Scene:
    db: Path
    guard: tg.Guard
    session: Any
    put: BaseTool
    token: str
    state: str
    extra: list[Any] = field(default_factory=list)


def _corrupt(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = [
        int(r[0])
        for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno"
        )
    ]
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    page = pages[len(pages) // 2]
    with open(db, "r+b") as f:
        f.seek((page - 1) * size + 8)
        f.write(b"\xff" * (size // 2))


@pytest.fixture(params=STATES)
def scene(
    request: pytest.FixtureRequest, tmp_path: Path, base_trail: tuple[Path, str]
) -> Iterator[Scene]:
    root, task_id = base_trail
    shutil.copytree(root, tmp_path / "trail")
    config = _config(tmp_path / "trail", busy_timeout=0.05)  # locked: the lock is held throughout
    db = Path(config["store"])
    guard = tg.Guard(config)
    tokens: list[str] = []
    put = _tools(guard, tokens)
    session = guard.resume(task_id)
    with _current(session):
        put.invoke({"key": "agents:jobs:42:a", "value": "1"})
    state = str(request.param)
    out = Scene(db, guard, session, put, tokens[0], state)
    if state == "corrupt":
        guard.close()
        _corrupt(db)
    elif state == "locked":
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        out.extra.append(locker)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    yield out
    for locker in out.extra:
        locker.execute("ROLLBACK")
        locker.close()
    try:
        guard.close()
    except ToolGuardError:
        pass


class _current:
    """Make a session current without ending it on exit (``with session`` would end it)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __enter__(self) -> None:
        from toolguard.context import task_var

        self.token = task_var.set(self.session)

    def __exit__(self, *exc: object) -> None:
        from toolguard.context import task_var

        task_var.reset(self.token)


def _invoke(s: Scene) -> Any:
    with _current(s.session):
        return s.put.invoke({"key": "agents:jobs:42:b", "value": "2"})


def _delegate(s: Scene) -> Any:
    child = s.session.delegate("process-job", job_id="42")
    child.start()
    return child


API: dict[str, tuple[Callable[[Scene], Any], bool]] = {
    # name: (call, writes)
    "task-start": (lambda s: s.guard.task("process-job", job_id="7").start(), True),
    "resume": (lambda s: s.guard.resume(s.session.task_id), True),
    "delegate": (_delegate, True),
    "invoke": (_invoke, True),
    "task-end": (lambda s: s.session.end(), True),
    "revoke": (lambda s: s.guard.revoke(task_id=s.session.task_id), True),
    # an identity that is not disabled: enable only reads (it writes nothing, docs/cli.md)
    "enable": (lambda s: s.guard.enable("agent-runner"), False),
    "audit.prune": (lambda s: s.guard.audit.prune(before=2e9, now=2e9), True),
    "audit.checkpoint": (lambda s: s.guard.audit.checkpoint(), True),
    "verifier": (lambda s: s.guard.verifier().verify(s.token), False),
    "audit.events": (lambda s: s.guard.audit.events(), False),
    "audit.tasks": (lambda s: s.guard.audit.tasks(), False),
    "audit.task": (lambda s: s.guard.audit.task(s.session.task_id), False),
    "audit.timeline": (lambda s: s.guard.audit.timeline(s.session.task_id), False),
    "audit.summary": (lambda s: s.guard.audit.summary(since=0.0), False),
    "audit.usage": (lambda s: s.guard.audit.usage(since=0.0, until=2e9), False),
    "audit.export": (lambda s: list(s.guard.audit.iter_rows()), False),
    "audit.verify": (lambda s: s.guard.audit.verify(), False),
    "audit.prune-dry-run": (
        lambda s: s.guard.audit.prune(before=2e9, now=2e9, dry_run=True),
        False,
    ),
}


def _names(exc: BaseException) -> str:
    """The message of an error and of its causes (a verifier's fail-closed rejection names the
    store's error as its cause)."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(str(seen))
        seen = seen.__cause__
    return " | ".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("api", sorted(API))
def test_adv_store_errors_every_public_api_raises_a_toolguard_error_with_the_path(
    scene: Scene, api: str
) -> None:
    call, writes = API[api]
    must_fail = scene.state != "locked" or writes  # reads work under a write lock (WAL)
    try:
        call(scene)
    except ToolGuardError as exc:
        assert str(scene.db) in _names(exc), _names(exc)
        if api != "verifier":  # the verifier's own message says "fail closed"; its cause names
            assert str(scene.db) in str(exc)
        return
    except BaseException as exc:  # anything else is the bug this test is about
        pytest.fail(f"{api} in state {scene.state} raised {type(exc).__name__}: {exc}")
    assert not must_fail, f"{api} in state {scene.state} did not fail"


@pytest.mark.slow
@pytest.mark.parametrize("state", ["corrupt", "deleted"])
@pytest.mark.parametrize(
    "args",
    [["audit", "tasks"], ["audit", "verify"], ["audit", "export"], ["revoke", "--task", "x"]],
    ids=lambda a: "-".join(a[:2]),
)
def test_adv_store_errors_cli_prints_one_error_line_with_the_path(
    tmp_path: Path, base_trail: tuple[Path, str], state: str, args: list[str]
) -> None:
    root, _ = base_trail
    shutil.copytree(root, tmp_path / "trail")
    db = Path(_config(tmp_path / "trail")["store"])
    if state == "corrupt":
        _corrupt(db)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "toolguard", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    listing = args[:2] in (["audit", "tasks"], ["audit", "export"])
    if state == "corrupt" and listing and done.returncode == 0:
        # SQLite read no damaged cell on this command's path
        assert "Traceback" not in done.stderr and not done.stderr.strip()
        return
    if state == "corrupt" and args[:2] == ["audit", "verify"] and done.returncode == 1:
        # verify read the damaged rows and classified them: damage at a seq, exit 1
        assert "DAMAGED" in done.stdout and "Traceback" not in done.stderr
        return
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert str(db) in lines[0]


@pytest.mark.parametrize("params", ["{not json", "[1, 2]", "null"])
def test_adv_store_errors_damaged_task_params_refuse_resume(
    tmp_path: Path, base_trail: tuple[Path, str], params: str
) -> None:
    """A ``tasks.params`` value that is not a JSON object (a damaged or edited row) refuses the
    resume with an audited :class:`PolicyDenied`, not a raw ``ValueError``; same for a parent."""
    root, task_id = base_trail
    shutil.copytree(root, tmp_path / "trail")
    config = _config(tmp_path / "trail")
    guard = tg.Guard(config)
    child = guard.resume(task_id).delegate("process-job", job_id="42").start()
    guard.close()
    conn = sqlite3.connect(config["store"])
    conn.execute("UPDATE tasks SET params = ? WHERE task_id = ?", (params, task_id))
    conn.commit()
    conn.close()
    guard = tg.Guard(config)
    try:
        for target in (task_id, child.task_id):
            with pytest.raises(tg.PolicyDenied, match="cannot be resumed"):
                guard.resume(target)
        denied = guard.audit.events(kind="denied", task_id=task_id)
        assert denied and denied[-1].rule == "task.resume"
    finally:
        guard.close()


def test_adv_store_errors_damaged_resources_column_does_not_break_the_viewer(
    tmp_path: Path, base_trail: tuple[Path, str]
) -> None:
    root, _ = base_trail
    shutil.copytree(root, tmp_path / "trail")
    config = _config(tmp_path / "trail")
    conn = sqlite3.connect(config["store"])
    seq = conn.execute("SELECT MAX(seq) FROM events WHERE kind = 'request'").fetchone()[0]
    conn.execute("UPDATE events SET resources = '{broken' WHERE seq = ?", (seq,))
    conn.commit()
    conn.close()
    guard = tg.Guard(config)
    try:
        (event,) = [e for e in guard.audit.events(kind="request") if e.seq == seq]
        assert event.resources == ("{broken",)  # shown as stored; verify reports the change
        assert not guard.audit.verify().ok
    finally:
        guard.close()


def test_adv_store_errors_cli_last_resort_names_the_path(
    tmp_path: Path, base_trail: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw sqlite3 error raised inside a command (a store method that forgot to wrap one)
    still becomes one ``Error:`` line naming the database, exit 2."""
    from click.testing import CliRunner

    from toolguard.cli import main
    from toolguard.store import Store

    root, _ = base_trail
    shutil.copytree(root, tmp_path / "trail")
    db = Path(_config(tmp_path / "trail")["store"])

    def broken(self: Store, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "task_rows", broken)
    result = CliRunner().invoke(main, ["audit", "tasks", "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert f"Error: the audit database {db} could not be read: disk I/O error" in result.output
    assert "Traceback" not in result.output
