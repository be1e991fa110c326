"""Tests for toolguard.budget (the pure plan of a call's spends) and the budget state in
toolguard.store.sqlite.budgets, through guards on real SQLite files with a controllable clock:
rolling per-minute windows (also across clock minutes), UTC days, exact counters, the fields of
BudgetExceeded, and denials that spend nothing."""

from __future__ import annotations

import copy
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock, make_config, raw_sql
from hypothesis import given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard import budget as budget_module
from toolguard.budget import (
    DAY_SECONDS,
    ROLLING_WINDOW,
    Plan,
    Spend,
    day_key,
    day_start,
    plan,
    seconds_to_midnight,
    task_slots,
    task_spends,
    to_units,
)
from toolguard.config import Budget
from toolguard.intent import Policy
from toolguard.policy import derive_call
from toolguard.store.sqlite.budgets import usage

JOB = "agents:jobs:42:state"
MIDNIGHT = 1_790_035_200.0  # 2026-09-22T00:00:00Z
assert MIDNIGHT % 86400 == 0
MINUTE = 1_790_000_040.0  # a clock minute: xx:xx:00
assert MINUTE % 60 == 0


def _shape(limits: dict[str, Any] | None, budget: dict[str, Any] | None) -> dict[str, Any]:
    """The test config's identities and intents, with ``process-job`` allowed to delete and
    given ``budget``, and ``agent-runner`` given ``limits``."""
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["limits"] = limits or {}
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    job = intents["process-job"]
    job["tools"] = ["kv_get", "kv_set", "kv_delete"]
    job["allow"]["delete"] = ["agents:jobs:{job_id}:*"]
    job["budget"] = budget or {}
    return {"identities": identities, "intents": intents}


def _config(
    tmp_path: Path, *, limits: dict[str, Any] | None = None, budget: dict[str, Any] | None = None
) -> dict[str, Any]:
    return make_config(tmp_path, **_shape(limits, budget))


def _guard(
    make_guard: Callable[..., tg.Guard],
    clock: Callable[[], float],
    *,
    limits: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
) -> tg.Guard:
    return make_guard(clock=clock, **_shape(limits, budget))


def _call(guard: tg.Guard, tool: str = "kv_get") -> tg.BudgetExceeded | None:
    """One guarded call through the pipeline; the refusal if a budget refused it."""
    try:
        permit = guard.authorize(tool, {"key": JOB, "value": "v"})
    except tg.BudgetExceeded as exc:
        return exc
    guard.finish(permit)
    return None


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _usage(guard: tg.Guard, clock: Clock, task: tg.TaskSession | None = None) -> dict[str, float]:
    return usage(
        guard.store.conn,
        now=clock(),
        identity="agent-runner",
        task_id=task.task_id if task else None,
        budget=task.bound.budget if task else None,
    )


# -- the plan (pure) ---------------------------------------------------------------------------


def _plan(tmp_path: Path, tool: str, **config: Any) -> tuple[Spend, ...]:
    policy = Policy(tg.load_config(_config(tmp_path, **config)))
    bound = policy.bind("process-job", {"job_id": "42"})
    call = derive_call(policy.tools, tool, {"key": JOB, "value": "v"}, "cid")
    assert not isinstance(call, tg.PolicyDenied)
    return plan(bound, "t1", call)  # type: ignore[arg-type]


ALL_LIMITS = {
    "requests_per_minute": 10,
    "writes_per_minute": 5,
    "deletes_per_minute": 2,
    "requests_per_day": 100,
    "cost_per_day": 5.0,
    "on_anomaly": {"revoke_when_rate_exceeds": "5x"},
}
ALL_BUDGET = {
    "max_calls": 20,
    "max_cost": 1.0,
    "per_tool": {"kv_set": 3},
    "per_operation": {"write": 4},
}


