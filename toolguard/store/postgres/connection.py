"""A psycopg 3 connection that speaks the store's SQL (written for SQLite) on PostgreSQL.

The store's statements are portable SQL except for a few spellings, translated once per
statement text (cached, so psycopg's automatic prepared statements still apply): ``?``
placeholders become ``%s``; ``char(31)`` is ``chr(31)``; the column ``by`` (a reserved word)
is quoted; ``BEGIN IMMEDIATE`` (SQLite's writer lock) is ``BEGIN`` plus the store's writer
lock, a transaction-scoped advisory lock (:data:`WRITER_LOCK`) that serialises the writers of
the whole fleet exactly as SQLite's lock serialises those of one host (see docs/audit.md).

Every psycopg error is re-raised as the :mod:`sqlite3` error of the same meaning, so the
store's fail-closed handling (every failure on the write path is an ``AuditError``; an item
whose values the database refuses is replaced, never retried) is one code path for both
backends: :class:`psycopg.DataError` and :class:`psycopg.IntegrityError` are the item's fault
(``sqlite3.DataError``/``IntegrityError``); everything else (connection lost, timeout,
permission denied, serialization failure) is ``sqlite3.OperationalError``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Loader
from psycopg.types.string import StrDumper

from ...location import redact_url

__all__ = ["WRITER_LOCK", "PgConnection", "Rows", "configure", "sqlite_error", "translate"]

WRITER_LOCK = 0x746F6F6C67756172  # "toolguar": the store's writer lock (pg_advisory_xact_lock)
"""The advisory lock key every writer of one database takes in its transaction."""

_BEGIN_WRITE = "BEGIN IMMEDIATE"
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
_SPECIAL = {
    # SQLite truncates toward zero when casting a REAL to INTEGER; PostgreSQL rounds
    "CAST((ts - ?) / ? AS INTEGER)": "CAST(TRUNC((ts - ?) / ?) AS BIGINT)",
    # PostgreSQL does not see that a CTE's key determines its other columns
    " GROUP BY t.task_id ORDER BY": " GROUP BY t.task_id, t.parent_id, t.intent, t.identity,"
    " t.params, t.purpose, t.status, t.started_at, t.ended_at, t.deadline, t.tainted ORDER BY",
    # which revocation a check reports when several match: SQLite's OR plan finds the jti,
    # then the task, then the identity; PostgreSQL would take any
    "AND ts >= ?) LIMIT 1": "AND ts >= ?)"
    " ORDER BY CASE scope WHEN 'jti' THEN 0 WHEN 'task' THEN 1 ELSE 2 END, id LIMIT 1",
    # a task tree's ids: the seed compares with the ids of the table (COLLATE "C")
    "WITH RECURSIVE d(id) AS (SELECT ? UNION": (
        'WITH RECURSIVE d(id) AS (SELECT ? COLLATE "C" UNION'
    ),
}
_BY = re.compile(r"\bby\b")  # the revocations column; SQL keywords are written in capitals


_COMPARISON = re.compile(r"(?:^|[^<>!=])(?:=|<>|!=|<=|>=|<|>)(?:[^<>=]|$)")


def _sum_of_conditions(sql: str) -> str:
    """``SUM(condition)`` (SQLite counts the true ones) as ``SUM(CASE WHEN ... THEN 1 ELSE 0
    END)``; PostgreSQL has no sum of booleans."""
    out: list[str] = []
    at = 0
    while (start := sql.find("SUM(", at)) >= 0:
        depth, end = 0, start + 3
        for end in range(start + 3, len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        inner = sql[start + 4 : end]
        flat = re.sub(r"\([^()]*\)", "", inner)
        if not inner.lstrip().upper().startswith("CASE") and _COMPARISON.search(flat):
            inner = f"CASE WHEN {_sum_of_conditions(inner)} THEN 1 ELSE 0 END"
        out.append(sql[at:start] + "SUM(" + inner + ")")
        at = end + 1
    out.append(sql[at:])
    return "".join(out)


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """The PostgreSQL text of one of the store's statements (see the module docstring)."""
    for old, new in _SPECIAL.items():
        sql = sql.replace(old, new)
    if "SUM(" in sql:
        sql = _sum_of_conditions(sql)
    parts = sql.split("'")
    for i, part in enumerate(parts):
        part = part.replace("%", "%%")
        if i % 2 == 0:  # outside string literals
            part = part.replace("?", "%s").replace("char(", "chr(")
            part = _BY.sub('"by"', part)
        parts[i] = part
    return "'".join(parts)


