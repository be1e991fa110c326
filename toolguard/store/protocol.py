"""The store's interface: what the rest of toolguard may ask of a store, typed.

Every module outside :mod:`toolguard.store` holds a store as one of these protocols, never as
the SQLite :class:`~toolguard.store.sqlite.core.Store` or the PostgreSQL
:class:`~toolguard.store.postgres.PostgresStore` (both satisfy :class:`StoreProtocol`; mypy
checks it, see the end of this module). No SQL crosses it: the methods are named reads and
writes, rows come back as dicts or tuples, and every event goes in as a typed
:class:`~toolguard.chain.Event`.

Four sides, each the smallest a caller needs (docs/architecture.md, "The store interface"):

- :class:`RevocationChecks`: whether a credential is revoked (a verifier's revocation source,
  :class:`~toolguard.store.revocations.StoreRevocations`);
- :class:`TrailReads`: the trail's rows for ``verify`` and the checkpoint checks, inside
  :meth:`StoreReader.read_trail`;
- :class:`StoreReader`: every read (the viewer, ``guard.audit``, export, replay, the incident
  commands, the HTTP revocation feed, ``verify``);
- :class:`StoreProtocol`: a guard's store, the reads and every write (the engine, tasks,
  approvals, revocations, checkpoints, prune).

Raw SQL (``Store.query``, ``Store.conn``) is not part of it: it stays inside the store (tests
may still use it on a concrete store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..budget import Settlement, Spend
from ..chain import Event
from ..errors import AuditError, PolicyDenied

if TYPE_CHECKING:
    from .approvals import ApprovalRecord, Decided
    from .sqlite.maintenance import PruneResult

__all__ = [
    "Denial",
    "PendingOutcome",
    "RevocationChecks",
    "StoreProtocol",
    "StoreReader",
    "TrailReads",
    "UnconfirmedWrite",
]


@dataclass(slots=True)
class PendingOutcome:
    """An outcome event waiting for the next transaction, with its budget settlement."""

    event: Event
    settle: tuple[Settlement, ...] = ()
    taint: bool = False
    recheck: bool = False
    """Held by a transaction whose ``COMMIT`` got no reply (:class:`UnconfirmedWrite`): looked
    up before it is written again."""
    if_requested: bool = False
    """Written only if the call's ``request`` is in the trail and has no outcome yet: the
    ``not-run`` outcome of a call whose own transaction's reply was lost."""


class UnconfirmedWrite(AuditError):
    """A write transaction whose ``COMMIT`` was sent and got no reply (the connection was
    lost): the server may have written it. Never raised by the SQLite store."""


@dataclass(frozen=True, slots=True)
class Denial:
    """Why the store refused a call inside its transaction (budget or revocation)."""

    error: PolicyDenied
    ended: Sequence[str] = ()
    """Active tasks the refusal ended (an ``on_anomaly`` revocation of the identity)."""


class RevocationChecks(Protocol):
    """Whether a credential is revoked: what a verifier checking against the store calls."""

    def pending_ends(self) -> frozenset[str]:
        """Ids of tasks whose end (and revocation) this process has not written yet."""
        ...

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float
    ) -> str | None:
        """Why a credential is revoked, or None. Raises on any database failure."""
        ...


class TrailReads(Protocol):
    """The trail's rows as stored (damaged ones included), for ``verify``."""

    def events(self) -> Iterator[tuple[Any, ...]]:
        """Every event as ``(*HASHED_FIELDS, prev_hash, hash)``, in ``seq`` order."""
        ...

    def last_prune(self) -> tuple[int | None, str] | None:
        """The newest prune ``(before_seq, head_hash)``; ``(None, "")`` if unreadable."""
        ...

    def stored_at(self, seq: int) -> tuple[Any, Any, Any]:
        """The stored row ``(hash,)`` at ``seq`` (or None), the lowest and the highest seq."""
        ...

    def count_after(self, seq: int, *, task_ends: bool = False) -> int:
        """How many events (with ``task_ends``: task ends) come after ``seq``."""
        ...


