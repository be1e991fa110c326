"""Adversarial numbers: costs, cost arguments and clock values that are not finite, negative or
beyond what the micro-unit budget arithmetic and SQLite INTEGER can hold.

The promise: a bad number from a tool (``report_cost``), a model (a ``cost_arg`` argument) or a
clock is refused where it enters (a denial with a reason, a ValueError to the tool's code, an
AuditError for a bad clock). It never poisons a queued settlement, so the task end and its
revocation are always written, the credential stops verifying, and the next task starts.
"""

from __future__ import annotations

import copy
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, tool
from pydantic import ValidationError

import toolguard as tg
from toolguard.numbers import MAX_COST, finite_number, is_finite_number

BAD_REPORTED = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    -0.5,
    1e300,
    10**400,
    MAX_COST * 2,
    True,
    "1",
    None,
]
BAD_ARGS = ["NaN", "nan", "1e999", "-1e999", "inf", "-5", -5, True, 10**400, 10**30, 1e300]


def _config(tmp_path: Path) -> dict[str, Any]:
    config = make_config(tmp_path)
    config["tools"] = {
        **copy.deepcopy(BASE_CONFIG["tools"]),
        "meter": {"operation": "read", "resource": "{key}", "cost": 0.5},
        "pay": {"operation": "write", "resource": "payments:{to}", "cost_arg": "amount"},
        "pay_typed": {"operation": "write", "resource": "payments:{to}", "cost_arg": "amount"},
    }
    config["identities"]["agent-runner"]["allow"]["write"].append("payments:*")
    config["intents"]["process-job"]["tools"] += ["meter", "pay", "pay_typed"]
    config["intents"]["process-job"]["allow"]["write"].append("payments:*")
    config["intents"]["process-job"]["budget"] = {"max_calls": 1000, "max_cost": 100.0}
    config["identities"]["agent-runner"]["limits"] = {"cost_per_day": 1000.0}
    return config


class _Tools:
    def __init__(self) -> None:
        self.reported: object = None
        self.tokens: list[str] = []
        self.ran: list[str] = []

    def all(self) -> list[BaseTool]:
        @tool
        def meter(key: str) -> str:
            """A metered read that reports its actual cost."""
            self.tokens.append(tg.current_credential().token)
            self.ran.append("meter")
            tg.report_cost(self.reported)  # type: ignore[arg-type]  # hostile on purpose
            return "metered"

        @tool
        def pay(to: str, amount: Any) -> str:
            """Pay an amount (the model writes it; untyped, so it reaches the guard as is)."""
            self.ran.append(f"pay:{amount!r}")
            return "paid"

        @tool
        def pay_typed(to: str, amount: float) -> str:
            """Pay an amount (a float: pydantic turns "NaN" and "1e999" into nan and inf)."""
            self.ran.append(f"pay_typed:{amount!r}")
            return "paid"

        @tool
        def kv_get(key: str) -> str:
            """Read a key."""
            self.tokens.append(tg.current_credential().token)
            return "value"

        return [meter, pay, pay_typed, kv_get]


@pytest.fixture
def tools() -> _Tools:
    return _Tools()


@pytest.fixture
def setup(
    tmp_path: Path, clock: Clock, tools: _Tools
) -> Iterator[tuple[tg.Guard, dict[str, tg.GuardedTool]]]:
    guard = tg.Guard(_config(tmp_path), clock=clock)
    guarded = tg.guard(tools.all(), guard, on_deny="message")
    yield guard, {t.name: t for t in guarded}
    guard.close()


def _task_row(guard: tg.Guard, task_id: str) -> sqlite3.Row:
    row = guard.store.task_row(task_id)
    assert row is not None
    return row


def _assert_ended_and_revoked(
    guard: tg.Guard, tmp_path: Path, clock: Clock, task: tg.TaskSession, token: str
) -> None:
    """The task end and its revocation are in the trail; the credential verifies nowhere."""
    assert not guard.store.pending_ends()
    row = _task_row(guard, task.task_id)
    assert row["status"] != "active" and row["ended_at"] is not None
    kinds = [e.kind for e in guard.audit.events(task_id=task.task_id)]
    assert kinds[-1] == "task_end"
    with pytest.raises(tg.CredentialError, match=r"revoked|ended"):
        guard.verifier(audience="kv-service").verify(token)
    fresh = tg.Guard(_config(tmp_path), clock=clock)  # another process's view: the trail only
    try:
        with pytest.raises(tg.CredentialError, match=r"revoked|ended"):
            fresh.verifier(audience="kv-service").verify(token)
    finally:
        fresh.close()


