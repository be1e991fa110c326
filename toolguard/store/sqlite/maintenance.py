"""Retention: prune old events while keeping the chain verifiable.

A prune removes every event with ``seq`` below a cut and records, in the same transaction, a
``prunes`` row with ``before_seq`` (the first kept ``seq``) and ``head_hash`` (the hash of the
last removed event). ``verify`` starts from the newest such row, and new events keep chaining
from it even when every event was removed. Tasks that ended before the cut and have no event
left go too, and so do expired credentials; an identity's admission-log entries (the
``credentials`` rows with a ``t...`` tally) go only when they are older than both the cut and
yesterday 00:00 UTC, and the newest of those stays as the log's boundary, so every rolling
window and today's quota count exactly as before. Revocations are kept: they are small and a
verifier may still need them. Refused-attempt rows are left to the budget module, which prunes
its own.

``verify`` accepts a prune only when the checkpoint file holds a signed ``prune`` record with
the same cut; :meth:`toolguard.audit.AuditLog.prune` writes that record first and passes the
cut here as ``expect``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...budget import DAY_SECONDS, day_start
from ...errors import AuditError

if TYPE_CHECKING:
    from .core import Store

__all__ = ["PruneResult", "prune"]


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed (or, with ``dry_run``, would remove)."""

    removed: int
    """Events removed."""
    before_seq: int | None
    """The first kept ``seq`` (None when nothing was removed)."""
    head_hash: str | None
    """The hash of the last removed event: where the kept chain starts."""
    tasks: int = 0
    """Ended tasks removed with their events."""
    credentials: int = 0
    """Expired credential ids removed."""
    dry_run: bool = False
    checkpoints: str | None = None
    """The checkpoint file that holds the signed record of the cut (None when nothing was
    removed): ``verify`` needs it to accept the cut."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "removed": self.removed,
            "before_seq": self.before_seq,
            "head_hash": self.head_hash,
            "tasks": self.tasks,
            "credentials": self.credentials,
            "dry_run": self.dry_run,
            "checkpoints": self.checkpoints,
        }


def _cut(conn: sqlite3.Connection, before: float) -> tuple[int, int, str] | None:
    """``(first kept seq, removed count, head hash)`` for a cut at ``before``, or None."""
    first_kept = conn.execute("SELECT MIN(seq) FROM events WHERE ts >= ?", (before,)).fetchone()[0]
    if first_kept is None:  # every event is older: the cut is past the head
        head = conn.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if head is None:
            return None
        first_kept = int(head[0]) + 1
    last = conn.execute(
        "SELECT seq, hash FROM events WHERE seq < ? ORDER BY seq DESC LIMIT 1", (first_kept,)
    ).fetchone()
    if last is None:
        return None
    removed = conn.execute("SELECT COUNT(*) FROM events WHERE seq < ?", (first_kept,)).fetchone()
    return int(first_kept), int(removed[0]), str(last[1])


def _old_tasks(conn: sqlite3.Connection, before: float, first_kept: int) -> list[str]:
    rows = conn.execute(
        "SELECT task_id FROM tasks t WHERE t.ended_at IS NOT NULL AND t.ended_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.task_id = t.task_id AND e.seq >= ?)",
        (before, first_kept),
    ).fetchall()
    return [str(r[0]) for r in rows]


_PRUNE_CREDENTIALS = "DELETE FROM credentials WHERE expires_at < ? AND tally < 't'"
"""Expired credentials of identities without limits (``j<jti>``)."""
_PRUNE_LOG = (
    "DELETE FROM credentials WHERE expires_at < ? AND tally > 't' AND tally < ? AND tally < ("
    "SELECT MAX(k.tally) FROM credentials k WHERE k.identity = credentials.identity"
    " AND k.tally > 't' AND k.tally < ?)"
)
"""Admission-log entries below a bound, except each identity's newest one below it."""
_COUNT_PRUNED = (
    "SELECT COUNT(*) FROM credentials WHERE jti IS NOT NULL AND expires_at < ? AND"
    " (tally < 't' OR (tally < ? AND tally < (SELECT MAX(k.tally) FROM credentials k"
    " WHERE k.identity = credentials.identity AND k.tally > 't' AND k.tally < ?)))"
)


def _log_bound(before: float, now: float) -> str:
    """Admission-log entries below this tally may go: older than the cut and yesterday."""
    yesterday = day_start(now) - DAY_SECONDS
    return f"t{max(0, round(min(before, yesterday) * 1_000_000)):017d}"


def _plan(conn: sqlite3.Connection, before: float, now: float) -> PruneResult:
    cut = _cut(conn, before)
    if cut is None:
        return PruneResult(0, None, None, dry_run=True)
    first_kept, removed, head_hash = cut
    tasks = _old_tasks(conn, before, first_kept)
    bound = _log_bound(before, now)
    creds = conn.execute(_COUNT_PRUNED, (before, bound, bound)).fetchone()[0]
    return PruneResult(removed, first_kept, head_hash, len(tasks), int(creds), dry_run=True)


def prune(
    store: Store,
    *,
    before: float,
    now: float,
    dry_run: bool = False,
    expect: tuple[int, str] | None = None,
) -> PruneResult:
    """Remove the events older than ``before`` (a timestamp) in one transaction.

    The cut is the first event at or after ``before``; everything before it in ``seq`` order
    goes (an event with a skewed clock after the cut stays). ``expect`` is the
    ``(before_seq, head_hash)`` a signed prune record already authorizes (see
    :meth:`toolguard.integrity.Integrity.anchor_prune`): if the cut came out different,
    nothing is removed and :class:`AuditError` is raised. Raises :class:`AuditError` when the
    database cannot be written.
    """
    if dry_run:
        try:
            return _plan(store.conn, before, now)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {store.path}: {exc}") from exc
    with store._write("prune") as conn:
        cut = _cut(conn, before)
        if cut is None:
            return PruneResult(0, None, None)
        first_kept, removed, head_hash = cut
        if expect is not None and (first_kept, head_hash) != tuple(expect):
            raise AuditError(
                f"the trail changed while pruning (the cut moved from seq {expect[0]} to "
                f"{first_kept}); nothing was removed, run the prune again"
            )
        conn.execute(
            "INSERT INTO prunes (ts, before_seq, head_hash, removed) VALUES (?, ?, ?, ?)",
            (now, first_kept, head_hash, removed),
        )
        conn.execute("DELETE FROM events WHERE seq < ?", (first_kept,))
        tasks = _old_tasks(conn, before, first_kept)
        conn.executemany("DELETE FROM tasks WHERE task_id = ?", ((t,) for t in tasks))
        bound = _log_bound(before, now)
        creds = conn.execute(_COUNT_PRUNED, (before, bound, bound)).fetchone()[0]
        conn.execute(_PRUNE_CREDENTIALS, (before,))
        conn.execute(_PRUNE_LOG, (before, bound, bound))
    return PruneResult(removed, first_kept, head_hash, len(tasks), int(creds))
