"""The store under faults: its file deleted, its directory removed or another file moved over
it while a guard is open; a damaged page deep in the database; a full disk (ENOSPC).

In every case the guard fails closed with :class:`AuditError` naming the path: the tool does
not run, nothing is written to a file that is no longer at the path, a file that replaced it is
never touched, and a task end in that state is kept (this process's verifiers reject its
credentials) instead of silently succeeding into an unlinked file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from langchain_core.tools import tool

import toolguard as tg
from toolguard.errors import AuditError, ToolGuardError
from toolguard.store import Store

JOB = {"job_id": "42"}


def _tools(guard: tg.Guard) -> tuple[Any, list[str], list[str]]:
    """A guarded ``kv_set`` that records the keys it ran with and the tokens it got."""
    ran: list[str] = []
    tokens: list[str] = []

    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value."""
        ran.append(key)
        tokens.append(tg.current_credential().token)
        return "stored"

    return tg.guard(kv_set, guard), ran, tokens


def _config(tmp_path: Path) -> dict[str, Any]:
    """The store in its own directory (so it can be removed), the key outside it."""
    return make_config(tmp_path, store=str(tmp_path / "trail" / "audit.db"))


def _requests(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'request'").fetchone()[0])
    finally:
        conn.close()


def _other_trail(tmp_path: Path) -> tuple[Path, int, str]:
    """Another real toolguard database (closed, no -wal): its path, event count and head."""
    config = make_config(tmp_path / "other")
    other = tg.Guard(config)
    put, _, _ = _tools(other)
    with other.task("process-job", **JOB):
        put.invoke({"key": "agents:jobs:42:other", "value": "v"})
    other.close()
    db = Path(config["store"])
    conn = sqlite3.connect(db)
    count, head = conn.execute("SELECT COUNT(*), MAX(hash) FROM events").fetchone()
    conn.close()
    return db, int(count), str(head)


def _delete(db: Path, tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _remove_dir(db: Path, tmp_path: Path) -> None:
    shutil.rmtree(db.parent)


def _replace(db: Path, tmp_path: Path) -> None:
    other, _, _ = _other_trail(tmp_path)
    os.replace(other, db)


def _replace_with_log(db: Path, tmp_path: Path) -> None:
    """Another database *and* its -wal moved over ours (a restore of both files)."""
    other, _, _ = _other_trail(tmp_path)
    conn = sqlite3.connect(other, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("INSERT INTO meta (key, value) VALUES ('restored', 'yes')")
    shutil.copy(f"{other}-wal", tmp_path / "restored.db-wal")
    shutil.copy(other, tmp_path / "restored.db")
    conn.close()
    os.replace(tmp_path / "restored.db", db)
    os.replace(tmp_path / "restored.db-wal", f"{db}-wal")


FAULTS = [
    pytest.param(_delete, id="deleted"),
    pytest.param(_remove_dir, id="dir-removed"),
    pytest.param(_replace, id="replaced"),
    pytest.param(_replace_with_log, id="replaced-with-wal"),
]


@pytest.fixture
def keep_old(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Hard-link the database and its -wal first, so the old file can be read afterwards."""
    links: list[Path] = []

    def keep(db: Path) -> Path:
        old = tmp_path / "old.db"
        os.link(db, old)
        os.link(f"{db}-wal", f"{old}-wal")
        links.append(old)
        return old

    yield keep


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fault_store_file_gone_or_replaced_under_an_open_guard_fails_closed(
    tmp_path: Path, fault: Callable[[Path, Path], None], mode: str, keep_old: Callable[[Path], Path]
) -> None:
    config = _config(tmp_path)
    db = Path(config["store"])
    guard = tg.Guard(config)
    put, ran, tokens = _tools(guard)
    verifier = guard.verifier()
    replaced_by: tuple[int, str] | None = None

    with (
        pytest.raises(AuditError, match="could not be recorded") as ended,
        guard.task("process-job", **JOB) as task,
    ):
        put.invoke({"key": "agents:jobs:42:a", "value": "1"})
        old = keep_old(db)
        fault(db, tmp_path)
        if db.exists():
            conn = sqlite3.connect(db)
            replaced_by = conn.execute("SELECT COUNT(*), MAX(hash) FROM events").fetchone()
            conn.close()

        with pytest.raises(AuditError) as refused:
            if mode == "sync":
                put.invoke({"key": "agents:jobs:42:b", "value": "2"})
            else:
                asyncio.run(put.ainvoke({"key": "agents:jobs:42:b", "value": "2"}))
        assert str(db) in str(refused.value)
        assert "start a new guard" in str(refused.value)
        assert ran == ["agents:jobs:42:a"]  # the tool did not run
        # the store refuses every later write and read too
        with pytest.raises(AuditError, match=str(db)):
            put.invoke({"key": "agents:jobs:42:c", "value": "3"})
        with pytest.raises(AuditError, match=str(db)):
            guard.audit.events(task_id=task.task_id)

    # the task end is kept, not written into the old file: verifiers here reject already
    assert str(db) in str(ended.value)
    assert task.task_id in guard.store.pending_ends()
    with pytest.raises(ToolGuardError):
        verifier.verify(tokens[0])
    with pytest.raises(AuditError):
        guard.close()
    assert ran == ["agents:jobs:42:a"]

    assert _requests(old) == 1  # nothing reached the file that was no longer at the path
    if replaced_by is not None:  # the file now at the path is untouched
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*), MAX(hash) FROM events").fetchone() == replaced_by
        if fault is _replace_with_log:
            assert conn.execute("SELECT value FROM meta WHERE key = 'restored'").fetchone() == (
                "yes",
            )
        conn.close()


def test_fault_store_reader_of_a_replaced_file_fails_closed(tmp_path: Path) -> None:
    """A verifier's revocation check and the audit queries refuse a replaced file (no write
    needed to notice): they never read another trail as if it were this one."""
    config = _config(tmp_path)
    db = Path(config["store"])
    guard = tg.Guard(config)
    put, _, tokens = _tools(guard)
    verifier = guard.verifier()
    with pytest.raises(AuditError), guard.task("process-job", **JOB):  # its end too
        put.invoke({"key": "agents:jobs:42:a", "value": "1"})
        verifier.verify(tokens[0])  # fine while the file is ours
        _replace(db, tmp_path)
        with pytest.raises(tg.CredentialRevoked, match="fail closed"):
            verifier.verify(tokens[0])
        with pytest.raises(AuditError, match="replaced"):
            guard.audit.tasks()
        with pytest.raises(AuditError):
            guard.store.revoked_reason(
                jti="x", task_id="t", identity="agent-runner", chain=(), issued_at=0.0
            )
        # the state sticks: a new connection (another thread) does not open the new file
        seen: list[BaseException] = []

        def read() -> None:
            try:
                guard.audit.events()
            except BaseException as exc:
                seen.append(exc)

        import threading

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        assert seen and isinstance(seen[0], AuditError)
    with pytest.raises(AuditError):
        guard.close()


# -- damaged pages ---------------------------------------------------------------------------


def _trail_with_events(tmp_path: Path, tasks: int = 40) -> dict[str, Any]:
    config = make_config(tmp_path)
    guard = tg.Guard(config)
    put, _, _ = _tools(guard)
    for n in range(tasks):
        with guard.task("process-job", job_id=str(n)):
            for i in range(4):
                put.invoke({"key": f"agents:jobs:{n}:{i}", "value": "x" * 200})
    guard.close()
    conn = sqlite3.connect(config["store"], isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return config


def _corrupt_events_leaf(db: Path) -> int:
    """Overwrite the middle of a leaf page of ``events`` (not the first, not the last)."""
    conn = sqlite3.connect(db)
    pages = [
        int(r[0])
        for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno"
        )
    ]
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    assert len(pages) >= 5, pages
    page = pages[len(pages) // 2]
    with open(db, "r+b") as f:
        f.seek((page - 1) * size + 8)  # keep the page type byte; garble the cell pointers
        f.write(b"\xff" * (size // 2))
    return page


def test_fault_store_damaged_page_refuses_a_new_guard(tmp_path: Path) -> None:
    config = _trail_with_events(tmp_path)
    db = Path(config["store"])
    before = db.read_bytes()
    _corrupt_events_leaf(db)
    damaged = db.read_bytes()
    assert damaged != before

    ran: list[Any] = []
    # The guard opens its store at start-up when the trail has checkpoints (the continuity
    # check), so the damage is found there; without checkpoints, at the first call.
    with pytest.raises(AuditError) as refused:
        guard = tg.Guard(config)
        put, ran, _ = _tools(guard)
        try:
            with guard.task("process-job", **JOB):
                put.invoke({"key": "agents:jobs:42:a", "value": "1"})
        finally:
            guard.close()
    message = str(refused.value)
    assert str(db) in message and "damaged" in message
    assert "backup" in message and "toolguard audit verify" in message
    assert ran == []
    assert db.read_bytes() == damaged  # nothing was appended to the damaged file


@pytest.mark.slow
def test_fault_store_damaged_page_cli_is_one_error_line(tmp_path: Path) -> None:
    config = _trail_with_events(tmp_path)
    db = Path(config["store"])
    _corrupt_events_leaf(db)
    for args in (["audit", "verify", "--db", str(db)], ["revoke", "--task", "x", "--db", str(db)]):
        done = _cli(*args)
        if args[1] == "verify" and done.returncode == 1:
            # verify read past the damaged page and classified what it found: damage, exit 1
            assert "Traceback" not in done.stderr and "at seq" in done.stdout, done.stdout
            continue
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
        assert str(db) in lines[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "toolguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def test_fault_store_bounded_check_of_a_large_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the full-check size, the bounded check still reads the tables it covers and
    refuses a damaged page there (here: forced on a small database)."""
    from toolguard.store.sqlite import schema

    config = _trail_with_events(tmp_path)
    db = Path(config["store"])
    monkeypatch.setattr(schema, "FULL_CHECK_MAX_BYTES", 0)
    Store(db).open().close()  # intact: the bounded check passes
    conn = sqlite3.connect(db)
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    (page,) = conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'tasks' ORDER BY pageno LIMIT 1"
    ).fetchone()
    conn.close()
    with open(db, "r+b") as f:
        f.seek((page - 1) * size + 8)
        f.write(b"\xff" * (size // 2))
    with pytest.raises(AuditError, match="damaged"):
        Store(db).open()


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (root only; skipped with the reason otherwise)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("ENOSPC needs a small tmpfs: mounting one needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # to the last byte
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_fault_store_disk_full_fails_closed_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        store=str(small_disk / "audit.db"),
        intents={
            "stream": {
                "identity": "summariser",
                "tools": ["kv_set"],
                "allow": {"write": ["agents:jobs:*"]},
            }
        },
        identities={"summariser": {"owner": "tests", "allow": {"write": ["agents:jobs:*"]}}},
    )
    db = str(small_disk / "audit.db")
    guard = tg.Guard(config)
    put, ran, _ = _tools(guard)
    refused: list[AuditError] = []
    with (
        pytest.raises(AuditError, match="could not be recorded"),  # the task end: no room
        guard.task("stream"),
    ):
        put.invoke({"key": "agents:jobs:1", "value": "1"})
        filler = _fill(small_disk)
        for i in range(300):  # until the trail has no room left
            count = len(ran)
            try:
                put.invoke({"key": f"agents:jobs:{i}", "value": "y" * 3000})
            except AuditError as exc:
                refused.append(exc)
                assert len(ran) == count  # the tool did not run
                break
            assert len(ran) == count + 1
    assert refused and db in str(refused[0])
    with pytest.raises(AuditError, match=db):  # no new task either
        guard.task("stream").start()
    count = len(ran)

    filler.unlink()  # space is back: the kept task end is written, calls work again
    with guard.task("stream"):
        put.invoke({"key": "agents:jobs:z", "value": "1"})
    assert len(ran) == count + 1
    assert guard.store.pending_ends() == frozenset()
    report = guard.audit.verify()
    assert report.damage == [], report.damage
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    guard.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fault_store_forked_child_after_the_parent_closed_is_not_a_false_alarm(
    tmp_path: Path,
) -> None:
    """A child forked from a process that used the store, writing after the parent closed
    (its -wal deleted and created anew by the child): the same file, so no refusal."""
    config = _config(tmp_path)
    guard = tg.Guard(config)
    put, _, _ = _tools(guard)
    with guard.task("process-job", **JOB):
        put.invoke({"key": "agents:jobs:42:a", "value": "1"})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child waits for the parent to close, then writes
        os.close(write)
        os.read(read, 1)
        code = 0
        try:
            with guard.task("process-job", **JOB):
                put.invoke({"key": "agents:jobs:42:b", "value": "2"})
        except BaseException:  # reported through the exit code
            code = 1
        os._exit(code)
    os.close(read)
    guard.close()  # the last connection: the -wal goes
    os.write(write, b"x")
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _requests(Path(config["store"])) == 2
