"""The PostgreSQL store: the SQLite store's transactions, budgets and queries on a server.

:class:`PostgresStore` is the SQLite :class:`~toolguard.store.sqlite.core.Store` with its
connections replaced (see :mod:`.connection` for how its SQL runs on PostgreSQL):

- one writer connection per process (threads queue on the process lock, as on SQLite); each
  write transaction takes the database's writer lock (``pg_advisory_xact_lock``), so every
  budget of every scope is exact across processes and hosts, the hash chain has one head, and
  a revocation is committed before :meth:`revoke` returns;
- reads (the viewer, verifiers' revocation checks) borrow a connection of the process's pool
  (``store_pool_size``) per statement, or per read transaction (``verify``'s snapshot);
- ``busy_timeout`` bounds the wait for the writer lock (``lock_timeout``), every statement
  (``statement_timeout``) and the connection set-up; a connection that fails is replaced on
  the next transaction (connecting is retried with tenacity; a statement never is).

Fail closed as on SQLite: server unreachable, connection dropped mid-transaction, timeout,
permission denied: :class:`AuditError`, the transaction rolled back (PostgreSQL undoes a
transaction whose connection drops), the tool not run. A connection that drops with the
``COMMIT`` sent and unanswered leaves the transaction in doubt: :class:`UnconfirmedWrite`, and
what it held is looked up before it is written again (:mod:`.doubt`).
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from ...budget import Spend
from ...chain import Event
from ...errors import AuditError, PolicyDenied
from ...location import StoreLocation
from ..protocol import Denial, PendingOutcome, UnconfirmedWrite
from ..sqlite.budgets import Charge
from ..sqlite.core import PendingEnd, Store
from ..sqlite.tasks import TaskBudgets
from .calls import APPEND, append_params, call_params
from .connection import PgConnection, Rows, configure, run, sqlite_error
from .doubt import not_run, start_not_confirmed, still_to_write, unsure
from .schema import create_schema, schema_version

__all__ = ["PostgresStore"]

log = logging.getLogger("toolguard")


class _ServerName(str):
    """What ``Store.path`` is for a PostgreSQL store: the URL without its password (for
    messages), never a file (``exists`` is True: the server answers, or the read fails)."""

    def exists(self) -> bool:
        return True

    def is_file(self) -> bool:
        return True


class _Reader(threading.local):
    def __init__(self) -> None:
        self.pinned: PgConnection | None = None


class _PooledReads:
    """The store's read connection: each statement borrows a pool connection; a ``BEGIN``
    pins one to the thread (a repeatable-read snapshot) until ``ROLLBACK`` or ``COMMIT``."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.local = _Reader()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        pinned = self.local.pinned
        word = sql.strip().upper()
        if pinned is not None:
            if word in ("ROLLBACK", "COMMIT"):
                self.local.pinned = None
                try:
                    return run(pinned.raw, word, where="read")
                finally:
                    self.store.pool().putconn(pinned.raw)
            return run(pinned.raw, sql, params, where="read")
        pool = self.store.pool()
        if word == "BEGIN":
            raw = self.store.borrow(pool)
            try:
                run(raw, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", where="read")
            except BaseException:
                pool.putconn(raw)
                raise
            self.local.pinned = PgConnection(raw, lock_timeout=self.store.busy_timeout)
            return Rows(None, [])
        for attempt in (1, 2):
            raw = self.store.borrow(pool)
            try:
                return run(raw, sql, params, where="read")
            except sqlite3.OperationalError:
                # a pooled connection the server dropped (restart, pg_terminate_backend): a
                # read is safe to repeat once on a new one; any other failure is reported
                if attempt == 2 or not (raw.closed or raw.broken):
                    raise
            finally:
                pool.putconn(raw)  # a broken one is discarded by the pool
            # the server dropped it, and after a restart every idle one with it: discard those
            # too (the pool pings each), so the repeat gets a live connection
            pool.check()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:  # a borrowed connection goes back to the pool by itself
        return None


class PostgresStore(Store):
    """The store on a PostgreSQL server (``store: postgresql://...``)."""

    def __init__(
        self,
        location: StoreLocation,
        *,
        durability: str = "normal",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
        pool_size: int = 4,
    ) -> None:
        super().__init__(
            Path("."), durability=durability, busy_timeout=busy_timeout, clock=clock,
            readonly=readonly,
        )  # fmt: skip
        self.location = location
        self.path = cast(Path, _ServerName(location.display))
        self.pool_size = pool_size
        self._pool: tuple[int, ConnectionPool[Any]] | None = None
        self._pool_lock = threading.Lock()
        self._reads = _PooledReads(self)
        self._careful = False

    # -- connections ---------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        ms = max(1, int(self.busy_timeout * 1000))
        return {
            "autocommit": True,
            # libpq waits at least 2 s for a connection; the pool's timeout bounds the rest
            "connect_timeout": max(2, math.ceil(self.busy_timeout)),
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"
            + (" -c default_transaction_read_only=on" if self.readonly else ""),
            "application_name": "toolguard",
        }

    def _new_connection(self) -> psycopg.Connection[Any]:
        """A new connection; connecting is retried (it is safe) until ``busy_timeout``."""

        @retry(
            retry=retry_if_exception_type(psycopg.OperationalError),
            stop=stop_after_delay(self.busy_timeout),
            wait=wait_exponential(multiplier=0.01, max=0.25),
            reraise=True,
        )
        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(self.location.url, **self._options())

        try:
            return connect()
        except psycopg.Error as exc:
            error = AuditError(
                f"cannot connect to the audit database {self.path}: {sqlite_error(exc, 'connect')}"
            )
        raise error  # outside the handler: no psycopg error (it holds the password) chained

    def pool(self) -> ConnectionPool[Any]:
        """The process's pool of read connections (``store_pool_size``), opened on first use
        (a forked child opens its own)."""
        pool = self._pool
        if pool is not None and pool[0] == os.getpid():
            return pool[1]
        with self._pool_lock:
            pool = self._pool
            if pool is None or pool[0] != os.getpid():
                self._ensure_ready()
                created: ConnectionPool[Any] = ConnectionPool(
                    self.location.url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs=self._options(),
                    configure=configure,
                    timeout=self.busy_timeout,
                    open=False,
                    name="toolguard",
                )
                created.open(wait=False)
                pool = self._pool = (os.getpid(), created)
        return pool[1]

    def borrow(self, pool: ConnectionPool[Any]) -> psycopg.Connection[Any]:
        try:
            conn: psycopg.Connection[Any] = pool.getconn()
            return conn
        except PoolTimeout:
            pass
        raise AuditError(  # outside the handler: no psycopg error chained
            f"cannot read the audit database {self.path}: no connection within busy_timeout "
            f"({self.busy_timeout:g}s; the server is unreachable, or raise store_pool_size)"
        )

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        conn = self._new_connection()
        try:
            configure(conn)
            if self.readonly:
                if schema_version(conn) is None:
                    raise AuditError(
                        f"{self.path} is not a toolguard audit database (no events table); "
                        "a guard creates it on its first task, or run `toolguard db migrate`"
                    )
            else:
                create_schema(conn, str(self.path))
        except psycopg.Error as exc:
            error = AuditError(
                f"the audit database {self.path} cannot be used: {sqlite_error(exc, 'open')}"
            )
        except Exception as exc:  # sqlite-shaped errors from create_schema
            if isinstance(exc, AuditError):
                raise
            error = AuditError(
                f"the audit database {self.path} cannot be used: {exc}; check that the role "
                "may create tables (or run `toolguard db migrate` with one that may)"
            )
            error.__cause__ = exc  # a sqlite3 error of ours: no psycopg error behind it
        else:
            self._ready = True
            return
        finally:
            conn.close()
        raise error  # outside the handlers: no psycopg error chained

    @property
    def conn(self) -> Any:
        """The writer inside a write transaction, else the pooled reads."""
        tx = self._local.tx
        if tx is not None:
            return tx
        if self._stale is not None:
            raise AuditError(self._stale)
        self.pool()
        return self._reads

    def _writer_conn(self) -> Any:
        """The process's writer (replaced when it broke); the caller holds the write lock."""
        writer = self._writer
        if writer is not None and writer[0] == os.getpid():
            current = cast(PgConnection, writer[1])
            if not current.broken:
                return current
            current.close()
        self._ensure_ready()
        conn = PgConnection(self._new_connection(), lock_timeout=self.busy_timeout, pipelined=True)
        self._writer = (os.getpid(), cast(Any, conn))
        return conn

    def _wake(self) -> None:
        """No wake-up file: the server queues the writers on its lock."""
        return None

    def _bound_wal(self, conn: Any) -> None:
        """No write-ahead log file: the server keeps its own."""
        return None

    def _sync(self, conn: Any) -> None:
        """After queued outcomes or task ends are written: send them now if the server might
        refuse their values (then the store isolates the bad one, see ``_write_queued``); else
        they ride with the transaction's next read (one round trip fewer). Should a
        screened item still be refused, the transaction fails (the call fails closed, nothing
        is written) and, until a transaction commits again, every item is sent at once."""
        sync = getattr(conn, "sync", None)  # tests may wrap the writer
        if sync is None:
            return
        if self._careful or not conn.screened():
            sync()

    @contextmanager
    def _write(self, what: str) -> Iterator[Any]:
        careful = self._careful
        try:
            with super()._write(what) as conn:
                yield conn
        except BaseException:
            if self._pending:  # put back: write them one round trip at a time next time
                self._careful = True
            raise
        if careful and self._local.tx is None:
            self._careful = False

    def _unwritten(
        self, conn: Any, pending: list[PendingOutcome | PendingEnd]
    ) -> list[PendingOutcome | PendingEnd]:
        """The queued items still to write. An item held by a transaction whose ``COMMIT`` got
        no reply (the connection dropped: it may have committed) is marked, and looked up here
        before it is written again; one the server has is not (an outcome twice, a cost settled
        twice, a task ended twice). Exact: this transaction holds the writer lock, so the one
        whose reply was lost has committed or rolled back by now. A commit whose outcome is
        unknown is never retried blindly (docs/deployment.md, "Failing closed")."""
        if not any(map(unsure, pending)):
            return pending
        kept = [item for item in pending if not unsure(item) or still_to_write(conn, item)]
        still = {id(item) for item in kept}
        if any(item.recheck and id(item) not in still for item in pending):
            # what the lost transaction did to this process's task counters was rolled back
            # in memory, though the server has it: count every task again from the trail
            self._tasks = TaskBudgets()
        if len(kept) < len(pending):
            log.warning(
                "toolguard: the reply to a commit on %s was lost; %d queued item(s) are not "
                "written (written by it already, or completing a call it did not write)",
                self.path,
                len(pending) - len(kept),
            )
        return kept

    def _append(self, conn: Any, event: Event) -> None:
        """Append an event; the server reads the chain head and hashes (see :data:`.calls.APPEND`)
        when it can (UTF-8 on both ends, PostgreSQL >= 11), else as on SQLite."""
        if not getattr(conn, "server_hash", False):  # tests may wrap the writer
            super()._append(conn, event)
            return
        conn.execute(APPEND, append_params(event))
        self._local.head = None

    def record_call(
        self,
        *,
        chain: Sequence[str],
        identity: str,
        task_started_at: float,
        spends: Sequence[Spend],
        event: Event,
        credential: tuple[Any, ...] | None,
        now: float,
        on_denied: Callable[[PolicyDenied], Event],
        inherited: Sequence[Sequence[Spend]] = (),
        precheck: Callable[[float], PolicyDenied | None] | None = None,
        shadow: bool = False,
    ) -> Denial | Event:
        """:meth:`Store.record_call`, its common case in one round trip: the server decides
        and writes the call in one statement sent with the ``COMMIT`` (:mod:`.calls`), so the
        writer lock is held only while the server runs it. A call it does not admit (a
        revocation, a limit reached, anything unusual) is decided again the usual way, in a
        new transaction; so is a call with an approval to use or ancestors' budgets."""
        usual = partial(
            super().record_call, chain=chain, identity=identity,
            task_started_at=task_started_at, spends=spends, event=event, credential=credential,
            now=now, on_denied=on_denied, inherited=inherited, precheck=precheck, shadow=shadow,
        )  # fmt: skip
        try:
            if precheck is not None or inherited:
                return usual()
            step = Charge(spends, now)
            shape = step.shape
            admitted: list[bool] = []
            with self._write("request") as conn:
                at_commit = getattr(conn, "read_at_commit", None)  # tests may wrap the writer
                if at_commit is None or not getattr(conn, "server_hash", False):
                    return usual()  # joins this transaction
                news: list[tuple[int, int]] | None = None
                if shape is not None and shape.task:  # the task's counters: in this process
                    news = self._tasks.fit(conn, shape.task_id, shape.task)
                    if news is None:
                        return usual()  # a task limit refuses: explained the usual way
                sql, params = call_params(
                    step, chain, identity, task_started_at, event, credential, now
                )

                def committed(rows: Rows) -> None:
                    row = rows.fetchone()
                    admitted.append(bool(row and row[0]))
                    if admitted[0] and shape is not None and news:
                        self._tasks.spend(shape.task_id, news)  # committed with the transaction

                at_commit(sql, params, committed)
                self._local.head = None
            if admitted and admitted[0]:
                return event
            return usual()  # not admitted by the server: decided (and explained) the usual way
        except BaseException:
            if not self._local.unconfirmed:
                raise
            self.queue_outcome(not_run(event, self.clock()))  # if its request is in the trail
            raise

    def start_task(
        self, task: Mapping[str, Any], event: Event, *, disabled: str | None = None
    ) -> None:
        """:meth:`Store.start_task`; when its ``COMMIT`` got no reply, the task may have been
        recorded though its caller gets :class:`AuditError` and never runs it: it is ended
        (``error``, rule ``store.commit``) with the next transaction, if it was."""
        try:
            super().start_task(task, event, disabled=disabled)
        except BaseException:
            if not self._local.unconfirmed:
                raise
            end = start_not_confirmed(event, self.clock())  # if the task was recorded
            with self._pending_lock:
                self._pending.append(end)
            raise

    def _maybe_committed(self) -> bool:
        """Whether the writer broke (or was interrupted) with its ``COMMIT`` unanswered; with
        the write lock held, the writer is the one that failed."""
        writer = self._writer
        return (
            writer is not None
            and writer[0] == os.getpid()
            and bool(getattr(writer[1], "in_doubt", False))  # tests may wrap the writer
        )

    def _not_written(self, what: str, exc: sqlite3.Error | None = None) -> AuditError:
        """As on SQLite, and saying so when the ``COMMIT`` was sent and got no reply (the
        server may have written it: an operator can run a ``revoke`` or ``enable`` again).
        Called with the process's write lock held, so the writer is the one that failed."""
        if exc is None or not self._maybe_committed():
            return super()._not_written(what, exc)
        return UnconfirmedWrite(
            f"the audit trail {self.path} could not be written, or not confirmed ({what}): "
            f"{exc}; the connection was lost after its COMMIT was sent, so the server may have "
            "written it: the next transaction checks what it held, and a `toolguard revoke` or "
            "`enable` can be run again; no tool ran"
        )

    def _connect(self) -> Any:  # pragma: no cover - every connection comes from above
        raise AssertionError("PostgresStore opens connections through its pool and writer")

    def open(self) -> PostgresStore:
        """Connect (and create the schema, for a writable store) now rather than on first use."""
        self._ensure_ready()
        self.pool()
        return self

    def default_checkpoints(self) -> Path:
        return self.location.default_checkpoints()

    def close(self) -> None:
        """Write pending outcomes, close the writer and the pool."""
        try:
            if self._pending and not self.readonly:
                self.flush()
        finally:
            writer, self._writer = self._writer, None
            if writer is not None and writer[0] == os.getpid():
                cast(PgConnection, writer[1]).close()
            pool, self._pool = self._pool, None
            if pool is not None and pool[0] == os.getpid():
                pool[1].close(timeout=1.0)
            self._ready = False
