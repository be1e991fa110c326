"""A task's budget is its trail: the counters of the tasks this process runs.

What a task has spent (``max_calls``, ``per_tool``, ``per_operation``, ``max_cost``) is its
``request`` events and its descendants' (a delegated call spends its ancestors' budgets too),
except calls that did not run for lack of a credential, with each call's cost as its ``outcome``
settled it. Those events commit in the transaction that checks the spend, so no budget row is
written per call. A task lives in one process (its :class:`~toolguard.TaskSession`): that
process keeps the task's counters in memory (:class:`TaskBudgets`), changes them only inside its
write transactions and undoes the changes of a transaction that rolls back; a task it did not
start is counted from the trail on first use (:func:`spent_from_trail`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ...budget import COST_RESOLUTION, Spend, to_units

__all__ = ["TaskBudgets", "TaskCheck", "spent_from_trail", "spent_on", "trail_calls"]

_M = COST_RESOLUTION

_TRAIL = (
    "WITH RECURSIVE d(id) AS (SELECT ? UNION SELECT t.task_id FROM tasks t JOIN d"
    " ON t.parent_id = d.id) SELECT kind, jti, tool, operation, cost, outcome FROM events"
    " WHERE task_id IN (SELECT id FROM d) AND kind IN ('request', 'outcome') ORDER BY seq"
)


class TaskCheck(NamedTuple):
    """A task limit of a call's plan, as the store checks it (amounts in micro-units)."""

    position: int
    """In the plan (the first refusal in plan order is reported)."""
    spend: Spend
    slot: int
    """The counter of the task's budget (:func:`~toolguard.budget.task_slots`)."""
    amount: int
    limit: int


def spent_from_trail(conn: sqlite3.Connection, task_id: str, label: str) -> int:
    """What a task and its descendants spent on one limit (``max_calls``,
    ``per_tool.<tool>``, ``per_operation.<op>``, ``max_cost``), counted from the committed
    trail in micro-units: every ``request``, except calls that did not run for lack of a
    credential; the cost an ``outcome`` settled, else the estimate of the ``request``."""
    return spent_on(trail_calls(conn, task_id), label)


def trail_calls(conn: sqlite3.Connection, task_id: str) -> list[tuple[str, str, float]]:
    """The calls a task and its descendants made, from the committed trail (one query):
    ``(tool, operation, cost)`` of each call that ran, its cost as its ``outcome`` settled it,
    else the estimate of its ``request``."""
    calls: dict[str, tuple[str, str, float]] = {}
    for kind, jti, tool, operation, cost, outcome in conn.execute(_TRAIL, (task_id,)):
        if kind == "request":
            calls[jti] = (tool, operation, cost or 0.0)
        elif jti in calls:
            if outcome == "not-run":
                del calls[jti]
            else:
                tool, operation, _ = calls[jti]
                calls[jti] = (tool, operation, cost or 0.0)
    return list(calls.values())


def spent_on(calls: Sequence[tuple[str, str, float]], label: str) -> int:
    """What ``calls`` (:func:`trail_calls`) spent on one limit, in micro-units."""
    what, _, name = label.partition(".")
    if what == "max_cost":
        return sum(to_units(cost) for _, _, cost in calls)
    if what == "per_tool":
        return sum(_M for tool, _, _ in calls if tool == name)
    if what == "per_operation":
        return sum(_M for _, operation, _ in calls if operation == name)
    return _M * len(calls)


class TaskBudgets:
    """The budget counters of the tasks running in this process (see the module's docstring).

    Counters are micro-units per slot of :func:`~toolguard.budget.task_slots`. The store calls
    every method with its write lock held, inside a transaction, and calls :meth:`commit` or
    :meth:`rollback` when that transaction ends.
    """

    __slots__ = ("_fresh", "_rows", "_undo")

    def __init__(self) -> None:
        self._rows: dict[str, dict[int, int]] = {}
        self._fresh: set[str] = set()  # started here: nothing spent before
        self._undo: list[tuple[str, dict[int, int] | None]] = []  # rows as they were

    def started(self, task_id: str) -> None:
        """A task started in this process: it has spent nothing."""
        self._rows[task_id] = {}
        self._fresh.add(task_id)

    def ended(self, task_id: str) -> None:
        """Forget an ended task (a later use counts it from the trail)."""
        self._rows.pop(task_id, None)
        self._fresh.discard(task_id)

    def fit(
        self,
        conn: sqlite3.Connection,
        task_id: str,
        spends: Sequence[TaskCheck],
    ) -> list[tuple[int, int]] | None:
        """The new values ``(slot, value)`` of the slots a call spends, or None if one would
        pass its limit. Changes nothing but what it counts from the
        trail."""
        row = self._rows.get(task_id)
        news = []
        for _, spend, k, amount, limit in spends:
            used = row.get(k) if row is not None else None
            if used is None:
                used = self.used(conn, task_id, k, spend.label)
                row = self._rows[task_id]
            used += amount
            if used > limit:
                return None
            news.append((k, used))
        return news

    def used(self, conn: sqlite3.Connection, task_id: str, k: int, label: str) -> int:
        """What the task used of slot ``k``; counted from the trail if not known here."""
        row = self._rows.get(task_id)
        value = row.get(k) if row is not None else None
        if value is None:
            value = 0 if task_id in self._fresh else spent_from_trail(conn, task_id, label)
            self.spend(task_id, ((k, value),))
        return value

    def spend(self, task_id: str, news: Iterable[tuple[int, int]]) -> None:
        """Set slots to new values (undone if the transaction rolls back)."""
        row = self._rows.get(task_id)
        self._undo.append((task_id, None if row is None else row.copy()))
        if row is None:
            row = self._rows[task_id] = {}
        row.update(news)

    def settle(self, task_id: str, k: int, delta: int) -> None:
        """Move a known slot by ``delta`` (never below 0); an unknown one is in the trail."""
        row = self._rows.get(task_id)
        if row is not None and k in row:
            self.spend(task_id, ((k, max(0, row[k] + delta)),))

    def mark(self) -> int:
        return len(self._undo)

    def rollback(self, mark: int = 0) -> None:
        """Undo the changes made since ``mark`` (the transaction's start by default)."""
        undo = self._undo
        while len(undo) > mark:
            task_id, row = undo.pop()
            if row is None:
                self._rows.pop(task_id, None)
            else:
                self._rows[task_id] = row

    def commit(self) -> None:
        self._undo.clear()
