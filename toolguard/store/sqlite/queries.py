"""Read queries of the store (audit views, viewer, verifier). No writes here.

Every SQL string the audit module and the viewer need lives here, behind a named method. Column
names are never taken from the caller: filters and grouping keys are looked up in fixed maps,
and every value is a bound parameter. Each query is shaped to use an index of
:mod:`toolguard.store.sqlite.schema` (a task's timeline: ``events(task_id, seq)``; time ranges:
``events(ts)`` and ``tasks(started_at)``; denials: the partial index on ``kind = 'denied'``;
identities: ``tasks(identity, started_at)``), so the viewer stays fast at millions of rows.
Filters outside those (``identity`` or ``tool`` on events without a time range) scan.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...chain import EVENT_FIELDS
from ...errors import AuditError
from ...text import storable

if TYPE_CHECKING:
    from ..approvals import ApprovalRecord

__all__ = [
    "EVENT_FILTERS",
    "GROUP_KEYS",
    "TASK_FILTERS",
    "Queries",
    "credential_rows",
    "event_kind_used",
    "identity_seen",
    "last_revocation",
    "live_credentials",
    "task_status_used",
]

EVENT_FILTERS: Mapping[str, str] = {
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
    "before_seq": "seq < ?",
}
"""Event filters: keyword -> SQL condition with one parameter."""

TASK_FILTERS: Mapping[str, str] = {
    "task_id": "t.task_id = ?",
    "identity": "t.identity = ?",
    "intent": "t.intent = ?",
    "status": "t.status = ?",
    "since": "t.started_at >= ?",
    "until": "t.started_at < ?",
    "tool": "EXISTS (SELECT 1 FROM events x WHERE x.task_id = t.task_id AND x.tool = ?)",
    "decision": ("EXISTS (SELECT 1 FROM events x WHERE x.task_id = t.task_id AND x.decision = ?)"),
}
"""Task filters: keyword -> SQL condition with one parameter."""

GROUP_KEYS: Mapping[str, str] = {"identity": "identity", "tool": "tool"}
"""What usage can be grouped by: name -> events column."""

_EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
_CALL_KINDS = "('request', 'denied', 'outcome')"


def _where(filters: Mapping[str, Any], table: Mapping[str, str]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filters.items():
        if value is None:
            continue
        if key not in table:
            raise TypeError(f"unknown filter {key!r}; use one of {sorted(table)}")
        if table is EVENT_FILTERS and key == "kind" and value == "denied":
            clauses.append("kind = 'denied'")  # a literal: the planner can use the partial index
            continue
        clauses.append(table[key])
        params.append(_sql_number(value))
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


_INT64 = (1 << 63) - 1


def _sql_number(value: Any) -> Any:
    """A filter value SQLite can bind: an int beyond 64 bits is clamped (every seq or count is
    far inside them), nan is refused; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-_INT64, min(value, _INT64))
    if isinstance(value, float) and value != value:
        raise ValueError("a filter value is nan; give a number")
    return value


def _limit(limit: int) -> int:
    """A LIMIT SQLite can bind: at most 2^63 - 1 (a negative one means none, as in SQLite)."""
    return min(int(limit), _INT64)


def _group_column(by: str) -> str:
    try:
        return GROUP_KEYS[by]
    except KeyError:
        raise ValueError(f"cannot group usage by {by!r}; use one of {sorted(GROUP_KEYS)}") from None


def _storable(params: Any) -> Any:
    """A read's parameters with the text escaped as the store records it
    (:func:`toolguard.text.storable`): a filter holding NUL or a lone surrogate matches what
    was recorded for it, on either backend, instead of failing (PostgreSQL refuses NUL)."""
    if isinstance(params, Mapping):
        return {k: storable(v) if type(v) is str else v for k, v in params.items()}
    return [storable(v) if type(v) is str else v for v in params]


