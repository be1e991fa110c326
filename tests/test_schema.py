"""The store's schema version: a database of an earlier layout is migrated in place when a
guard opens it; one newer than this toolguard is refused (fail closed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from conftest import Clock

import toolguard as tg
from toolguard.store import SCHEMA_VERSION


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_version_1_database_is_migrated_when_a_guard_opens_it(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = make_guard(clock=clock)
    with guard.task("process-job", job_id="42"):
        pass
    guard.close()
    with sqlite3.connect(guard.config.store_path) as conn:  # as version 1 left it
        conn.execute("CREATE TABLE rate_events (scope TEXT, ts FLOAT, amount FLOAT)")
        conn.execute("INSERT INTO budgets VALUES ('task:abc:budget', '', '#1000000')")
        conn.execute("INSERT INTO budgets VALUES ('identity:agent-runner:log', 't0', 0.0)")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")

    reopened = make_guard(clock=clock)
    reopened.store.open()

    with sqlite3.connect(guard.config.store_path) as conn:
        assert _version(conn) == SCHEMA_VERSION == 2
        assert "rate_events" not in _tables(conn)
        scopes = [r[0] for r in conn.execute("SELECT scope FROM budgets")]
    assert scopes == ["identity:agent-runner:log"]  # identity state is kept
    assert reopened.audit.verify().ok


def test_a_database_newer_than_this_toolguard_is_refused(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = make_guard(clock=clock)
    guard.store.open()
    guard.close()
    with sqlite3.connect(guard.config.store_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(tg.AuditError, match="schema version 99, newer than this toolguard"):
        make_guard(clock=clock).store.open()
