"""Budget state in SQL: check and spend every limit of a call inside the caller's transaction
(the one that also appends the call's ``request`` or ``denied`` event).

Amounts are whole numbers of micro-units (:data:`~toolguard.budget.COST_RESOLUTION`) and
compared as such, so a sum of costs never drifts (``100 x 0.01`` is exactly ``1.00``).

A task's budget is its trail, counted in :mod:`toolguard.store.sqlite.tasks`.

The identity's limits are shared by every process using the database, so their state is in
the database; a restarted process finds them spent.

**The identity's admission log** is the ``tally`` column of its ``credentials`` rows (primary
key ``(identity, tally)``, a clustered ``WITHOUT ROWID`` b-tree): the row every allowed call
writes anyway holds ``t<time µs>:<row>:<calls>:<writes>:<deletes>:<cost>`` (fixed widths;
running totals; writes include deletes; ``row`` numbers every entry), so the log costs no row
of its own. The time is never earlier than the newest entry's, so time and insertion orders
agree even when processes read their clocks before waiting for the lock. What a class used
within ``(t - 60 s, t]`` is the newest entry's total minus that of the newest entry at or
before ``t - 60 s``; today, minus that of the newest entry before 00:00 UTC. So all of an
identity's per-minute and per-day limits cost three index seeks per call, however many calls
the window holds. Entries with no ``jti`` are no credential: the anchor (time 0, totals 0)
that opens the log, a settled cost (moves only the cost), a call whose credential could not be
minted (it stays counted). An identity without limits gets ``j<jti>`` tallies. ``toolguard
audit prune`` removes old entries but keeps each identity's newest one before its bound.

**Refused attempts** (``identity:<name>:refused`` in the ``budgets (scope, period, used)``
table): the same log for refused calls, read by the ``on_anomaly`` rule (attempts = admitted +
refused calls of the watched class in 60 s); rows that can no longer be a boundary are pruned
every 64 rows.

A call reads everything in one ``SELECT`` (which also carries the caller's revocation check:
:class:`Charge`); its log entry is written with its credential (:attr:`Charge.tally`); a
refused call writes nothing but its refused attempt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from ...budget import (
    COST_RESOLUTION,
    DAY_SECONDS,
    ROLLING_WINDOW,
    Plan,
    Settlement,
    Spend,
    day_key,
    seconds_to_midnight,
    task_slots,
    to_units,
)
from ...errors import BudgetExceeded
from .tasks import TaskBudgets, TaskCheck, spent_on, trail_calls

if TYPE_CHECKING:  # annotations only: the store (and the CLI) need not import pydantic
    from ...config import Budget

__all__ = ["INSERT_TALLY", "Anomaly", "Charge", "charge", "settle", "usage"]

_M = COST_RESOLUTION
_US = 1_000_000
_WINDOW_US = int(ROLLING_WINDOW * _US)
_DAY_US = DAY_SECONDS * _US
_PRUNE_EVERY = 64
"""A log prunes the rows that can no longer be a boundary every 64 rows."""
_INDEX = {"a": 1, "w": 2, "d": 3, "c": 4}
"""Where a slot's running total is in a log row's :class:`Totals` (0 is the row number)."""


class Totals(NamedTuple):
    """The running totals of a log row (``t<time>:<row>:<calls>:<writes>:<deletes>:<cost>``)."""

    row: int
    """Numbers every entry of the log."""
    calls: int
    writes: int
    """Writes and deletes."""
    deletes: int
    cost: int
    """In micro-units."""


_ZERO = Totals(0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class _Table:
    """Where a log's rows are: the statements that read them, keyed by the log's key."""

    newest: str  # (key,): the newest row, as a subquery
    before: str  # (key, bound): the newest row below a bound, as a subquery
    after: str  # (key, bound): the rows above a bound, oldest first
    oldest: str  # (key,)


_ADMITTED = _Table(
    newest="(SELECT tally FROM credentials WHERE identity = ? AND tally > 't' AND tally < 'u'"
    " ORDER BY tally DESC LIMIT 1)",
    before="(SELECT tally FROM credentials WHERE identity = ? AND tally > 't' AND tally < ?"
    " ORDER BY tally DESC LIMIT 1)",
    after="SELECT tally FROM credentials WHERE identity = ? AND tally > ? AND tally < 'u'"
    " ORDER BY tally",
    oldest="SELECT tally FROM credentials WHERE identity = ? AND tally > 't' ORDER BY tally"
    " LIMIT 1",
)
"""An identity's admission log: the ``tally`` of its ``credentials`` rows (key: the identity)."""
_REFUSED = _Table(
    newest="(SELECT period FROM budgets WHERE scope = ? ORDER BY period DESC LIMIT 1)",
    before="(SELECT period FROM budgets WHERE scope = ? AND period < ? ORDER BY period DESC"
    " LIMIT 1)",
    after="SELECT period FROM budgets WHERE scope = ? AND period > ? ORDER BY period",
    oldest="SELECT period FROM budgets WHERE scope = ? ORDER BY period LIMIT 1",
)
"""An identity's refused attempts: rows of ``budgets`` (key: ``identity:<name>:refused``)."""
_PRUNE = "DELETE FROM budgets WHERE scope = ? AND period < ? AND period != ?"
INSERT_TALLY = (
    "INSERT INTO credentials (identity, tally, issued_at, expires_at) VALUES (?, ?, ?, ?)"
)
"""A row of the admission log that is no credential: the anchor, a settled cost."""