def _assert_a_new_task_runs(guard: tg.Guard, t: dict[str, tg.GuardedTool]) -> None:
    with guard.task("process-job", job_id="42") as task:
        assert t["kv_get"].invoke({"key": "agents:jobs:42:x"}) == "value"
    assert _task_row(guard, task.task_id)["status"] == "ok"


# -- report_cost: what a tool reports ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bad", BAD_REPORTED, ids=repr)
def test_a_bad_reported_cost_fails_the_call_and_the_task_still_ends_revoked(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tools: _Tools,
    tmp_path: Path,
    clock: Clock,
    bad: object,
) -> None:
    """The issue's scenario: report_cost(nan) inside a task with a cost budget, then the with
    block ends. The cost is refused where it enters (a ValueError to the tool's own code, the
    call's outcome ``error``); the end, its revocation and the next task are unaffected."""
    guard, t = setup
    tools.reported = bad
    with pytest.raises(ValueError, match="report_cost"), guard.task("process-job", job_id="42"):
        task = tg.current_task()
        t["meter"].invoke({"key": "agents:jobs:42:x"})
    assert task is not None
    assert task.status == "error"
    outcome = guard.audit.events(task_id=task.task_id, kind="outcome")[0]
    assert outcome.outcome == "error" and "report_cost() must be" in (outcome.error or "")
    assert outcome.cost == 0.5  # the reservation stands
    _assert_ended_and_revoked(guard, tmp_path, clock, task, tools.tokens[0])
    _assert_a_new_task_runs(guard, t)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 1e300], ids=repr)
def test_a_bad_reported_cost_that_the_tool_swallows_is_never_settled(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tools: _Tools,
    tmp_path: Path,
    clock: Clock,
    bad: float,
) -> None:
    """A tool that catches the ValueError: the call is ``ok`` with its estimate, the task ends
    ``ok``, and the budget counts the estimate."""

    @tool
    def meter(key: str) -> str:
        """A metered read that swallows a refused cost."""
        tools.tokens.append(tg.current_credential().token)
        try:
            tg.report_cost(bad)
        except ValueError:
            pass
        return "metered"

    guard, t = setup
    guarded = tg.guard(meter, guard, on_deny="message")
    with guard.task("process-job", job_id="42") as task:
        assert guarded.invoke({"key": "agents:jobs:42:x"}) == "metered"
    assert task.status == "ok"
    outcome = guard.audit.events(task_id=task.task_id, kind="outcome")[0]
    assert (outcome.outcome, outcome.cost) == ("ok", 0.5)
    _assert_ended_and_revoked(guard, tmp_path, clock, task, tools.tokens[0])
    _assert_a_new_task_runs(guard, t)


# -- cost arguments: what a model writes --------------------------------------------------------


def _tool_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_call", "id": "call-1", "name": name, "args": args}


