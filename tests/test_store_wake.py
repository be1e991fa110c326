"""The wake-up counter shared by the writers of one SQLite file (toolguard/store/sqlite/wake.py).

A writer waiting for the write lock sleeps on the counter and is woken by the commit of the
writer that held it; the counter is only a hint (the lock is SQLite's), so a file that cannot
be had leaves the writers polling, and a file that is not the counter's is never written to.
Two ``Store`` objects on one file stand for two processes (each has its own process lock and
connections); no test here waits for a time to pass: each would hang, not pass, without the
behaviour it checks (the joins' timeouts only end a hang).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

import toolguard as tg
from toolguard.audit import AuditEvent
from toolguard.chain import Event
from toolguard.store import Store
from toolguard.store.sqlite import core as sqlite_core
from toolguard.store.sqlite import wake as wake_module
from toolguard.store.sqlite.wake import Wake

pytestmark = pytest.mark.skipif(
    wake_module._libc() is None, reason="the wake-up counter is a Linux futex (x86-64, arm64)"
)

HANG = 60.0  # a join's timeout: only a hang reaches it


def _event(reason: str) -> Event:
    return Event(ts=time.time(), kind="revoke", decision="revoke", reason=reason)


def _in_thread(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _holding(store: Store) -> tuple[threading.Thread, list[BaseException], threading.Event]:
    """A thread that holds ``store``'s write lock (once this returns) until the event is set."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._write("hold"):
            holding.set()
            assert release.wait(HANG)

    thread, errors = _in_thread(hold)
    assert holding.wait(HANG)
    return thread, errors, release


def test_a_waiter_sleeps_until_another_mapping_of_the_file_wakes_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.db-wake"
    mine, theirs = Wake.open(path), Wake.open(path)  # two mappings: two processes
    assert mine is not None and theirs is not None
    seen = mine.seen()
    thread, errors = _in_thread(lambda: mine.wait(seen, HANG * 10))
    theirs.release()  # seen through the file by the other mapping
    thread.join(HANG)
    assert not thread.is_alive() and not errors
    assert mine.seen() == (seen + 1) & 0xFFFFFFFF


def test_a_wait_for_a_count_that_already_moved_returns_at_once(tmp_path: Path) -> None:
    wake = Wake.open(tmp_path / "audit.db-wake")
    assert wake is not None
    seen = wake.seen()
    wake.release()  # nobody sleeps: the counter moves, no system call
    thread, errors = _in_thread(lambda: wake.wait(seen, HANG * 10))
    thread.join(HANG)
    assert not thread.is_alive() and not errors
    assert wake.wait(wake.seen(), 1e-4) is True  # the poll interval passes: try again


class _CountingLibc:
    """The libc of a Wake, recording the futex operation of each system call."""

    def __init__(self, libc: Any) -> None:
        self.libc = libc
        self.ops: list[int] = []

    def syscall(self, *args: Any) -> Any:
        self.ops.append(args[2].value)
        return self.libc.syscall(*args)


def test_a_release_calls_the_kernel_only_when_a_waiter_sleeps(tmp_path: Path) -> None:
    path = tmp_path / "audit.db-wake"
    waker, sleeper = Wake.open(path), Wake.open(path)
    assert waker is not None and sleeper is not None
    counting = _CountingLibc(waker._libc)
    waker._libc = counting  # type: ignore[assignment]
    waker.release()
    assert counting.ops == []  # a lone writer: no system call
    seen = sleeper.seen()
    thread, errors = _in_thread(lambda: sleeper.wait(seen, HANG * 10))
    guard = time.monotonic() + HANG
    while waker._sleepers.value == 0 and time.monotonic() < guard:  # until it is asleep
        time.sleep(0.001)
    waker.release()
    thread.join(HANG)
    assert not thread.is_alive() and not errors
    assert counting.ops == [wake_module._FUTEX_WAKE]
    assert waker._sleepers.value == 0  # counted out again