@lru_cache(maxsize=64)
def _select(prefix: str, columns: str) -> str:
    return f"SELECT {prefix}, {columns}" if columns else f"SELECT {prefix}"


@lru_cache(maxsize=16)
def _write_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * rows)
    return (
        f"INSERT INTO budgets (scope, period, used) VALUES {values}"
        " ON CONFLICT (scope, period) DO UPDATE SET used = excluded.used"
    )


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A refused call took the identity's attempts past its ``on_anomaly`` threshold."""

    spend: Spend
    """The ``attempts`` watch whose threshold (``spend.limit``) was passed."""
    attempts: int
    """Calls attempted (admitted or refused) within the last 60 seconds, this one included."""


# -- the admission log ------------------------------------------------------------------------


_FORMAT = "t%017d:%010d:%010d:%010d:%010d:%016d"


def _period(at_us: int, t: Totals) -> str:
    return _FORMAT % (at_us, *t)


def _parse(period: str) -> tuple[int, Totals]:
    """A log row's period -> (time in µs, totals)."""
    ts, n, a, w, d, c = period.split(":")
    return int(ts[1:]), Totals(int(n), int(a), int(w), int(d), int(c))


def _refused_key(identity: str) -> str:
    """The key (``budgets.scope``) of an identity's refused-attempts log."""
    return f"identity:{identity}:refused"


_ANCHOR = _period(0, _ZERO)


def _cut(at_us: int) -> str:
    """The bound below which log rows are at or before ``at_us - 60 s``."""
    return f"t{at_us - _WINDOW_US:017d};"


