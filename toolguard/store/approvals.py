"""Approval requests and decisions: events of the trail, no table of their own.

A request is an ``approval_requested`` event; its decision is one ``approved``, ``rejected`` or
``approval_expired`` event of the same task and ``correlation_id`` whose ``args`` names the
same ``request_id``. The queue is the requests without a decision. :func:`decide` appends a
decision inside one write transaction that first checks that none exists and (for a person's
decision) that the request has not expired, so two deciders, or a decider and the expiry, never
both win. An approval is used by the ``request`` event of its call: :func:`unused_approval`,
run inside that event's transaction, refuses an approval that is missing, expired or already
used (a later ``request`` of the same call).

Every SQL statement about approvals is in this module.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..chain import Event
from ..errors import AuditError

if TYPE_CHECKING:
    from .sqlite.core import Store
    from .sqlite.queries import Queries

__all__ = [
    "APPROVAL_KINDS",
    "DECISION_KINDS",
    "ApprovalRecord",
    "Decided",
    "decide",
    "find_requests",
    "unused_approval",
]

APPROVAL_KINDS = ("approval_requested", "approved", "rejected", "approval_expired")
DECISION_KINDS = ("approved", "rejected", "approval_expired")
_KINDS_SQL = "('approval_requested', 'approved', 'rejected', 'approval_expired')"
_COLUMNS = (
    "seq, ts, task_id, identity, intent, kind, tool, operation, resources, reason, rule,"
    " correlation_id, args"
)


@dataclass(slots=True)
class ApprovalRecord:
    """One approval request and its decision, as the trail holds them."""

    request_id: str
    task_id: str
    identity: str | None
    intent: str | None
    tool: str | None
    operation: str | None
    resources: list[str]
    correlation_id: str | None
    rule: str | None
    reason: str | None
    """Why the call is held (which rule)."""
    args: Any
    """The call's arguments, redacted as the trail stores them."""
    digest: str
    requested_at: float
    expires_at: float
    seq: int
    decision: str | None = None
    """``approved``, ``rejected`` or ``approval_expired``; None while pending."""
    decided_at: float | None = None
    decided_seq: int | None = None
    by: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def state(self, now: float) -> str:
        """``pending``, ``approved``, ``rejected`` or ``expired`` (also when past its expiry
        with no decision recorded yet)."""
        if self.decision is None:
            return "pending" if now < self.expires_at else "expired"
        return "expired" if self.decision == "approval_expired" else self.decision

    def request(self) -> dict[str, Any]:
        """The request as an approver and an interrupt see it (docs/agents.md)."""
        return {
            "request_id": self.request_id,
            "task_id": self.task_id,
            "intent": self.intent,
            "identity": self.identity,
            "tool": self.tool,
            "operation": self.operation,
            "resources": list(self.resources),
            "args": self.args,
            "digest": self.digest,
            "reason": self.reason,
            "rule": self.rule,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
        }


def _fold(rows: Sequence[Sequence[Any]]) -> list[ApprovalRecord]:
    """The requests of ``rows`` (approval events in seq order) with their decisions."""
    found: dict[str, ApprovalRecord] = {}
    for seq, ts, task_id, identity, intent, kind, tool, op, resources, reason, rule, cid, a in rows:
        try:
            data = json.loads(a) if a else {}
            request_id = data["request_id"]
        except (ValueError, TypeError, KeyError):
            continue  # not an approval event this module wrote: ignored, never trusted
        if not isinstance(request_id, str):
            continue
        if kind == "approval_requested":
            try:
                res = json.loads(resources) if resources else []
                found[request_id] = ApprovalRecord(
                    request_id=request_id, task_id=task_id, identity=identity, intent=intent,
                    tool=tool, operation=op, resources=list(res), correlation_id=cid,
                    rule=rule, reason=reason, args=data.get("args"), digest=str(data["digest"]),
                    requested_at=float(ts), expires_at=float(data["expires_at"]), seq=int(seq),
                )  # fmt: skip
            except (ValueError, TypeError, KeyError):
                continue
            continue
        record = found.get(request_id)
        if record is None or record.decision is not None or record.task_id != task_id:
            continue  # only the first decision of the request's own task counts
        record.decision = kind
        record.decided_at = float(ts)
        record.decided_seq = int(seq)
        record.by = data.get("by")
        record.note = data.get("note")
    return list(found.values())