@pytest.mark.slow
@pytest.mark.parametrize("tool_name", ["pay", "pay_typed"])
@pytest.mark.parametrize("bad", BAD_ARGS, ids=repr)
def test_a_bad_cost_argument_from_the_model_is_an_audited_denial(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tools: _Tools,
    tmp_path: Path,
    clock: Clock,
    tool_name: str,
    bad: object,
) -> None:
    """``"NaN"``, ``"1e999"``, ``-5``, ``True``, huge ints: the model gets the denial as its tool
    message (on_deny="message"), a ``denied`` event says why, the tool does not run."""
    guard, t = setup
    if tool_name == "pay_typed" and bad is True:
        pytest.skip("the tool's own schema turns true into 1.0, the amount the tool receives")
    with guard.task("process-job", job_id="42") as task:
        try:
            reply = t[tool_name].invoke(_tool_call(tool_name, {"to": "acme", "amount": bad}))
        except ValidationError:  # the tool's own schema refused it, as without a guard
            assert tool_name == "pay_typed" and bad == 10**400
            reply = None
        if reply is None:
            assert not guard.audit.events(task_id=task.task_id, kind="request")
        else:
            assert isinstance(reply, ToolMessage)
            assert reply.status == "error"
            assert "Denied by toolguard" in str(reply.content)
            assert "finite" in str(reply.content)
            denied = guard.audit.events(task_id=task.task_id, kind="denied")
            assert len(denied) == 1 and "cost" in (denied[0].reason or "")
            assert denied[0].rule == f"tools.{tool_name}.cost_arg"
        assert not tools.ran
        assert t["kv_get"].invoke({"key": "agents:jobs:42:x"}) == "value"
    assert task.status == "ok"
    _assert_ended_and_revoked(guard, tmp_path, clock, task, tools.tokens[0])


def test_the_largest_cost_argument_still_fits_exactly(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]], tools: _Tools
) -> None:
    guard, t = setup
    with guard.task("process-job", job_id="42") as task:
        assert t["pay"].invoke({"to": "acme", "amount": 100}) == "paid"
        assert "Denied" in t["pay"].invoke({"to": "acme", "amount": 0.000001})  # over max_cost
    assert [e.kind for e in guard.audit.events(task_id=task.task_id)][1:4] == [
        "request",
        "outcome",
        "denied",
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    amount=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**500), max_value=10**500),
        st.text(max_size=12),
        st.sampled_from(["NaN", "1e999", "-0", "1e-400", "0x10", " 5 ", "١٢"]),
        st.booleans(),
        st.none(),
    )
)
@pytest.mark.slow
def test_any_cost_argument_is_allowed_or_denied_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, amount: object
) -> None:
    """Whatever the model writes as the cost: either a valid cost (a finite number from 0 to
    MAX_COST, spent) or a denial message and a ``denied`` event; the task always ends."""
    tmp_path = tmp_path_factory.mktemp("adv")
    clock = Clock()
    tools = _Tools()
    guard = tg.Guard(_config(tmp_path), clock=clock)
    try:
        pay = {t.name: t for t in tg.guard(tools.all(), guard, on_deny="message")}["pay"]
        with guard.task("process-job", job_id="42") as task:
            reply = pay.invoke(_tool_call("pay", {"to": "acme", "amount": amount}))
        assert isinstance(reply, ToolMessage)
        kinds = [e.kind for e in guard.audit.events(task_id=task.task_id)]
        valid = is_finite_number(amount) and 0 <= float(amount) <= MAX_COST  # type: ignore[arg-type]
        if valid and float(amount) <= 100.0:  # type: ignore[arg-type]  # within max_cost
            assert kinds == ["task_start", "request", "outcome", "task_end"]
        else:
            assert kinds == ["task_start", "denied", "task_end"]
            assert reply.status == "error" and not tools.ran
        assert task.status == "ok" and not guard.store.pending_ends()
    finally:
        guard.close()


@settings(max_examples=80, deadline=None)
@given(value=st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=5)))
def test_finite_number_accepts_exactly_the_finite_numbers_in_range(value: object) -> None:
    in_range = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and abs(value) < 1e301
        and math.isfinite(value)
        and 0 <= value <= MAX_COST
    )
    if in_range:
        assert finite_number(value, "x") == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match=r"^x must be"):
            finite_number(value, "x")


# -- clock values -----------------------------------------------------------------------------


