"""Audit events: the queries behind ``guard.audit`` and the viewer, and revocation events.

The hash chain is defined in :mod:`toolguard.chain`; checkpoints and verification live in
:mod:`toolguard.integrity`; SQL lives in :mod:`toolguard.store` (and in
:mod:`toolguard.integrity`, which reads the chain itself: docs/architecture.md, "The rooms").
This module shapes what the store returns: events, task lists, timelines (a request joined with its
outcome), usage summaries (rate peaks, quota use, spikes, idle identities) and usage over time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .budget import ROLLING_WINDOW, day_start
from .chain import EVENT_FIELDS, Event
from .integrity import Integrity, VerifyReport
from .keys import KeyRing, PublicKeySource
from .store import PruneResult, StoreProtocol
from .text import storable

if TYPE_CHECKING:
    from .config import IdentityLimits

__all__ = [
    "AuditEvent",
    "AuditLog",
    "IdleIdentity",
    "Spike",
    "Summary",
    "Usage",
    "UsageRow",
    "enable",
    "revoke",
]

DISABLED_NOTE = " (identity disabled)"
"""Ends the ``reason`` of the ``revoke`` event of ``revoke --identity --disable``: how the trail
(and :meth:`AuditLog.revocations`) tells a disabling apart from a plain revocation."""

log = logging.getLogger("toolguard.audit")

GROUPS = ("identity", "tool")
"""What a summary can be grouped by."""

_FOLLOW_BATCH = 1000
_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)


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
        """An event from a row of the ``events`` table."""
        data: dict[str, Any] = {k: row.get(k) for k in EVENT_FIELDS}
        res = data.pop("resources")
        try:
            resources = tuple(str(r) for r in json.loads(res)) if res else ()
        except (TypeError, ValueError):  # not a JSON list (damaged): shown as stored
            resources = (str(res),)
        return cls(**data, resources=resources)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``resources`` as a list)."""
        out = {k: getattr(self, k) for k in EVENT_FIELDS}
        out["resources"] = list(self.resources)
        return out


# -- summaries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one identity or tool over a summary's window."""

    key: str
    calls: int
    """Calls that ran (``request`` events, ``would_deny`` ones included)."""
    denials: int
    errors: int
    """Calls whose tool raised."""
    cost: float
    peak_per_minute: int
    """The most calls inside any 60 seconds of the window (rolling, like the budgets)."""
    last_ts: float | None
    today_calls: int = 0
    """Calls since 00:00 UTC of the summary's ``now`` (what daily quotas count)."""
    today_cost: float = 0.0
    quota: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Identity limits from the config: ``{"requests_per_day": {"used": 12, "limit": 1000}}``."""
    would_deny: int = 0
    """Calls that ran in shadow mode although the policy or a budget refused them."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "key": self.key,
            "calls": self.calls,
            "denials": self.denials,
            "would_deny": self.would_deny,
            "errors": self.errors,
            "cost": self.cost,
            "peak_per_minute": self.peak_per_minute,
            "last_ts": self.last_ts,
            "today_calls": self.today_calls,
            "today_cost": self.today_cost,
            "quota": {k: dict(v) for k, v in self.quota.items()},
        }


@dataclass(frozen=True, slots=True)
class Spike:
    """An identity or tool calling much faster than usual."""

    by: str
    key: str
    recent: int
    """Calls in the recent window."""
    usual: float
    """Its usual number of calls in a window that long (from the baseline)."""
    window: float
    """Length of the recent window, in seconds."""

    @property
    def ratio(self) -> float:
        return self.recent / self.usual if self.usual else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "by": self.by,
            "key": self.key,
            "recent": self.recent,
            "usual": round(self.usual, 3),
            "ratio": round(self.ratio, 2),
            "window": self.window,
        }


@dataclass(frozen=True, slots=True)
class IdleIdentity:
    """An identity with no task for ``idle_days`` (``last_task`` None: never seen)."""

    identity: str
    last_task: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"identity": self.identity, "last_task": self.last_task}