def test_only_a_regular_file_of_its_own_size_is_used(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    link = tmp_path / "link-wake"
    link.symlink_to(target)
    assert Wake.open(link) is None  # never follows a link to another file
    (tmp_path / "dir-wake").mkdir()
    assert Wake.open(tmp_path / "dir-wake") is None
    foreign = tmp_path / "foreign-wake"
    foreign.write_bytes(b"not a counter")
    assert Wake.open(foreign) is None
    assert target.read_bytes() == b"keep" and foreign.read_bytes() == b"not a counter"
    fresh = tmp_path / "fresh-wake"
    assert Wake.open(fresh) is not None and fresh.stat().st_size == 64
    assert Wake.open(tmp_path / "nul\x00-wake") is None  # never raises


def test_the_file_is_as_shared_as_the_database(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    store = Store(db).open()
    try:
        os.chmod(db, 0o660)
        store.append(_event("first write"))
    finally:
        store.close()
    umask = os.umask(0)
    os.umask(umask)
    assert (Path(f"{db}-wake").stat().st_mode & 0o777) == 0o660 & ~umask


def test_a_writer_waiting_for_another_process_is_woken_by_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B waits while A holds the write lock; A's commit wakes B, which then writes. With the
    poll interval raised past the test's hang guard, B can only get in by being woken."""
    monkeypatch.setattr(sqlite_core, "WAKE_POLL", HANG * 10)
    db = tmp_path / "audit.db"
    holder, waiter = Store(db, busy_timeout=HANG).open(), Store(db, busy_timeout=HANG).open()
    waiting = threading.Event()
    waits: list[int] = []
    original = Wake.wait

    def counted(self: Wake, seen: int, timeout: float) -> bool:
        waits.append(seen)
        waiting.set()
        return original(self, seen, timeout)

    monkeypatch.setattr(Wake, "wait", counted)
    a, a_errors, release = _holding(holder)
    b, b_errors = _in_thread(lambda: waiter.append(_event("after the holder")))
    assert waiting.wait(HANG)  # B found the lock taken and sleeps on the counter
    release.set()  # A commits, moves the counter and wakes B
    a.join(HANG)
    b.join(HANG)
    try:
        assert not a.is_alive() and not b.is_alive()
        assert not a_errors and not b_errors, a_errors + b_errors
        assert len(waits) == 1  # woken once, then the lock was free
        rows = waiter.event_rows({"kind": "revoke"}, limit=1, newest_first=True)
        assert [AuditEvent.from_row(r).reason for r in rows] == ["after the holder"]
    finally:
        holder.close()
        waiter.close()


@pytest.mark.parametrize("why", ["no futex", "a symlink in its place"])
def test_without_the_counter_writers_poll_and_every_call_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    wake_file = tmp_path / "audit.db-wake"
    if why == "no futex":
        monkeypatch.setattr(wake_module, "_libc", lambda: None)
    else:
        (tmp_path / "elsewhere").write_bytes(b"")
        wake_file.symlink_to(tmp_path / "elsewhere")
    guard = tg.Guard(make_config(tmp_path))
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:42:input"}))
    guard.close()
    assert guard.store._wake() is None
    assert [e.kind for e in guard.audit.events()] == [
        "task_start", "request", "outcome", "task_end",
    ]  # fmt: skip
    if why == "no futex":
        assert not wake_file.exists()
    else:  # the link is left as it was, and what it points to is never written
        assert wake_file.is_symlink() and (tmp_path / "elsewhere").read_bytes() == b""


def test_writers_split_by_a_deleted_counter_still_take_turns(tmp_path: Path) -> None:
    """The counter deleted under a writer that mapped it: the next writer maps a new one, so
    neither wakes the other; the waiter still gets the lock, by polling, once it is free."""
    db = tmp_path / "audit.db"
    holder = Store(db, busy_timeout=HANG).open()
    holder.append(_event("maps the first counter"))
    Path(f"{db}-wake").unlink()
    waiter = Store(db, busy_timeout=HANG).open()
    a, a_errors, release = _holding(holder)
    b, b_errors = _in_thread(lambda: waiter.append(_event("on a counter of its own")))
    release.set()
    a.join(HANG)
    b.join(HANG)
    try:
        assert not a.is_alive() and not b.is_alive()
        assert not a_errors and not b_errors, a_errors + b_errors
        theirs, mine = holder._wake(), waiter._wake()
        assert theirs is not None and mine is not None
        before = mine.seen()
        theirs.release()
        assert mine.seen() == before  # two counters now: the old file's and the new one
        rows = waiter.event_rows({"kind": "revoke"}, limit=None, newest_first=False)
        assert [AuditEvent.from_row(r).reason for r in rows] == [
            "maps the first counter",
            "on a counter of its own",
        ]
    finally:
        holder.close()
        waiter.close()
