"""The only module that speaks SQL: schema, migrations, transactions, queries.

SQLite in WAL mode, one connection per thread, ``busy_timeout`` bounded. Every write happens in
one ``BEGIN IMMEDIATE`` transaction that also appends hash-chained audit events, so the trail,
the budgets and the revocations never disagree. Any SQLite failure on the write path becomes
:class:`AuditError` (fail closed: the tool does not run).

The ``outcome`` of a call is not committed on its own: it is queued and rides in the next
transaction of this process (the next call, the task end, or :meth:`Store.flush`). A crash loses
at most the outcomes of the calls completed since the last commit; their ``request`` rows are
durable, and the viewer shows such calls as incomplete.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from ...budget import Spend
from ...chain import GENESIS, HASHED_FIELDS, Event, event_values, values_hash
from ...errors import AuditError, BudgetExceeded, PolicyDenied
from ...numbers import MAX_COST, is_finite_number, is_timestamp
from ..approvals import ApprovalRecord, Decided, decide
from ..protocol import Denial, PendingOutcome
from .budgets import INSERT_TALLY, Anomaly, Charge, charge, settle
from .maintenance import PruneResult, prune
from .queries import Queries
from .schema import check_pages, create_schema
from .tasks import TaskBudgets
from .trail import TrailReader, read_snapshot
from .wake import POLL as WAKE_POLL
from .wake import Wake

log = logging.getLogger("toolguard")

__all__ = ["Denial", "PendingEnd", "PendingOutcome", "Store", "revocation_check"]

WAL_BOUND = 64 << 20
"""Bytes of write-ahead log past which a writer that polls for the lock checkpoints and
truncates it after its commit (:meth:`Store._bound_wal`)."""

_QUARANTINE: list[sqlite3.Connection] = []
"""Connections to a database file that is no longer at its path and whose write-ahead log was
replaced too: never closed (closing would checkpoint and unlink the ``-wal`` at the path, which
is no longer theirs), see :meth:`Store._retire`."""


_TASK_COLUMNS = (
    "task_id",
    "parent_id",
    "intent",
    "identity",
    "params",
    "purpose",
    "status",
    "started_at",
    "ended_at",
    "deadline",
    "tainted",
)
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(HASHED_FIELDS)}, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(HASHED_FIELDS) + 2))})"
)
_INSERT_CREDENTIAL = (
    "INSERT INTO credentials (identity, tally, jti, task_id, tool, operation, issued_at,"
    " expires_at, jit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@lru_cache(maxsize=16)
def revocation_check(tasks: int) -> str:
    """The subquery of a call's revocation check: ``reason<US>scope`` of a revocation of one
    of ``tasks`` task ids (the task and its ancestors) or of the identity since the task
    started, else NULL. Parameters: the task ids, the identity, the task's start."""
    return (
        "(SELECT COALESCE(reason, '') || char(31) || scope FROM revocations"
        " WHERE (scope = 'task' AND value IN (?" + ",?" * (tasks - 1) + "))"
        " OR (scope = 'identity' AND value = ? AND ts >= ?) LIMIT 1)"
    )


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced: a reader closes when its thread ends."""


class _Local(threading.local):
    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.pid = 0
        self.tx: sqlite3.Connection | None = None
        self.head: tuple[int, str] | None = None
        self.unconfirmed = False  # this thread's last write transaction may have committed


@dataclass(slots=True)
class PendingEnd:
    """A task end (revocation, status, events) whose transaction failed; retried with the next
    transaction of this process or :meth:`Store.close`."""

    task_id: str
    status: str
    now: float
    reason: str
    events: list[Event]
    recheck: bool = False
    """Held by a transaction whose ``COMMIT`` got no reply: looked up before it is written
    again (see :class:`~toolguard.store.protocol.UnconfirmedWrite`)."""
    if_started: bool = False
    """Written only if the task's row is in the store: the end of a task whose start's reply
    was lost."""


class Store(Queries):
    """The SQLite store behind a guard: audit events, tasks, budgets, revocations."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "normal",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.readonly = readonly
        self._local = _Local()
        self._pending: list[PendingOutcome | PendingEnd] = []
        self._pending_lock = threading.Lock()
        self._readers: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._ready = False
        self._tasks = TaskBudgets()  # the budgets of the tasks this process runs
        # One writer connection per process: writers queue on the process lock anyway
        # (see _write), so threads share it instead of opening one each (ToolNode threads).
        self._writer: tuple[int, sqlite3.Connection] | None = None
        self._write_lock: tuple[int, threading.Lock] = (os.getpid(), threading.Lock())
        # (st_dev, st_ino) of the database file and of its -wal as this store opened them:
        # compared with the path before each commit and each read (see _check_file)
        self._file: tuple[int, int] | None = None
        self._wal: tuple[int, int] | None = None
        self._stale: str | None = None
        self._wake_state: Wake | Literal[False] | None = None  # see _wake

    # -- connections --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._file is not None:  # never open a file that replaced the one in use
            self._check_file()
        elif self._stale is not None:
            raise AuditError(self._stale)
        try:
            if self.readonly:
                if not self.path.exists():
                    raise AuditError(
                        f"no audit database at {self.path}; pass --db or set TOOLGUARD_DB"
                    )
                conn = sqlite3.connect(
                    # quoted: a '?', '#' or '%' in the path is part of the file's name,
                    # not of the URI (else another file, or another mode, is opened)
                    f"file:{quote(str(self.path))}?mode=ro",
                    uri=True,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                    factory=_Connection,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    str(self.path),
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                    factory=_Connection,
                )
                # switching to WAL needs a lock; a database already in WAL needs nothing
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._enable_wal(conn)
                conn.execute(
                    "PRAGMA synchronous=" + ("FULL" if self.durability == "full" else "NORMAL")
                )
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit database {self.path}: {exc}") from exc
        except OSError as exc:
            raise AuditError(
                f"cannot create the audit database {self.path}: {exc.strerror}"
            ) from exc
        try:
            if not self._ready:
                self._ensure_schema(conn)
            if self._file is None:
                self._file = _identity(self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch a new database to WAL. Processes opening it at once can get SQLITE_BUSY
        without SQLite's busy handler being asked, so retry until ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        try:
            if self.readonly:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
                if not {"events", "tasks", "meta"} <= tables:
                    raise AuditError(
                        f"{self.path} is not a toolguard audit database (no events table)"
                    )
            else:
                check_pages(conn, self.path)  # fail closed on a damaged page, before writing
                conn.execute("BEGIN IMMEDIATE")
                try:
                    create_schema(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as exc:
            raise AuditError(
                f"the audit database {self.path} cannot be used: {exc}; check that it is a "
                "writable toolguard database"
            ) from exc
        self._ready = True

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection for this thread: the writer inside a write transaction, else this
        thread's reader (opened on first use, closed when the thread ends)."""
        local = self._local
        if local.tx is not None:
            return local.tx
        conn = local.conn
        if conn is not None:  # a read on a file that is no longer at the path fails closed
            self._check_file()
        if conn is None or local.pid != os.getpid():  # a forked child opens its own
            conn = local.conn = self._connect()
            local.pid = os.getpid()
            with self._conns_lock:
                self._readers.add(conn)
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        """The process's writer; the caller holds the process write lock."""
        writer = self._writer
        if writer is None or writer[0] != os.getpid():
            conn = self._connect()
            try:
                conn.execute("PRAGMA busy_timeout = 0")  # _write waits fairly by itself
            except sqlite3.Error:
                conn.close()
                raise
            # the -wal this writer opened (a forked child's new writer may open a new one)
            self._wal = _identity(Path(f"{self.path}-wal"), missing_ok=True)
            self._writer = writer = (os.getpid(), conn)
        return writer[1]

    def _check_file(self, *, wal: bool = False) -> None:
        """:class:`AuditError` when the file at the path is not the one this store opened
        (deleted, its directory removed, another file moved over it; with ``wal``, the same for
        the ``-wal`` file). One ``stat`` (two with ``wal``): ~1-2 µs each. Once found, the
        store refuses every read and write (:meth:`_retire` closes its connections)."""
        if self._stale is not None:
            raise AuditError(self._stale)
        expected = self._file
        if expected is None:
            return
        problem = None
        try:
            found = os.stat(self.path)
        except OSError:
            problem = "was deleted (or its directory removed)"
        else:
            if (found.st_dev, found.st_ino) != expected:
                problem = "was replaced by another file"
            elif wal and self._wal is not None:
                try:
                    wal_stat = os.stat(f"{self.path}-wal")
                except OSError:
                    problem = "lost its write-ahead log (the -wal file was deleted)"
                else:
                    if (wal_stat.st_dev, wal_stat.st_ino) != self._wal:
                        problem = "had its write-ahead log (the -wal file) replaced"
        if problem is None:
            return
        self._stale = (
            f"the audit database {self.path} {problem} while this process had it open; "
            "nothing more is written to or read from it and no guarded tool runs. Put the "
            "database back (restore it from a backup if needed), check it with `toolguard "
            "audit verify`, and start a new guard"
        )
        raise AuditError(self._stale)

    def _retire(self) -> None:
        """Drop every connection to a file that is no longer at the path (see _check_file).

        A connection's close runs a checkpoint when it is the last one on its file, and then
        unlinks ``<path>-wal`` and ``<path>-shm`` *by name*. When the ``-wal`` at the path is
        still ours (or gone), that is what we want: our frames go into the old file (never the
        new one) and no stale log is left at the path to be applied to the file now there by
        the next opener. When the ``-wal`` at the path is another file, closing would unlink
        it: those connections are kept open, unused, for the life of the process."""
        conns = self._take_connections()
        try:
            ours = _identity(Path(f"{self.path}-wal"), missing_ok=True) in (None, self._wal)
        except AuditError:
            ours = False
        for conn in conns:
            if ours:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
            else:
                _QUARANTINE.append(conn)
                try:  # never deallocated, so never closed, even at interpreter exit
                    import ctypes

                    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
                except (ImportError, AttributeError):  # pragma: no cover - not CPython
                    pass
        self._local = _Local()

    def _take_connections(self) -> list[sqlite3.Connection]:
        """Every open connection of this process (readers, then the writer), forgotten by the
        store: the caller closes or keeps them."""
        with self._conns_lock:
            conns = list(self._readers)
            self._readers = weakref.WeakSet()
            if self._writer is not None and self._writer[0] == os.getpid():
                conns.append(self._writer[1])
            self._writer = None
        return conns

    def default_checkpoints(self) -> Path:
        """Where this store's signed checkpoints go when none are configured."""
        return Path(f"{self.path}.checkpoints")

    def open(self) -> Store:
        """Open (and create or migrate) the database now rather than on first use."""
        _ = self.conn
        return self

    @contextmanager
    def read_trail(self, *, snapshot: bool = True) -> Iterator[TrailReader]:
        """The trail's reads for ``verify`` and the checkpoint checks: in one read transaction
        (``snapshot``, so a scan and its side queries see the same trail), or on this thread's
        connection as it is. A database error, in here or in the caller's block, is
        :class:`AuditError`."""
        try:
            if snapshot:
                with read_snapshot(self.conn) as conn:
                    yield TrailReader(conn)
            else:
                yield TrailReader(self.conn)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.path}: {exc}") from exc

    def prune(
        self,
        *,
        before: float,
        now: float,
        dry_run: bool = False,
        expect: tuple[int, str] | None = None,
    ) -> PruneResult:
        """Remove the events older than ``before`` (:func:`toolguard.store.sqlite.maintenance.
        prune`, which says how the chain stays verifiable)."""
        return prune(self, before=before, now=now, dry_run=dry_run, expect=expect)

    def decide_approval(
        self,
        record: ApprovalRecord,
        kind: str,
        *,
        by: str,
        note: str | None,
        reason: str,
        now: float,
    ) -> Decided:
        """Append the decision ``kind`` of an approval request, unless it was decided already
        or (for a person's decision) expired (:func:`toolguard.store.approvals.decide`)."""
        return decide(self, record, kind, by=by, note=note, reason=reason, now=now)

    def close(self) -> None:
        """Write pending outcomes and close every connection."""
        try:
            if self._pending and not self.readonly:
                self.flush()
        finally:
            if self._stale is not None:
                self._retire()
            for conn in self._take_connections():
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
            self._local = _Local()
            if self._stale is None:  # a reopened store takes the file then at the path,
                self._file = self._wal = None
                self._ready = False  # and checks it again

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; flushes queued outcomes first.

        Re-entrant: a ``_write`` inside another on the same thread joins the outer transaction
        (it commits and rolls back with it), so an anomaly revocation is atomic with the call
        that triggered it.

        The wait for the write lock is fair and bounded by ``busy_timeout``, after which it
        raises :class:`AuditError` (nothing ran). SQLite's own busy handler sleeps longer and
        longer (up to 100 ms a try), so under contention a writer that has waited a while keeps
        losing to fresh ones and can starve for seconds. Instead, the threads of one process
        queue on a process lock (one of them at a time competes for the database), and that
        one tries ``BEGIN IMMEDIATE`` without SQLite's handler, and again as soon as the
        writer holding the lock wakes it (:mod:`.wake`), or 1 ms later if none does; where
        the wake-up cannot be had, every 50 to 250 µs (jittered, never slower however long
        it has waited). See docs/budgets.md.
        """
        local = self._local
        if local.tx is not None:
            yield local.tx  # nested: the outer _write commits or rolls back
            return
        local.unconfirmed = False
        if self._write_lock[0] != os.getpid():  # a forked child gets its own lock
            self._write_lock = (os.getpid(), threading.Lock())
            self._tasks = TaskBudgets()  # and counts its tasks from the trail
        plock = self._write_lock[1]
        deadline = 0.0
        if not plock.acquire(blocking=False):
            deadline = time.monotonic() + self.busy_timeout
            if not plock.acquire(timeout=self.busy_timeout):
                raise self._not_written(what)
        try:
            conn = self._writer_conn()
            self._begin(conn, what, deadline)
        except BaseException as exc:
            plock.release()
            if self._stale is not None:
                self._retire()
            if isinstance(exc, sqlite3.Error):
                raise self._not_written(what, exc) from exc
            raise
        local.tx = conn
        local.head = None
        wake = self._wake()  # opened by _begin
        with self._pending_lock:
            pending, self._pending = self._pending, []
        try:
            if pending:
                pending = self._unwritten(conn, pending)
            if pending:
                self._write_queued(conn, pending, what)
            yield conn
            # the file at the path must still be the one written to: else nothing commits
            self._check_file(wal=True)
            conn.execute("COMMIT")
            self._tasks.commit()
        except BaseException as exc:
            self._tasks.rollback()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = self._not_written(what, exc) if isinstance(exc, sqlite3.Error) else None
            local.unconfirmed = self._maybe_committed()
            if pending:
                if local.unconfirmed:  # looked up before they are written again
                    for item in pending:
                        item.recheck = True
                with self._pending_lock:
                    self._pending[:0] = pending
            if self._stale is not None:
                self._retire()
            if error is not None:
                raise error from exc
            raise
        else:  # committed (nothing here may put the written items back)
            if wake is None:  # the writers poll: keep the write-ahead log bounded
                self._bound_wal(conn)
        finally:
            local.tx = None
            local.head = None
            plock.release()
            if wake is not None:  # the lock is released: the other processes' waiters try
                wake.release()

    def _wake(self) -> Wake | None:
        """The wake-up counter shared by this database's writers (:mod:`.wake`), opened on
        first use; ``None`` where it cannot be had (the writers then poll)."""
        state = self._wake_state
        if state is None:  # the caller holds the process write lock: opened once
            mode = 0o600
            try:
                mode = os.stat(self.path).st_mode & 0o666  # as shared as the database
            except OSError:
                pass
            path = Path(f"{self.path}-wake")
            state = self._wake_state = Wake.open(path, mode) or False
            if not state:
                log.debug(
                    "the writers' wake-up counter %s cannot be used here (see docs/budgets.md, "
                    "'Many writers'); this process polls for the write lock",
                    path,
                )
        return state or None

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        """After a commit, when the writers poll for the lock (no wake-up counter): past
        :data:`WAL_BOUND` bytes, checkpoint the write-ahead log and truncate it. Polling writers
        each begin a read transaction with every try, so SQLite can seldom start the log over
        and it grows without end (620 MB in 8 s with 4 processes; with the counter it stays
        near 17 MB). One try per commit, without waiting (a reader in the way: the next
        commit tries again); a failure is never the call's (it has committed)."""
        try:
            if os.stat(f"{self.path}-wal").st_size > WAL_BOUND:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except (OSError, sqlite3.Error):
            pass

    def _not_written(self, what: str, exc: sqlite3.Error | None = None) -> AuditError:
        """The error of a write that did not happen: ``exc``, or the lock not granted within
        ``busy_timeout``."""
        if exc is not None:
            return AuditError(
                f"the audit trail {self.path} could not be written ({what}): {exc}; nothing ran"
            )
        return AuditError(
            f"the audit trail {self.path} could not be written ({what}) within busy_timeout "
            f"({self.busy_timeout:g}s; raise it or reduce concurrent writers): database is "
            "locked; nothing ran"
        )

    def _begin(self, conn: sqlite3.Connection, what: str, deadline: float = 0.0) -> None:
        """``BEGIN IMMEDIATE`` on the writer (busy_timeout 0: the waits are ours, fair and
        bounded by ``deadline``, else ``busy_timeout`` from the first refusal)."""
        delay = 50e-6
        wake = self._wake()
        while True:
            seen = wake.seen() if wake is not None else 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
                if not (
                    code & 0xFF == 5  # SQLITE_BUSY and its extended codes
                    if code is not None
                    else str(exc).startswith("database is locked")
                ):
                    raise
            now = time.monotonic()
            if not deadline:
                deadline = now + self.busy_timeout
            elif now >= deadline:
                raise self._not_written(what)
            if wake is not None and wake.wait(seen, min(WAKE_POLL, deadline - now)):
                continue  # a writer released the lock, or the poll interval passed
            import random  # only under contention

            time.sleep(min(delay * (0.5 + random.random()), deadline - now))  # noqa: S311
            delay = min(delay * 2, 250e-6)

    def _maybe_committed(self) -> bool:
        """After a failed transaction, with the write lock held: whether it may have committed
        all the same (a ``COMMIT`` sent and never answered). False on SQLite: a ``COMMIT`` that
        reports an error has not become visible to any reader (one exception SQLite cannot
        report: an fsync that fails after the commit frame was written, which a recovery after
        a crash may replay)."""
        return False

    def _unwritten(
        self, conn: sqlite3.Connection, pending: list[PendingOutcome | PendingEnd]
    ) -> list[PendingOutcome | PendingEnd]:
        """The queued items still to write. On SQLite, all (see :meth:`_maybe_committed`;
        PostgreSQL's store looks items up after a lost reply)."""
        return pending

    def _write_queued(
        self, conn: sqlite3.Connection, pending: Sequence[PendingOutcome | PendingEnd], what: str
    ) -> None:
        """Write the queued items at the start of a transaction. First all at once, without
        a savepoint each (two statements fewer per call, issue 15); if one of them holds
        values that cannot be written (``_BAD_ITEM``), the transaction is started over and
        every item gets its own savepoint (:meth:`_write_pending`)."""
        try:
            for item in pending:
                self._write_item(conn, item)
            self._sync(conn)  # an item's refusal must surface here, not at a later statement
            return
        except _BAD_ITEM:
            pass
        # Nothing but the queued items was written yet: roll them back, begin again (this
        # process still holds its write lock) and isolate the bad one.
        self._tasks.rollback()
        self._local.head = None
        conn.execute("ROLLBACK")
        self._begin(conn, what)
        for item in pending:
            self._write_pending(conn, item)

    # -- events ---------------------------------------------------------------------------

    @staticmethod
    def _head(conn: sqlite3.Connection) -> tuple[int, str]:
        row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        cut = conn.execute(
            "SELECT before_seq, head_hash FROM prunes ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if cut is not None:
            return int(cut[0]) - 1, str(cut[1])
        return 0, GENESIS

    def _append(self, conn: sqlite3.Connection, event: Event) -> None:
        local = self._local
        # the head is read once per transaction: we hold the write lock, nobody else appends
        seq, prev = local.head if local.head is not None else self._head(conn)
        values = event_values(seq + 1, event)  # exactly what is stored is what is hashed
        digest = values_hash(prev, values)
        conn.execute(_INSERT_EVENT, (*values, prev, digest))
        local.head = (seq + 1, digest)

    def _write_pending(self, conn: sqlite3.Connection, item: PendingOutcome | PendingEnd) -> None:
        """Write one queued item in its own savepoint. An item that cannot be written for what
        it holds (a value SQLite or the budget arithmetic refuses) must not poison every later
        transaction: it is replaced by what can be written (an outcome without its settlement,
        its task tainted; a task end with a sane time), with a warning, and as a last resort
        dropped. A fault of the database itself (disk full, locked) still fails the whole
        transaction, and the items are retried with the next one."""
        mark = self._tasks.mark()
        conn.execute("SAVEPOINT pending")
        try:
            self._write_item(conn, item)
            self._sync(conn)
        except _BAD_ITEM as exc:
            conn.execute("ROLLBACK TO pending")
            self._tasks.rollback(mark)
            self._local.head = None  # the rolled-back append moved it
            fallback = _fallback(item, exc)
            log.warning(
                "toolguard: a queued %s of task %s could not be written (%s: %s); %s",
                "task end" if isinstance(item, PendingEnd) else "outcome",
                item.task_id if isinstance(item, PendingEnd) else _outcome_task(item.event),
                type(exc).__name__,
                exc,
                "writing it without the bad values" if fallback else "dropped",
            )
            if fallback is not None:
                try:
                    self._write_item(conn, fallback)
                    self._sync(conn)
                except _BAD_ITEM as again:  # pragma: no cover - the fallback holds sane values
                    conn.execute("ROLLBACK TO pending")
                    self._tasks.rollback(mark)
                    self._local.head = None
                    log.error("toolguard: the replacement could not be written either: %s", again)
        # Not in a `finally`: when SQLite itself rolled the transaction back (disk full, I/O
        # error) the savepoint is gone, and that error, not "no such savepoint", must surface.
        conn.execute("RELEASE pending")

    def _sync(self, conn: sqlite3.Connection) -> None:
        """Make every statement sent on ``conn`` so far have run (and raise its error). SQLite
        runs each at once; the PostgreSQL store queues some (see its connection)."""

    def _write_item(self, conn: sqlite3.Connection, item: PendingOutcome | PendingEnd) -> None:
        if isinstance(item, PendingEnd):
            self._end_task(conn, item)
        else:
            self._write_outcome(conn, item)

    def _write_outcome(self, conn: sqlite3.Connection, item: PendingOutcome) -> None:
        if item.settle:  # task counters and the identity's cost (toolguard.store.sqlite.budgets)
            for _spend, _period, delta in item.settle:
                if not is_finite_number(delta) or abs(delta) > MAX_COST:
                    raise ValueError(f"a settlement of {delta!r} is not a finite cost")
            settle(conn, item.settle, self._tasks, now=self.clock())
        event = item.event
        self._append(conn, event)
        if event.outcome == "not-run":  # no credential was issued after all
            identity, jti = event.identity, event.jti
            conn.execute(
                "DELETE FROM credentials WHERE identity = ? AND tally = 'j' || ?", (identity, jti)
            )
            # an admission-log entry stays (the identity's counts are not refunded), as a
            # row that is no credential; it was written within the hour before this outcome
            since = f"t{max(0, round((float(event.ts) - 3600.0) * 1_000_000)):017d}"
            conn.execute(
                "UPDATE credentials SET jti = NULL, jit = NULL, expires_at = issued_at"
                " WHERE identity = ? AND tally > ? AND tally < 'u' AND jti = ?",
                (identity, since, jti),
            )
        if item.taint:
            conn.execute("UPDATE tasks SET tainted = 1 WHERE task_id = ?", (event.task_id,))

    def queue_outcome(self, item: PendingOutcome) -> None:
        """Queue an outcome to ride in the next transaction."""
        with self._pending_lock:
            self._pending.append(item)

    def flush(self) -> None:
        """Commit queued outcomes now."""
        if self._pending:
            with self._write("outcomes"):
                pass

    def append(self, event: Event) -> None:
        """Append one event (a denial, a note) in its own transaction."""
        with self._write(event.kind if type(event) is Event else "event") as conn:
            self._append(conn, event)

    # -- tasks ------------------------------------------------------------------------------

    def start_task(
        self, task: Mapping[str, Any], event: Event, *, disabled: str | None = None
    ) -> None:
        """Record a task start. If its identity is disabled (by ``toolguard revoke --identity
        --disable``, or by the config: ``disabled`` says why), record a ``denied`` event
        instead and raise :class:`PolicyDenied`."""
        identity = task["identity"]
        refused: PolicyDenied | None = None
        with self._write("task start") as conn:
            message: str | None = None
            if disabled is not None:
                message = (
                    f"identity '{identity}' is disabled ({disabled}); set "
                    f"identities.{identity}.disabled to false to re-enable it"
                )
            else:
                why = self.identity_disabled(identity)  # on this transaction's connection
                if why is not None:
                    message = (
                        f"identity '{identity}' is disabled ({why}); re-enable it with "
                        f"`toolguard enable {identity}`"
                    )
            if message is not None:  # the refusal is audited; the task is not recorded
                refused = PolicyDenied(
                    message, task_id=task["task_id"], rule=f"identities.{identity}.disabled"
                )
                self._append(
                    conn,
                    event._replace(
                        kind="denied", decision="deny", reason=refused.reason, rule=refused.rule
                    ),
                )
            else:
                conn.execute(
                    f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_TASK_COLUMNS))})",
                    tuple(task.get(k) for k in _TASK_COLUMNS),
                )
                self._append(conn, event)
                self._tasks.started(task["task_id"])
        if refused is not None:
            raise refused

    def end_task(
        self,
        task_id: str,
        *,
        status: str,
        now: float,
        events: Sequence[Event],
        reason: str,
    ) -> None:
        """Mark a task ended, revoke its credentials (a task revocation), append its events.

        If the transaction fails, the end is kept and retried with the next transaction of
        this process (or :meth:`close`); meanwhile :meth:`pending_ends` lists it, so this
        process's verifiers already reject the task's credentials. Raises :class:`AuditError`.
        """
        item = PendingEnd(task_id, status, now, reason, list(events))
        try:
            with self._write("task end") as conn:
                self._end_task(conn, item)
        except AuditError as exc:
            item.recheck = self._local.unconfirmed  # maybe written: looked up first
            with self._pending_lock:
                self._pending.append(item)
            raise AuditError(
                f"the end of task {task_id} could not be recorded ({exc}); its revocation is "
                "kept and written with the next transaction or guard.close(). Verifiers in "
                "this process reject its credentials already; others do once it is written, "
                "and every credential expires by the task's deadline at the latest"
            ) from exc

    def _end_task(self, conn: sqlite3.Connection, item: PendingEnd) -> None:
        self._tasks.ended(item.task_id)
        conn.execute(
            "UPDATE tasks SET status = ?, ended_at = ? WHERE task_id = ? AND ended_at IS NULL",
            (item.status, item.now, item.task_id),
        )
        conn.execute(
            "INSERT INTO revocations (scope, value, reason, ts, by) VALUES ('task', ?, ?, ?, ?)",
            (item.task_id, item.reason, item.now, "task-end"),
        )
        for event in item.events:
            self._append(conn, event)

    def pending_ends(self) -> frozenset[str]:
        """Ids of tasks whose end (and revocation) is not yet written."""
        with self._pending_lock:
            return frozenset(i.task_id for i in self._pending if isinstance(i, PendingEnd))

    # -- calls ------------------------------------------------------------------------------

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
        """The pre-call transaction: revocation check, budgets, the request event, the jti.

        ``shadow`` (a task in shadow mode): a budget refusal does not deny the call; every
        budget is spent all the same and the ``request`` event is recorded with decision
        ``would_deny`` and the refusal's reason and rule (unless the policy already made it
        a ``would_deny``: the first refusal is recorded). A revocation still denies, and no
        ``on_anomaly`` revocation is made for a shadow call.

        ``inherited`` holds, per ancestor of a delegated task, the ancestor's task budget
        spends: each is charged too (a savepoint undoes every spend if one of them refuses).

        Every budget scope is checked and spent here, atomically with the ``request`` event
        (:class:`toolguard.store.sqlite.budgets.Charge`). Returns the ``request`` event as it
        was appended (``event``, or in shadow mode its ``would_deny`` variant), or a
        :class:`Denial` (already audited, nothing spent) when a revocation or a budget
        refuses. When the identity's attempted calls pass its ``on_anomaly`` threshold the
        identity is revoked in this same transaction (its active tasks end, verifiers reject
        its credentials) and the call is denied. ``precheck(now)``, run first in the
        transaction (the store's reads on this thread are the transaction's), may refuse the
        call too (an approval already used: :meth:`unused_approval`).
        """
        step = Charge(spends, now)
        with self._write("request") as conn:
            if precheck is not None:
                refused_first = precheck(now)
                if refused_first is not None:
                    self._append(conn, on_denied(refused_first))
                    return Denial(refused_first)
            # One read for the revocation check (as ``reason<US>scope``) and every budget.
            values = conn.execute(
                step.select(revocation_check(len(chain))),
                (*chain, identity, task_started_at, *step.params),
            ).fetchone()
            denial = self._revoked(values[0], event)
            if denial is None and inherited:
                conn.execute("SAVEPOINT toolguard_inherited")
                mark = self._tasks.mark()
            if denial is None:
                refused = step.apply(
                    conn,
                    values[1:],
                    self._tasks,
                    tool=event.tool,
                    task_id=event.task_id,
                    force=shadow,
                )
                if (refused is None or shadow) and inherited:
                    refused = (
                        self._charge_inherited(conn, inherited, now, event, mark, force=shadow)
                        or refused
                    )
                if shadow and isinstance(refused, BudgetExceeded):  # spent; it runs
                    if event.decision != "would_deny":  # the caller reads it back
                        event = event._replace(
                            decision="would_deny", reason=refused.reason, rule=refused.rule
                        )
                    refused = None
                if isinstance(refused, Anomaly):
                    watch = refused.spend
                    why = (
                        f"on_anomaly: {refused.attempts} calls attempted within 60s, more than "
                        f"{watch.limit:g} ({watch.label})"
                    )
                    denial = PolicyDenied(
                        f"identity '{identity}' was revoked ({why}); its tasks have ended and "
                        "no further calls are allowed; an operator must review it",
                        tool=event.tool,
                        task_id=event.task_id,
                        rule=watch.rule,
                    )
                    self._append(conn, on_denied(denial))
                    ended = self.revoke(  # joins this transaction: atomic with the denial
                        scope="identity",
                        value=identity,
                        reason=why,
                        by="anomaly",
                        now=now,
                        event=Event(
                            ts=now,
                            kind="revoke",
                            identity=identity,
                            decision="revoke",
                            reason=why,
                            rule=watch.rule,
                            correlation_id=event.correlation_id,
                            args=json.dumps(
                                {
                                    "trigger_task": event.task_id,
                                    "scope": watch.name,
                                    "attempts": refused.attempts,
                                    "threshold": watch.limit,
                                },
                                sort_keys=True,
                            ),
                        ),
                    )
                    return Denial(denial, ended)
                denial = refused
            if denial is not None:
                self._append(conn, on_denied(denial))
                return Denial(denial)
            self._append(conn, event)
            # One row per allowed call, which is also the identity's admission-log entry when
            # the identity has limits (``tally``; else ``j<jti>``).
            if credential is not None:
                jti, task_id, _, tool, operation, issued_at, expires_at, jit = credential
                conn.execute(
                    _INSERT_CREDENTIAL,
                    (
                        identity, step.tally or "j" + jti, jti, task_id, tool, operation,
                        issued_at, expires_at, jit,
                    ),
                )  # fmt: skip
            elif step.tally is not None:
                conn.execute(INSERT_TALLY, (identity, step.tally, now, now))
        return event

    def _charge_inherited(
        self,
        conn: sqlite3.Connection,
        inherited: Sequence[Sequence[Spend]],
        now: float,
        event: Event,
        mark: int,
        *,
        force: bool = False,
    ) -> BudgetExceeded | Anomaly | None:
        """Charge the ancestors' task budgets; on a refusal undo every spend of this call
        (``mark``: where this call's changes to the task counters start). With ``force``
        (shadow mode) every budget is spent and the first refusal returned."""
        first: BudgetExceeded | Anomaly | None = None
        for spends in inherited:
            if not spends:
                continue
            refused = charge(
                conn, spends, now, self._tasks, tool=event.tool, task_id=event.task_id,
                force=force,
            )  # fmt: skip
            if refused is not None and not force:
                conn.execute("ROLLBACK TO toolguard_inherited")
                self._tasks.rollback(mark)
                return refused
            first = first or refused
        conn.execute("RELEASE toolguard_inherited")
        return first

    def _revoked(self, found: str | None, event: Event) -> PolicyDenied | None:
        """The denial for a revocation found by :meth:`record_call` (``reason<US>scope``)."""
        if found is None:
            return None
        reason, _, scope = found.rpartition("\x1f")
        what = "its identity" if scope == "identity" else "the task"
        return PolicyDenied(
            f"{what} was revoked ({reason}); no further calls are allowed in this task",
            tool=event.tool,
            task_id=event.task_id,
            rule=f"revocation.{scope}",
        )

    # -- revocation --------------------------------------------------------------------------

    def revoke(
        self,
        *,
        scope: str,
        value: str,
        reason: str,
        by: str,
        now: float,
        disable: bool = False,
        event: Event,
    ) -> list[str]:
        """Record a revocation; returns the ids of the active tasks it ends."""
        with self._write("revoke") as conn:
            conn.execute(
                "INSERT INTO revocations (scope, value, reason, ts, by) VALUES (?, ?, ?, ?, ?)",
                (scope, value, reason, now, by),
            )
            if scope == "task":
                ended = self._descendants(conn, value, active_only=True)
            elif scope == "identity":
                ended = [
                    r[0]
                    for r in conn.execute(
                        "SELECT task_id FROM tasks WHERE identity = ? AND ended_at IS NULL",
                        (value,),
                    )
                ]
                for task_id in list(ended):
                    ended += [
                        t
                        for t in self._descendants(conn, task_id, active_only=True)
                        if t not in ended
                    ]
                if disable:
                    conn.execute(
                        "INSERT INTO identity_state (identity, disabled, reason, ts) "
                        "VALUES (?, 1, ?, ?) ON CONFLICT(identity) DO UPDATE SET disabled = 1, "
                        "reason = excluded.reason, ts = excluded.ts",
                        (value, reason, now),
                    )
            else:
                ended = []
            for task_id in ended:
                if not (scope == "task" and task_id == value):  # the target's row is above
                    conn.execute(
                        "INSERT INTO revocations (scope, value, reason, ts, by) "
                        "VALUES ('task', ?, ?, ?, ?)",
                        (task_id, reason, now, by),
                    )
                conn.execute(
                    "UPDATE tasks SET status = 'revoked', ended_at = ? WHERE task_id = ?"
                    " AND ended_at IS NULL",
                    (now, task_id),
                )
            self._append(conn, event)
        return ended

    @staticmethod
    def _descendants(conn: sqlite3.Connection, task_id: str, *, active_only: bool) -> list[str]:
        rows = conn.execute(
            "WITH RECURSIVE d(id) AS (SELECT ? UNION SELECT t.task_id FROM tasks t JOIN d"
            " ON t.parent_id = d.id) SELECT d.id FROM d JOIN tasks t ON t.task_id = d.id"
            + (" WHERE t.ended_at IS NULL" if active_only else ""),
            (task_id,),
        ).fetchall()
        return [r[0] for r in rows]

    def set_identity_enabled(self, identity: str, *, reason: str, now: float, event: Event) -> None:
        """Re-enable an identity disabled by ``revoke --identity --disable``."""
        with self._write("enable") as conn:
            conn.execute(
                "INSERT INTO identity_state (identity, disabled, reason, ts) VALUES (?, 0, ?, ?)"
                " ON CONFLICT(identity) DO UPDATE SET disabled = 0, reason = excluded.reason,"
                " ts = excluded.ts",
                (identity, reason, now),
            )
            self._append(conn, event)

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float
    ) -> str | None:
        """Why a credential is revoked, or None. Raises on any database failure."""
        ids = [task_id, *chain]
        marks = ",".join("?" * len(ids))
        rows = self.query(
            "SELECT scope, reason FROM revocations WHERE (scope = 'jti' AND value = ?)"
            f" OR (scope = 'task' AND value IN ({marks}))"
            " OR (scope = 'identity' AND value = ? AND ts >= ?) LIMIT 1",
            (jti, *ids, identity, issued_at),
        )
        return f"{rows[0]['scope']} revoked: {rows[0]['reason']}" if rows else None