@dataclass(frozen=True, slots=True)
class Summary:
    """What :meth:`AuditLog.summary` found: usage per identity and tool, spikes, idleness."""

    since: float
    until: float | None
    now: float
    rows: Mapping[str, Sequence[UsageRow]]
    """``"identity"`` and/or ``"tool"`` -> one row per key."""
    spikes: Sequence[Spike] = ()
    idle: Sequence[IdleIdentity] = ()
    idle_days: float = 7.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "since": self.since,
            "until": self.until,
            "now": self.now,
            **{f"by_{by}": [r.to_dict() for r in rows] for by, rows in self.rows.items()},
            "spikes": [s.to_dict() for s in self.spikes],
            "idle_days": self.idle_days,
            "idle": [i.to_dict() for i in self.idle],
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """Calls per key per time bucket (the chart of the HTML export)."""

    since: float
    bucket: float
    """Bucket length in seconds."""
    buckets: int
    series: Mapping[str, Sequence[int]]
    """key -> calls in each bucket."""
    denials: Sequence[int]
    """Denials of all keys in each bucket."""


def _rolling_peaks(times: Iterator[tuple[str, float]]) -> dict[str, int]:
    """The most events of each key inside any ``ROLLING_WINDOW`` seconds (times ascending)."""
    windows: dict[str, deque[float]] = {}
    peaks: dict[str, int] = {}
    for key, ts in times:
        window = windows.setdefault(key, deque())
        window.append(ts)
        while window[0] <= ts - ROLLING_WINDOW:
            window.popleft()
        if len(window) > peaks.get(key, 0):
            peaks[key] = len(window)
    return peaks


def _bucket_for(span: float, *, most: int = 72) -> float:
    """The shortest of 1m, 5m, 15m, 1h, 6h, 1d, 7d that cuts ``span`` into ``most`` or fewer."""
    for size in _BUCKETS:
        if span / size <= most:
            return size
    return _BUCKETS[-1]


# -- the log -----------------------------------------------------------------------------------