def test_plan_names_every_scope_of_a_write_in_order(tmp_path: Path) -> None:
    spends = _plan(tmp_path, "kv_set", limits=ALL_LIMITS, budget=ALL_BUDGET)
    assert [(s.name, s.kind, s.limit) for s in spends] == [
        ("task.max_calls", "total", 20),
        ("task.per_tool.kv_set", "total", 3),
        ("task.per_operation.write", "total", 4),
        ("task.max_cost", "total", 1.0),
        ("identity.agent-runner.requests_per_minute", "rolling", 10),
        ("identity.agent-runner.writes_per_minute", "rolling", 5),
        ("identity.agent-runner.requests_per_day", "day", 100),
        ("identity.agent-runner.cost_per_day", "day", 5.0),
        ("identity.agent-runner.requests_per_minute", "attempts", 50),
        ("identity.agent-runner.writes_per_minute", "attempts", 25),
    ]
    assert [s.rule for s in spends[:5]] == [
        "intents.process-job.budget.max_calls",
        "intents.process-job.budget.per_tool.kv_set",
        "intents.process-job.budget.per_operation.write",
        "intents.process-job.budget.max_cost",
        "identities.agent-runner.limits.requests_per_minute",
    ]
    assert spends[-1].rule == "identities.agent-runner.limits.on_anomaly"
    assert {s.marks for s in spends if s.slot in "awdc"} == {"aw"}


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        pytest.param("kv_get", ["requests_per_minute"], id="read"),
        pytest.param("kv_set", ["requests_per_minute", "writes_per_minute"], id="write"),
        pytest.param(
            "kv_delete",
            ["requests_per_minute", "writes_per_minute", "deletes_per_minute"],
            id="delete",
        ),
    ],
)
def test_plan_per_minute_limits_follow_the_operation(
    tmp_path: Path, tool: str, expected: list[str]
) -> None:
    spends = _plan(tmp_path, tool, limits=ALL_LIMITS)
    assert [s.label for s in spends if s.kind == "rolling"] == expected


def test_plan_watches_no_zero_limit_and_nothing_without_on_anomaly(tmp_path: Path) -> None:
    limits = {"requests_per_minute": 0, "writes_per_minute": 3, "on_anomaly": {}}
    assert [s for s in _plan(tmp_path / "a", "kv_set", limits=limits) if s.kind == "attempts"] == []
    limits["on_anomaly"] = {"revoke_when_rate_exceeds": 2.5}
    watches = [s for s in _plan(tmp_path / "b", "kv_set", limits=limits) if s.kind == "attempts"]
    assert [(s.label, s.limit) for s in watches] == [("2.5x its writes_per_minute limit of 3", 7.5)]


def test_plan_of_a_call_without_budgets_is_empty(tmp_path: Path) -> None:
    assert _plan(tmp_path, "kv_set") == ()


def test_plan_is_memoized_per_task_and_call_shape(tmp_path: Path) -> None:
    policy = Policy(tg.load_config(_config(tmp_path, budget={"max_calls": 3})))
    first = policy.bind("process-job", {"job_id": "42"})
    second = policy.bind("process-job", {"job_id": "42"})
    call = derive_call(policy.tools, "kv_get", {"key": JOB}, "cid")
    assert plan(first, "t1", call) is plan(first, "t1", call)  # type: ignore[arg-type]
    assert plan(second, "t1", call) is not plan(first, "t1", call)  # type: ignore[arg-type]
    assert plan(first, "t1", call) == plan(second, "t1", call)  # type: ignore[arg-type]


