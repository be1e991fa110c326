"""A psycopg 3 connection that speaks the store's SQL (written for SQLite) on PostgreSQL.

The store's statements are portable SQL except for a few spellings, translated once per
statement text (cached): ``?`` placeholders become ``%s`` (and ``$1``, ``$2``, ... for the
writer's prepared statements, see :meth:`PgConnection._send_prepared`); ``char(31)`` is
``chr(31)``; the column ``by`` (a reserved word) is quoted; ``BEGIN IMMEDIATE`` (SQLite's
writer lock) is ``BEGIN`` plus the store's writer lock, a transaction-scoped advisory lock
(:data:`WRITER_LOCK`) that serialises the writers of the whole fleet exactly as SQLite's lock
serialises those of one host (see docs/audit.md).

Every psycopg error is re-raised as the :mod:`sqlite3` error of the same meaning, so the
store's fail-closed handling (every failure on the write path is an ``AuditError``; an item
whose values the database refuses is replaced, never retried) is one code path for both
backends: :class:`psycopg.DataError` and :class:`psycopg.IntegrityError` are the item's fault
(``sqlite3.DataError``/``IntegrityError``); everything else (connection lost, timeout,
permission denied, serialization failure) is ``sqlite3.OperationalError``. The psycopg error
is never chained to it (see :func:`sqlite_error`).
"""

from __future__ import annotations

import math
import re
import select
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import Loader, Transformer
from psycopg.types.string import StrDumper

from ...location import redact_url

__all__ = ["WRITER_LOCK", "PgConnection", "Rows", "configure", "sqlite_error", "translate"]

WRITER_LOCK = 0x746F6F6C67756172  # "toolguar": the store's writer lock (pg_advisory_xact_lock)
"""The advisory lock key every writer of one database takes in its transaction."""

_BEGIN_WRITE = "BEGIN IMMEDIATE"
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
_CHAR = re.compile(r"\bchar\(")  # SQLite's char(), not to_char()


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
            part = _CHAR.sub("chr(", part.replace("?", "%s"))
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