def find_requests(
    store: Queries,
    *,
    task_id: str | None = None,
    correlation_id: str | None = None,
    request_id: str | None = None,
    conn: sqlite3.Connection | None = None,
) -> list[ApprovalRecord]:
    """Approval requests (oldest first) with their decisions: those of a task (and one call of
    it), or every one in the trail; ``request_id`` may be a prefix."""
    db = conn if conn is not None else store.conn
    try:
        if task_id is not None:
            sql = f"SELECT {_COLUMNS} FROM events WHERE task_id = ? AND kind IN {_KINDS_SQL}"
            params: list[Any] = [task_id]
            if correlation_id is not None:
                sql += " AND correlation_id = ?"
                params.append(correlation_id)
            rows = db.execute(sql + " ORDER BY seq", params).fetchall()
        else:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE kind IN {_KINDS_SQL} ORDER BY seq"
            ).fetchall()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the approval requests from {store.path}: {exc}") from exc
    records = _fold(rows)
    if request_id is not None:
        records = [r for r in records if r.request_id.startswith(request_id)]
    return records


@dataclass(frozen=True, slots=True)
class Decided:
    """What :func:`decide` did: ``recorded`` True if this decision was written; else the
    request as it was (already decided, or expired)."""

    recorded: bool
    record: ApprovalRecord


def decide(
    store: Store,
    record: ApprovalRecord,
    kind: str,
    *,
    by: str,
    note: str | None,
    reason: str,
    now: float,
) -> Decided:
    """Append the decision ``kind`` (``approved``, ``rejected`` or ``approval_expired``) of a
    request, in one write transaction that first reads the request's decision again: a request
    already decided, or (for a person's decision) past its expiry, is left unchanged."""
    if kind not in DECISION_KINDS:  # pragma: no cover - callers pass constants
        raise ValueError(f"unknown decision {kind!r}")
    with store._write(kind) as conn:
        current = [
            r
            for r in find_requests(
                store, task_id=record.task_id, correlation_id=record.correlation_id, conn=conn
            )
            if r.request_id == record.request_id
        ]
        if not current:
            raise AuditError(f"approval request {record.request_id} is not in the trail")
        found = current[0]
        if found.decision is not None or (kind != "approval_expired" and now >= found.expires_at):
            return Decided(False, found)
        data: dict[str, Any] = {"request_id": found.request_id, "digest": found.digest, "by": by}
        if note:
            data["note"] = note
        store._append(
            conn,
            Event(
                ts=now,
                task_id=found.task_id,
                identity=found.identity,
                intent=found.intent,
                kind=kind,
                tool=found.tool,
                operation=found.operation,
                resources=json.dumps(found.resources, ensure_ascii=False, separators=(",", ":")),
                decision="allow" if kind == "approved" else "deny",
                reason=reason,
                rule=found.rule,
                correlation_id=found.correlation_id,
                args=json.dumps(data, ensure_ascii=False, sort_keys=True),
            ),
        )
        found.decision, found.decided_at, found.by, found.note = kind, now, by, note
        return Decided(True, found)


def request_event(event: Event, extra: Mapping[str, Any]) -> Event:
    """An ``approval_requested`` event: ``event``'s columns, its ``args`` column the request's
    id, digest and expiry with the (redacted) arguments."""
    return event._replace(
        kind="approval_requested", args=json.dumps(dict(extra), ensure_ascii=False, sort_keys=True)
    )


def unused_approval(
    conn: sqlite3.Connection, store: Queries, record: ApprovalRecord, now: float
) -> str | None:
    """Inside the transaction of the call's ``request`` event: None if ``record``'s approval
    is recorded, unexpired and unused (no ``request`` event of its call after it), else why
    not."""
    current = [
        r
        for r in find_requests(
            store, task_id=record.task_id, correlation_id=record.correlation_id, conn=conn
        )
        if r.request_id == record.request_id
    ]
    if not current or current[0].decision != "approved" or current[0].decided_seq is None:
        return "its approval is not recorded in the trail"
    if now >= current[0].expires_at:
        return "its approval expired before the call ran; ask again"
    used = conn.execute(
        "SELECT 1 FROM events WHERE task_id = ? AND kind = 'request' AND correlation_id = ?"
        " AND seq > ? LIMIT 1",
        (record.task_id, record.correlation_id, current[0].decided_seq),
    ).fetchone()
    if used is not None:
        return "its approval was used already (an approval is good for one call)"
    return None
