"""Audit events: the queries behind ``guard.audit`` and the viewer.

The hash chain is defined in :mod:`toolguard.chain`; checkpoints and verification live in
:mod:`toolguard.integrity`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chain import EVENT_FIELDS
from .integrity import Integrity, VerifyReport
from .keys import KeyRing, PublicKeySource
from .store import Store

__all__ = ["AuditEvent", "AuditLog"]

log = logging.getLogger("toolguard.audit")

_FILTERS = {
    "task_id": "task_id = ?",
    "identity": "identity = ?",
    "intent": "intent = ?",
    "kind": "kind = ?",
    "tool": "tool = ?",
    "decision": "decision = ?",
    "correlation_id": "correlation_id = ?",
    "jti": "jti = ?",
    "since": "ts >= ?",
    "until": "ts < ?",
    "after_seq": "seq > ?",
}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the trail. ``resources`` is decoded; ``args`` stays the redacted JSON text."""

    seq: int
    ts: float
    kind: str
    task_id: str | None = None
    identity: str | None = None
    intent: str | None = None
    tool: str | None = None
    operation: str | None = None
    resources: tuple[str, ...] = ()
    decision: str | None = None
    reason: str | None = None
    rule: str | None = None
    jti: str | None = None
    correlation_id: str | None = None
    args: str | None = None
    args_sha256: str | None = None
    outcome: str | None = None
    error: str | None = None
    duration_ms: float | None = None
    cost: float | None = None
    prev_hash: str = ""
    hash: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEvent:
        data: dict[str, Any] = {k: row.get(k) for k in EVENT_FIELDS}
        res = data.pop("resources")
        return cls(**data, resources=tuple(json.loads(res)) if res else ())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``resources`` as a list)."""
        out = {k: getattr(self, k) for k in EVENT_FIELDS}
        out["resources"] = list(self.resources)
        return out


class AuditLog:
    """Read, anchor and verify the trail of one store."""

    def __init__(
        self,
        store: Store,
        *,
        keys: KeyRing | PublicKeySource | None = None,
        checkpoints: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.checkpoints_path = (
            Path(checkpoints) if checkpoints is not None else Path(str(store.path) + ".checkpoints")
        )
        self.integrity = Integrity(store, keys=keys, checkpoints=self.checkpoints_path)

    # -- queries ------------------------------------------------------------------------------

    def events(
        self, *, limit: int | None = None, newest_first: bool = False, **filters: Any
    ) -> list[AuditEvent]:
        """Events matching the filters (``task_id``, ``identity``, ``kind``, ``tool``,
        ``decision``, ``since``, ``until``, ...), oldest first unless ``newest_first``."""
        where, params = self._where(filters)
        sql = f"SELECT * FROM events{where} ORDER BY seq {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [AuditEvent.from_row(r) for r in self.store.query(sql, params)]

    def tasks(
        self,
        *,
        identity: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        intent: str | None = None,
        limit: int | None = 100,
    ) -> list[dict[str, Any]]:
        """Tasks, newest first, with counts of calls, denials and cost."""
        clauses, params = [], []
        for column, value, op in (
            ("identity", identity, "="),
            ("status", status, "="),
            ("intent", intent, "="),
            ("started_at", since, ">="),
            ("started_at", until, "<"),
        ):
            if value is not None:
                clauses.append(f"t.{column} {op} ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT t.*, "
            "(SELECT COUNT(*) FROM events e WHERE e.task_id = t.task_id AND e.kind = 'request')"
            " AS calls, "
            "(SELECT COUNT(*) FROM events e WHERE e.task_id = t.task_id AND e.kind = 'denied')"
            " AS denied, "
            "(SELECT COALESCE(SUM(e.cost), 0) FROM events e WHERE e.task_id = t.task_id"
            " AND e.kind = 'outcome') AS cost "
            f"FROM tasks t{where} ORDER BY t.started_at DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.store.query(sql, params)

    def timeline(self, task_id: str) -> list[dict[str, Any]]:
        """A task's events with each request joined to its outcome (``None`` = incomplete)."""
        events = self.events(task_id=task_id)
        outcomes = {e.correlation_id: e for e in events if e.kind == "outcome"}
        rows: list[dict[str, Any]] = []
        for e in events:
            if e.kind == "outcome":
                continue
            row = e.to_dict()
            if e.kind == "request":
                out = outcomes.get(e.correlation_id)
                row["result"] = out.outcome if out else "incomplete"
                row["duration_ms"] = out.duration_ms if out else None
                row["error"] = out.error if out else None
                row["cost"] = out.cost if out and out.cost is not None else e.cost
            rows.append(row)
        return rows

    @staticmethod
    def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for key, value in filters.items():
            if value is None:
                continue
            if key not in _FILTERS:
                raise TypeError(f"unknown audit filter {key!r}; use one of {sorted(_FILTERS)}")
            clauses.append(_FILTERS[key])
            params.append(value)
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params

    # -- integrity ------------------------------------------------------------------------

    def checkpoint(self, *, now: float | None = None) -> dict[str, Any] | None:
        """Append a signed checkpoint of the current chain head; None on an empty trail."""
        return self.integrity.checkpoint(now=now)

    def verify(self) -> VerifyReport:
        """Recompute the chain and check it against the signed checkpoints."""
        return self.integrity.verify()

    def iter_events(self, **filters: Any) -> Iterator[AuditEvent]:
        """Stream events oldest first (exports of large trails)."""
        where, params = self._where(filters)
        columns = EVENT_FIELDS
        sql = f"SELECT {', '.join(columns)} FROM events{where} ORDER BY seq"
        for values in self.store.iter_query(sql, params):
            yield AuditEvent.from_row(dict(zip(columns, values)))