def _params(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple([int(v) if type(v) is bool else v for v in values])


def sqlite_error(exc: BaseException, where: str) -> sqlite3.Error:
    """The :mod:`sqlite3` error of the same meaning as a psycopg error (passwords removed).

    Raise it outside the ``except`` block that caught ``exc`` (or ``from None`` where the
    caught error is itself already clean): a psycopg error keeps the connection it came from
    (``pgconn``, with the connection's parameters, its password among them) and must be
    reachable from no error the store raises, neither as ``__cause__`` nor as ``__context__``.
    """
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
        error = sqlite_error(exc, where)
    raise error  # outside the handler: psycopg's error is neither __cause__ nor __context__


_TEXT, _INT8, _FLOAT8 = 25, 20, 701  # parameter type oids
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL = pq.ExecStatus.FATAL_ERROR
_TUPLES = pq.ExecStatus.TUPLES_OK
_OK = pq.ConnStatus.OK
_STALE_PREPARED = frozenset({"26000", "0A000"})
"""A prepared statement the server no longer has (``DEALLOCATE``, ``DISCARD ALL``, a pooler
that switched server connections), or whose result type a schema change altered."""
_MAX_PREPARED = 200
"""Statements one connection prepares at most (the store has a few dozen); past it, the rest
are sent unnamed."""
_OIDS: dict[type, int] = {type(None): 0, str: _TEXT, int: _INT8, float: _FLOAT8}
"""The parameter type sent for each Python type (``None``: the server infers it, as for
psycopg's ``None``); a value of any other type is sent by psycopg."""


def _text(value: str) -> bytes:
    if "\x00" in value:
        raise ValueError("NUL")  # PostgreSQL's text cannot hold it: psycopg refuses it
    return value.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, a ValueError


def _ascii_text(value: str) -> bytes:
    if not value.isascii():  # a server encoding other than UTF-8: psycopg encodes it
        raise ValueError("not ASCII")
    return _text(value)


def _int8(value: int) -> bytes:
    if not -(2**63) <= value < 2**63:
        raise ValueError("not a bigint")  # psycopg sends it as numeric
    return b"%d" % value


_ENCODERS: dict[type, Callable[[Any], bytes | None]] = {
    type(None): lambda _: None,
    str: _text,
    int: _int8,
    float: lambda value: _float_text(value),
}
_ASCII_ENCODERS = {**_ENCODERS, str: _ascii_text}

_poll = getattr(select, "poll", None)
_PLACEHOLDER = re.compile(r"%%|%s")


@lru_cache(maxsize=1024)
def _numbered(sql: str) -> bytes:
    """psycopg's query text (``%s`` placeholders, ``%%``) as the server's (``$1``, ``%``)."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group() == "%%":
            return "%"
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql).encode("utf-8")


def _float_text(value: float) -> bytes:
    if value != value:
        return b"NaN"
    if value in (math.inf, -math.inf):
        return b"Infinity" if value > 0 else b"-Infinity"
    return repr(value).encode()


_DEFERRABLE = ("INSERT", "UPDATE", "DELETE", "SAVEPOINT", "RELEASE")
"""Statements whose result the store never reads: inside a write transaction they are queued
and sent with the next statement whose rows are needed (see :class:`PgConnection`)."""

_LOCK_SQL = "SELECT pg_advisory_xact_lock(%s)"


class PgConnection:
    """One psycopg connection (autocommit: transactions are explicit, as the store's sqlite3
    connections are) behind the subset of :class:`sqlite3.Connection` the store uses.

    Fewer round trips, same transaction (``pipelined``, the store's writer): inside a write
    transaction, ``BEGIN`` with the writer lock and every statement whose result the store does
    not read (``INSERT``, ``UPDATE``, ``DELETE``, ``SAVEPOINT``, ``RELEASE``) are queued, and
    sent in one pipeline (libpq's pipeline mode, one network round trip) with the next statement
    whose rows are needed, a :meth:`sync`, the ``COMMIT``, or the ``ROLLBACK``. The server runs
    them in order, inside the transaction, under the lock; the first error stops the rest and
    is raised by the statement that sent them, so the transaction still commits all or nothing:
    a failed queued ``INSERT`` fails the ``COMMIT`` (the caller rolls back, the tool does not
    run). The store calls :meth:`sync` where it must see an item's error at once (a queued
    outcome, in its savepoint). Outside a transaction every statement runs at once.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], *, lock_timeout: float, pipelined: bool = False
    ) -> None:
        configure(conn)
        self.raw = conn
        self.lock_timeout = lock_timeout
        self.pipelined = pipelined
        """Queue as described above (the store's writer); else every statement, ``BEGIN`` with
        the lock included, runs when executed."""
        self._queue: list[tuple[str, tuple[Any, ...]]] = []
        self._in_tx = False
        self._at_commit: tuple[str, tuple[Any, ...], Callable[[Rows], None]] | None = None
        self._lock_queued = False
        self._cursor = conn.cursor()  # one for every statement of the writer
        self._utf8 = (  # else only ASCII text is sure to be taken
            conn.info.parameter_status("server_encoding") == "UTF8"
            and conn.info.encoding == "utf-8"
        )
        self.in_doubt = False
        """The last ``COMMIT``'s round trip ended without the server's answer (the connection
        broke, or the process was interrupted): that transaction may or may not have committed
        (the store checks, see :meth:`toolguard.store.postgres.core.PostgresStore._unwritten`).
        Reset when the next write transaction begins."""
        self.round_trips = 0
        """Requests sent to the server (a pipeline is one); for tests and benchmarks."""
        self.lock_seconds = 0.0
        """Time from sending the request that takes the writer lock to the reply to the
        ``COMMIT`` that releases it, summed over committed transactions: how long this
        process held the lock, plus its waits for it (for benchmarks)."""
        self._lock_sent = 0.0
        self.server_hash = self._utf8 and conn.info.server_version >= 110000
        """Whether events are hashed by the server (``sha256()``; text sent and hashed as
        UTF-8), see :data:`toolguard.store.postgres.calls.APPEND`."""
        self._prepared: dict[tuple[str, tuple[int, ...]], bytes] = {}
        """The statements prepared on this connection: (text, parameter types) -> name."""
        self._names = 0
        self._loader = Transformer.from_context(conn)

    @property
    def broken(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        if sql == _BEGIN_WRITE:
            self._begin_write()
            return Rows(None, [])
        if not (self._in_tx and self.pipelined):
            self.round_trips += 1
            return run(self.raw, sql, params, where="write")
        word = sql.lstrip()[:12].upper()
        if word.startswith(_DEFERRABLE) and "RETURNING" not in sql.upper():
            if word.startswith("RELEASE") and self._elide(sql):
                return Rows(None, [])
            self._queue.append((translate(sql), _params(params)))
            return Rows(None, [])
        if word.startswith("ROLLBACK") and not word.startswith("ROLLBACK TO"):
            self._in_tx = False
            self._at_commit = None
            queued, self._queue = self._queue, []
            if queued and queued[0][0] == "BEGIN":  # nothing reached the server
                self._lock_queued = False
                return Rows(None, [])
            return self._send(translate(sql), ())
        if not word.startswith(("COMMIT", "END")):
            return self._send(translate(sql), _params(params))
        self._in_tx = False
        at_commit, self._at_commit = self._at_commit, None
        try:
            if at_commit is None:
                return self._send(translate(sql), _params(params))
            text, values, then = at_commit
            rows = self._send(text, values, commit=translate(sql))
        except BaseException as exc:
            # no reply (connection lost, interrupted): the server may have committed; an
            # error the server answered with (the connection still up) says it did not
            self.in_doubt = self.broken or not isinstance(exc, sqlite3.Error)
            raise
        finally:
            self.lock_seconds += time.perf_counter() - self._lock_sent
        then(rows)
        return Rows(None, [])

    def read_at_commit(self, sql: str, params: Sequence[Any], then: Callable[[Rows], None]) -> None:
        """Run ``sql`` last in this write transaction, in the ``COMMIT``'s round trip, and
        call ``then`` with its rows once the transaction has committed (before the ``COMMIT``
        returns; not at all if it fails). So a statement that decides and writes (the call's
        own, :mod:`.calls`) holds the writer lock only while the server runs it: no round trip
        to the client between the lock and the ``COMMIT``."""
        if not (self._in_tx and self.pipelined):  # pragma: no cover - the store's writer only
            raise sqlite3.OperationalError("read_at_commit needs a pipelined write transaction")
        self._at_commit = (translate(sql), _params(params), then)

    def _elide(self, release: str) -> bool:
        """``RELEASE x`` whose ``SAVEPOINT x`` is still queued, with no savepoint after it:
        both are dropped (nothing was sent in between, so nothing could roll back to it; an
        error of a statement between them fails the whole transaction either way)."""
        name = release.split(None, 1)[1].strip()
        for i in range(len(self._queue) - 1, -1, -1):
            text = self._queue[i][0]
            if text.startswith("SAVEPOINT "):
                if text == f"SAVEPOINT {name}":
                    del self._queue[i]
                    return True
                return False
        return False

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> None:
        for params in seq:
            self.execute(sql, params)

    def screened(self) -> bool:
        """Whether PostgreSQL takes every queued value as the store's columns hold it: ``None``,
        floats, 64-bit integers, and text without NUL that the server's encoding can hold. A
        queued item of such values can wait for the next round trip; one with any other value
        is sent at once (:meth:`sync`), so that its refusal is seen while it can be replaced."""
        for _, params in self._queue:
            for value in params:
                if value is None or type(value) is float:
                    continue
                if type(value) is int:
                    if not -(2**63) <= value < 2**63:
                        return False
                elif type(value) is str:
                    if "\x00" in value or not (value.isascii() or self._utf8):
                        return False
                    if not value.isascii():
                        try:
                            value.encode("utf-8")
                        except UnicodeEncodeError:  # a lone surrogate
                            return False
                else:
                    return False
        return True

    def sync(self) -> None:
        """Send the queued statements now; raise the first one's error."""
        if self._queue:
            self._send(None, ())

    def _begin_write(self) -> None:
        """``BEGIN`` and the writer lock (one round trip). Pipelined, they are queued: they reach
        the server with the transaction's first read (the chain head or the budgets), in the
        same round trip. The connection's ``lock_timeout`` and ``statement_timeout`` bound the
        wait for the lock."""
        if self._in_tx:  # pragma: no cover - the store never nests transactions
            raise sqlite3.OperationalError("cannot start a transaction within a transaction")
        self._queue = [("BEGIN", ()), (_LOCK_SQL, (WRITER_LOCK,))]
        self._at_commit = None
        self.in_doubt = False  # of this transaction's COMMIT, once sent
        self._lock_queued = True
        self._in_tx = True
        if not self.pipelined:
            try:
                self.sync()
            except sqlite3.Error:
                self._in_tx = False
                try:  # nothing stays open
                    self.raw.execute("ROLLBACK")
                except psycopg.Error:
                    pass
                raise

    def _send(self, sql: str | None, params: tuple[Any, ...], *, commit: str = "") -> Rows:
        """The queued statements, ``sql`` (if any) and ``commit`` (if any) in one round trip;
        ``sql``'s rows."""
        queue, self._queue = self._queue, []
        want: int | None = None
        if sql is not None:
            want = len(queue)
            queue.append((sql, params))
        if commit:
            queue.append((commit, ()))
        locking, self._lock_queued = self._lock_queued, False
        if locking:
            self._lock_sent = time.perf_counter()
        self.round_trips += 1
        cur = self._cursor
        try:
            encoded = self._encode(queue)
            if encoded is not None:
                return self._send_prepared(queue, encoded, want=want)
            if len(queue) == 1:
                cur.execute(queue[0][0], queue[0][1])
            else:
                last = want is None or want == len(queue) - 1
                wanted = cur if last else self.raw.cursor()  # the rows of a statement inside
                with self.raw.pipeline():
                    for i, (text, values) in enumerate(queue):
                        (wanted if i == want else cur).execute(text, values)
                cur = wanted
            if want is None or cur.description is None:
                return Rows(None, [])
            return Rows([(c.name,) for c in cur.description], cur.fetchall())
        except psycopg.Error as exc:
            error: sqlite3.Error
            if locking and isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
                error = sqlite3.OperationalError(
                    f"the store's writer lock was not granted within busy_timeout "
                    f"({self.lock_timeout:g}s; raise it or reduce concurrent writers)"
                )
            else:
                error = sqlite_error(exc, "write")
        raise error  # outside the handler (see sqlite_error)

    def _encode(
        self, queue: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> list[tuple[tuple[int, ...], list[bytes | None]]] | None:
        """Every statement's parameter types and text values for :meth:`_send_prepared`, or
        None when a value is not one of those it sends as psycopg would (``None``, a 64-bit
        int, a float, text the server takes): psycopg sends those statements (and refuses a
        bad value with its own error, see :meth:`screened`)."""
        out: list[tuple[tuple[int, ...], list[bytes | None]]] = []
        encoders = _ENCODERS if self._utf8 else _ASCII_ENCODERS
        try:
            for _, params in queue:
                kinds = tuple(map(type, params))
                oids = tuple(map(_OIDS.__getitem__, kinds))  # KeyError: another type
                out.append((oids, [encoders[k](v) for k, v in zip(kinds, params, strict=True)]))
        except (KeyError, ValueError):  # ValueError: a value psycopg must send (or refuse)
            return None
        return out

    def _send_prepared(
        self,
        queue: Sequence[tuple[str, tuple[Any, ...]]],
        encoded: Sequence[tuple[tuple[int, ...], list[bytes | None]]],
        *,
        want: int | None,
    ) -> Rows:
        """The queued statements in one pipeline on libpq directly, each a prepared statement
        of this connection (prepared in the same round trip the first time it is sent with
        these parameter types); psycopg's per-statement work (query building, dumper lookup,
        the pipeline's bookkeeping) is what made a call cost twice SQLite's CPU. Raises the
        psycopg error of the first statement that failed; any other failure (an interrupt
        halfway) closes the connection, so nothing half-sent is ever used again."""
        pg = self.raw.pgconn
        prepared = self._prepared
        new: list[tuple[tuple[str, tuple[int, ...]], bytes]] = []
        owners: list[int] = []  # per request sent: its statement in the queue (-1: a prepare)
        try:
            pg.enter_pipeline_mode()
            for i, ((text, _), (oids, values)) in enumerate(zip(queue, encoded, strict=True)):
                key = (text, oids)
                name = prepared.get(key)
                if name is None and len(prepared) + len(new) < _MAX_PREPARED:
                    self._names += 1
                    name = b"tg_%d" % self._names
                    pg.send_prepare(name, _numbered(text), oids)
                    new.append((key, name))
                    owners.append(-1)
                if name is not None:
                    pg.send_query_prepared(name, values)
                else:  # too many distinct statements: this one unnamed, parsed each time
                    pg.send_query_params(_numbered(text), values, oids)
                owners.append(i)
            pg.pipeline_sync()
            while pg.flush():
                self._wait(write=True)
            error: psycopg.Error | None = None
            wanted: Any = None
            sent = len(owners)
            ends = 0
            while True:
                while pg.is_busy():
                    self._wait(write=False)
                    pg.consume_input()
                result = pg.get_result()
                if result is None:  # the end of one statement's results
                    ends += 1
                    if ends > sent:  # pragma: no cover - libpq never does this
                        raise psycopg.OperationalError("the pipeline's results are out of step")
                    continue
                status = result.status
                if status == _SYNC:
                    break
                if status == _FATAL and error is None:
                    error = pg_errors.error_from_result(result, self.raw.info.encoding)
                if ends < sent and owners[ends] == want:
                    wanted = result
            pg.exit_pipeline_mode()
        except psycopg.Error:
            if self.raw.pgconn.status != _OK:  # a dropped connection: replaced next time
                raise
            self.close()  # out of step with the server: never used again
            raise
        except BaseException:
            self.close()
            raise
        if error is not None:
            if error.sqlstate in _STALE_PREPARED:  # the server dropped or outdated them:
                prepared.clear()  # this transaction fails closed; the next prepares anew
            raise error
        prepared.update(new)
        if wanted is None or wanted.status != _TUPLES:
            return Rows(None, [])
        tx = self._loader
        tx.set_pgresult(wanted)
        names = [(wanted.fname(i).decode(),) for i in range(wanted.nfields)]
        return Rows(names, tx.load_rows(0, wanted.ntuples, tuple))

    def _wait(self, *, write: bool) -> None:
        """Until the connection's socket is readable (or writable)."""
        fd = self.raw.pgconn.socket
        if _poll is None:  # pragma: no cover - Windows
            select.select([], [fd], []) if write else select.select([fd], [], [])
            return
        poller = _poll()
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
        poller.poll()

    def close(self) -> None:
        try:
            self.raw.close()
        except psycopg.Error:  # pragma: no cover - closing is best effort
            pass
