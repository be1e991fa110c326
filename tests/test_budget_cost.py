"""Tests for costs in budgets: a rule's fixed ``cost``, a ``cost_arg`` estimate, the reservation
before the call, the settlement to what the tool reports with ``toolguard.report_cost``, exact
sums, and refunds when a call does not run."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock
from langchain_core.tools import BaseTool, tool

import toolguard as tg
from toolguard.store.sqlite.budgets import usage

MIDNIGHT = 1_790_035_200.0  # 2026-09-22T00:00:00Z


class _Tools:
    """Tools that record what ran; ``actual`` is the cost the metered tools report."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.actual: float | None = None
        self.during: Callable[[], None] | None = None

    def all(self) -> list[BaseTool]:
        @tool
        def send_email(to: str, body: str) -> str:
            """Send an email."""
            self.ran.append(f"email:{to}")
            return "sent"

        @tool
        def pay(to: str, amount: float) -> str:
            """Pay an amount."""
            self.ran.append(f"pay:{amount}")
            return "paid"

        @tool
        def llm(model: str, prompt: str) -> str:
            """Ask a model (estimated cost 0.5, reports what it used)."""
            self.ran.append(f"llm:{model}")
            if self.during is not None:
                self.during()
            if self.actual is not None:
                tg.report_cost(self.actual)
            return "answer"

        @tool
        def meter(model: str) -> str:
            """A call with no estimate that reports its cost afterwards."""
            self.ran.append("meter")
            if self.actual is not None:
                tg.report_cost(self.actual)
            return "metered"

        @tool
        def kv_get(key: str) -> str:
            """Read a key (free)."""
            self.ran.append(f"get:{key}")
            return "value"

        return [send_email, pay, llm, meter, kv_get]


def _config(budget: Mapping[str, Any], limits: Mapping[str, Any]) -> dict[str, Any]:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    runner = identities["agent-runner"]
    runner["allow"]["write"] += ["mailto:*", "payments:*"]
    runner["allow"]["read"] += ["llm:*"]
    runner["limits"] = dict(limits)
    tools = copy.deepcopy(BASE_CONFIG["tools"])
    tools["pay"] = {"operation": "write", "resource": "payments:{to}", "cost_arg": "amount"}
    tools["llm"] = {"operation": "read", "resource": "llm:{model}", "cost": 0.5}
    tools["meter"] = {"operation": "read", "resource": "llm:{model}"}
    intents = {
        "spend-job": {
            "identity": "agent-runner",
            "tools": ["send_email", "pay", "llm", "meter", "kv_get"],
            "allow": {
                "read": ["llm:*", "agents:jobs:{job_id}:*"],
                "write": ["mailto:*", "payments:*"],
            },
            "budget": dict(budget),
            "ttl": "15m",
        }
    }
    return {"identities": identities, "tools": tools, "intents": intents}


@pytest.fixture
def tools() -> _Tools:
    return _Tools()