def _midnight(at_us: int) -> str:
    """The bound below which log rows are before the UTC day of ``at_us``."""
    return _day_start(at_us // _DAY_US)


@lru_cache(maxsize=4)
def _day_start(day: int) -> str:
    return f"t{day * _DAY_US:017d}"


def _one(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row is not None else None


class _Log:
    """An admission log (or refused-attempts log) as read for one call."""

    __slots__ = ("at_us", "day", "key", "newest", "table", "window")

    def __init__(self, key: str, now_us: int, table: _Table = _ADMITTED) -> None:
        self.key = key
        self.table = table
        self.newest: Totals | None = None
        self.window = _ZERO  # the totals at the start of the 60-second window
        self.day = _ZERO  # the totals at the start of the UTC day
        self.at_us = now_us  # the time of a row written now: max(now, the newest row's)

    def read(
        self,
        conn: sqlite3.Connection,
        newest: str | None,
        window: str | None,
        day: str | None = None,
        *,
        daily: bool = False,
    ) -> _Log:
        """Take the rows read: the newest, and the boundaries of the window and the day."""
        if newest is None:
            return self
        newest_us, self.newest = _parse(newest)
        if newest_us > self.at_us:  # a later clock wrote the newest row: we come after it
            self.at_us = newest_us
            before = self.table.before[1:-1]
            window = _one(conn, before, (self.key, _cut(newest_us)))
            day = _one(conn, before, (self.key, _midnight(newest_us))) if daily else None
        self.window = self._boundary(conn, window)
        if daily:
            self.day = self._boundary(conn, day)
        return self

    def _boundary(self, conn: sqlite3.Connection, period: str | None) -> Totals:
        """The totals at a boundary row; without one (every row kept is newer: the anchor
        and older rows were pruned) count from just before the oldest row kept, which can
        only over-count."""
        if period:
            return _parse(period)[1]
        oldest = _one(conn, self.table.oldest, (self.key,))
        t = _parse(oldest)[1] if oldest else Totals(1, 1, 1, 1, 0)
        return Totals(
            t.row - 1, max(0, t.calls - 1), max(0, t.writes - 1), max(0, t.deletes - 1), t.cost
        )

    def in_window(self, index: int) -> int:
        return (self.newest[index] if self.newest else 0) - self.window[index]

    def today(self, index: int) -> int:
        return (self.newest[index] if self.newest else 0) - self.day[index]

    def next_period(self, marks: str, cost: int) -> str:
        """The period of one more call with ``marks`` and ``cost`` (micro-units)."""
        n, a, w, d, c = self.newest or _ZERO
        totals = Totals(n + 1, a + 1, w + ("w" in marks), d + ("d" in marks), c + cost)
        return _period(self.at_us, totals)

    def refused_rows(self, marks: str) -> list[object]:
        """The ``budgets`` rows of one more refused attempt; with the anchor when new."""
        row: list[object] = [self.key, self.next_period(marks, 0), self.at_us / _US]
        if self.newest is None:
            row += (self.key, _ANCHOR, 0.0)
        return row

    def prune(self, conn: sqlite3.Connection) -> None:
        """(Refused-attempts log.) Every 64 rows, delete the rows no later call can use as a
        boundary: all before the boundary of ``at - 120 s`` (a margin for clocks read before
        the lock), except the boundary of the day."""
        if self.newest is not None and self.newest.row % _PRUNE_EVERY == _PRUNE_EVERY - 1:
            before = self.table.before[1:-1]
            keep = _one(conn, before, (self.key, _cut(self.at_us - _WINDOW_US)))
            if keep:
                day = _one(conn, before, (self.key, _midnight(self.at_us)))
                conn.execute(_PRUNE, (self.key, keep, day or keep))

    def retry_after(self, conn: sqlite3.Connection, index: int, limit: float, now: float) -> float:
        """Seconds until enough of the window's oldest calls of the class leave it."""
        target = self.window[index] + self.in_window(index) + 1 - int(limit)
        for (period,) in conn.execute(self.table.after, (self.key, _cut(self.at_us))):
            ts_us, totals = _parse(period)
            if totals[index] >= target:
                return max(0.0, (ts_us + _WINDOW_US) / _US - now)
        return ROLLING_WINDOW  # pragma: no cover - the window holds the calls it counted


# -- the plan of one call ---------------------------------------------------------------------


class _LogCheck(NamedTuple):
    """An identity limit of the plan, checked against its admission log."""

    position: int
    """In the plan (the first refusal in plan order is reported)."""
    spend: Spend
    total: int
    """Which running total of a log row it reads (an index into :class:`Totals`)."""
    amount: int
    """What the call adds: 1 call, or its cost in micro-units (``cost_per_day``)."""
    limit: float
    """The limit, in micro-units for the cost."""


class _Watch(NamedTuple):
    """An ``on_anomaly`` watch of the plan (``kind == "attempts"``)."""

    spend: Spend
    total: int
    """Which running total of a log row it watches (an index into :class:`Totals`)."""


class _FastCheck(NamedTuple):
    """A :class:`_LogCheck` as the fast path of :meth:`Charge.apply` evaluates it."""

    daily: bool
    """Counted since 00:00 UTC (else within the rolling window)."""
    field: int
    """The field of a split log row (``t<time>``, row, calls, writes, deletes, cost)."""
    amount: int
    ceiling: float


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a plan needs read and written, derived once per plan (memoized on the plan)."""

    task_id: str
    """The task whose budget the task spends charge ('' if none)."""
    task: tuple[TaskCheck, ...]
    log: str
    """The identity whose admission log the call is checked against ('' if none)."""
    log_day: bool
    """A spend reads today's totals."""
    logged: tuple[_LogCheck, ...]
    cost: int
    """The call's cost in micro-units, added to the log's cost total."""
    marks: str
    watches: tuple[_Watch, ...]
    refused: str
    """The key of the identity's refused-attempts log."""
    columns: str
    """The SQL of the read, after SELECT."""
    checks: tuple[_FastCheck, ...]
    adds: Totals
    """What a log row of this call adds to the totals."""


def _shape(spends: Sequence[Spend]) -> _Shape:
    """The plan's shape: memoized on a :class:`~toolguard.budget.Plan` (what
    :func:`~toolguard.budget.plan` returns), computed afresh for any other sequence."""
    if isinstance(spends, Plan):
        hit = spends.compiled
        if isinstance(hit, _Shape):
            return hit
        shape = _compile(spends)
        spends.compiled = shape
        return shape
    return _compile(tuple(spends))


def _compile(spends: tuple[Spend, ...]) -> _Shape:
    task = tuple(
        TaskCheck(i, s, s.index, to_units(s.amount), to_units(s.limit))
        for i, s in enumerate(spends)
        if s.slot == "#"
    )
    logged: list[_LogCheck] = []
    for i, s in enumerate(spends):
        if s.slot in _INDEX and s.kind != "attempts":
            if s.slot == "c":
                logged.append(_LogCheck(i, s, 4, to_units(s.amount), to_units(s.limit)))
            else:
                logged.append(_LogCheck(i, s, _INDEX[s.slot], 1, s.limit))
    watches = tuple(_Watch(s, _INDEX[s.slot]) for s in spends if s.kind == "attempts")
    log_day = any(c.spend.kind == "day" for c in logged)
    marks = logged[0].spend.marks if logged else ""
    cost = sum(c.amount for c in logged if c.total == 4)
    columns: list[str] = []
    if logged:
        columns += (_ADMITTED.newest, _ADMITTED.before)
        columns += (_ADMITTED.before,) if log_day else ()
    shape = _Shape(
        task_id=task[0].spend.owner if task else "",
        task=task,
        log=logged[0].spend.owner if logged else "",
        log_day=log_day,
        logged=tuple(logged),
        cost=cost,
        marks=marks,
        watches=watches,
        refused=_refused_key(watches[0].spend.owner) if watches else "",
        columns=", ".join(columns),
        checks=tuple(
            _FastCheck(
                c.spend.kind == "day",
                c.total + 1,
                c.amount if c.spend.kind == "day" else 1,
                c.limit,
            )
            for c in logged
        ),
        adds=Totals(1, 1, int("w" in marks), int("d" in marks), cost),
    )
    return shape


class Charge:
    """The budget step of one call: ``columns`` (with ``params``) to select along with whatever
    else the transaction reads first, then :meth:`apply` to check and spend. ``columns`` is
    empty when the call has no budget."""

    __slots__ = ("columns", "now", "now_us", "params", "shape", "tally")

    def __init__(self, spends: Sequence[Spend], now: float) -> None:
        self.now = now
        self.now_us = now_us = max(1, round(now * _US))
        self.shape = shape = _shape(spends) if spends else None
        self.columns = shape.columns if shape is not None else ""
        self.tally: str | None = None
        """After :meth:`apply` admitted the call: its admission-log entry (the ``tally`` of
        its ``credentials`` row), if the identity has limits."""
        params: tuple[object, ...] = ()
        if shape is not None and shape.log:
            log = shape.log
            cut = f"t{now_us - _WINDOW_US:017d};"  # _cut(now_us), inline
            params = (log, log, cut, log, _midnight(now_us)) if shape.log_day else (log, log, cut)
        self.params = params

    def select(self, prefix: str) -> str:
        """``SELECT <prefix>, <columns>`` (cached): one read for the caller's columns and
        this call's budget."""
        return _select(prefix, self.columns)

    def apply(
        self,
        conn: sqlite3.Connection,
        values: Sequence[Any],
        tasks: TaskBudgets,
        *,
        tool: str | None = None,
        task_id: str | None = None,
        force: bool = False,
    ) -> BudgetExceeded | Anomaly | None:
        """Check every spend against the task counters in ``tasks`` and the ``values`` read
        and, if all fit, spend them: the task counters at once, the identity's through
        :attr:`tally`, which the caller writes with the call's credential. Returns None when
        spent; otherwise nothing is spent and the result is the first refusal in the plan's
        order, or an :class:`Anomaly` when the refused call takes an ``attempts`` watch past
        its threshold.

        ``force`` (shadow mode): a refused call is spent all the same (it runs) and the first
        refusal is returned; the ``on_anomaly`` watches are not consulted and no refused
        attempt is logged (the call is in the admission log)."""
        shape = self.shape
        if shape is None:
            return None
        # The common case, inline: everything fits, the log is in order. Anything else takes
        # the general path, which decides the same way and also explains refusals.
        news: list[tuple[int, int]] | None = None
        if shape.task:
            news = tasks.fit(conn, shape.task_id, shape.task)
            if news is None:
                return self._apply(conn, values, tasks, tool=tool, task_id=task_id, force=force)
        log = shape.log
        if log:
            newest = values[0]
            window = values[1]
            day = values[2] if shape.log_day else window
            if newest is None or not window or not day:
                return self._apply(conn, values, tasks, tool=tool, task_id=task_id, force=force)
            # time in µs, row, calls, writes, deletes, cost
            top = list(map(int, newest[1:].split(":")))
            now_us = self.now_us
            if top[0] > now_us:
                return self._apply(conn, values, tasks, tool=tool, task_id=task_id, force=force)
            starts = window.split(":")
            days = day.split(":") if shape.log_day else starts
            for daily, at, amount, ceiling in shape.checks:
                if top[at] - int((days if daily else starts)[at]) + amount > ceiling:
                    return self._apply(conn, values, tasks, tool=tool, task_id=task_id, force=force)
            n = top[1]
            _, calls, writes, deletes, cost = shape.adds
            row = _FORMAT % (
                now_us,
                n + 1,
                top[2] + calls,
                top[3] + writes,
                top[4] + deletes,
                top[5] + cost,
            )
            self.tally = row
        if news:
            tasks.spend(shape.task_id, news)
        return None

    def _apply(
        self,
        conn: sqlite3.Connection,
        values: Sequence[Any],
        tasks: TaskBudgets,
        *,
        tool: str | None = None,
        task_id: str | None = None,
        force: bool = False,
    ) -> BudgetExceeded | Anomaly | None:
        """The general path of :meth:`apply` (refusals, clocks behind, repaired logs)."""
        shape = self.shape
        assert shape is not None
        now = self.now
        refusals: dict[int, BudgetExceeded] = {}
        news: list[tuple[int, int]] = []

        for i, spend, k, amount, limit in shape.task:
            used = tasks.used(conn, shape.task_id, k, spend.label)
            if used + amount > limit:
                refusals[i] = _exceeded(spend, used / _M, None, tool, task_id)
            news.append((k, used + amount))

        log: _Log | None = None
        if shape.log:
            day = values[2] if shape.log_day else None
            log = _Log(shape.log, self.now_us)
            log.read(conn, values[0], values[1], day, daily=shape.log_day)
            for i, spend, index, amount, lim in shape.logged:
                if spend.kind == "day":
                    today = log.today(index)
                    if today + amount > lim:
                        retry = seconds_to_midnight(now) if amount <= lim else None
                        scale = _M if index == 4 else 1
                        refusals[i] = _exceeded(spend, today / scale, retry, tool, task_id)
                else:
                    used = log.in_window(index)
                    if used + 1 > lim:
                        retry_w = log.retry_after(conn, index, lim, now) if lim >= 1 else None
                        refusals[i] = _exceeded(spend, used, retry_w, tool, task_id)

        if refusals and not force:
            anomaly = _watch(conn, shape, log, self.now_us)
            return anomaly if anomaly is not None else refusals[min(refusals)]
        if log is not None:
            if log.newest is None:  # a new log opens with its anchor
                conn.execute(INSERT_TALLY, (shape.log, _ANCHOR, 0.0, 0.0))
            self.tally = log.next_period(shape.marks, shape.cost)
        if news:
            tasks.spend(shape.task_id, news)
        return refusals[min(refusals)] if refusals else None


def charge(
    conn: sqlite3.Connection,
    spends: Sequence[Spend],
    now: float,
    tasks: TaskBudgets,
    *,
    tool: str | None = None,
    task_id: str | None = None,
    force: bool = False,
) -> BudgetExceeded | Anomaly | None:
    """Check and spend task ``spends`` on their own (a :class:`Charge` with its own
    ``SELECT``): an ancestor's budget. Identity spends need their :attr:`Charge.tally` written
    with the call's credential, so they go through :meth:`Store.record_call`. ``force`` as in
    :meth:`Charge.apply`."""
    step = Charge(spends, now)
    values = conn.execute("SELECT " + step.columns, step.params).fetchone() if step.columns else ()
    return step.apply(conn, values, tasks, tool=tool, task_id=task_id, force=force)


def _exceeded(
    spend: Spend, used: float, retry_after: float | None, tool: str | None, task_id: str | None
) -> BudgetExceeded:
    return BudgetExceeded(
        scope=spend.name or spend.label,
        limit=spend.limit,
        used=float(used),
        retry_after=retry_after,
        tool=tool,
        task_id=task_id,
        rule=spend.rule or None,
    )


def _watch(
    conn: sqlite3.Connection, shape: _Shape, log: _Log | None, now_us: int
) -> Anomaly | None:
    """Log a refused attempt for the anomaly watches; the first watch past its threshold."""
    if not shape.watches or log is None:
        return None
    refused = _Log(shape.refused, now_us, _REFUSED)
    newest, window = conn.execute(
        f"SELECT {_REFUSED.newest}, {_REFUSED.before}", (refused.key, refused.key, _cut(now_us))
    ).fetchone()
    refused.read(conn, newest, window)
    rows = refused.refused_rows(shape.marks)
    conn.execute(_write_sql(len(rows) // 3), rows)
    refused.prune(conn)
    for spend, index in shape.watches:
        attempts = log.in_window(index) + refused.in_window(index) + 1
        if attempts > spend.limit:
            return Anomaly(spend, attempts)
    return None


# -- settlement and reading -------------------------------------------------------------------


def settle(
    conn: sqlite3.Connection,
    deltas: Iterable[Settlement],
    tasks: TaskBudgets,
    *,
    now: float,
) -> None:
    """Apply budget deltas (a cost settled to the actual, a refund after a failed mint) in the
    caller's transaction.

    A task slot never goes below 0. The identity's cost moves by a log row, and only for the
    day the call was reserved in: a call reserved before 00:00 UTC and settled after it does
    not change the new day (its actual cost stays in its ``outcome`` event). The identity's
    call counts are not refunded: a call whose credential could not be minted stays counted in
    the per-minute and per-day limits (its ``request`` is in the trail); the task's slots are.
    """
    for spend, period, delta in deltas:
        if spend.slot == "#":
            tasks.settle(spend.owner, spend.index, to_units(delta))
        elif spend.slot == "c" and period == day_key(now):
            identity = spend.owner
            newest = _one(conn, _ADMITTED.newest[1:-1], (identity,))
            if newest:
                ts_us, (n, a, w, d, c) = _parse(newest)
                at_us = max(ts_us, round(now * _US))
                totals = Totals(n + 1, a, w, d, c + to_units(delta))
                conn.execute(
                    INSERT_TALLY, (identity, _period(at_us, totals), at_us / _US, at_us / _US)
                )


def usage(
    conn: sqlite3.Connection,
    *,
    now: float,
    identity: str | None = None,
    task_id: str | None = None,
    budget: Budget | None = None,
) -> dict[str, float]:
    """What is used now, by public scope name: the identity's per-minute and per-day limits
    (``identity.<name>.requests_per_minute``, ...), and a task's (``task.max_calls``, ...;
    ``budget`` gives the layout of the task's row)."""
    out: dict[str, float] = {}
    if task_id is not None and budget is not None:
        calls = trail_calls(conn, task_id)  # one read for every limit of the task
        for name in task_slots(budget):
            label = {"calls": "max_calls", "cost": "max_cost"}.get(name) or name.replace(
                "tool:", "per_tool.", 1
            ).replace("op:", "per_operation.", 1)
            used = spent_on(calls, label)
            out[f"task.{label}"] = used / _M if name == "cost" else used // _M
    if identity is not None:
        now_us = max(1, round(now * _US))
        log = _Log(identity, now_us)
        newest = _one(conn, _ADMITTED.newest[1:-1], (identity,))
        window = _one(conn, _ADMITTED.before[1:-1], (identity, _cut(now_us)))
        day = _one(conn, _ADMITTED.before[1:-1], (identity, _midnight(now_us)))
        log.read(conn, newest, window, day, daily=True)
        x = f"identity.{identity}"
        out[f"{x}.requests_per_minute"] = log.in_window(1)
        out[f"{x}.writes_per_minute"] = log.in_window(2)
        out[f"{x}.deletes_per_minute"] = log.in_window(3)
        out[f"{x}.requests_per_day"] = log.today(1)
        out[f"{x}.cost_per_day"] = log.today(4) / _M
    return out