def test_derived_plans_are_memoized_on_the_plan_not_by_id(tmp_path: Path) -> None:
    # No module-level cache keyed by id(): what is derived from a plan lives on the plan.
    assert not any(
        name.isupper() and isinstance(value, dict) and any(isinstance(k, int) for k in value)
        for name, value in vars(budget_module).items()
    )
    policy = Policy(tg.load_config(_config(tmp_path, budget={"max_calls": 3}, limits={
        "requests_per_minute": 10})))  # fmt: skip
    bound = policy.bind("process-job", {"job_id": "42"})
    call = derive_call(policy.tools, "kv_get", {"key": JOB}, "cid")
    assert not isinstance(call, tg.PolicyDenied)
    full = plan(bound, "t1", call)
    only = task_spends(bound, "t1", call)
    assert isinstance(full, Plan) and isinstance(only, Plan)
    assert full.task_only is only and task_spends(bound, "t1", call) is only
    assert only == tuple(s for s in full if s.kind == "total") and len(only) < len(full)
    from toolguard.store.sqlite.budgets import Charge

    assert full.compiled is None
    first = Charge(full, MINUTE)
    assert full.compiled is first.shape and Charge(full, MINUTE + 1).shape is first.shape
    plain = Charge(tuple(full), MINUTE)  # any other sequence: compiled afresh, same columns
    assert plain.shape is not first.shape and plain.columns == first.columns


@pytest.mark.slow
@settings(deadline=None, max_examples=200)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_day_boundaries_agree(now: float) -> None:
    start = day_start(now)
    assert start % DAY_SECONDS == 0 and start <= now < start + DAY_SECONDS
    assert abs(start + DAY_SECONDS - (now + seconds_to_midnight(now))) <= 1e-6
    assert day_key(start) == day_key(now)
    assert day_key(start - 1) != day_key(now)


def test_task_slots_lay_out_calls_tools_operations_then_cost() -> None:
    budget = Budget(
        max_calls=1, max_cost=2.0, per_tool={"b": 1, "a": 1}, per_operation={"write": 1}
    )
    assert task_slots(budget) == {"calls": 0, "tool:a": 1, "tool:b": 2, "op:write": 3, "cost": 4}
    assert task_slots(Budget()) == {}


@pytest.mark.parametrize(
    ("now", "day", "left"),
    [
        pytest.param(MIDNIGHT, "2026-09-22", 86400.0, id="midnight"),
        pytest.param(MIDNIGHT - 0.25, "2026-09-21", 0.25, id="just-before"),
        pytest.param(MIDNIGHT + 3600, "2026-09-22", 82800.0, id="one-am"),
    ],
)
def test_day_key_and_seconds_to_midnight_are_utc(now: float, day: str, left: float) -> None:
    assert day_key(now) == day
    assert seconds_to_midnight(now) == left


def test_to_units_counts_exactly_in_micro_units() -> None:
    assert to_units(0.01) == 10_000
    assert sum(to_units(0.01) for _ in range(100)) == to_units(1.0)
    assert sum([0.1] * 10) != 1.0 and sum(to_units(0.1) for _ in range(10)) == to_units(1.0)


# -- rolling windows ---------------------------------------------------------------------------


def test_rolling_window_holds_across_a_minute_boundary(
    make_guard: Callable[..., tg.Guard],
) -> None:
    clock = Clock(MINUTE - 0.5)  # half a second before a clock minute
    guard = _guard(make_guard, clock, limits={"requests_per_minute": 3})
    with guard.task("process-job", job_id="42"):
        assert [_call(guard) for _ in range(3)] == [None, None, None]
        clock.advance(1.0)  # a new clock minute: a fixed-minute counter would reset here
        refused = _call(guard)
        assert refused is not None
        assert (refused.scope, refused.limit, refused.used) == (
            "identity.agent-runner.requests_per_minute",
            3,
            3.0,
        )
        assert refused.retry_after == pytest.approx(59.0)
        assert refused.rule == "identities.agent-runner.limits.requests_per_minute"
        clock.advance(58.999)
        assert _call(guard) is not None  # still inside 60 s of the burst
        clock.advance(0.001)  # exactly 60 s after the burst: it has left the window
        assert [_call(guard) for _ in range(3)] == [None, None, None]
        assert _call(guard) is not None
    assert len(guard.audit.events(kind="request")) == 6
    assert len(guard.audit.events(kind="denied")) == 3


