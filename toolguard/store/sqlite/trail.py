"""The reads of the hash-chained trail that ``toolguard.integrity`` verifies (SQL lives in
:mod:`toolguard.store`): every event in order, tolerant of text that is not UTF-8, the newest
prune, the stored hash at a ``seq``, counts after a ``seq``, and one read snapshot."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...chain import HASHED_FIELDS

__all__ = [
    "TrailReader",
    "count_after",
    "event_rows",
    "is_decode_error",
    "last_prune",
    "read_snapshot",
    "stored_at",
]

_SELECT_EVENTS = f"SELECT {', '.join(HASHED_FIELDS)}, prev_hash, hash FROM events"

_TOLERANT_COLUMNS = ", ".join(
    f"typeof({c}), CASE WHEN typeof({c}) = 'text' THEN CAST({c} AS BLOB) ELSE {c} END"
    for c in (*HASHED_FIELDS, "prev_hash", "hash")
)


def is_decode_error(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "decode" in str(exc).lower()


def _tolerant_row(conn: sqlite3.Connection, seq: int) -> tuple[Any, ...] | None:
    """One event read without decoding its text: text that is not UTF-8 comes back as bytes
    (which hash to nothing, so the row is reported as modified)."""
    row = conn.execute(f"SELECT {_TOLERANT_COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        return None
    values: list[Any] = []
    for kind, value in zip(row[::2], row[1::2], strict=True):
        if kind == "text" and isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                pass  # kept as bytes: a foreign value
        values.append(value)
    return tuple(values)


def event_rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    """Every event in ``seq`` order, fast; a row whose text is not valid UTF-8 (which makes
    sqlite3 abort the whole query) is read on its own and the scan resumes after it."""
    last: int | None = None
    while True:
        if last is None:
            cursor = conn.execute(f"{_SELECT_EVENTS} ORDER BY seq")
        else:
            cursor = conn.execute(f"{_SELECT_EVENTS} WHERE seq > ? ORDER BY seq", (last,))
        row: tuple[Any, ...] | None = None
        try:
            for row in cursor:
                yield row
            return
        except sqlite3.Error as exc:
            if not is_decode_error(exc):
                raise
        if row is not None:  # the last row read before the one that failed
            last = row[0]
        after = -(2**63) if last is None else last
        found = conn.execute(
            "SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (after,)
        ).fetchone()
        row = _tolerant_row(conn, found[0]) if found is not None else None
        if row is None:  # pragma: no cover - the failing row vanished inside our snapshot
            return
        last = row[0]
        yield row


def last_prune(conn: sqlite3.Connection) -> tuple[int | None, str] | None:
    """The newest prune ``(before_seq, head_hash)``; ``(None, "")`` when it is unreadable."""
    try:
        row = conn.execute(
            "SELECT before_seq, head_hash FROM prunes ORDER BY id DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error as exc:
        if not is_decode_error(exc):
            raise
        return None, ""
    if row is None:
        return None
    if type(row[0]) is not int or not isinstance(row[1], str):
        return None, ""
    return row[0], row[1]


def stored_at(conn: sqlite3.Connection, seq: int) -> tuple[Any, Any, Any]:
    """The stored row ``(hash,)`` at ``seq`` (None if none), and the lowest and highest
    ``seq`` (two queries: SQLite answers MIN or MAX alone from the b-tree, both at once by a
    scan)."""
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
    first = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
    last = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    return row, first, last


def count_after(conn: sqlite3.Connection, seq: int, *, task_ends: bool = False) -> int:
    """How many events (with ``task_ends``: task ends) come after ``seq``."""
    if task_ends:
        sql = "SELECT COUNT(*) FROM events WHERE kind = 'task_end' AND seq > ?"
    else:
        sql = "SELECT COUNT(*) FROM events WHERE seq > ?"
    return int(conn.execute(sql, (seq,)).fetchone()[0])


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction on ``conn`` (sqlite3 errors propagate), always rolled back."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # pragma: no cover - nothing to undo in a read transaction
            pass


class TrailReader:
    """The reads of the trail that ``verify`` and the checkpoint checks need, on one
    connection (inside :meth:`Store.read_trail`'s snapshot): no SQL leaves the store."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def events(self) -> Iterator[tuple[Any, ...]]:
        """Every event as ``(*HASHED_FIELDS, prev_hash, hash)`` in ``seq`` order
        (:func:`event_rows`: a row that is not valid UTF-8 is read as it is)."""
        return event_rows(self._conn)

    def last_prune(self) -> tuple[int | None, str] | None:
        """See :func:`last_prune`."""
        return last_prune(self._conn)

    def stored_at(self, seq: int) -> tuple[Any, Any, Any]:
        """See :func:`stored_at`."""
        return stored_at(self._conn, seq)

    def count_after(self, seq: int, *, task_ends: bool = False) -> int:
        """See :func:`count_after`."""
        return count_after(self._conn, seq, task_ends=task_ends)
