"""Parallel tool calls in one model turn (sync and async), exact budgets, and user threads that
carry the current task (``toolguard.carry_task`` / ``TaskSession.carry``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import BASE_CONFIG, fake_model
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from toolguard_langchain import GuardMiddleware

import toolguard as tg

fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer
USER: Any = {"messages": [{"role": "user", "content": "go"}]}
JOB: Any = {"configurable": {"job_id": "42"}}


class _Recorder:
    """Tools that record, per call, the credential and thread they ran with."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.seen: dict[str, tuple[tg.Credential, str]] = {}
        self._lock = threading.Lock()
        self.barrier = barrier

        @tool
        def kv_get(key: str) -> str:
            """Read a key."""
            return self._record(key)

        @tool
        def kv_set(key: str, value: str) -> str:
            """Write a key."""
            return self._record(key)

        self.tools = [kv_get, kv_set]

    def _record(self, key: str) -> str:
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        credential = tg.current_credential()
        with self._lock:
            self.seen[key] = (credential, threading.current_thread().name)
        return f"ran {key}"


def _run(agent: Any, mode: str) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(USER, JOB)  # type: ignore[no-any-return]
    return asyncio.run(agent.ainvoke(USER, JOB))  # type: ignore[no-any-return,unused-ignore]


MODES = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]


@pytest.mark.parametrize("mode", MODES)
def test_parallel_three_calls_one_denied_each_with_its_own_decision(
    guard: tg.Guard, mode: str
) -> None:
    recorder = _Recorder()
    script = [
        turn(
            call("kv_get", "p1", key="agents:context:rules"),
            call("kv_set", "p2", key="agents:jobs:7:state", value="x"),
            call("kv_set", "p3", key="agents:jobs:42:state", value="y"),
        ),
        answer("done"),
    ]
    model = fm.ScriptedChatModel(script=script)
    agent = create_agent(
        model, recorder.tools, middleware=[GuardMiddleware(guard, intent="process-job")]
    )

    result = _run(agent, mode)

    messages = {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}
    assert set(messages) == {"p1", "p2", "p3"}
    assert messages["p1"].status == messages["p3"].status == "success"
    assert messages["p2"].status == "error"
    assert "agents:jobs:7:state" in str(messages["p2"].content)
    assert set(recorder.seen) == {"agents:context:rules", "agents:jobs:42:state"}
    credentials = {k: c for k, (c, _) in recorder.seen.items()}
    assert len({c.jti for c in credentials.values()}) == 2
    assert credentials["agents:context:rules"].operation == "read"
    assert credentials["agents:jobs:42:state"].resources == ("agents:jobs:42:state",)
    by_call: dict[str, list[str]] = {}
    for event in guard.audit.events():
        if event.correlation_id in ("p1", "p2", "p3"):
            by_call.setdefault(event.correlation_id, []).append(event.kind)
    assert by_call == {"p1": ["request", "outcome"], "p2": ["denied"], "p3": ["request", "outcome"]}
    requests = {e.correlation_id: e.jti for e in guard.audit.events(kind="request")}
    assert requests["p1"] == credentials["agents:context:rules"].jti
    assert requests["p3"] == credentials["agents:jobs:42:state"].jti


@pytest.mark.parametrize("mode", MODES)
def test_parallel_calls_run_concurrently_with_separate_credentials(
    guard: tg.Guard, mode: str
) -> None:
    # All three tools wait for each other: they must be in flight at the same time, each with
    # its own credential in its own context.
    recorder = _Recorder(barrier=threading.Barrier(3))
    keys = ["agents:jobs:42:a", "agents:jobs:42:b", "agents:jobs:42:c"]
    script = [turn(*(call("kv_get", f"q{i}", key=k) for i, k in enumerate(keys))), answer("ok")]
    model = fm.ScriptedChatModel(script=script)
    agent = create_agent(
        model, recorder.tools, middleware=[GuardMiddleware(guard, intent="process-job")]
    )

    _run(agent, mode)

    assert set(recorder.seen) == set(keys)
    for key, (credential, _) in recorder.seen.items():
        assert credential.resources == (key,)
    assert len({c.jti for c, _ in recorder.seen.values()}) == 3


def _budget_guard(make_guard: Callable[..., tg.Guard], **budget: Any) -> tg.Guard:
    intents = dict(BASE_CONFIG["intents"])
    intents["process-job"] = {**intents["process-job"], "budget": budget}
    return make_guard(intents=intents)