class Queries:
    """Read-only queries, mixed into :class:`toolguard.store.Store`."""

    path: Path

    @property
    def conn(self) -> sqlite3.Connection:  # pragma: no cover - provided by Store
        raise NotImplementedError

    # -- generic reads ------------------------------------------------------------------------

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """Rows of a read query as dicts. Prefer the named methods below."""
        try:
            cur = self.conn.execute(sql, _storable(params))
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.path}: {exc}") from exc

    def iter_query(
        self, sql: str, params: Sequence[Any] = (), *, batch: int = 5000
    ) -> Iterator[tuple[Any, ...]]:
        """Stream the tuples of a read query (for verify and export at millions of rows)."""
        try:
            cur = self.conn.execute(sql, _storable(params))
            while rows := cur.fetchmany(batch):
                yield from rows
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.path}: {exc}") from exc

    def task_spent(self, task_id: str, labels: Sequence[str]) -> dict[str, int]:
        """What a task and its delegated tasks spent of each budget in ``labels``
        (``max_calls``, ``per_tool.kv_set``, ...), in budget units, counted from the trail as
        the guard counts it (:func:`toolguard.store.sqlite.tasks.spent_from_trail`), in one read."""
        from .tasks import spent_on, trail_calls

        try:
            calls = trail_calls(self.conn, task_id)
        except sqlite3.Error as exc:
            raise AuditError(
                f"cannot read the task budgets from the audit database {self.path}: {exc}"
            ) from exc
        return {label: spent_on(calls, label) for label in labels}

    # -- events -------------------------------------------------------------------------------

    def event_rows(
        self,
        filters: Mapping[str, Any],
        *,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Events matching ``filters`` (keys of :data:`EVENT_FILTERS`), ordered by ``seq``."""
        where, params = _where(filters, EVENT_FILTERS)
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events{where}"
            f" ORDER BY seq {'DESC' if newest_first else 'ASC'}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_limit(limit))
        return self.query(sql, params)

    def iter_event_rows(self, filters: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream events matching ``filters``, oldest first (exports of large trails)."""
        where, params = _where(filters, EVENT_FILTERS)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events{where} ORDER BY seq"
        for values in self.iter_query(sql, params):
            yield dict(zip(EVENT_FIELDS, values))

    def iter_call_events(
        self, *, since: float, until: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The ``request``, ``denied`` and ``outcome`` events from ``since`` (to ``until``,
        exclusive), in trail order: what ``toolguard audit replay`` re-evaluates (the
        ``events(ts)`` index)."""
        span, params = _span(since, until)
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {span} AND kind IN {_CALL_KINDS}"
            " ORDER BY seq"
        )
        for values in self.iter_query(sql, params):
            yield dict(zip(EVENT_FIELDS, values))

    def earliest_running_start(self, since: float, at: float) -> float | None:
        """The earliest start of the tasks started before ``since`` whose deadline is not
        before ``at`` (they could still make calls then), or None (``tasks(started_at)``)."""
        rows = self.query(
            "SELECT MIN(started_at) AS ts FROM tasks WHERE started_at < ? AND deadline >= ?",
            (since, at),
        )
        return float(rows[0]["ts"]) if rows and rows[0]["ts"] is not None else None

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest event, or None on an empty trail."""
        rows = self.query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (int(rows[0]["seq"]), str(rows[0]["hash"])) if rows else None

    def last_prune(self) -> dict[str, Any] | None:
        """The newest row of ``prunes`` (``before_seq`` = first kept seq), or None."""
        rows = self.query(
            "SELECT id, ts, before_seq, head_hash, removed FROM prunes ORDER BY id DESC LIMIT 1"
        )
        return rows[0] if rows else None

    def revocations_for_task(
        self, task_id: str, *, identity: str | None, since: float, until: float, jtis: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Rows of ``revocations`` that hit a task: of the task itself, of its identity while
        it ran, or of one of its credentials (the ``revocations(scope, value)`` index)."""
        clauses = ["(scope = 'task' AND value = ?)"]
        params: list[Any] = [task_id]
        if identity is not None:
            clauses.append("(scope = 'identity' AND value = ? AND ts >= ? AND ts <= ?)")
            params.extend((identity, since, until))
        if jtis:
            clauses.append(f"(scope = 'jti' AND value IN ({', '.join('?' * len(jtis))}))")
            params.extend(jtis)
        sql = (
            "SELECT id, scope, value, reason, ts, by FROM revocations"
            f" WHERE {' OR '.join(clauses)} ORDER BY ts, id"
        )
        return self.query(sql, params)

    def revocation_marker(self) -> int:
        """A value that changes whenever a revocation is written, so a reader knows when to
        read :meth:`revocation_rows` again: on SQLite the largest id (rows are never deleted,
        and ids are assigned under the database's write lock, so a smaller id is never
        committed after a larger one). One index lookup. A backend whose ids can become
        visible out of order (PostgreSQL sequences) must return something else that changes
        with every committed revocation, such as ``(count, largest id)``."""
        rows = self.query("SELECT coalesce(max(id), 0) AS top FROM revocations")
        return int(rows[0]["top"])

    def revocation_rows(self) -> list[tuple[str, str, float]]:
        """Every revocation as ``(scope, value, ts)``, oldest first, read in one statement
        (one snapshot): what the HTTP revocation feed publishes."""
        return [
            (str(scope), str(value), float(ts))
            for scope, value, ts in self.iter_query(
                "SELECT scope, value, ts FROM revocations ORDER BY id"
            )
        ]

    def revocation_reach(
        self, since: float, recent: float = float("-inf")
    ) -> tuple[int, list[tuple[str, str, float, float | None, bool]]]:
        """The number of revocations, and those that may still reject a credential as
        ``(scope, value, ts, until, disabled)``, oldest first, read in one statement (one
        snapshot): what the HTTP revocation feed publishes. ``until`` is the latest
        ``expires_at`` among the credentials expiring at or after ``since`` that the row can
        reject (a ``jti`` row: that credential; a ``task`` row: the credentials of the task and
        of every task delegated from it; an ``identity`` row: every credential of the
        identity), or None when there is none; ``disabled`` whether an ``identity`` row's
        identity is disabled now. Left out: ``task`` and ``jti`` rows older than ``recent``
        without such a credential (so the read costs what the list holds, not the history).
        A credential is recorded in the transaction that checks the task's revocations, so
        none of a revoked task or jti can appear after the revocation."""
        total = 0
        rows: list[tuple[str, str, float, float | None, bool]] = []
        for scope, value, ts, until, disabled, _id in self.iter_query(
            _REVOCATION_REACH, (since, recent)
        ):
            if scope is None:  # the count, last
                total = int(ts)
                continue
            rows.append(
                (
                    str(scope),
                    str(value),
                    float(ts),
                    None if until is None else float(until),
                    bool(disabled),
                )
            )
        return total, rows

    # -- incident commands (the functions below) ---------------------------------------------

    def credential_rows(
        self, jti: str, *, prefix: bool = False, limit: int = 11
    ) -> list[dict[str, Any]]:
        """See :func:`credential_rows`."""
        return credential_rows(self, jti, prefix=prefix, limit=limit)

    def identity_seen(self, identity: str) -> bool:
        """See :func:`identity_seen`."""
        return identity_seen(self, identity)

    def live_credentials(
        self,
        *,
        now: float,
        task_id: str | None = None,
        identity: str | None = None,
        jti: str | None = None,
    ) -> list[str]:
        """See :func:`live_credentials`."""
        return live_credentials(self, now=now, task_id=task_id, identity=identity, jti=jti)

    def last_revocation(self, scope: str, value: str) -> dict[str, Any] | None:
        """See :func:`last_revocation`."""
        return last_revocation(self, scope, value)

    def task_status_used(self, status: str) -> bool:
        """See :func:`task_status_used`."""
        return task_status_used(self, status)

    def event_kind_used(self, kind: str) -> bool:
        """See :func:`event_kind_used`."""
        return event_kind_used(self, kind)

    # -- approvals (toolguard.store.approvals) ------------------------------------------------

    def approval_requests(
        self,
        *,
        task_id: str | None = None,
        correlation_id: str | None = None,
        request_id: str | None = None,
    ) -> list[ApprovalRecord]:
        """Approval requests (oldest first) with their decisions: those of a task (and one
        call of it), or every one in the trail; ``request_id`` may be a prefix. Inside a write
        transaction of this thread, read in that transaction."""
        from ..approvals import find_requests

        return find_requests(
            self, task_id=task_id, correlation_id=correlation_id, request_id=request_id
        )

    def unused_approval(self, record: ApprovalRecord, now: float) -> str | None:
        """None if ``record``'s approval is recorded, unexpired and unused, else why not
        (:func:`toolguard.store.approvals.unused_approval`). Called by a ``precheck`` of
        ``record_call``, it reads in the call's transaction."""
        from ..approvals import unused_approval

        return unused_approval(self.conn, self, record, now)

    # -- tasks --------------------------------------------------------------------------------

    def identity_disabled(self, identity: str) -> str | None:
        """Why an identity is disabled (``revoke --identity --disable``), or None."""
        rows = self.query(
            "SELECT reason FROM identity_state WHERE identity = ? AND disabled = 1", (identity,)
        )
        return None if not rows else str(rows[0]["reason"] or "disabled")

    def task_jtis(self, task_id: str) -> list[str]:
        """The ids of the credentials issued to a task (from its ``request`` events: one range
        of the ``(task_id, seq)`` index)."""
        rows = self.query(
            "SELECT jti FROM events WHERE task_id = ? AND kind = 'request' AND jti IS NOT NULL"
            " ORDER BY seq",
            (task_id,),
        )
        return [r["jti"] for r in rows]

    def task_row(self, task_id: str) -> dict[str, Any] | None:
        """The ``tasks`` row of one task, or None."""
        rows = self.query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return rows[0] if rows else None

    def task_ids_with_prefix(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Task ids starting with ``prefix`` (a range scan of the primary key)."""
        if not prefix:
            return []
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self.query(
            "SELECT task_id FROM tasks WHERE task_id >= ? AND task_id < ? ORDER BY task_id LIMIT ?",
            (prefix, upper, limit),
        )
        return [str(r["task_id"]) for r in rows]

    def task_rows(
        self, filters: Mapping[str, Any], *, limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """Tasks matching ``filters`` (keys of :data:`TASK_FILTERS`), newest first, with
        ``calls``, ``denied``, ``would_deny`` (calls that ran in shadow mode although refused),
        ``errors`` and ``cost`` counted from their events."""
        where, params = _where(filters, TASK_FILTERS)
        limit_sql = ""
        if limit is not None:
            limit_sql = " LIMIT ?"
            params.append(_limit(limit))
        sql = (
            f"WITH t AS (SELECT t.* FROM tasks t{where} ORDER BY t.started_at DESC{limit_sql}) "
            "SELECT t.*,"
            " COALESCE(SUM(e.kind = 'request'), 0) AS calls,"
            " COALESCE(SUM(e.kind = 'denied'), 0) AS denied,"
            " COALESCE(SUM(e.kind = 'request' AND e.decision = 'would_deny'), 0) AS would_deny,"
            " COALESCE(SUM(e.kind = 'outcome' AND e.outcome = 'error'), 0) AS errors,"
            " COALESCE(SUM(CASE WHEN e.kind = 'outcome' THEN e.cost END), 0) AS cost"
            " FROM t LEFT JOIN events e ON e.task_id = t.task_id"
            " GROUP BY t.task_id ORDER BY t.started_at DESC, t.task_id"
        )
        return self.query(sql, params)

    def recent_revocations(self, since: float, until: float, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` revocations in ``[since, until)``, newest first, without the
        routine revocations of task ends (``by`` ``task-end``)."""
        return self.query(
            # trails written before 2026-12-05 may hold a task's row twice: one per revocation
            "SELECT scope, value, reason, ts, by FROM revocations"
            " WHERE COALESCE(by, '') != 'task-end' AND ts >= ? AND ts < ?"
            " GROUP BY scope, value, reason, ts, by ORDER BY ts DESC, MAX(id) DESC LIMIT ?",
            [since, until, _limit(limit)],
        )

    def child_rows(self, task_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``task_id`` and ``parent_id`` of the children of ``task_ids`` (at most ~500 at a
        time: one bound parameter each), oldest first."""
        return self.query(
            "SELECT task_id, parent_id FROM tasks WHERE parent_id IN"
            f" ({', '.join('?' * len(task_ids))}) ORDER BY started_at, task_id",
            list(task_ids),
        )

    def disabled_identity_rows(self) -> list[dict[str, Any]]:
        """The identities disabled now (``identity``, ``reason``, ``ts``), by name."""
        return self.query(
            "SELECT identity, reason, ts FROM identity_state WHERE disabled = 1 ORDER BY identity"
        )

    def known_identities(self) -> list[str]:
        """Every identity that ever started a task (the ``tasks(identity, ...)`` index)."""
        rows = self.query(
            "SELECT DISTINCT identity FROM tasks WHERE identity IS NOT NULL ORDER BY identity"
        )
        return [str(r["identity"]) for r in rows]

    def last_task_start(self, identity: str) -> float | None:
        """When an identity last started a task (the ``tasks(identity, started_at)`` index)."""
        rows = self.query("SELECT MAX(started_at) AS ts FROM tasks WHERE identity = ?", (identity,))
        return float(rows[0]["ts"]) if rows and rows[0]["ts"] is not None else None

    # -- usage --------------------------------------------------------------------------------

    def usage_rows(
        self, by: str, *, since: float, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Per identity or tool from ``since`` (to ``until``, exclusive): ``calls`` (requests),
        ``denials``, ``would_deny`` (requests that ran in shadow mode although refused),
        ``errors``, ``cost`` (of outcomes), ``first_ts``, ``last_ts``."""
        column = _group_column(by)
        span, params = _span(since, until)
        sql = (
            f"SELECT {column} AS key,"
            " SUM(kind = 'request') AS calls,"
            " SUM(kind = 'denied') AS denials,"
            " SUM(kind = 'request' AND decision = 'would_deny') AS would_deny,"
            " SUM(kind = 'outcome' AND outcome = 'error') AS errors,"
            " COALESCE(SUM(CASE WHEN kind = 'outcome' THEN cost END), 0) AS cost,"
            " MIN(ts) AS first_ts, MAX(ts) AS last_ts"
            f" FROM events WHERE {span} AND kind IN {_CALL_KINDS}"
            f" AND {column} IS NOT NULL GROUP BY {column} ORDER BY {column}"
        )
        return self.query(sql, params)

    def iter_call_times(
        self, by: str, *, since: float, until: float | None = None
    ) -> Iterator[tuple[str, float]]:
        """``(key, ts)`` of every request from ``since`` (to ``until``), by time (rate peaks)."""
        column = _group_column(by)
        span, params = _span(since, until)
        sql = (
            f"SELECT {column}, ts FROM events WHERE {span} AND kind = 'request'"
            f" AND {column} IS NOT NULL ORDER BY ts"
        )
        for key, ts in self.iter_query(sql, params):
            yield str(key), float(ts)

    def usage_buckets(
        self, by: str, *, since: float, until: float | None, bucket: float
    ) -> list[dict[str, Any]]:
        """Calls, denials and cost per identity or tool per ``bucket`` seconds from ``since``
        (``bucket`` in the rows is the bucket's index)."""
        column = _group_column(by)
        span, params = _span(since, until)
        sql = (
            f"SELECT {column} AS key, CAST((ts - ?) / ? AS INTEGER) AS bucket,"
            " SUM(kind = 'request') AS calls, SUM(kind = 'denied') AS denials,"
            " COALESCE(SUM(CASE WHEN kind = 'outcome' THEN cost END), 0) AS cost"
            f" FROM events WHERE {span} AND kind IN {_CALL_KINDS}"
            f" AND {column} IS NOT NULL GROUP BY key, bucket ORDER BY bucket, key"
        )
        return self.query(sql, [since, bucket, *params])

    def rate_split(
        self, by: str, *, baseline_start: float, recent_start: float, until: float | None
    ) -> list[dict[str, Any]]:
        """Requests per identity or tool from ``recent_start`` (``recent``) and in
        ``[baseline_start, recent_start)`` (``baseline``, with ``first_ts``): for spikes."""
        column = _group_column(by)
        span, params = _span(baseline_start, until)
        sql = (
            f"SELECT {column} AS key, SUM(ts >= ?) AS recent, SUM(ts < ?) AS baseline,"
            " MIN(ts) AS first_ts"
            f" FROM events WHERE {span} AND kind = 'request'"
            f" AND {column} IS NOT NULL GROUP BY {column} ORDER BY {column}"
        )
        return self.query(sql, [recent_start, recent_start, *params])


def _span(since: float, until: float | None) -> tuple[str, list[Any]]:
    if until is None:
        return "ts >= ?", [since]
    return "ts >= ? AND ts < ?", [since, until]


# -- incident commands (toolguard.incident) ------------------------------------------------------
# Module-level functions over a store's read queries: resolve the target of a revocation and
# count what it revokes. Incident commands are rare: the credential look-ups scan the
# ``credentials`` table (it has no jti index; one row per allowed call until pruned).

_LIVE_CREDENTIALS = (
    "SELECT c.jti AS jti, MIN(c.issued_at) AS issued FROM credentials c"
    " JOIN tasks t ON t.task_id = c.task_id"
    " WHERE c.jti IS NOT NULL AND c.expires_at > ? AND t.ended_at IS NULL AND ({target})"
    " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.scope = 'jti' AND r.value = c.jti)"
    " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.scope = 'identity'"
    " AND r.value = c.identity AND r.ts >= c.issued_at) GROUP BY c.jti ORDER BY issued, c.jti"
)
_TASK_TREE = (
    "c.task_id IN (WITH RECURSIVE d(id) AS (SELECT ? UNION SELECT x.task_id FROM tasks x"
    " JOIN d ON x.parent_id = d.id) SELECT id FROM d)"
)
_IDENTITY_TREE = (
    "c.identity = ? OR c.task_id IN (WITH RECURSIVE d(id) AS (SELECT task_id FROM tasks"
    " WHERE identity = ? AND ended_at IS NULL UNION SELECT x.task_id FROM tasks x"
    " JOIN d ON x.parent_id = d.id) SELECT id FROM d)"
)


def credential_rows(
    queries: Queries, jti: str, *, prefix: bool = False, limit: int = 11
) -> list[dict[str, Any]]:
    """The ``credentials`` rows (``jti``, ``identity``, ``task_id``, ``issued_at``,
    ``expires_at``) whose jti is ``jti``, or starts with it when ``prefix`` (case-sensitive;
    no LIKE, so ``_`` in a base64url id is no wildcard)."""
    if prefix:
        where, params = "substr(jti, 1, ?) = ?", [len(jti), jti]
    else:
        where, params = "jti = ?", [jti]
    return queries.query(
        "SELECT DISTINCT jti, identity, task_id, issued_at, expires_at FROM credentials"
        f" WHERE jti IS NOT NULL AND {where} ORDER BY jti LIMIT ?",
        [*params, limit],
    )


def identity_seen(queries: Queries, identity: str) -> bool:
    """Whether the trail knows ``identity``: a task, a credential, a revocation or a state."""
    rows = queries.query(
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE identity = ?)"
        " OR EXISTS (SELECT 1 FROM credentials WHERE identity = ?)"
        " OR EXISTS (SELECT 1 FROM identity_state WHERE identity = ?)"
        " OR EXISTS (SELECT 1 FROM revocations WHERE scope = 'identity' AND value = ?) AS seen",
        [identity] * 4,
    )
    return bool(rows and rows[0]["seen"])


_REVOCATION_REACH = (
    "WITH RECURSIVE live(task_id, jti, identity, expires) AS ("
    " SELECT task_id, jti, identity, expires_at FROM credentials"
    " WHERE jti IS NOT NULL AND expires_at >= ?),"
    " up(task_id, expires, depth) AS ("
    " SELECT task_id, expires, 0 FROM live WHERE task_id IS NOT NULL"
    " UNION ALL SELECT t.parent_id, up.expires, up.depth + 1 FROM up"
    " JOIN tasks t ON t.task_id = up.task_id WHERE t.parent_id IS NOT NULL AND up.depth < 64),"
    " by_task(value, expires) AS (SELECT task_id, max(expires) FROM up GROUP BY task_id),"
    " by_jti(value, expires) AS (SELECT jti, max(expires) FROM live GROUP BY jti),"
    " by_identity(value, expires) AS (SELECT identity, max(expires) FROM live GROUP BY identity)"
    " SELECT * FROM (SELECT r.scope, r.value, r.ts, CASE r.scope WHEN 'task' THEN bt.expires"
    " WHEN 'jti' THEN bj.expires WHEN 'identity' THEN bi.expires END AS until,"
    " CASE WHEN s.disabled = 1 THEN 1 ELSE 0 END AS disabled, r.id AS id"
    " FROM revocations r"
    " LEFT JOIN by_task bt ON r.scope = 'task' AND bt.value = r.value"
    " LEFT JOIN by_jti bj ON r.scope = 'jti' AND bj.value = r.value"
    " LEFT JOIN by_identity bi ON r.scope = 'identity' AND bi.value = r.value"
    " LEFT JOIN identity_state s ON r.scope = 'identity' AND s.identity = r.value"
    " WHERE r.scope NOT IN ('task', 'jti') OR r.ts >= ?"
    " OR bt.expires IS NOT NULL OR bj.expires IS NOT NULL"
    " UNION ALL SELECT NULL, NULL, count(*), NULL, 0, NULL FROM revocations) q"
    " ORDER BY q.id IS NULL, q.id"
)
"""See :meth:`Queries.revocation_reach` (the delegation depth is bounded: 16 in credentials)."""


def live_credentials(
    queries: Queries,
    *,
    now: float,
    task_id: str | None = None,
    identity: str | None = None,
    jti: str | None = None,
) -> list[str]:
    """The ids of the credentials a revocation of this target would revoke: issued to an
    active task (of the task's tree; of the identity, or in a tree of its active tasks; the
    one jti), not expired at ``now`` and not revoked already."""
    if task_id is not None:
        target, params = _TASK_TREE, [task_id]
    elif identity is not None:
        target, params = _IDENTITY_TREE, [identity, identity]
    elif jti is not None:
        target, params = "c.jti = ?", [jti]
    else:
        raise ValueError("give one of task_id=, identity= or jti=")
    rows = queries.query(_LIVE_CREDENTIALS.format(target=target), [now, *params])
    return [str(r["jti"]) for r in rows]


def last_revocation(queries: Queries, scope: str, value: str) -> dict[str, Any] | None:
    """The newest ``revocations`` row of one target (``reason``, ``ts``, ``by``), or None."""
    rows = queries.query(
        "SELECT reason, ts, by FROM revocations WHERE scope = ? AND value = ?"
        " ORDER BY ts DESC, id DESC LIMIT 1",
        [scope, value],
    )
    return rows[0] if rows else None


def task_status_used(queries: Queries, status: str) -> bool:
    """Whether some task has this status (the ``tasks(status)`` index)."""
    return bool(queries.query("SELECT 1 FROM tasks WHERE status = ? LIMIT 1", [status]))


def event_kind_used(queries: Queries, kind: str) -> bool:
    """Whether some event has this kind (a scan: only for kinds toolguard does not list)."""
    return bool(queries.query("SELECT 1 FROM events WHERE kind = ? LIMIT 1", [kind]))
