"""The store's schema, created and migrated with plain ``sqlite3`` DDL (never on the hot path).

The statements are written out here, in the form earlier releases created them with
sqlite-utils (so ``sqlite_master`` of a new database is the same text as before; the store
needs no dependency beyond the standard library; ``tests/test_schema.py`` pins it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ...chain import HASHED_FIELDS, REAL_FIELDS
from ...errors import AuditError

__all__ = [
    "APPROVALS_INDEX",
    "FULL_CHECK_MAX_BYTES",
    "SCHEMA_VERSION",
    "check_pages",
    "create_schema",
]

SCHEMA_VERSION = 4
"""1: the first layout. 2: no ``rate_events`` table (never used); no budget rows per task (a
task's budget is its trail); an identity's admission log is the ``tally`` of its
``credentials`` rows (one row per allowed call, keyed by identity and tally), see
:mod:`toolguard.store.sqlite.budgets`. 3: ``tasks.tainted`` (1 when a queued outcome of the task
could be written only without its settlement, see docs/budgets.md). 4: the partial index
``idx_events_approvals`` (the approval queue, see :mod:`toolguard.store.approvals`)."""

_CREDENTIALS = (
    "CREATE TABLE credentials (identity TEXT NOT NULL, tally TEXT NOT NULL, jti TEXT,"
    " task_id TEXT, tool TEXT, operation TEXT, issued_at FLOAT, expires_at FLOAT, jit INTEGER,"
    " PRIMARY KEY (identity, tally)) WITHOUT ROWID"
)
"""One row per allowed call (ids and expiry, never tokens). ``tally`` orders an identity's rows:
``t<time µs>:<row>:<calls>:<writes>:<deletes>:<cost>`` when the identity has limits (its
admission log: running totals, see :mod:`toolguard.store.sqlite.budgets`; rows with no ``jti``
are log entries only: the anchor, a settled cost, a call that did not run), else ``j<jti>``."""


def _to_v2(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS rate_events")
    conn.execute("DELETE FROM budgets WHERE period = '' AND scope LIKE 'task:%'")
    conn.execute("ALTER TABLE credentials RENAME TO credentials_v1")
    conn.execute(_CREDENTIALS)
    conn.execute(
        "INSERT INTO credentials (identity, tally, jti, task_id, tool, operation, issued_at,"
        " expires_at, jit) SELECT COALESCE(identity, ''), 'j' || jti, jti, task_id, tool,"
        " operation, issued_at, expires_at, jit FROM credentials_v1"
    )
    conn.execute(  # the admission logs move next to the credentials
        "INSERT INTO credentials (identity, tally, issued_at, expires_at)"
        " SELECT substr(scope, 10, length(scope) - 13), period, used, used FROM budgets"
        " WHERE scope LIKE 'identity:%:log'"
    )
    conn.execute("DELETE FROM budgets WHERE scope LIKE 'identity:%:log'")
    conn.execute("DROP TABLE credentials_v1")


def _to_v3(conn: sqlite3.Connection) -> None:
    columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
    if "tainted" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN tainted INTEGER DEFAULT 0")


APPROVALS_INDEX = (
    "CREATE INDEX idx_events_approvals ON events (seq) WHERE kind IN"
    " ('approval_requested', 'approved', 'rejected', 'approval_expired')"
)
"""The partial index of the approval queue (schema 4); the PostgreSQL schema has it too."""


def _to_v4(conn: sqlite3.Connection) -> None:
    conn.execute(APPROVALS_INDEX.replace("INDEX", "INDEX IF NOT EXISTS", 1))


_MIGRATIONS = {1: _to_v2, 2: _to_v3, 3: _to_v4}
"""Version -> the step that brings a database of that version to the next one."""


FULL_CHECK_MAX_BYTES = 32 << 20
"""Up to this database size a store's start-up runs a full ``PRAGMA quick_check`` (about 1-1.5 ms
per MB: ~45 ms at 32 MB, ~50,000 events); above it, the bounded check of :func:`check_pages`.
See benchmarks/README.md ("Start-up check of the database pages")."""

_PROBES = 512
"""Evenly spread lookups into ``events`` of the bounded check (each a root-to-leaf descent)."""
_TAIL = 5000
"""The newest events (and credentials) the bounded check reads in full: where appends go."""


def check_pages(conn: sqlite3.Connection, path: object) -> None:
    """Check the database's pages before a store writes to it; :class:`AuditError` if damaged.

    Up to :data:`FULL_CHECK_MAX_BYTES` a full ``PRAGMA quick_check`` (every page, every
    record). Larger databases get a bounded check that stays under ~50 ms at a million events:
    ``quick_check`` of every table but the two big ones (``events``, ``credentials``), the
    interior pages and :data:`_PROBES` evenly spread leaves of ``events``, and the newest
    :data:`_TAIL` rows of both. A damaged page elsewhere in a large database is found by
    ``toolguard audit verify`` (which reads every event), not at start-up.
    """
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = pages * conn.execute("PRAGMA page_size").fetchone()[0]
        if size <= FULL_CHECK_MAX_BYTES:
            found = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
        else:
            found = _bounded_check(conn)
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    problems = [f for f in found if f != "ok"]
    if problems:
        raise AuditError(
            f"the audit database {path} is damaged ({'; '.join(problems)[:300]}); nothing was "
            "written to it. Restore it from a backup (keep the damaged copy for the "
            "investigation), then run `toolguard audit verify` on it before starting guards"
        )


def _bounded_check(conn: sqlite3.Connection) -> list[str]:
    tables = {
        str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    found: list[str] = []
    for table in sorted(tables - {"events", "credentials"}):
        quoted = table.replace('"', '""')
        found += [str(r[0]) for r in conn.execute(f'PRAGMA quick_check("{quoted}")')]
    if {"events", "credentials"} <= tables:
        low, high = conn.execute(  # two index lookups (MIN and MAX together would scan)
            "SELECT (SELECT seq FROM events ORDER BY seq LIMIT 1),"
            " (SELECT seq FROM events ORDER BY seq DESC LIMIT 1)"
        ).fetchone()
        if low is not None:
            for i in range(_PROBES):
                conn.execute(
                    "SELECT hash FROM events WHERE seq >= ? LIMIT 1",
                    (low + (high - low) * i // _PROBES,),
                ).fetchone()
            conn.execute(
                "SELECT COUNT(*), MAX(LENGTH(args)) FROM events WHERE seq > ?", (high - _TAIL,)
            ).fetchone()
        conn.execute(
            "SELECT COUNT(*) FROM (SELECT jti FROM credentials ORDER BY identity DESC,"
            f" tally DESC LIMIT {_TAIL})"
        ).fetchone()
    return found


def _table(name: str, columns: Sequence[tuple[str, str]], *, pk: str) -> str:
    """``CREATE TABLE`` for a table keyed by its column ``pk``."""
    cells = ",\n".join(
        f'   "{column}" {kind}{" PRIMARY KEY" if column == pk else ""}' for column, kind in columns
    )
    return f'CREATE TABLE "{name}" (\n{cells}\n)'


def _index(table: str, *columns: str) -> str:
    """``CREATE INDEX idx_<table>_<columns>`` on ``columns``."""
    name = "_".join(("idx", table, *columns))
    quoted = ", ".join(f'"{c}"' for c in columns)
    return f'CREATE INDEX "{name}"\n    ON "{table}" ({quoted})'


_TEXT, _REAL, _INTEGER = "TEXT", "REAL", "INTEGER"

_TASKS = _table(
    "tasks",
    [
        ("task_id", _TEXT),
        ("parent_id", _TEXT),
        ("intent", _TEXT),
        ("identity", _TEXT),
        ("params", _TEXT),
        ("purpose", _TEXT),
        ("status", _TEXT),
        ("started_at", _REAL),
        ("ended_at", _REAL),
        ("deadline", _REAL),
        ("tainted", _INTEGER),
    ],
    pk="task_id",
)
_EVENTS = _table(
    "events",
    [
        *(
            (name, _INTEGER if name == "seq" else _REAL if name in REAL_FIELDS else _TEXT)
            for name in HASHED_FIELDS
        ),
        ("prev_hash", _TEXT),
        ("hash", _TEXT),
    ],
    pk="seq",
)

_CREATE = (
    _TASKS,
    _index("tasks", "started_at"),
    _index("tasks", "identity", "started_at"),
    _index("tasks", "status"),
    _index("tasks", "parent_id"),
    _EVENTS,
    # Every index is written on every guarded call: keep them few (docs/architecture.md,
    # "The store"). A task's timeline uses (task_id, seq); time ranges use (ts); denials
    # have a partial index.
    _index("events", "task_id", "seq"),
    _index("events", "ts"),
    "CREATE INDEX idx_events_denied ON events (seq) WHERE kind = 'denied'",
    APPROVALS_INDEX,
    _CREDENTIALS,
    _table(
        "revocations",
        [
            ("id", _INTEGER),
            ("scope", _TEXT),
            ("value", _TEXT),
            ("reason", _TEXT),
            ("ts", _REAL),
            ("by", _TEXT),
        ],
        pk="id",
    ),
    _index("revocations", "scope", "value"),
    _table(
        "identity_state",
        [("identity", _TEXT), ("disabled", _INTEGER), ("reason", _TEXT), ("ts", _REAL)],
        pk="identity",
    ),
    "CREATE TABLE budgets (scope TEXT, period TEXT, used FLOAT, PRIMARY KEY (scope, period))"
    " WITHOUT ROWID",
    _table("checkpoints", [("seq", _INTEGER), ("hash", _TEXT), ("ts", _REAL)], pk="seq"),
    _table(
        "prunes",
        [
            ("id", _INTEGER),
            ("ts", _REAL),
            ("before_seq", _INTEGER),
            ("head_hash", _TEXT),
            ("removed", _INTEGER),
        ],
        pk="id",
    ),
)
"""Every statement of a new database after ``meta``, in order."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create or migrate the tables and indexes inside the caller's transaction."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        conn.execute(_table("meta", [("key", _TEXT), ("value", _TEXT)], pk="key"))
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
    for statement in _CREATE:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
