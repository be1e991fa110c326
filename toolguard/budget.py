"""Budget rules: what one allowed call spends, in which scope and window. Pure: no SQL.

The store checks and spends every :class:`Spend` of a call atomically, in the transaction that
records the call. Kinds of window:

- ``total``: for the life of the scope (a task's ``max_calls``, ``max_cost``, ``per_tool``, ...);
- ``day``: a calendar day in UTC, reset at 00:00 UTC (``requests_per_day``, ``cost_per_day``);
- ``rolling``: any 60 seconds (``requests_per_minute``, ``writes_per_minute``, ...): never more
  than the limit inside any 60-second interval, across clock minutes too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from .intent import BoundTask, Call

__all__ = ["ROLLING_WINDOW", "Spend", "day_key", "plan", "seconds_to_midnight"]

ROLLING_WINDOW = 60.0
WRITE_OPERATIONS = frozenset({"write", "delete"})


@dataclass(frozen=True, slots=True)
class Spend:
    """One limit a call spends against. ``scope`` is the counter's key in the store."""

    scope: str
    label: str
    kind: Literal["total", "day", "rolling"]
    limit: float
    amount: float


def day_key(now: float) -> str:
    """The UTC calendar day of a timestamp: ``2026-11-22``."""
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y-%m-%d")


def seconds_to_midnight(now: float) -> float:
    """Seconds until the next 00:00 UTC."""
    return 86400.0 - (now % 86400.0)


def plan(task: BoundTask, task_id: str, call: Call) -> tuple[Spend, ...]:
    """Every limit this call must fit in, task scopes first, then identity scopes."""
    spends: list[Spend] = []
    b = task.budget
    t = f"task:{task_id}"
    if b.max_calls is not None:
        spends.append(Spend(f"{t}:calls", "max_calls", "total", b.max_calls, 1))
    if b.max_cost is not None and call.cost:
        spends.append(Spend(f"{t}:cost", "max_cost", "total", b.max_cost, call.cost))
    elif b.max_cost is not None:
        spends.append(Spend(f"{t}:cost", "max_cost", "total", b.max_cost, 0.0))
    per_tool = b.per_tool.get(call.tool)
    if per_tool is not None:
        spends.append(Spend(f"{t}:tool:{call.tool}", f"per_tool.{call.tool}", "total", per_tool, 1))
    per_op = b.per_operation.get(call.operation)
    if per_op is not None:
        spends.append(
            Spend(f"{t}:op:{call.operation}", f"per_operation.{call.operation}", "total", per_op, 1)
        )
    lim = task.limits
    i = f"identity:{task.identity}"
    if lim.requests_per_minute is not None:
        spends.append(
            Spend(f"{i}:rpm", "requests_per_minute", "rolling", lim.requests_per_minute, 1)
        )
    if lim.writes_per_minute is not None and call.operation in WRITE_OPERATIONS:
        spends.append(Spend(f"{i}:wpm", "writes_per_minute", "rolling", lim.writes_per_minute, 1))
    if lim.deletes_per_minute is not None and call.operation == "delete":
        spends.append(Spend(f"{i}:dpm", "deletes_per_minute", "rolling", lim.deletes_per_minute, 1))
    if lim.requests_per_day is not None:
        spends.append(Spend(f"{i}:rpd", "requests_per_day", "day", lim.requests_per_day, 1))
    if lim.cost_per_day is not None:
        spends.append(Spend(f"{i}:cpd", "cost_per_day", "day", lim.cost_per_day, call.cost))
    return tuple(spends)