def _identity(path: Path, *, missing_ok: bool = False) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of a file (None if it is missing and ``missing_ok``)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise AuditError(f"the audit database {path} disappeared while it was opened") from None
    except OSError as exc:
        raise AuditError(f"cannot read the audit database {path}: {exc.strerror}") from exc
    return found.st_dev, found.st_ino


_BAD_ITEM = (
    ValueError,
    TypeError,
    OverflowError,
    KeyError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)
"""Errors that come from a queued item's values, not from the database: retrying cannot help."""


def _fallback(
    item: PendingOutcome | PendingEnd, exc: BaseException
) -> PendingOutcome | PendingEnd | None:
    """What can still be written of a queued item that could not be: the same record with
    every number that is not finite and in range removed (or, for a task end's time, the
    system clock's), no settlement, and the reason in its ``error``."""
    why = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(item, PendingEnd):
        now = item.now if is_timestamp(item.now) else time.time()
        events = [
            Event(
                ts=now,
                kind=e.kind,
                task_id=e.task_id,
                identity=e.identity,
                intent=e.intent,
                outcome=e.outcome,
                reason=e.reason,
                rule=e.rule,
                error=f"the task end could not be written as queued ({why})",
            )
            for e in item.events
            if isinstance(e, Event)
        ]
        status = item.status if isinstance(item.status, str) else "error"
        return PendingEnd(str(item.task_id), status, now, str(item.reason)[:500], events)
    event = item.event
    if not isinstance(event, Event) or not event.task_id:
        return None
    ts = event.ts
    return PendingOutcome(
        event._replace(
            ts=ts if is_timestamp(ts) else time.time(),
            args=None,
            args_sha256=None,
            cost=None,
            duration_ms=None,
            error="; ".join(
                str(e) for e in (event.error, f"its settlement could not be written ({why})") if e
            ),
        ),
        (),
        taint=True,
    )


def _outcome_task(event: Event) -> Any:
    """The task id of a queued outcome, for a warning (whatever the item holds)."""
    return event.task_id if isinstance(event, Event) else None