def _setup(
    make_guard: Callable[..., tg.Guard],
    clock: Callable[[], float],
    tools: _Tools,
    *,
    budget: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[tg.Guard, dict[str, tg.GuardedTool]]:
    guard = make_guard(clock=clock, **_config(budget or {}, limits or {}), **kwargs)
    guarded = tg.guard(tools.all(), guard, on_deny="raise")
    return guard, {t.name: t for t in guarded}


def _used(guard: tg.Guard, clock: Callable[[], float], task: tg.TaskSession) -> dict[str, float]:
    return usage(
        guard.store.conn,
        now=clock(),
        identity="agent-runner",
        task_id=task.task_id,
        budget=task.bound.budget,
    )


def test_fixed_costs_add_up_exactly_to_the_limit(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(make_guard, clock, tools, budget={"max_cost": 1.0})
    with guard.task("spend-job", job_id="42") as task:
        for i in range(100):  # 100 x 0.01: a float sum would be 1.0000000000000007
            t["send_email"].invoke({"to": f"a{i}@example.com", "body": "hi"})
        with pytest.raises(tg.BudgetExceeded) as info:
            t["send_email"].invoke({"to": "late@example.com", "body": "hi"})
        assert _used(guard, clock, task)["task.max_cost"] == 1.0
    assert (info.value.scope, info.value.used, info.value.limit) == ("task.max_cost", 1.0, 1.0)
    assert info.value.retry_after is None
    assert len(tools.ran) == 100


def test_a_zero_cost_call_fits_a_cost_budget_spent_to_the_limit(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(make_guard, clock, tools, budget={"max_cost": 0.02})
    with guard.task("spend-job", job_id="42"):
        for to in ("a@x", "b@x"):
            t["send_email"].invoke({"to": to, "body": "hi"})
        with pytest.raises(tg.BudgetExceeded, match=r"task\.max_cost"):
            t["send_email"].invoke({"to": "c@x", "body": "hi"})
        assert t["kv_get"].invoke({"key": "agents:jobs:42:x"}) == "value"


def test_cost_arg_reserves_the_argument_and_refuses_what_does_not_fit(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(
        make_guard, clock, tools, budget={"max_cost": 10.0}, limits={"cost_per_day": 12.0}
    )
    with guard.task("spend-job", job_id="42") as task:
        t["pay"].invoke({"to": "acme", "amount": 7})
        with pytest.raises(tg.BudgetExceeded) as info:
            t["pay"].invoke({"to": "acme", "amount": 4})
        assert (info.value.scope, info.value.used, info.value.limit) == (
            "task.max_cost",
            7.0,
            10.0,
        )
        assert _used(guard, clock, task)["task.max_cost"] == 7.0  # the refusal spent nothing
        t["pay"].invoke({"to": "acme", "amount": 3})
        assert _used(guard, clock, task)["task.max_cost"] == 10.0
    with guard.task("spend-job", job_id="43") as other:
        with pytest.raises(tg.BudgetExceeded) as info:
            t["pay"].invoke({"to": "acme", "amount": 2.5})
        t["pay"].invoke({"to": "acme", "amount": 2})
        assert _used(guard, clock, other)["identity.agent-runner.cost_per_day"] == 12.0
    assert info.value.scope == "identity.agent-runner.cost_per_day"
    assert info.value.used == 10.0
    assert info.value.retry_after == pytest.approx(86400 - clock() % 86400)
    assert info.value.rule == "identities.agent-runner.limits.cost_per_day"
    assert tools.ran == ["pay:7.0", "pay:3.0", "pay:2.0"]


def test_an_estimate_larger_than_the_whole_daily_limit_never_fits(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(make_guard, clock, tools, limits={"cost_per_day": 5.0})
    with guard.task("spend-job", job_id="42"), pytest.raises(tg.BudgetExceeded) as info:
        t["pay"].invoke({"to": "acme", "amount": 5.01})
    assert (info.value.used, info.value.retry_after) == (0.0, None)


def test_report_cost_settles_the_reservation_down_to_the_actual(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(
        make_guard, clock, tools, budget={"max_cost": 1.0}, limits={"cost_per_day": 1.0}
    )
    tools.actual = 0.2
    with guard.task("spend-job", job_id="42") as task:
        t["llm"].invoke({"model": "m", "prompt": "p"})
        guard.store.flush()  # the outcome (and its settlement) rides in the next transaction
        used = _used(guard, clock, task)
        assert (used["task.max_cost"], used["identity.agent-runner.cost_per_day"]) == (0.2, 0.2)
        tools.actual = None
        t["llm"].invoke({"model": "m", "prompt": "p"})  # 0.2 + 0.5 reserved: fits
        with pytest.raises(tg.BudgetExceeded, match=r"0\.70 of 1 used"):
            t["llm"].invoke({"model": "m", "prompt": "p"})
    request, outcome = (
        guard.audit.events(task_id=task.task_id, kind="request")[0],
        (guard.audit.events(task_id=task.task_id, kind="outcome")[0]),
    )
    assert (request.cost, outcome.cost) == (0.5, 0.2)


def test_an_actual_cost_above_the_estimate_is_recorded_and_then_refuses(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    """The tool already ran, so the overshoot is spent: the counter shows the truth (above the
    limit) and the scope refuses every later call, free ones included."""
    guard, t = _setup(make_guard, clock, tools, budget={"max_cost": 1.0})
    tools.actual = 1.25
    with guard.task("spend-job", job_id="42") as task:
        t["llm"].invoke({"model": "m", "prompt": "p"})
        with pytest.raises(tg.BudgetExceeded) as info:
            t["kv_get"].invoke({"key": "agents:jobs:42:x"})
        assert _used(guard, clock, task)["task.max_cost"] == 1.25
    assert (info.value.scope, info.value.used, info.value.limit) == ("task.max_cost", 1.25, 1.0)


def test_a_cost_reported_without_an_estimate_is_spent(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(
        make_guard, clock, tools, budget={"max_cost": 1.0}, limits={"cost_per_day": 2.0}
    )
    tools.actual = 0.3
    with guard.task("spend-job", job_id="42") as task:
        t["meter"].invoke({"model": "m"})
        t["meter"].invoke({"model": "m"})
        guard.store.flush()
        used = _used(guard, clock, task)
    assert used["task.max_cost"] == 0.6
    assert used["identity.agent-runner.cost_per_day"] == 0.6


def test_a_settlement_after_midnight_does_not_change_the_new_day(
    make_guard: Callable[..., tg.Guard], tools: _Tools
) -> None:
    clock = Clock(MIDNIGHT - 1.0)
    guard, t = _setup(
        make_guard, clock, tools, budget={"max_cost": 5.0}, limits={"cost_per_day": 1.0}
    )
    tools.actual = 0.1
    tools.during = lambda: clock.advance(2.0)  # the call ends in the new day
    with guard.task("spend-job", job_id="42") as task:
        t["llm"].invoke({"model": "m", "prompt": "p"})  # reserved 0.5 yesterday
        tools.during = None
        tools.actual = None
        t["llm"].invoke({"model": "m", "prompt": "p"})
        t["llm"].invoke({"model": "m", "prompt": "p"})  # 1.0 today: the refund did not count
        with pytest.raises(tg.BudgetExceeded, match="cost_per_day"):
            t["llm"].invoke({"model": "m", "prompt": "p"})
        used = _used(guard, clock, task)
    assert used["task.max_cost"] == pytest.approx(1.1)  # the task settles to the actual
    assert used["identity.agent-runner.cost_per_day"] == 1.0


class _FailingProvider:
    """A credential broker that is down."""

    def mint(self, **_: Any) -> tg.Credential:
        raise RuntimeError("broker unavailable")

    def end_task(self, task_id: str, jtis: Sequence[str]) -> None:
        pass


def test_a_call_whose_credential_fails_gets_its_cost_refunded(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    guard, t = _setup(
        make_guard,
        clock,
        tools,
        budget={"max_cost": 1.0, "max_calls": 5},
        limits={"cost_per_day": 1.0, "requests_per_day": 10},
        providers={"send_email": _FailingProvider()},
    )
    with guard.task("spend-job", job_id="42") as task:
        with pytest.raises(tg.PolicyDenied, match="broker unavailable"):
            t["send_email"].invoke({"to": "a@x", "body": "hi"})
        used = _used(guard, clock, task)
    assert used["task.max_cost"] == 0.0
    assert used["task.max_calls"] == 0
    assert used["identity.agent-runner.cost_per_day"] == 0.0
    assert used["identity.agent-runner.requests_per_day"] == 1  # its request is in the trail
    assert tools.ran == []


# -- a task's budget is its trail ----------------------------------------------------------------


def test_a_task_spent_through_another_guard_is_counted_from_its_trail(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools
) -> None:
    """A second guard on the same database (as a process that did not start the task) counts
    the task's spend from its committed trail: requests, settled costs, refunds."""
    budget = {"max_calls": 4, "max_cost": 1.0, "per_tool": {"llm": 2}}
    first, t1 = _setup(make_guard, clock, tools, budget=budget)
    second, t2 = _setup(
        make_guard, clock, tools, budget=budget, providers={"send_email": _FailingProvider()}
    )
    tools.actual = 0.3
    with first.task("spend-job", job_id="42") as task:
        t1["llm"].invoke({"model": "m", "prompt": "p"})  # reserves 0.5, settles to 0.3
        first.store.flush()
        with pytest.raises(tg.PolicyDenied, match="broker unavailable"):
            t2["send_email"].invoke({"to": "a@x", "body": "hi"})  # refunded: does not count
        tools.actual = None
        t2["llm"].invoke({"model": "m", "prompt": "p"})  # 0.3 + 0.5: second of per_tool.llm
        with pytest.raises(tg.BudgetExceeded) as info:
            t2["llm"].invoke({"model": "m", "prompt": "p"})
        assert (info.value.scope, info.value.used) == ("task.per_tool.llm", 2)
        with pytest.raises(tg.BudgetExceeded) as info:
            t2["pay"].invoke({"to": "x", "amount": 0.25})  # 0.8 + 0.25 > 1.0
        assert (info.value.scope, info.value.used) == ("task.max_cost", pytest.approx(0.8))
        t2["kv_get"].invoke({"key": "agents:jobs:42:k"})  # the third call of four
        second.store.flush()
        used = _used(first, clock, task)  # any connection counts the committed trail
        assert (used["task.max_calls"], used["task.per_tool.llm"]) == (3, 2)
        assert used["task.max_cost"] == pytest.approx(0.8)


def test_a_rolled_back_transaction_leaves_the_task_counters_as_they_were(
    make_guard: Callable[..., tg.Guard], clock: Clock, tools: _Tools, monkeypatch: Any
) -> None:
    """If the pre-call transaction fails after the budget was spent in memory (here: the
    credentials insert), the call does not run and its spend is undone with the transaction."""
    guard, t = _setup(make_guard, clock, tools, budget={"max_calls": 2, "max_cost": 1.0})
    with guard.task("spend-job", job_id="42") as task:
        t["llm"].invoke({"model": "m", "prompt": "p"})
        store = guard.store
        real = store._writer_conn

        class _Failing:
            """The writer connection, failing on the credentials insert."""

            def __init__(self, conn: Any) -> None:
                self._conn = conn

            def execute(self, sql: str, *args: Any) -> Any:
                if sql.startswith("INSERT INTO credentials"):
                    raise sqlite3.OperationalError("disk I/O error")
                return self._conn.execute(sql, *args)

        monkeypatch.setattr(store, "_writer_conn", lambda: _Failing(real()))
        with pytest.raises(tg.AuditError, match="disk I/O error"):
            t["llm"].invoke({"model": "m", "prompt": "p"})
        monkeypatch.setattr(store, "_writer_conn", real)
        assert tools.ran == ["llm:m"]
        t["llm"].invoke({"model": "m", "prompt": "p"})  # the second call of two still fits
        with pytest.raises(tg.BudgetExceeded, match="max_calls"):
            t["kv_get"].invoke({"key": "agents:jobs:42:k"})
        assert _used(guard, clock, task)["task.max_calls"] == 2