@pytest.mark.parametrize("mode", MODES)
def test_parallel_calls_spend_budgets_exactly(
    make_guard: Callable[..., tg.Guard], mode: str
) -> None:
    guard = _budget_guard(make_guard, max_calls=10, per_tool={"kv_set": 3})
    recorder = _Recorder()
    calls = [call("kv_set", f"w{i}", key=f"agents:jobs:42:k{i}", value="v") for i in range(6)]
    model = fm.ScriptedChatModel(script=[turn(*calls), answer("ok")])
    agent = create_agent(
        model, recorder.tools, middleware=[GuardMiddleware(guard, intent="process-job")]
    )

    result = _run(agent, mode)

    messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert len(messages) == 6
    assert sorted(m.status for m in messages) == ["error"] * 3 + ["success"] * 3
    assert all(
        "per_tool.kv_set' is exhausted (3 of 3 used)" in str(m.content)
        for m in messages
        if m.status == "error"
    )
    assert len(recorder.seen) == 3
    assert len(guard.audit.events(kind="request")) == 3
    assert len(guard.audit.events(kind="denied")) == 3


def test_parallel_guarded_tools_without_middleware_each_get_a_credential(guard: tg.Guard) -> None:
    recorder = _Recorder()
    tools = tg.guard(recorder.tools, guard)
    script = [
        turn(
            call("kv_get", "g1", key="agents:jobs:42:a"),
            call("kv_get", "g2", key="agents:jobs:42:b"),
            call("kv_set", "g3", key="agents:jobs:1:c", value="v"),
        ),
        answer("ok"),
    ]
    agent = create_agent(fm.ScriptedChatModel(script=script), tools)

    with guard.task("process-job", job_id="42") as task:
        result = agent.invoke(USER)

    statuses = {m.tool_call_id: m.status for m in result["messages"] if isinstance(m, ToolMessage)}
    assert statuses == {"g1": "success", "g2": "success", "g3": "error"}
    assert {c.task_id for c, _ in recorder.seen.values()} == {task.task_id}
    cids = sorted(e.correlation_id or "" for e in guard.audit.events(kind="request"))
    assert cids == ["g1", "g2"]


# -- threads the user starts -----------------------------------------------------------------


def _current_task_id() -> str | None:
    task = tg.current_task()
    return task.task_id if task is not None else None


def test_carry_task_plain_thread_pool_does_not_inherit_the_task(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42"), ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(_current_task_id).result() is None


def test_carry_task_carries_the_current_task_into_a_thread_pool(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task, ThreadPoolExecutor(max_workers=2) as pool:
        carried = tg.carry_task(_current_task_id)
        results = list(pool.map(lambda _: carried(), range(4)))

    assert results == [task.task_id] * 4


def test_carry_task_lets_guarded_tools_run_in_user_threads(guard: tg.Guard) -> None:
    recorder = _Recorder()
    kv_get = tg.guard(recorder.tools[0], guard, on_deny="raise")

    def read(key: str) -> str:
        return str(kv_get.invoke({"key": key}))

    with guard.task("process-job", job_id="42") as task, ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(tg.NoActiveTask, match="outside a task"):
            pool.submit(read, "agents:jobs:42:plain").result()
        carried = tg.carry_task(read)
        assert (
            pool.submit(carried, "agents:jobs:42:carried").result() == "ran agents:jobs:42:carried"
        )

    credential, thread = recorder.seen["agents:jobs:42:carried"]
    assert credential.task_id == task.task_id
    assert thread != threading.current_thread().name
    assert "agents:jobs:42:plain" not in recorder.seen


def test_carry_task_binds_the_context_when_wrapped(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task:
        carried = tg.carry_task(_current_task_id)
    # Called after the block, outside any task: the wrapper still runs with the task it saw.
    assert _current_task_id() is None
    assert carried() == task.task_id


def test_task_session_carry_binds_that_task_outside_its_block(guard: tg.Guard) -> None:
    first = guard.task("process-job", job_id="42").start()
    second = guard.task("summarise-job", job_id="42").start()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            a = pool.submit(first.carry(_current_task_id))
            b = pool.submit(second.carry(_current_task_id))
            assert (a.result(), b.result()) == (first.task_id, second.task_id)
        assert _current_task_id() is None
    finally:
        second.end()
        first.end()


def test_carry_task_explicit_task_overrides_the_current_one(guard: tg.Guard) -> None:
    other = guard.task("summarise-job", job_id="1").start()
    try:
        with guard.task("process-job", job_id="42"), ThreadPoolExecutor(max_workers=1) as pool:
            assert (
                pool.submit(tg.carry_task(_current_task_id, task=other)).result() == other.task_id
            )
    finally:
        other.end()
