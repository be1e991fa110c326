"""The write-ahead log of a SQLite store whose writers poll for the lock (no wake-up counter:
not Linux, or ``<database>-wake`` unusable) stays bounded: past ``WAL_BOUND`` bytes the writer
that committed checkpoints and truncates it. Polling writers each begin a read transaction with
every try, so SQLite could seldom start the log over and it grew without end (hundreds of MB
in seconds with 4 processes; benchmarks/README.md, "Budgets").

A second connection holding a read transaction stands for another process's try.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import make_config

import toolguard as tg
from toolguard.store.sqlite import core as sqlite_core
from toolguard.store.sqlite import wake as wake_module

KEY = "agents:jobs:42:input"


def _wal(tmp_path: Path) -> int:
    return os.path.getsize(tmp_path / "audit.db-wal")


def _polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tg.Guard:
    monkeypatch.setattr(wake_module, "_libc", lambda: None)  # as on a platform without futex
    monkeypatch.setattr(sqlite_core, "WAL_BOUND", 1)  # every commit is past it
    return tg.Guard(make_config(tmp_path))


def test_a_polling_writer_truncates_the_log_past_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = _polling(tmp_path, monkeypatch)
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_get", {"key": KEY}))
            assert guard.store._wake() is None
            assert _wal(tmp_path) == 0  # checkpointed into the database and truncated
            guard.finish(guard.authorize("kv_get", {"key": KEY}))
            assert _wal(tmp_path) == 0
    finally:
        guard.close()
    kinds = [e.kind for e in guard.audit.events()]
    assert kinds == ["task_start", "request", "outcome", "request", "outcome", "task_end"]
    assert guard.audit.verify().ok


def test_a_reader_in_the_way_leaves_the_log_for_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint never waits and never fails the call that committed."""
    guard = _polling(tmp_path, monkeypatch)
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_get", {"key": KEY}))
            other.execute("BEGIN")
            other.execute("SELECT COUNT(*) FROM events").fetchone()  # a read transaction
            guard.finish(guard.authorize("kv_get", {"key": KEY}))  # runs; the log stays
            assert _wal(tmp_path) > 0
            other.execute("COMMIT")
            guard.finish(guard.authorize("kv_get", {"key": KEY}))
            assert _wal(tmp_path) == 0
    finally:
        other.close()
        guard.close()
    requests = [e for e in guard.audit.events() if e.kind == "request"]
    assert len(requests) == 3


@pytest.mark.skipif(wake_module._libc() is None, reason="the wake-up counter is a Linux futex")
def test_writers_with_the_counter_leave_the_log_to_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_core, "WAL_BOUND", 1)
    guard = tg.Guard(make_config(tmp_path))
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_get", {"key": KEY}))
            assert guard.store._wake() is not None
            assert _wal(tmp_path) > 0  # SQLite restarts it itself
    finally:
        guard.close()
