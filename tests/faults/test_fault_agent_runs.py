"""Agent runs that raise: a plain ``agent.invoke`` / ``ainvoke`` under ``GuardMiddleware``
ends its task (credentials revoked) before the exception reaches the caller (issue 10, item 2).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from conftest import fake_model
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRetryMiddleware, ToolRetryMiddleware
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from pydantic import PrivateAttr
from toolguard_langchain import GuardMiddleware

import toolguard as tg
from toolguard.task import TaskSession

fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer
USER = {"messages": [{"role": "user", "content": "process the job"}]}
JOB: Any = {"configurable": {"job_id": "42"}}


class FlakyModel(fm.ScriptedChatModel):  # type: ignore[misc, name-defined]
    """The scripted model, whose first ``failures`` calls raise ``ConnectionError``."""

    failures: int = 0
    _calls: int = PrivateAttr(default=0)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self._calls += 1
        if self._calls <= self.failures:
            raise ConnectionError("the model endpoint is down")
        result: ChatResult = super()._generate(messages, *args, **kwargs)
        return result


class Service:
    """Tools that keep the credential of each call; ``kv_delete`` fails ``failures`` times."""

    def __init__(self, failures: int = 10**6, error: BaseException | None = None) -> None:
        self.credentials: list[tg.Credential] = []
        self.deletes = 0
        self.failures = failures
        self.error = error or RuntimeError("disk on fire")

        @tool
        def kv_set(key: str, value: str) -> str:
            """Write a key."""
            self.credentials.append(tg.current_credential())
            return "ok"

        @tool
        def kv_delete(key: str) -> str:
            """Delete a key."""
            self.credentials.append(tg.current_credential())
            self.deletes += 1
            if self.deletes <= self.failures:
                raise self.error
            return "deleted"

        self.tools = [kv_set, kv_delete]


@pytest.fixture
def guard(make_guard: Callable[..., tg.Guard], clock: Any) -> tg.Guard:
    from conftest import BASE_CONFIG

    intents = {**BASE_CONFIG["intents"]}
    intents["process-job"] = {
        **intents["process-job"],
        "tools": ["kv_get", "kv_set", "kv_delete"],
        "allow": {**intents["process-job"]["allow"], "delete": ["agents:jobs:{job_id}:*"]},
    }
    return make_guard(clock=clock, intents=intents)


def _script() -> list[Any]:
    return [
        turn(call("kv_set", "c1", key="agents:jobs:42:state", value="half")),
        turn(call("kv_delete", "c2", key="agents:jobs:42:state")),
        answer("done"),
    ]


def _tasks(guard: tg.Guard) -> list[dict[str, Any]]:
    conn = sqlite3.connect(guard.config.store_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM tasks ORDER BY started_at, rowid")]
    finally:
        conn.close()


def _revoked(guard: tg.Guard, credential: tg.Credential) -> bool:
    try:
        guard.verifier().verify(credential.token)
    except tg.CredentialRevoked:
        return True
    return False


def _agent(guard: tg.Guard, service: Service, *, script: list[Any] | None = None, **kw: Any) -> Any:
    middleware = kw.pop("middleware", None) or [GuardMiddleware(guard, intent="process-job")]
    model = kw.pop("model", None) or fm.ScriptedChatModel(script=script or _script())
    return create_agent(model, service.tools, middleware=middleware, **kw)


# -- a tool or the model raises under a plain invoke ----------------------------------------


def test_fault_plain_invoke_tool_error_ends_the_task_before_the_caller_sees_it(
    guard: tg.Guard,
) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job")
    agent = _agent(guard, service, middleware=[middleware])

    with pytest.raises(RuntimeError, match="disk on fire") as raised:
        agent.invoke(USER, JOB)

    (task,) = _tasks(guard)
    assert task["status"] == "error"
    assert middleware.active_tasks == []
    assert all(_revoked(guard, c) for c in service.credentials)
    (end,) = guard.audit.events(kind="task_end")
    assert end.reason is not None and "tool call 'kv_delete'" in end.reason
    assert "RuntimeError" in end.reason
    notes = getattr(raised.value, "__notes__", [])
    assert not [n for n in notes if "toolguard" in n]  # ended cleanly: nothing to add


def test_fault_plain_ainvoke_tool_error_ends_the_task(guard: tg.Guard) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job")
    agent = _agent(guard, service, middleware=[middleware])

    with pytest.raises(RuntimeError, match="disk on fire"):
        asyncio.run(agent.ainvoke(USER, JOB))

    (task,) = _tasks(guard)
    assert task["status"] == "error"
    assert all(_revoked(guard, c) for c in service.credentials)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fault_model_error_ends_the_task(guard: tg.Guard, mode: str) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job")
    # one turn, then the scripted model has nothing left: the second model call raises
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v"))]
    agent = _agent(guard, service, script=script, middleware=[middleware])

    with pytest.raises(RuntimeError, match="no reply left"):
        if mode == "sync":
            agent.invoke(USER, JOB)
        else:
            asyncio.run(agent.ainvoke(USER, JOB))

    (task,) = _tasks(guard)
    assert task["status"] == "error"
    (end,) = guard.audit.events(kind="task_end")
    assert end.reason is not None and end.reason.startswith("a model call")
    (credential,) = service.credentials
    assert _revoked(guard, credential)


def test_fault_on_deny_raise_under_plain_invoke_ends_the_task(guard: tg.Guard) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job", on_deny="raise")
    script = [
        turn(call("kv_set", "c1", key="agents:jobs:42:a", value="v")),
        turn(call("kv_set", "c2", key="agents:jobs:7:a", value="v")),
        answer("never"),
    ]
    agent = _agent(guard, service, script=script, middleware=[middleware])

    with pytest.raises(tg.PolicyDenied):
        agent.invoke(USER, JOB)

    (task,) = _tasks(guard)
    assert task["status"] == "error"
    assert _revoked(guard, service.credentials[0])


def test_fault_parallel_calls_one_raises_ends_the_task_and_records_every_call(
    guard: tg.Guard,
) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job")
    script = [
        turn(
            call("kv_set", "c1", key="agents:jobs:42:a", value="v"),
            call("kv_delete", "c2", key="agents:jobs:42:a"),
        ),
        answer("never"),
    ]
    agent = _agent(guard, service, script=script, middleware=[middleware])

    with pytest.raises(RuntimeError, match="disk on fire"):
        asyncio.run(agent.ainvoke(USER, JOB))

    (task,) = _tasks(guard)
    assert task["status"] == "error"
    outcomes = {e.correlation_id: e.outcome for e in guard.audit.events(kind="outcome")}
    assert outcomes == {"c1": "ok", "c2": "error"}
    assert all(_revoked(guard, c) for c in service.credentials)


def test_fault_task_end_that_fails_keeps_the_original_exception(
    guard: tg.Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job")
    agent = _agent(guard, service, middleware=[middleware])
    real_end = TaskSession.end

    def failing_end(self: TaskSession, *args: Any, **kwargs: Any) -> None:
        if args and args[0] == "error":
            raise tg.AuditError("the audit database is gone")
        real_end(self, *args, **kwargs)

    monkeypatch.setattr(TaskSession, "end", failing_end)
    with pytest.raises(RuntimeError, match="disk on fire") as raised:
        agent.invoke(USER, JOB)

    notes = getattr(raised.value, "__notes__", [])
    assert any("could not end task" in n and "AuditError" in n for n in notes)
    (left,) = middleware.active_tasks  # still held: close() or the ttl ends it
    monkeypatch.setattr(TaskSession, "end", real_end)
    middleware.close()
    assert left.status == "abandoned"


# -- cancellation and KeyboardInterrupt -----------------------------------------------------


def test_fault_cancelled_async_run_ends_the_task_as_cancelled(guard: tg.Guard) -> None:
    started = asyncio.Event()
    seen: list[tg.Credential] = []

    @tool
    async def kv_set(key: str, value: str) -> str:
        """Write a key (this one hangs)."""
        seen.append(tg.current_credential())
        started.set()
        await asyncio.Future()  # never completes
        return "never"

    middleware = GuardMiddleware(guard, intent="process-job")
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:a", value="v")), answer("never")]
    agent = create_agent(fm.ScriptedChatModel(script=script), [kv_set], middleware=[middleware])

    async def main() -> None:
        run = asyncio.ensure_future(agent.ainvoke(USER, JOB))
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())

    (task,) = _tasks(guard)
    assert task["status"] == "cancelled"
    assert _revoked(guard, seen[0])


def test_fault_keyboard_interrupt_in_a_tool_ends_the_task_as_cancelled(guard: tg.Guard) -> None:
    service = Service(error=KeyboardInterrupt())
    middleware = GuardMiddleware(guard, intent="process-job")
    agent = _agent(guard, service, middleware=[middleware])

    with pytest.raises(KeyboardInterrupt):
        agent.invoke(USER, JOB)

    (task,) = _tasks(guard)
    assert task["status"] == "cancelled"
    assert all(_revoked(guard, c) for c in service.credentials)


# -- interrupts still keep the task ---------------------------------------------------------


def test_fault_interrupt_under_plain_invoke_keeps_the_task_for_the_resume(
    guard: tg.Guard,
) -> None:
    @tool
    def kv_set(key: str, value: str) -> str:
        """Write a key once a human approved it."""
        return f"written ({interrupt({'approve': key})})"

    middleware = GuardMiddleware(guard, intent="process-job")
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:a", value="v")), answer("ok")]
    agent = create_agent(
        fm.ScriptedChatModel(script=script),
        [kv_set],
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config: Any = {"configurable": {"job_id": "42", "thread_id": "t-int"}}

    first = agent.invoke(USER, config)
    assert "__interrupt__" in first
    (waiting,) = middleware.active_tasks

    final = agent.invoke(Command(resume="yes"), config)

    assert [m.content for m in final["messages"] if isinstance(m, ToolMessage)] == ["written (yes)"]
    (task,) = _tasks(guard)
    assert (task["task_id"], task["status"]) == (waiting.task_id, "ok")


# -- retry middleware: inside the guard, retries are calls of a live task -------------------


def test_fault_tool_retry_inside_the_guard_keeps_the_task(guard: tg.Guard) -> None:
    service = Service(failures=1)
    middleware = GuardMiddleware(guard, intent="process-job")
    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    agent = _agent(guard, service, middleware=[middleware, retry])

    result = agent.invoke(USER, JOB)

    assert result["messages"][-1].content == "done"
    (task,) = _tasks(guard)
    assert task["status"] == "ok"
    # each attempt is checked, audited and gets its own credential
    attempts = [e.outcome for e in guard.audit.events(kind="outcome", tool="kv_delete")]
    assert attempts == ["error", "ok"]
    assert service.deletes == 2


def test_fault_tool_retry_inside_the_guard_that_gives_up_ends_the_task(guard: tg.Guard) -> None:
    service = Service()
    middleware = GuardMiddleware(guard, intent="process-job")
    retry = ToolRetryMiddleware(max_retries=1, initial_delay=0, jitter=False, on_failure="error")
    agent = _agent(guard, service, middleware=[middleware, retry])

    with pytest.raises(RuntimeError, match="disk on fire"):
        agent.invoke(USER, JOB)

    assert service.deletes == 2
    (task,) = _tasks(guard)
    assert task["status"] == "error"
    assert all(_revoked(guard, c) for c in service.credentials)


def test_fault_tool_retry_outside_the_guard_finds_the_task_ended(guard: tg.Guard) -> None:
    # The documented order is GuardMiddleware first. Placed after a retry middleware, the
    # first failure ends the task (fail closed); the retry is denied, never run.
    service = Service(failures=1)
    middleware = GuardMiddleware(guard, intent="process-job")
    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    agent = _agent(guard, service, middleware=[retry, middleware])

    result = agent.invoke(USER, JOB)

    assert service.deletes == 1
    (task,) = _tasks(guard)
    assert task["status"] == "error"
    (denied,) = guard.audit.events(kind="denied")  # the retry: a denial, not an exception
    assert denied.rule == "task.active"
    messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert messages[-1].status == "error" and "Denied by toolguard" in str(messages[-1].content)


def test_fault_model_retry_inside_the_guard_keeps_the_task(guard: tg.Guard) -> None:
    service = Service(failures=0)
    middleware = GuardMiddleware(guard, intent="process-job")
    retry = ModelRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    model = FlakyModel(script=_script(), failures=1)
    agent = _agent(guard, service, model=model, middleware=[middleware, retry])

    result = agent.invoke(USER, JOB)

    assert result["messages"][-1].content == "done"
    (task,) = _tasks(guard)
    assert task["status"] == "ok"