class StoreReader(RevocationChecks, Protocol):
    """Every read of a store: the viewer, ``guard.audit``, export, replay, incident look-ups,
    the revocation feed, ``verify``. Rows are dicts keyed by column name."""

    @property
    def path(self) -> Path:
        """The database file (for a server: its URL without the password), for messages."""
        ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def durability(self) -> str: ...

    def open(self) -> StoreReader:
        """Open (and, when writable, create or migrate) the database now."""
        ...

    def close(self) -> None: ...

    def default_checkpoints(self) -> Path:
        """Where this store's signed checkpoints go when none are configured."""
        ...

    def read_trail(self, *, snapshot: bool = True) -> AbstractContextManager[TrailReads]:
        """The trail's rows (in one read snapshot); database errors are ``AuditError``."""
        ...

    # events
    def head(self) -> tuple[int, str] | None: ...
    def event_rows(
        self, filters: Mapping[str, Any], *, limit: int | None = None, newest_first: bool = False
    ) -> list[dict[str, Any]]: ...
    def iter_event_rows(self, filters: Mapping[str, Any]) -> Iterator[dict[str, Any]]: ...
    def iter_call_events(
        self, *, since: float, until: float | None = None
    ) -> Iterator[dict[str, Any]]: ...
    def earliest_running_start(self, since: float, at: float) -> float | None: ...
    def event_kind_used(self, kind: str) -> bool: ...

    # tasks and identities
    def task_row(self, task_id: str) -> dict[str, Any] | None: ...
    def task_rows(
        self, filters: Mapping[str, Any], *, limit: int | None = 100
    ) -> list[dict[str, Any]]: ...
    def task_ids_with_prefix(self, prefix: str, *, limit: int = 10) -> list[str]: ...
    def task_jtis(self, task_id: str) -> list[str]: ...
    def task_spent(self, task_id: str, labels: Sequence[str]) -> dict[str, int]: ...
    def task_status_used(self, status: str) -> bool: ...
    def child_rows(self, task_ids: Sequence[str]) -> list[dict[str, Any]]: ...
    def known_identities(self) -> list[str]: ...
    def identity_seen(self, identity: str) -> bool: ...
    def identity_disabled(self, identity: str) -> str | None: ...
    def disabled_identity_rows(self) -> list[dict[str, Any]]: ...
    def last_task_start(self, identity: str) -> float | None: ...

    # revocations and credentials
    def revocations_for_task(
        self, task_id: str, *, identity: str | None, since: float, until: float, jtis: Sequence[str]
    ) -> list[dict[str, Any]]: ...
    def recent_revocations(
        self, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]: ...
    def last_revocation(self, scope: str, value: str) -> dict[str, Any] | None: ...
    def revocation_marker(self) -> int: ...
    def revocation_rows(self) -> list[tuple[str, str, float]]: ...
    def revocation_reach(
        self, since: float, recent: float = ...
    ) -> tuple[int, list[tuple[str, str, float, float | None, bool]]]: ...
    def credential_rows(
        self, jti: str, *, prefix: bool = False, limit: int = 11
    ) -> list[dict[str, Any]]: ...
    def live_credentials(
        self,
        *,
        now: float,
        task_id: str | None = None,
        identity: str | None = None,
        jti: str | None = None,
    ) -> list[str]: ...

    # usage
    def usage_rows(
        self, by: str, *, since: float, until: float | None = None
    ) -> list[dict[str, Any]]: ...
    def iter_call_times(
        self, by: str, *, since: float, until: float | None = None
    ) -> Iterator[tuple[str, float]]: ...
    def usage_buckets(
        self, by: str, *, since: float, until: float | None, bucket: float
    ) -> list[dict[str, Any]]: ...
    def rate_split(
        self, by: str, *, baseline_start: float, recent_start: float, until: float | None
    ) -> list[dict[str, Any]]: ...

    # approvals
    def approval_requests(
        self,
        *,
        task_id: str | None = None,
        correlation_id: str | None = None,
        request_id: str | None = None,
    ) -> list[ApprovalRecord]: ...
    def unused_approval(self, record: ApprovalRecord, now: float) -> str | None: ...


class StoreProtocol(StoreReader, Protocol):
    """A guard's store: every read, and the writes. Each write is one transaction that also
    appends its events to the hash chain (fail closed: ``AuditError``, nothing written)."""

    def append(self, event: Event) -> None:
        """Append one event (a denial, a note) in its own transaction."""
        ...

    def queue_outcome(self, item: PendingOutcome) -> None:
        """Queue an outcome to ride in the next transaction of this process."""
        ...

    def flush(self) -> None:
        """Commit the queued outcomes now."""
        ...

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
        """The pre-call transaction (revocations, budgets, the ``request`` event, the
        credential's row): the event as appended, or the audited :class:`Denial`."""
        ...

    def start_task(
        self, task: Mapping[str, Any], event: Event, *, disabled: str | None = None
    ) -> None: ...

    def end_task(
        self, task_id: str, *, status: str, now: float, events: Sequence[Event], reason: str
    ) -> None: ...

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
        """Record a revocation; the ids of the active tasks it ends."""
        ...

    def set_identity_enabled(
        self, identity: str, *, reason: str, now: float, event: Event
    ) -> None: ...

    def decide_approval(
        self,
        record: ApprovalRecord,
        kind: str,
        *,
        by: str,
        note: str | None,
        reason: str,
        now: float,
    ) -> Decided: ...

    def prune(
        self,
        *,
        before: float,
        now: float,
        dry_run: bool = False,
        expect: tuple[int, str] | None = None,
    ) -> PruneResult: ...


if TYPE_CHECKING:  # mypy --strict proves that both backends satisfy the interface

    def _backends_satisfy_it(location: Path) -> None:
        from ..credentials import RevocationSource
        from .postgres.core import PostgresStore
        from .revocations import StoreRevocations
        from .sqlite.core import Store
        from .sqlite.trail import TrailReader

        sqlite_store: StoreProtocol = Store(location)
        postgres_store: StoreProtocol = PostgresStore.__new__(PostgresStore)
        reader: StoreReader = sqlite_store
        checks: RevocationChecks = postgres_store
        source: RevocationSource = StoreRevocations(sqlite_store)
        trail: TrailReads = TrailReader.__new__(TrailReader)
        del sqlite_store, postgres_store, reader, checks, source, trail