class AuditLog:
    """Read, anchor, verify and prune the trail of one store."""

    def __init__(
        self,
        store: StoreProtocol,
        *,
        keys: KeyRing | PublicKeySource | None = None,
        checkpoints: str | os.PathLike[str] | None = None,
        also_checkpoints: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.store = store
        self.keys = keys
        self.integrity = Integrity(
            store, keys=keys, checkpoints=checkpoints, also_checkpoints=also_checkpoints
        )
        self.checkpoints_path = self.integrity.checkpoints_path

    # -- events -------------------------------------------------------------------------------

    def events(
        self, *, limit: int | None = None, newest_first: bool = False, **filters: Any
    ) -> list[AuditEvent]:
        """Events matching the filters (``task_id``, ``identity``, ``kind``, ``tool``,
        ``decision``, ``since``, ``until``, ``after_seq``, ...), oldest first unless
        ``newest_first``. An unknown filter raises :class:`TypeError`."""
        rows = self.store.event_rows(filters, limit=limit, newest_first=newest_first)
        return [AuditEvent.from_row(r) for r in rows]

    def iter_events(self, **filters: Any) -> Iterator[AuditEvent]:
        """Stream events oldest first (exports of large trails)."""
        for row in self.store.iter_event_rows(filters):
            yield AuditEvent.from_row(row)

    def iter_rows(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Stream event rows exactly as stored (``resources`` as JSON text), oldest first:
        what an export needs to let anyone recompute the hashes."""
        return self.store.iter_event_rows(filters)

    def latest(self, count: int, **filters: Any) -> list[AuditEvent]:
        """The newest ``count`` events matching the filters, oldest first."""
        return list(reversed(self.events(limit=count, newest_first=True, **filters)))

    def head_seq(self) -> int:
        """The ``seq`` of the newest event (0 on an empty trail)."""
        head = self.store.head()
        return head[0] if head is not None else 0

    def follow(
        self,
        *,
        after_seq: int,
        interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        max_polls: int | None = None,
        **filters: Any,
    ) -> Iterator[AuditEvent]:
        """Events after ``after_seq`` as they are written, polling every ``interval`` seconds.

        Runs until the caller stops iterating, or after ``max_polls`` polls that found
        nothing more to read. ``sleep`` is called between polls (tests pass their own).
        """
        last = after_seq
        polls = 0
        while True:
            head = self.head_seq()
            batch = (
                self.events(after_seq=last, before_seq=head + 1, limit=_FOLLOW_BATCH, **filters)
                if head > last
                else []
            )
            yield from batch
            if len(batch) == _FOLLOW_BATCH:
                last = batch[-1].seq
                continue
            last = max(last, head)
            polls += 1
            if max_polls is not None and polls >= max_polls:
                return
            sleep(interval)

    # -- tasks --------------------------------------------------------------------------------

    def tasks(
        self,
        *,
        identity: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        intent: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        task_id: str | None = None,
        limit: int | None = 100,
    ) -> list[dict[str, Any]]:
        """Tasks, newest first, with counts of ``calls``, ``denied``, ``errors`` and ``cost``.

        ``since``/``until`` bound the start time; ``tool`` and ``decision`` keep tasks with at
        least one such event; ``task_id`` is exact.
        """
        return self.store.task_rows(
            {
                "identity": identity,
                "status": status,
                "since": since,
                "until": until,
                "intent": intent,
                "tool": tool,
                "decision": decision,
                "task_id": task_id,
            },
            limit=limit,
        )

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The ``tasks`` row of one task, or None."""
        return self.store.task_row(task_id)

    def find_tasks(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids of the tasks whose id is ``prefix`` or starts with it."""
        if self.store.task_row(prefix) is not None:
            return [prefix]
        return self.store.task_ids_with_prefix(prefix, limit=limit)

    def timeline(self, task_id: str) -> list[dict[str, Any]]:
        """A task's events, each request joined to its outcome by ``correlation_id``.

        A request row gains ``result`` (``ok``, ``error``, ``not-run`` or ``incomplete`` when
        no outcome was recorded), ``duration_ms``, ``error`` and ``cost`` from its outcome.
        Revocations that hit the task from outside it (its identity, one of its credentials,
        a parent task) appear as ``revoke`` rows with ``seq`` None.
        """
        events = self.events(task_id=task_id)
        outcomes = {e.correlation_id: e for e in events if e.kind == "outcome"}
        requests = {e.correlation_id for e in events if e.kind == "request"}
        rows: list[dict[str, Any]] = []
        for e in events:
            if e.kind == "outcome" and e.correlation_id in requests:
                continue
            row = e.to_dict()
            if e.kind == "request":
                out = outcomes.get(e.correlation_id)
                row["result"] = out.outcome if out else "incomplete"
                row["duration_ms"] = out.duration_ms if out else None
                row["error"] = out.error if out else None
                if out is not None and out.reason:
                    row["reason"] = out.reason
                row["cost"] = out.cost if out and out.cost is not None else e.cost
            elif e.kind == "outcome":  # an outcome whose request is gone (pruned)
                row["result"] = e.outcome
            rows.append(row)
        return self._merge_revocations(task_id, events, rows)

    def _merge_revocations(
        self, task_id: str, events: Sequence[AuditEvent], rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        task = self.store.task_row(task_id)
        if task is None:
            return rows
        started = float(task["started_at"] or 0.0)
        ended = task["ended_at"]
        until = float(ended) if ended is not None else self.store.clock()
        jtis = sorted({e.jti for e in events if e.kind == "request" and e.jti})
        direct = {(e.ts, e.kind) for e in events if e.kind in ("revoke", "task_end")}
        seen: set[tuple[float, str | None]] = set()
        extra: list[dict[str, Any]] = []
        for rev in self.store.revocations_for_task(
            task_id, identity=task["identity"], since=started, until=until, jtis=jtis
        ):
            ts = float(rev["ts"])
            if rev["scope"] == "task" and (
                rev["by"] == "task-end" or (ts, "revoke") in direct or (ts, rev["reason"]) in seen
            ):
                continue
            seen.add((ts, rev["reason"]))
            extra.append(
                {
                    **dict.fromkeys(EVENT_FIELDS),
                    "resources": [],
                    "seq": None,
                    "ts": ts,
                    "kind": "revoke",
                    "task_id": task_id,
                    "identity": rev["value"] if rev["scope"] == "identity" else None,
                    "jti": rev["value"] if rev["scope"] == "jti" else None,
                    "decision": "revoke",
                    "reason": rev["reason"],
                    "rule": f"revoke.{rev['scope']}",
                    "by": rev["by"],
                }
            )
        if not extra:
            return rows
        merged: list[dict[str, Any]] = []
        pending = deque(extra)
        for row in rows:
            while pending and pending[0]["ts"] < row["ts"]:
                merged.append(pending.popleft())
            merged.append(row)
        merged.extend(pending)
        return merged

    # -- revocations --------------------------------------------------------------------------

    def revocations(
        self, *, since: float | None = None, until: float | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` revocations (``scope`` task, identity or jti, ``value``,
        ``reason``, ``ts``, ``by``), oldest first, without the routine revocation of a task's
        credentials when it ends (``by`` ``task-end``). ``disabled`` is true for a
        ``revoke --identity --disable`` (its ``revoke`` event says so)."""
        rows = self.store.recent_revocations(
            since if since is not None else float("-inf"),
            until if until is not None else float("inf"),
            limit,
        )
        rows.reverse()
        disabled = {
            (e.ts, e.identity)
            for e in self.events(kind="revoke", since=since, until=until)
            if e.rule == "revoke.identity" and (e.reason or "").endswith(DISABLED_NOTE)
        }
        for row in rows:
            row["disabled"] = row["scope"] == "identity" and (row["ts"], row["value"]) in disabled
        return rows

    def children(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """The delegated child tasks of each of ``task_ids`` (the ``tasks(parent_id)`` index),
        oldest first; tasks with none are left out."""
        found: dict[str, list[str]] = {}
        ids = list(task_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for row in self.store.child_rows(chunk):
                found.setdefault(str(row["parent_id"]), []).append(str(row["task_id"]))
        return found

    def disabled_identities(self) -> list[dict[str, Any]]:
        """The identities disabled now (``identity``, ``reason``, ``ts``), by name."""
        return self.store.disabled_identity_rows()

    # -- usage --------------------------------------------------------------------------------

    def summary(
        self,
        *,
        by: Sequence[str] = GROUPS,
        since: float,
        until: float | None = None,
        now: float | None = None,
        limits: Mapping[str, IdentityLimits] | None = None,
        identities: Sequence[str] = (),
        idle_days: float = 7.0,
        spike_window: float = 3600.0,
        spike_baseline: float = 7 * 86400.0,
        spike_factor: float = 3.0,
        spike_min_calls: int = 10,
    ) -> Summary:
        """Usage per identity and/or tool from ``since`` (to ``until``).

        Each row has calls, denials, errors, cost, the peak calls in any 60 seconds, and the
        use since 00:00 UTC of ``now``; identity rows compare it with ``limits`` (the config's
        identity limits). ``spikes``: keys whose calls in the last ``spike_window`` before
        ``until`` (or ``now``) exceed ``spike_factor`` times their usual rate over the
        ``spike_baseline`` before it (at least ``spike_min_calls`` calls, and some history).
        ``idle``: identities (from the trail and ``identities``) with no task for
        ``idle_days``.
        """
        now = self.store.clock() if now is None else now
        limits = limits or {}
        midnight = day_start(now)
        rows: dict[str, list[UsageRow]] = {}
        spikes: list[Spike] = []
        for group in by:
            if group not in GROUPS:
                raise ValueError(f"cannot summarise by {group!r}; use one of {list(GROUPS)}")
            peaks = _rolling_peaks(self.store.iter_call_times(group, since=since, until=until))
            today = {r["key"]: r for r in self.store.usage_rows(group, since=midnight)}
            out: list[UsageRow] = []
            for r in self.store.usage_rows(group, since=since, until=until):
                key = str(r["key"])
                day = today.get(key, {})
                today_calls = int(day.get("calls") or 0)
                today_cost = float(day.get("cost") or 0.0)
                quota = (
                    _quota(limits[key], today_calls, today_cost, peaks.get(key, 0))
                    if group == "identity" and key in limits
                    else {}
                )
                out.append(
                    UsageRow(
                        key=key,
                        calls=int(r["calls"] or 0),
                        denials=int(r["denials"] or 0),
                        would_deny=int(r["would_deny"] or 0),
                        errors=int(r["errors"] or 0),
                        cost=float(r["cost"] or 0.0),
                        peak_per_minute=peaks.get(key, 0),
                        last_ts=r["last_ts"],
                        today_calls=today_calls,
                        today_cost=today_cost,
                        quota=quota,
                    )
                )
            rows[group] = out
            spikes += self._spikes(
                group,
                end=until if until is not None else now,
                until=until,
                window=spike_window,
                baseline=spike_baseline,
                factor=spike_factor,
                min_calls=spike_min_calls,
            )
        idle = self._idle(now, idle_days, identities)
        spikes.sort(key=lambda s: (-s.ratio, s.by, s.key))
        return Summary(since, until, now, rows, tuple(spikes), tuple(idle), idle_days)

    def _spikes(
        self,
        group: str,
        *,
        end: float,
        until: float | None,
        window: float,
        baseline: float,
        factor: float,
        min_calls: int,
    ) -> list[Spike]:
        """``until`` None: no upper bound, so calls at exactly ``end`` (now) count."""
        recent_start = end - window
        baseline_start = recent_start - baseline
        found = []
        for r in self.store.rate_split(
            group, baseline_start=baseline_start, recent_start=recent_start, until=until
        ):
            recent, base = int(r["recent"] or 0), int(r["baseline"] or 0)
            if base == 0 or recent < min_calls:
                continue  # no history to compare with, or too few calls to matter
            history = max(window, recent_start - max(baseline_start, float(r["first_ts"])))
            usual = base * window / history
            if recent >= factor * usual:
                found.append(Spike(group, str(r["key"]), recent, usual, window))
        return found

    def _idle(self, now: float, days: float, identities: Sequence[str]) -> list[IdleIdentity]:
        cutoff = now - days * 86400.0
        idle = []
        for name in sorted({*self.store.known_identities(), *identities}):
            last = self.store.last_task_start(name)
            if last is None or last < cutoff:
                idle.append(IdleIdentity(name, last))
        return idle

    def usage(
        self,
        *,
        by: str = "identity",
        since: float,
        until: float,
        bucket: float | None = None,
    ) -> Usage:
        """Calls per ``by`` key per time bucket over ``[since, until)`` (chart data)."""
        if by not in GROUPS:
            raise ValueError(f"cannot chart usage by {by!r}; use one of {list(GROUPS)}")
        size = bucket or _bucket_for(max(until - since, 1.0))
        count = max(1, int((until - since) // size) + (1 if (until - since) % size else 0))
        series: dict[str, list[int]] = {}
        denials = [0] * count
        for r in self.store.usage_buckets(by, since=since, until=until, bucket=size):
            i = int(r["bucket"])
            if not 0 <= i < count:
                continue
            series.setdefault(str(r["key"]), [0] * count)[i] += int(r["calls"] or 0)
            denials[i] += int(r["denials"] or 0)
        return Usage(since, size, count, series, denials)

    # -- integrity and retention ----------------------------------------------------------

    def checkpoint(self, *, now: float | None = None) -> dict[str, Any] | None:
        """Append a signed checkpoint of the current chain head; None on an empty trail."""
        return self.integrity.checkpoint(now=now)

    def verify(self) -> VerifyReport:
        """Recompute the chain and check it against the signed checkpoints."""
        return self.integrity.verify()

    def prune(
        self, *, before: float, now: float | None = None, dry_run: bool = False
    ) -> PruneResult:
        """Remove events older than ``before`` so that ``verify`` still passes.

        A signed ``prune`` record of the cut is appended to the checkpoint file first (this
        needs the issuer's :class:`KeyRing`), then the events go in one transaction that also
        records the cut in the ``prunes`` table. ``dry_run`` only reports what would go.
        """
        now = self.store.clock() if now is None else now
        plan = self.store.prune(before=before, now=now, dry_run=True)
        if dry_run or plan.removed == 0 or plan.before_seq is None or plan.head_hash is None:
            return plan
        self.integrity.anchor_prune(plan.before_seq, plan.head_hash, now=now)
        done = self.store.prune(before=before, now=now, expect=(plan.before_seq, plan.head_hash))
        return replace(done, checkpoints=str(self.integrity.checkpoints_path))


def _quota(
    limits: IdentityLimits, calls: int, cost: float, peak: int
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if limits.requests_per_day is not None:
        out["requests_per_day"] = {"used": calls, "limit": limits.requests_per_day}
    if limits.cost_per_day is not None:
        out["cost_per_day"] = {"used": round(cost, 6), "limit": limits.cost_per_day}
    if limits.requests_per_minute is not None:
        out["requests_per_minute"] = {"peak": peak, "limit": limits.requests_per_minute}
    return out


# -- revocation events -------------------------------------------------------------------------


def revoke(
    store: StoreProtocol,
    *,
    task_id: str | None = None,
    identity: str | None = None,
    jti: str | None = None,
    reason: str = "revoked",
    disable: bool = False,
    by: str = "api",
    now: float,
) -> list[str]:
    """Revoke a task (and its children), an identity, or one credential, with its audit event.

    Returns the ids of the active tasks this ended. ``disable`` (with ``identity``) also
    refuses the identity's new tasks until :func:`enable`. Shared by ``Guard.revoke`` and the
    command line, so both write the same event.
    """
    given = [(s, v) for s, v in (("task", task_id), ("identity", identity), ("jti", jti)) if v]
    if len(given) != 1:
        raise ValueError("revoke exactly one of task_id=, identity= or jti=")
    if disable and identity is None:
        raise ValueError("disable=True goes with identity=")
    scope, value = given[0]
    # the store holds what any backend can: no NUL, no lone surrogate (as in every event)
    value, reason, by = storable(str(value)), storable(reason), storable(by)
    event = Event(
        ts=now,
        kind="revoke",
        task_id=value if scope == "task" else None,
        identity=value if scope == "identity" else None,
        jti=value if scope == "jti" else None,
        decision="revoke",
        reason=reason + (DISABLED_NOTE if disable else ""),
        rule=f"revoke.{scope}",
    )
    return store.revoke(
        scope=scope, value=str(value), reason=reason, by=by, now=now, disable=disable, event=event
    )


def enable(store: StoreProtocol, identity: str, *, reason: str = "re-enabled", now: float) -> None:
    """Allow a disabled identity to start tasks again, with its audit event."""
    reason = storable(reason)  # as in every event: no NUL, no lone surrogate
    event = Event(
        ts=now,
        kind="enable",
        identity=identity,
        reason=reason,
        rule="identity.enable",
    )
    store.set_identity_enabled(identity, reason=reason, now=now, event=event)