@pytest.mark.slow
def test_rolling_window_admits_exactly_what_a_reference_allows(
    make_guard: Callable[..., tg.Guard],
) -> None:
    """Random gaps (bursts, pauses, minute boundaries, half an hour): the guard's decisions
    and retry-after times equal a direct count over the admitted times."""
    rng = random.Random(7)
    clock = Clock(MINUTE - 7.25)
    limit = 7
    guard = _guard(make_guard, clock, limits={"requests_per_minute": limit})
    admitted: list[float] = []
    for _ in range(7):  # tasks of 100 calls, within their TTL; the limit is the identity's
        with guard.task("process-job", job_id="42"):
            for _ in range(100):
                clock.advance(rng.choice([0.0, 0.0, 0.05, 0.5, 1.0, 3.0, 9.5]))
                now = clock()
                # times count in whole microseconds (the clock's float sums drift below that)
                inside = [t for t in admitted if _us(t) > _us(now) - _us(ROLLING_WINDOW)]
                refused = _call(guard)
                if len(inside) < limit:
                    assert refused is None, f"refused at {now} with {len(inside)} in the window"
                    admitted.append(now)
                else:
                    assert refused is not None, f"admitted at {now}, {len(inside)} in the window"
                    assert refused.used == len(inside)
                    leaves = inside[len(inside) - limit] + ROLLING_WINDOW
                    assert refused.retry_after == pytest.approx(leaves - now, abs=2e-6)
    assert len(admitted) == len(guard.audit.events(kind="request"))
    ((rows,),) = raw_sql(
        guard,
        "SELECT COUNT(*) FROM credentials WHERE identity = 'agent-runner' AND jti IS NOT NULL"
        " AND tally > 't' AND tally < 'u'",
    )
    assert rows == len(admitted), "each admitted call's credentials row is its log entry"


def test_no_window_of_60_seconds_holds_more_than_the_limit(
    make_guard: Callable[..., tg.Guard],
) -> None:
    rng = random.Random(11)
    clock = Clock(MINUTE - 30)
    guard = _guard(make_guard, clock, limits={"writes_per_minute": 4})
    times: list[float] = []
    with guard.task("process-job", job_id="42"):
        for _ in range(300):
            clock.advance(rng.choice([0.0, 0.1, 0.9, 2.0, 7.0]))
            if _call(guard, "kv_set") is None:
                times.append(clock())
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + ROLLING_WINDOW) <= 4


