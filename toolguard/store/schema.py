"""The store's schema, created and migrated with sqlite-utils (never on the hot path)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..chain import HASHED_FIELDS
from ..errors import AuditError

__all__ = ["SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 2
"""1: the first layout. 2: no ``rate_events`` table (never used); no budget rows per task (a
task's budget is its trail, see :mod:`toolguard.store.budgets`)."""


def _to_v2(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS rate_events")
    conn.execute("DELETE FROM budgets WHERE period = '' AND scope LIKE 'task:%'")


_MIGRATIONS = {1: _to_v2}
"""Version -> the step that brings a database of that version to the next one."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create or migrate the tables and indexes inside the caller's transaction."""
    import sqlite_utils  # creation and migration only, never on the hot path

    db = sqlite_utils.Database(conn)
    if "meta" not in db.table_names():
        db.table("meta").create({"key": str, "value": str}, pk="key")
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if version is not None:
        found = int(version[0])
        if found > SCHEMA_VERSION:
            raise AuditError(
                f"the audit database has schema version {found}, newer than this toolguard "
                f"understands ({SCHEMA_VERSION}); upgrade agent-toolguard"
            )
        if found < SCHEMA_VERSION:
            for step in range(found, SCHEMA_VERSION):
                _MIGRATIONS[step](conn)
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        return
    db.table("tasks").create(
        {
            "task_id": str,
            "parent_id": str,
            "intent": str,
            "identity": str,
            "params": str,
            "purpose": str,
            "status": str,
            "started_at": float,
            "ended_at": float,
            "deadline": float,
            "tainted": int,
        },
        pk="task_id",
    )
    db.table("tasks").create_index(["started_at"])
    db.table("tasks").create_index(["identity", "started_at"])
    db.table("tasks").create_index(["status"])
    db.table("tasks").create_index(["parent_id"])
    columns: dict[str, Any] = {name: str for name in HASHED_FIELDS}
    columns.update(seq=int, ts=float, duration_ms=float, cost=float, prev_hash=str, hash=str)
    db.table("events").create(columns, pk="seq")
    # Every index is written on every guarded call: keep them few (DESIGN §10). A task's
    # timeline uses (task_id, seq); time ranges use (ts); denials have a partial index.
    db.table("events").create_index(["task_id", "seq"])
    db.table("events").create_index(["ts"])
    conn.execute("CREATE INDEX idx_events_denied ON events (seq) WHERE kind = 'denied'")
    conn.execute(
        "CREATE TABLE credentials (jti TEXT PRIMARY KEY, task_id TEXT, identity TEXT, tool TEXT,"
        " operation TEXT, issued_at FLOAT, expires_at FLOAT, jit INTEGER) WITHOUT ROWID"
    )
    db.table("revocations").create(
        {"id": int, "scope": str, "value": str, "reason": str, "ts": float, "by": str},
        pk="id",
    )
    db.table("revocations").create_index(["scope", "value"])
    db.table("identity_state").create(
        {"identity": str, "disabled": int, "reason": str, "ts": float}, pk="identity"
    )
    conn.execute(
        "CREATE TABLE budgets (scope TEXT, period TEXT, used FLOAT, PRIMARY KEY (scope, period))"
        " WITHOUT ROWID"
    )
    db.table("checkpoints").create({"seq": int, "hash": str, "ts": float}, pk="seq")
    db.table("prunes").create(
        {"id": int, "ts": float, "before_seq": int, "head_hash": str, "removed": int}, pk="id"
    )
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
