"""The store's schema version: a database of an earlier layout is migrated in place when a
guard opens it; one newer than this toolguard is refused (fail closed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Clock

import toolguard as tg
from toolguard.store import SCHEMA_VERSION, Store
from toolguard.store.sqlite.budgets import usage
from toolguard.store.sqlite.schema import create_schema


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
    log = "t01790000000000000:0000000001:0000000001:0000000001:0000000000:0000000000000000"
    with sqlite3.connect(guard.config.store_path) as conn:  # as version 1 left it
        conn.execute("CREATE TABLE rate_events (scope TEXT, ts FLOAT, amount FLOAT)")
        conn.execute("DROP TABLE credentials")
        conn.execute(
            "CREATE TABLE credentials (jti TEXT PRIMARY KEY, task_id TEXT, identity TEXT,"
            " tool TEXT, operation TEXT, issued_at FLOAT, expires_at FLOAT, jit INTEGER)"
            " WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO credentials VALUES ('j1', 'task-1', 'agent-runner', 'kv_set', 'write',"
            " 1790000000.0, 1790000300.0, 1)"
        )
        conn.execute("INSERT INTO budgets VALUES ('task:abc:budget', '', '#1000000')")
        conn.execute("INSERT INTO budgets VALUES ('identity:agent-runner:log', ?, 1.79e9)", (log,))
        conn.execute(
            "INSERT INTO budgets VALUES ('identity:agent-runner:refused', ?, 1.79e9)", (log,)
        )
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")

    reopened = make_guard(clock=clock)
    reopened.store.open()

    with sqlite3.connect(guard.config.store_path) as conn:
        assert _version(conn) == SCHEMA_VERSION == 4
        assert "rate_events" not in _tables(conn)
        scopes = [r[0] for r in conn.execute("SELECT scope FROM budgets")]
        rows = conn.execute(
            "SELECT identity, tally, jti, task_id, expires_at FROM credentials ORDER BY tally"
        ).fetchall()
    assert scopes == ["identity:agent-runner:refused"]  # task rows gone, the log moved
    assert rows == [
        ("agent-runner", "jj1", "j1", "task-1", 1790000300.0),  # a credential: kept
        ("agent-runner", log, None, None, 1.79e9),  # the admission log: next to them
    ]
    used = usage(conn=reopened.store.conn, now=1_790_000_001.0, identity="agent-runner")
    assert used["identity.agent-runner.requests_per_day"] == 1  # its count carried over
    assert reopened.audit.verify().ok


def test_a_version_2_database_gets_the_tainted_column_and_keeps_working(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = make_guard(clock=clock)
    with guard.task("process-job", job_id="42"):
        pass
    guard.close()
    with sqlite3.connect(guard.config.store_path) as conn:  # as version 2 left it
        conn.execute("ALTER TABLE tasks DROP COLUMN tainted")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    reopened = make_guard(clock=clock)
    with reopened.task("process-job", job_id="43") as task:
        pass
    with sqlite3.connect(guard.config.store_path) as conn:
        assert _version(conn) == SCHEMA_VERSION
        rows = conn.execute("SELECT task_id, tainted FROM tasks ORDER BY started_at").fetchall()
    assert len(rows) == 2 and rows[-1] == (task.task_id, 0)
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


SCHEMA_SQL = {
    "meta": ('CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" TEXT\n)'),
    "tasks": (
        'CREATE TABLE "tasks" (\n'
        '   "task_id" TEXT PRIMARY KEY,\n'
        '   "parent_id" TEXT,\n'
        '   "intent" TEXT,\n'
        '   "identity" TEXT,\n'
        '   "params" TEXT,\n'
        '   "purpose" TEXT,\n'
        '   "status" TEXT,\n'
        '   "started_at" REAL,\n'
        '   "ended_at" REAL,\n'
        '   "deadline" REAL,\n'
        '   "tainted" INTEGER\n'
        ")"
    ),
    "idx_tasks_started_at": ('CREATE INDEX "idx_tasks_started_at"\n    ON "tasks" ("started_at")'),
    "idx_tasks_identity_started_at": (
        'CREATE INDEX "idx_tasks_identity_started_at"\n    ON "tasks" ("identity", "started_at")'
    ),
    "idx_tasks_status": ('CREATE INDEX "idx_tasks_status"\n    ON "tasks" ("status")'),
    "idx_tasks_parent_id": ('CREATE INDEX "idx_tasks_parent_id"\n    ON "tasks" ("parent_id")'),
    "events": (
        'CREATE TABLE "events" (\n'
        '   "seq" INTEGER PRIMARY KEY,\n'
        '   "ts" REAL,\n'
        '   "task_id" TEXT,\n'
        '   "identity" TEXT,\n'
        '   "intent" TEXT,\n'
        '   "kind" TEXT,\n'
        '   "tool" TEXT,\n'
        '   "operation" TEXT,\n'
        '   "resources" TEXT,\n'
        '   "decision" TEXT,\n'
        '   "reason" TEXT,\n'
        '   "rule" TEXT,\n'
        '   "jti" TEXT,\n'
        '   "correlation_id" TEXT,\n'
        '   "args" TEXT,\n'
        '   "args_sha256" TEXT,\n'
        '   "outcome" TEXT,\n'
        '   "error" TEXT,\n'
        '   "duration_ms" REAL,\n'
        '   "cost" REAL,\n'
        '   "prev_hash" TEXT,\n'
        '   "hash" TEXT\n'
        ")"
    ),
    "idx_events_task_id_seq": (
        'CREATE INDEX "idx_events_task_id_seq"\n    ON "events" ("task_id", "seq")'
    ),
    "idx_events_ts": ('CREATE INDEX "idx_events_ts"\n    ON "events" ("ts")'),
    "idx_events_denied": "CREATE INDEX idx_events_denied ON events (seq) WHERE kind = 'denied'",
    "idx_events_approvals": (
        "CREATE INDEX idx_events_approvals ON events (seq) WHERE kind IN"
        " ('approval_requested', 'approved', 'rejected', 'approval_expired')"
    ),
    "credentials": (
        "CREATE TABLE credentials (identity TEXT NOT NULL, tally TEXT NOT NULL, jti TEXT,"
        " task_id TEXT, tool TEXT, operation TEXT, issued_at FLOAT, expires_at FLOAT,"
        " jit INTEGER, PRIMARY KEY (identity, tally)) WITHOUT ROWID"
    ),
    "revocations": (
        'CREATE TABLE "revocations" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "scope" TEXT,\n'
        '   "value" TEXT,\n'
        '   "reason" TEXT,\n'
        '   "ts" REAL,\n'
        '   "by" TEXT\n'
        ")"
    ),
    "idx_revocations_scope_value": (
        'CREATE INDEX "idx_revocations_scope_value"\n    ON "revocations" ("scope", "value")'
    ),
    "identity_state": (
        'CREATE TABLE "identity_state" (\n'
        '   "identity" TEXT PRIMARY KEY,\n'
        '   "disabled" INTEGER,\n'
        '   "reason" TEXT,\n'
        '   "ts" REAL\n'
        ")"
    ),
    "budgets": (
        "CREATE TABLE budgets (scope TEXT, period TEXT, used FLOAT,"
        " PRIMARY KEY (scope, period)) WITHOUT ROWID"
    ),
    "checkpoints": (
        'CREATE TABLE "checkpoints" (\n'
        '   "seq" INTEGER PRIMARY KEY,\n'
        '   "hash" TEXT,\n'
        '   "ts" REAL\n'
        ")"
    ),
    "prunes": (
        'CREATE TABLE "prunes" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "ts" REAL,\n'
        '   "before_seq" INTEGER,\n'
        '   "head_hash" TEXT,\n'
        '   "removed" INTEGER\n'
        ")"
    ),
}
"""``sqlite_master`` of a new database, as sqlite-utils created it up to 0.1.0: the plain DDL
of toolguard/store/sqlite/schema.py writes the same text (tools that read the schema see no
change)."""


def test_a_new_database_has_the_schema_sqlite_utils_created_byte_for_byte() -> None:
    conn = sqlite3.connect(":memory:")
    create_schema(conn)
    found = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    assert found == SCHEMA_SQL
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_a_schema_that_cannot_be_created_whole_is_not_created_at_all(tmp_path: Path) -> None:
    """The DDL runs inside the store's one ``BEGIN IMMEDIATE`` transaction: a failure part way
    (here a view in the way of one of the last tables) is an ``AuditError`` (with sqlite-utils,
    its own ``NoTable`` escaped) and leaves no half schema; the next start creates it whole."""
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE VIEW checkpoints AS SELECT 1 AS seq")
    with pytest.raises(tg.AuditError, match="cannot be used"):
        Store(path).open()
    with sqlite3.connect(path) as conn:
        assert _tables(conn) == set()
        conn.execute("DROP VIEW checkpoints")
    store = Store(path).open()
    store.close()
    with sqlite3.connect(path) as conn:
        assert {"meta", "events", "tasks", "checkpoints"} <= _tables(conn)
        assert _version(conn) == SCHEMA_VERSION


def test_a_version_3_database_gets_the_approvals_index(tmp_path: Path) -> None:
    """Schema 4 adds the partial index of the approval queue; a version 3 database is migrated
    in place (its events are kept) and the queue query uses the index."""
    path = tmp_path / "audit.db"
    Store(path).open().close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX idx_events_approvals")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    Store(path).open().close()
    with sqlite3.connect(path) as conn:
        assert _version(conn) == SCHEMA_VERSION == 4
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE kind IN ('approval_requested',"
                " 'approved', 'rejected', 'approval_expired') ORDER BY seq"
            )
        )
        assert "idx_events_approvals" in plan