class _BadClock:
    def __init__(self) -> None:
        self.now: object = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now  # type: ignore[return-value]


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -1.0, 0, 1e12, 10**400, "1790000000", None], ids=repr
)
def test_a_bad_clock_value_fails_closed_and_the_task_end_is_still_written(
    tmp_path: Path, tools: _Tools, bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``clock=`` callable that returns garbage: the call is refused with an AuditError
    naming the clock (the tool does not run); the task end uses the system clock instead."""
    clock = _BadClock()
    guard = tg.Guard(_config(tmp_path), clock=clock)
    try:
        kv_get = {t.name: t for t in tg.guard(tools.all(), guard, on_deny="message")}["kv_get"]
        with guard.task("process-job", job_id="42") as task:
            kv_get.invoke({"key": "agents:jobs:42:x"})
            clock.now = bad
            with pytest.raises(tg.AuditError, match="clock"):
                kv_get.invoke({"key": "agents:jobs:42:x"})
            with pytest.raises(tg.AuditError, match="clock"):
                guard.clock()
        assert len(tools.tokens) == 1
        assert "using the system clock" in caplog.text
        clock.now = 1_790_000_100.0
        row = _task_row(guard, task.task_id)
        assert row["status"] != "active" and math.isfinite(row["ended_at"])
        with pytest.raises(tg.CredentialError, match=r"revoked|ended"):
            guard.verifier(audience="kv-service").verify(tools.tokens[0])
        with pytest.raises(tg.AuditError, match="clock"):
            clock.now = bad
            guard.task("process-job", job_id="43").start()
    finally:
        guard.close()


def test_the_checked_clock_keeps_the_wrapped_clock_api(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = make_guard(clock=clock)
    guard.clock.advance(5)  # type: ignore[attr-defined]  # the wrapped test clock's method
    assert guard.clock() == clock.now == 1_790_000_005.0


# -- numbers on the read side: CLI options and audit queries ------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "tasks", "--limit", str(10**30)],
        ["audit", "tail", "-n", str(10**30)],
        ["audit", "denied", "--limit", str(10**30)],
        ["audit", "export", "--format", "html", "--limit", str(10**30)],
        ["audit", "tasks", "--since", "1e400d"],
        ["audit", "tasks", "--since", "99999999999d"],
    ],
    ids=lambda a: " ".join([*a[:2], a[-1][:8]]),
)
def test_a_huge_number_on_the_command_line_is_a_usage_error(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]], clock: Clock, args: list[str]
) -> None:
    from click.testing import CliRunner

    from toolguard.cli import CliContext, main

    guard, _t = setup
    with guard.task("process-job", job_id="42"):
        pass
    context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
    result = CliRunner().invoke(main, [*args, "--db", str(guard.config.store_path)], obj=context)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert not isinstance(result.exception, OverflowError)


def test_audit_queries_take_any_int_limit_or_seq(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
) -> None:
    guard, _t = setup
    with guard.task("process-job", job_id="42") as task:
        pass
    assert len(guard.audit.events(limit=10**30)) == 2
    assert len(guard.audit.events(after_seq=-(10**30), before_seq=10**30)) == 2
    assert guard.audit.events(after_seq=10**30) == []
    assert [t["task_id"] for t in guard.audit.tasks(limit=10**30)] == [task.task_id]
    with pytest.raises(ValueError, match="nan"):
        guard.audit.events(since=float("nan"))


# -- numbers given to the Python API: issuers, verifiers, brokers -------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e300, 10**400, -1, True], ids=repr)
def test_constructors_refuse_durations_out_of_range(
    tmp_path: Path, bad: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolguard.brokers import HttpTokenBroker, StaticSecretProvider
    from toolguard.credentials import Issuer, Verifier

    keys = tg.KeyRing.load(tmp_path / "key.pem")
    monkeypatch.setenv("LEGACY_SECRET", "s3cret")
    makers: list[Callable[[], object]] = [
        lambda: Issuer(name="i", audience="a", keys=keys, ttl=bad),  # type: ignore[arg-type]
        lambda: Verifier(issuer="i", audience="a", keys=keys, max_ttl=bad),  # type: ignore[arg-type]
        lambda: Verifier(issuer="i", audience="a", keys=keys, leeway=bad),  # type: ignore[arg-type]
        lambda: StaticSecretProvider(env="LEGACY_SECRET", ttl=bad),  # type: ignore[arg-type]
        lambda: HttpTokenBroker(token_url="https://sts.example/token", default_ttl=bad),  # type: ignore[arg-type]
        lambda: HttpTokenBroker(token_url="https://sts.example/token", backoff=bad),  # type: ignore[arg-type]
    ]
    for make in makers:
        with pytest.raises(tg.ConfigError):
            make()
