"""What the PostgreSQL store does about a transaction whose ``COMMIT`` got no reply.

When the connection drops (or the process is interrupted) with a ``COMMIT`` sent and
unanswered, the transaction may or may not have committed. The call fails closed
(:class:`~toolguard.store.protocol.UnconfirmedWrite`), and what the transaction held is marked:
the queued outcomes and task ends it carried (``recheck``), and what completes the call or the
task start it was for (``if_requested``, ``if_started``). The store's next write transaction
holds the writer lock, so the lost one has committed or rolled back by then; it looks each
marked item up here (:func:`still_to_write`) and writes only what the server does not have.
See docs/deployment.md, "A ``COMMIT`` without a reply".
"""

from __future__ import annotations

from typing import Any

from ...chain import Event
from ..protocol import PendingOutcome
from ..sqlite.core import PendingEnd

__all__ = ["not_run", "start_not_confirmed", "still_to_write", "unsure"]

RULE = "store.commit"
"""The rule of the rows written for a call or a task start whose ``COMMIT`` got no reply."""


def unsure(item: PendingOutcome | PendingEnd) -> bool:
    """Whether ``item`` must be looked up before it is written."""
    if isinstance(item, PendingEnd):
        return item.recheck or item.if_started
    return item.recheck or item.if_requested


def still_to_write(conn: Any, item: PendingOutcome | PendingEnd) -> bool:
    """Whether ``item`` is still to be written, on the writer inside its transaction: a task
    end whose revocation row (every task end writes one) is not there, and for the end of a
    start that was not confirmed, only if the task's row is; an outcome not there (by its
    call's ids), and for the ``not-run`` outcome of a call that was not confirmed, only if the
    call's request is (else nothing of the call was written)."""
    if isinstance(item, PendingEnd):
        if _count(
            conn,
            "SELECT COUNT(*) FROM revocations WHERE scope = 'task' AND value = ?"
            " AND by = 'task-end' AND ts = ?",
            (item.task_id, item.now),
        ):
            return False
        return not item.if_started or bool(
            _count(conn, "SELECT COUNT(*) FROM tasks WHERE task_id = ?", (item.task_id,))
        )
    event = item.event
    same_call = (
        "SELECT COUNT(*) FROM events WHERE task_id = ? AND kind = ?"
        " AND jti IS NOT DISTINCT FROM ? AND correlation_id IS NOT DISTINCT FROM ?"
    )
    ids = (event.jti, event.correlation_id)
    if _count(conn, same_call, (event.task_id, event.kind, *ids)):
        return False
    return not item.if_requested or bool(_count(conn, same_call, (event.task_id, "request", *ids)))


def not_run(request: Event, now: float) -> PendingOutcome:
    """The ``not-run`` outcome of the call whose ``request`` went with a ``COMMIT`` that got no
    reply (the guard failed it closed: its tool did not run), written if the request was."""
    outcome = request._replace(
        ts=now,
        kind="outcome",
        decision="deny",
        reason=(
            "the audit database did not confirm this call's transaction (the connection was "
            "lost after its COMMIT was sent); the tool did not run"
        ),
        rule=RULE,
        args=None,
        args_sha256=None,
        cost=None,
        outcome="not-run",
    )
    return PendingOutcome(outcome, if_requested=True)


def start_not_confirmed(start: Event, now: float) -> PendingEnd:
    """The end (``error``) of the task whose ``task_start`` went with a ``COMMIT`` that got no
    reply (its caller never runs it), written if the task was recorded."""
    why = (
        "the audit database did not confirm this task's start (the connection was lost after "
        "its COMMIT was sent); the task never ran"
    )
    end = start._replace(
        ts=now,
        kind="task_end",
        outcome="error",
        reason=why,
        rule=RULE,
        correlation_id=None,
        duration_ms=round((now - start.ts) * 1000.0, 3),
    )
    return PendingEnd(str(start.task_id), "error", now, why, [end], if_started=True)


def _count(conn: Any, sql: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0
