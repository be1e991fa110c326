"""Budget rules: what one call spends, in which scope and window. Pure: no SQL, no clock.

:func:`plan` turns a call of a task into the :class:`Spend` of every limit it must fit in; the
store checks and spends all of them atomically, in the transaction that records the call
(:mod:`toolguard.store.sqlite.budgets`). Kinds of window:

- ``total``: for the life of the scope (a task's ``max_calls``, ``max_cost``, ``per_tool``,
  ``per_operation``);
- ``day``: a calendar day in UTC, reset at 00:00 UTC (``requests_per_day``, ``cost_per_day``);
- ``rolling``: any 60 seconds (``requests_per_minute``, ``writes_per_minute``,
  ``deletes_per_minute``): never more than the limit inside any 60-second interval, across
  clock minutes too;
- ``attempts``: not a budget but a watch for the identity's ``on_anomaly`` rule: the calls
  attempted (admitted and refused by a budget) over the same rolling 60 seconds.

Scope names (``BudgetExceeded.scope``) read like ``task.max_calls``, ``task.per_tool.kv_set``
or ``identity.agent-runner.writes_per_minute``; the rule (``BudgetExceeded.rule``) is the
config location of the limit (``intents.process-job.budget.max_calls``).

Costs are counted in millionths (:data:`COST_RESOLUTION`): amounts and limits are compared as
whole numbers of micro-units, so ``100 x 0.01`` fits a ``max_cost`` of ``1.00`` exactly. Time
windows are counted in whole microseconds. See docs/budgets.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:  # annotations only: the store (and the CLI) need not import pydantic
    from .config import Budget
    from .intent import BoundTask, Call

__all__ = [
    "COST_RESOLUTION",
    "DAY_SECONDS",
    "ROLLING_WINDOW",
    "Plan",
    "Settlement",
    "Spend",
    "SpendKind",
    "day_key",
    "day_start",
    "plan",
    "seconds_to_midnight",
    "task_slots",
    "task_spends",
    "to_units",
]

ROLLING_WINDOW = 60.0
DAY_SECONDS = 86400
"""A UTC day, in seconds (Unix time has no leap seconds): every day boundary is a multiple."""
"""Length of the rolling window of the per-minute limits, in seconds."""
COST_RESOLUTION = 1_000_000
"""Costs and limits are compared as whole numbers of 1/COST_RESOLUTION (micro-units)."""
WRITE_OPERATIONS = frozenset({"write", "delete"})
"""The operations ``writes_per_minute`` counts (``deletes_per_minute`` counts ``delete``)."""

SpendKind = Literal["total", "day", "rolling", "attempts"]


@dataclass(frozen=True, slots=True)
class Spend:
    """One limit a call must fit in.

    ``label`` is the limit's short name (``max_calls``, ``per_tool.kv_set``,
    ``requests_per_minute``); ``name`` the public scope (``task.max_calls``,
    ``identity.agent-runner.requests_per_minute``); ``rule`` the config location of the limit.
    ``amount`` is what this call spends (1 call, or its cost estimate).

    Where the state lives: ``owner`` is the task id (task limits) or the identity (identity
    limits) whose state it is; ``slot`` is ``"#"`` for one counter of the task's budget,
    ``index`` its position (see :func:`task_slots`), or ``"a"``, ``"w"``, ``"d"``, ``"c"``
    for a running total of the identity's admission log (calls, writes and deletes, deletes,
    cost), shared by its per-minute and per-day limits, with ``marks`` the counts this call
    adds (``a``, ``aw`` or ``awd``). For ``attempts`` (the ``on_anomaly`` watches) the
    ``limit`` is the threshold, a multiple of the watched limit.
    """

    owner: str
    label: str
    kind: SpendKind
    limit: float
    amount: float
    name: str = ""
    rule: str = ""
    slot: str = ""
    marks: str = ""
    index: int = -1
    """The counter of the task's budget (``slot == "#"``); -1 for the identity's limits."""


class Settlement(NamedTuple):
    """A change to what a call spent, applied after it ran: its actual cost in place of the
    estimate, or a refund when no credential could be minted
    (:func:`toolguard.store.sqlite.budgets.settle`)."""

    spend: Spend
    """The limit whose state moves (a task counter, or the identity's cost total)."""
    period: str
    """The UTC day the call was reserved in (:func:`day_key`) for a ``day`` limit, else ``""``."""
    delta: float
    """What to add (negative to give back), in the limit's unit."""


def to_units(value: float) -> int:
    """A cost or count as a whole number of micro-units (round half to even)."""
    return round(value * COST_RESOLUTION)


@lru_cache(maxsize=8)
def _day_of(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * DAY_SECONDS, tz=timezone.utc).strftime("%Y-%m-%d")


def day_key(now: float) -> str:
    """The UTC calendar day of a timestamp: ``2026-11-22``."""
    return _day_of(int(now // DAY_SECONDS))


def day_start(now: float) -> float:
    """The start (00:00 UTC) of the UTC day of a timestamp."""
    return now - (now % DAY_SECONDS)


def seconds_to_midnight(now: float) -> float:
    """Seconds until the next 00:00 UTC (Unix time has no leap seconds)."""
    return DAY_SECONDS - (now % DAY_SECONDS)


class Plan(tuple[Spend, ...]):
    """The spends of one call (a tuple, as :func:`plan` returns it), with what is derived from
    it memoized on the plan itself rather than in a cache keyed by ``id()``: its task-only
    part (:func:`task_spends`) and the store's compiled form of it
    (:mod:`toolguard.store.sqlite.budgets`). A plan is built once per task, tool, operation and
    cost, so a task's later calls reuse both."""

    task_only: Plan | None = None
    """The task-scope spends (``kind == "total"``), once :func:`task_spends` asked for them."""
    compiled: object = None
    """The store's form of the plan (a ``toolguard.store.sqlite.budgets`` shape), once compiled."""


_PLANS: dict[tuple[str, str, str, float], tuple[BoundTask, Plan]] = {}
_PLANS_MAX = 1024


def plan(task: BoundTask, task_id: str, call: Call) -> Plan:
    """Every limit this call must fit in: task scopes first, then identity scopes, then the
    anomaly watches (``attempts``) of the identity's per-minute limits.

    Memoized per task, tool, operation and cost (a bounded cache), so a task's calls after the
    first cost a dictionary lookup.
    """
    key = (task_id, call.tool, call.operation, call.cost)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is task:
        return hit[1]
    spends = Plan(_plan(task, task_id, call))
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = (task, spends)
    return spends


def task_spends(task: BoundTask, task_id: str, call: Call) -> Plan:
    """Only the task-scope spends of :func:`plan` (what a delegated call also charges to each
    ancestor task); memoized on the plan."""
    full = plan(task, task_id, call)
    only = full.task_only
    if only is None:
        only = full.task_only = Plan(s for s in full if s.kind == "total")
    return only


def task_slots(budget: Budget) -> dict[str, int]:
    """The layout of a task's budget row: one slot per call count and the cost, in a fixed
    order (``calls``, ``tool:<name>``..., ``op:<name>``..., ``cost``)."""
    names = ["calls"] if budget.max_calls is not None else []
    names += [f"tool:{t}" for t in sorted(budget.per_tool)]
    names += [f"op:{o}" for o in sorted(budget.per_operation)]
    if budget.max_cost is not None:
        names.append("cost")
    return {name: k for k, name in enumerate(names)}


def _plan(task: BoundTask, task_id: str, call: Call) -> tuple[Spend, ...]:
    spends: list[Spend] = []
    b = task.budget
    slots = task_slots(b)
    at = f"intents.{task.intent}.budget"

    def task_scope(slot: str, label: str, limit: float, amount: float) -> None:
        spends.append(
            Spend(
                task_id, label, "total", limit, amount, name=f"task.{label}",
                rule=f"{at}.{label}", slot="#", index=slots[slot],
            )
        )  # fmt: skip

    if b.max_calls is not None:
        task_scope("calls", "max_calls", b.max_calls, 1)
    per_tool = b.per_tool.get(call.tool)
    if per_tool is not None:
        task_scope(f"tool:{call.tool}", f"per_tool.{call.tool}", per_tool, 1)
    per_op = b.per_operation.get(call.operation)
    if per_op is not None:
        task_scope(f"op:{call.operation}", f"per_operation.{call.operation}", per_op, 1)
    if b.max_cost is not None:
        # A 0-cost call still checks the scope: after an overshoot (an actual cost above its
        # estimate) the scope refuses every call.
        task_scope("cost", "max_cost", b.max_cost, call.cost)

    lim = task.limits
    x = task.identity
    il = f"identities.{x}.limits"
    op = call.operation
    marks = "awd" if op == "delete" else "aw" if op in WRITE_OPERATIONS else "a"

    def logged(slot: str, label: str, kind: SpendKind, limit: float, amount: float) -> Spend:
        return Spend(
            x, label, kind, limit, amount, name=f"identity.{x}.{label}",
            rule=f"{il}.{label}", slot=slot, marks=marks,
        )  # fmt: skip

    rolling: list[Spend] = []
    if lim.requests_per_minute is not None:
        rolling.append(logged("a", "requests_per_minute", "rolling", lim.requests_per_minute, 1))
    if lim.writes_per_minute is not None and "w" in marks:
        rolling.append(logged("w", "writes_per_minute", "rolling", lim.writes_per_minute, 1))
    if lim.deletes_per_minute is not None and "d" in marks:
        rolling.append(logged("d", "deletes_per_minute", "rolling", lim.deletes_per_minute, 1))
    spends += rolling
    if lim.requests_per_day is not None:
        spends.append(logged("a", "requests_per_day", "day", lim.requests_per_day, 1))
    if lim.cost_per_day is not None:
        spends.append(logged("c", "cost_per_day", "day", lim.cost_per_day, call.cost))
    multiple = lim.on_anomaly.revoke_when_rate_exceeds if lim.on_anomaly is not None else None
    if multiple is not None:
        for r in rolling:
            if r.limit > 0:  # a limit of 0 refuses every call: there is no rate to exceed
                spends.append(
                    Spend(
                        x, f"{multiple:g}x its {r.label} limit of {r.limit:g}", "attempts",
                        multiple * r.limit, 1, name=r.name, rule=f"{il}.on_anomaly",
                        slot=r.slot, marks=marks,
                    )
                )  # fmt: skip
    return tuple(spends)