def test_writes_and_deletes_per_minute_count_their_class_only(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    limits = {"writes_per_minute": 2, "deletes_per_minute": 1}
    guard = _guard(make_guard, clock, limits=limits)
    with guard.task("process-job", job_id="42"):
        assert [_call(guard, "kv_get") for _ in range(5)] == [None] * 5
        assert _call(guard, "kv_delete") is None
        refused = _call(guard, "kv_delete")
        assert refused is not None and refused.scope.endswith("deletes_per_minute")
        assert _call(guard, "kv_set") is None  # the delete was a write too: 2 of 2
        refused = _call(guard, "kv_set")
        assert refused is not None and refused.scope.endswith("writes_per_minute")
        assert _call(guard, "kv_get") is None
    used = _usage(guard, clock)
    assert used["identity.agent-runner.writes_per_minute"] == 2
    assert used["identity.agent-runner.deletes_per_minute"] == 1


def test_a_limit_of_zero_refuses_without_retry(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, limits={"deletes_per_minute": 0})
    with guard.task("process-job", job_id="42"):
        refused = _call(guard, "kv_delete")
        assert refused is not None
        assert (refused.used, refused.limit, refused.retry_after) == (0.0, 0, None)
        assert _call(guard, "kv_set") is None


def test_window_of_a_process_whose_clock_is_behind(
    make_guard: Callable[..., tg.Guard], tmp_path: Path
) -> None:
    """A call admitted by a clock 5 s ahead counts from its own time: a process behind it
    admits after it, never before, so neither clock sees more than the limit in 60 s."""
    ahead, behind = Clock(MINUTE + 5), Clock(MINUTE)
    fast = _guard(make_guard, ahead, limits={"requests_per_minute": 2})
    slow = _guard(make_guard, behind, limits={"requests_per_minute": 2})
    with fast.task("process-job", job_id="42"):
        assert _call(fast) is None
    with slow.task("process-job", job_id="42"):
        assert _call(slow) is None
        behind.advance(1)
        refused = _call(slow)
        assert refused is not None
        assert refused.retry_after == pytest.approx(64.0)  # the first call leaves at +65 s
        behind.advance(64)
        assert _call(slow) is None


# -- days ---------------------------------------------------------------------------------------


def test_daily_quota_resets_at_midnight_utc(make_guard: Callable[..., tg.Guard]) -> None:
    clock = Clock(MIDNIGHT - 2.0)
    guard = _guard(make_guard, clock, limits={"requests_per_day": 2})
    with guard.task("process-job", job_id="42"):
        assert [_call(guard), _call(guard)] == [None, None]
        clock.advance(1.0)
        refused = _call(guard)
        assert refused is not None
        assert (refused.scope, refused.used, refused.limit) == (
            "identity.agent-runner.requests_per_day",
            2.0,
            2,
        )
        assert refused.retry_after == pytest.approx(1.0)
        assert "room frees up" in refused.reason
        clock.advance(1.0)  # 00:00:00 UTC: a new day
        assert [_call(guard), _call(guard)] == [None, None]
        assert _call(guard) is not None
    assert _usage(guard, clock)["identity.agent-runner.requests_per_day"] == 2


def test_daily_quota_is_shared_by_every_task_of_the_identity(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, limits={"requests_per_day": 3})
    with guard.task("process-job", job_id="42"):
        assert [_call(guard), _call(guard)] == [None, None]
    with guard.task("process-job", job_id="42"):
        assert _call(guard) is None
        assert _call(guard) is not None


# -- task scopes and refusals ------------------------------------------------------------------


def test_max_calls_refusal_names_scope_limit_use_and_no_reset(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, budget={"max_calls": 2})
    with guard.task("process-job", job_id="42") as task:
        assert [_call(guard), _call(guard)] == [None, None]
        refused = _call(guard)
    assert refused is not None
    assert (refused.scope, refused.limit, refused.used, refused.retry_after) == (
        "task.max_calls",
        2,
        2.0,
        None,
    )
    assert refused.rule == "intents.process-job.budget.max_calls"
    assert (refused.tool, refused.task_id) == ("kv_get", task.task_id)
    assert str(refused) == (
        "budget 'task.max_calls' is exhausted (2 of 2 used); it does not reset during this task"
    )
    (denied,) = guard.audit.events(task_id=task.task_id, kind="denied")
    assert (denied.rule, denied.reason, denied.jti) == (refused.rule, refused.reason, None)


def test_a_refusal_spends_nothing_in_any_scope(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    budget = {"max_calls": 5, "per_tool": {"kv_set": 1}, "per_operation": {"write": 3}}
    limits = {"requests_per_minute": 10, "requests_per_day": 10}
    guard = _guard(make_guard, clock, budget=budget, limits=limits)
    with guard.task("process-job", job_id="42") as task:
        assert _call(guard, "kv_set") is None
        for _ in range(3):
            refused = _call(guard, "kv_set")
            assert refused is not None and refused.scope == "task.per_tool.kv_set"
        assert _usage(guard, clock, task) == {
            "task.max_calls": 1,
            "task.per_tool.kv_set": 1,
            "task.per_operation.write": 1,
            "identity.agent-runner.requests_per_minute": 1,
            "identity.agent-runner.writes_per_minute": 1,
            "identity.agent-runner.deletes_per_minute": 0,
            "identity.agent-runner.requests_per_day": 1,
            "identity.agent-runner.cost_per_day": 0.0,
        }
        assert [_call(guard) for _ in range(4)] == [None] * 4
        refused = _call(guard)
        assert refused is not None and refused.scope == "task.max_calls"
    assert len(guard.audit.events(task_id=task.task_id, kind="request")) == 5
    assert len(guard.audit.events(task_id=task.task_id, kind="denied")) == 4


def test_the_first_refusal_in_plan_order_is_reported(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, budget={"max_calls": 1}, limits={"requests_per_minute": 1})
    with guard.task("process-job", job_id="42"):
        assert _call(guard) is None
        refused = _call(guard)
    assert refused is not None and refused.scope == "task.max_calls"


def test_budgets_survive_a_new_guard_on_the_same_database(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    first = _guard(make_guard, clock, limits={"requests_per_day": 3})
    with first.task("process-job", job_id="42"):
        assert [_call(first), _call(first)] == [None, None]
    first.close()
    second = _guard(make_guard, clock, limits={"requests_per_day": 3})
    with second.task("process-job", job_id="42"):
        assert _call(second) is None
        assert _call(second) is not None


def test_denied_model_reads_the_refusal_as_a_tool_error(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    from langchain_core.tools import tool

    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        return "value"

    guard = _guard(make_guard, clock, budget={"max_calls": 1})
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42"):
        assert guarded.invoke({"key": JOB}) == "value"
        message = guarded.invoke(
            {"type": "tool_call", "id": "c2", "name": "kv_get", "args": {"key": JOB}}
        )
    assert message.status == "error"
    assert "budget 'task.max_calls' is exhausted (1 of 1 used)" in message.content


def test_the_combined_read_denies_a_revocation_without_a_reason(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, budget={"max_calls": 5})
    with guard.task("process-job", job_id="42") as task:
        assert _call(guard) is None
        raw_sql(
            guard,
            "INSERT INTO revocations (scope, value, reason, ts, by)"
            " VALUES ('task', ?, NULL, ?, 'test')",
            (task.task_id, clock()),
        )
        with pytest.raises(tg.PolicyDenied) as info:
            guard.authorize("kv_get", {"key": JOB})
    assert info.value.rule == "revocation.task"
    assert _usage(guard, clock, task)["task.max_calls"] == 1


def test_an_audit_prune_keeps_every_window_and_todays_quota_exact(
    make_guard: Callable[..., tg.Guard],
) -> None:
    """The admission log is the identity's credentials rows; pruning expired credentials,
    even up to now, keeps the rows the windows and the day still count from."""
    clock = Clock(MIDNIGHT - 3 * 86400 + 600)  # three days ago
    limits = {"requests_per_minute": 3, "requests_per_day": 5}
    guard = _guard(make_guard, clock, limits=limits)
    with guard.task("process-job", job_id="42"):
        for _ in range(3):
            assert _call(guard) is None
    clock.now = MIDNIGHT - 30.0  # just before midnight: two calls of yesterday
    with guard.task("process-job", job_id="42"):
        assert [_call(guard), _call(guard)] == [None, None]
        clock.advance(40.0)  # today, 10 s past midnight: the minute still holds both
        assert _call(guard) is None
        guard.store.flush()
        before = _usage(guard, clock)

        pruned = guard.audit.prune(before=clock.now)  # everything expired goes

        assert pruned.credentials == 2  # the three-day-old calls but their newest row
        assert _usage(guard, clock) == before
        assert before["identity.agent-runner.requests_per_minute"] == 3
        assert before["identity.agent-runner.requests_per_day"] == 1
        refused = _call(guard)
        assert refused is not None and refused.scope.endswith("requests_per_minute")
        clock.advance(60.0)
        assert [_call(guard) for _ in range(3)] == [None, None, None]  # 4 of 5 today
        clock.advance(60.0)
        assert _call(guard) is None
        refused = _call(guard)
        assert refused is not None and refused.scope.endswith("requests_per_day")
        assert (refused.used, refused.limit) == (5, 5)


# -- the fast path of Charge.apply decides as the general one ------------------------------------

_PROPERTY_LIMITS = {
    "requests_per_minute": 5,
    "writes_per_minute": 3,
    "deletes_per_minute": 2,
    "requests_per_day": 14,
    "cost_per_day": 2.0,
    "on_anomaly": {"revoke_when_rate_exceeds": "2x"},
}
_PROPERTY_BUDGET = {
    "max_calls": 12,
    "max_cost": 1.5,
    "per_tool": {"kv_set": 6},
    "per_operation": {"delete": 3},
}


def _charge_world(limits: dict[str, Any] | None, budget: dict[str, Any] | None) -> Any:
    """A policy, a bound task and two identical stores (connection + task counters)."""
    from toolguard.store.sqlite.schema import create_schema
    from toolguard.store.sqlite.tasks import TaskBudgets

    unused = Path("/nonexistent/toolguard-policy-only")  # a policy opens no store and no key
    policy = Policy(tg.load_config(_config(unused, limits=limits, budget=budget)))
    bound = policy.bind("process-job", {"job_id": "42"})
    worlds = []
    for _ in range(2):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        create_schema(conn)
        tasks = TaskBudgets()
        tasks.started("t1")
        worlds.append((conn, tasks))
    return policy, bound, worlds


def _decision(result: Any) -> Any:
    if result is None:
        return None
    if isinstance(result, tg.BudgetExceeded):
        return ("refused", result.scope, result.used, result.limit, result.retry_after, result.rule)
    return ("anomaly", result.spend.name, result.spend.limit, result.attempts)


@pytest.mark.slow
@settings(deadline=None, max_examples=60)
@given(
    shape=st.sampled_from(
        [(_PROPERTY_LIMITS, _PROPERTY_BUDGET), (_PROPERTY_LIMITS, None), (None, _PROPERTY_BUDGET)]
    ),
    start=st.sampled_from([MINUTE, MIDNIGHT - 90.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.5, 3.0, 13.0, 31.0, 61.0, -2.0]),
            st.sampled_from(["kv_get", "kv_set", "kv_delete"]),
            st.sampled_from([0.0, 0.1, 0.25, 0.7]),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_the_fast_path_of_charge_decides_exactly_as_the_general_one(
    shape: tuple[dict[str, Any] | None, dict[str, Any] | None],
    start: float,
    steps: list[tuple[float, str, float]],
) -> None:
    """``Charge.apply`` (the inline common case) and ``Charge._apply`` (the general path) on
    identical stores: the same decision, the same admission-log entry, the same counters and
    rows, step after step (clocks going back, windows and days passing, refusals, anomalies)."""
    import dataclasses

    from toolguard.store.sqlite.budgets import Charge

    policy, bound, worlds = _charge_world(*shape)
    now = start
    for n, (dt, tool, cost) in enumerate(steps):
        now += dt
        call = derive_call(policy.tools, tool, {"key": JOB, "value": "v"}, f"c{n}")
        assert not isinstance(call, tg.PolicyDenied)
        spends = plan(bound, "t1", dataclasses.replace(call, cost=cost))  # type: ignore[arg-type]
        seen = []
        for fast, (conn, tasks) in zip((True, False), worlds):
            step = Charge(spends, now)
            values = (
                conn.execute("SELECT " + step.columns, step.params).fetchone()
                if step.columns
                else ()
            )
            apply = step.apply if fast else step._apply
            result = apply(conn, values, tasks, tool=tool, task_id="t1")
            if result is None and step.tally is not None:  # the credential row carries it
                conn.execute(
                    "INSERT INTO credentials (identity, tally, jti, task_id, tool, issued_at,"
                    " expires_at) VALUES (?, ?, ?, 't1', ?, ?, ?)",
                    ("agent-runner", step.tally, f"j{n}", tool, now, now + 60),
                )
            tasks.commit()
            rows = [
                conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("credentials", "budgets")
            ]
            seen.append((_decision(result), step.tally, tasks._rows.get("t1"), rows))
        assert seen[0] == seen[1], f"step {n}: {steps[: n + 1]}"