class _NumericLoader(Loader):
    """``numeric`` (what ``SUM`` of integers returns) as an int when whole, else a float, as
    SQLite returns it."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


def configure(conn: psycopg.Connection[Any]) -> None:
    """Adapt a new connection: Python ``str`` binds as ``text`` (never an untyped literal),
    ``numeric`` loads as int or float."""
    conn.adapters.register_dumper(str, StrDumper)
    conn.adapters.register_loader("numeric", _NumericLoader)


def _param(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def sqlite_error(exc: BaseException, where: str) -> sqlite3.Error:
    """The :mod:`sqlite3` error of the same meaning as a psycopg error (passwords removed)."""
    text = redact_url(str(exc).strip() or type(exc).__name__)
    message = f"{text} (PostgreSQL {where})"
    if isinstance(exc, psycopg.IntegrityError):
        return sqlite3.IntegrityError(message)
    if isinstance(exc, psycopg.DataError) and not isinstance(exc, pg_errors.QueryCanceled):
        return sqlite3.DataError(message)
    if isinstance(exc, pg_errors.LockNotAvailable):
        return sqlite3.OperationalError(f"the store's writer lock was not granted: {message}")
    return sqlite3.OperationalError(message)


class Rows:
    """The rows of one statement, fetched at once (the connection is free again)."""

    def __init__(self, description: Sequence[tuple[str]] | None, rows: list[tuple[Any, ...]]):
        self.description = description
        self._rows = rows
        self._at = 0

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        out = self._rows[self._at : self._at + size]
        self._at += len(out)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out = self._rows[self._at :]
        self._at = len(self._rows)
        return out

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row


def run(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any] = (), *, where: str) -> Rows:
    """Execute one statement of the store on ``conn`` and fetch its rows."""
    try:
        cur = conn.execute(translate(sql), tuple(_param(p) for p in params))
        if cur.description is None:
            return Rows(None, [])
        return Rows([(c.name,) for c in cur.description], cur.fetchall())
    except psycopg.Error as exc:
        raise sqlite_error(exc, where) from exc


class PgConnection:
    """One psycopg connection (autocommit: transactions are explicit, as the store's sqlite3
    connections are) behind the subset of :class:`sqlite3.Connection` the store uses."""

    def __init__(self, conn: psycopg.Connection[Any], *, lock_timeout: float) -> None:
        configure(conn)
        self.raw = conn
        self.lock_timeout = lock_timeout

    @property
    def broken(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        if sql == _BEGIN_WRITE:
            self._begin_write()
            return Rows(None, [])
        return run(self.raw, sql, params, where="write")

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> None:
        for params in seq:
            run(self.raw, sql, params, where="write")

    def _begin_write(self) -> None:
        """``BEGIN`` and the writer lock, waited for at most ``lock_timeout``; on any failure
        nothing stays open."""
        try:  # one round trip (no parameters: the simple protocol takes both statements);
            # the connection's lock_timeout and statement_timeout bound the wait
            self.raw.execute(_BEGIN_LOCKED)
        except psycopg.Error as exc:
            try:
                self.raw.execute("ROLLBACK")
            except psycopg.Error:
                pass
            if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
                raise sqlite3.OperationalError(
                    f"the store's writer lock was not granted within busy_timeout "
                    f"({self.lock_timeout:g}s; raise it or reduce concurrent writers)"
                ) from exc
            raise sqlite_error(exc, "write") from exc

    def close(self) -> None:
        try:
            self.raw.close()
        except psycopg.Error:  # pragma: no cover - closing is best effort
            pass
