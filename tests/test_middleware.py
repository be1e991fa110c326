"""GuardMiddleware in create_agent runs: one task per run, sync and async, denials as tool
errors, runs that raise, interrupts and resumes, context parameters, and tools guarded twice."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import fake_model, raw_connection
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, HumanInTheLoopMiddleware
from langchain_core.messages import ToolMessage
from langchain_core.tools import InjectedToolArg, ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from toolguard_langchain import STATE_KEY, GuardMiddleware

import toolguard as tg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer

USER = {"messages": [{"role": "user", "content": "process the job"}]}
JOB: Any = {"configurable": {"job_id": "42"}}


class _Kv:
    """An in-memory key-value service whose tools keep the credentials they were given."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {"agents:context:rules": "be careful"}
        self.credentials: dict[str, tg.Credential] = {}
        self.tasks: dict[str, str | None] = {}

        @tool
        def kv_get(key: str) -> str:
            """Read a key."""
            self._seen(key)
            return self.data.get(key, "")

        @tool
        def kv_set(key: str, value: str) -> str:
            """Write a key."""
            self._seen(key)
            self.data[key] = value
            return "ok"

        self.kv_get = kv_get
        self.kv_set = kv_set

    def _seen(self, key: str) -> None:
        credential = tg.current_credential()
        self.credentials[key] = credential
        task = tg.current_task()
        self.tasks[key] = task.task_id if task else None

    @property
    def tools(self) -> list[Any]:
        return [self.kv_get, self.kv_set]


def _agent(guard: tg.Guard, script: list[Any], tools: list[Any], **kwargs: Any) -> Any:
    middleware = kwargs.pop("middleware", None) or [GuardMiddleware(guard, intent="process-job")]
    model = fm.ScriptedChatModel(script=script)
    return create_agent(model, tools, middleware=middleware, **kwargs)


def _task_rows(guard: tg.Guard) -> list[dict[str, Any]]:
    guard.store.open()
    return guard.store.query(  # in the order they started (their task_start events)
        "SELECT * FROM tasks t ORDER BY started_at,"
        " (SELECT MIN(seq) FROM events e WHERE e.task_id = t.task_id)"
    )


def _kinds(guard: tg.Guard, task_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.tool) for e in guard.audit.events(task_id=task_id)]


def _tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


# -- one run, one task ---------------------------------------------------------------------


def test_middleware_sync_run_is_one_task_with_a_credential_per_call(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [
        turn(call("kv_get", "c1", key="agents:context:rules")),
        turn(call("kv_set", "c2", key="agents:jobs:42:state", value="done")),
        answer("job 42 done"),
    ]
    agent = _agent(guard, script, kv.tools)

    result = agent.invoke(USER, JOB)

    assert result["messages"][-1].content == "job 42 done"
    assert STATE_KEY not in result
    (task,) = _task_rows(guard)
    assert (task["intent"], task["status"], task["params"]) == (
        "process-job",
        "ok",
        '{"job_id": "42"}',
    )
    task_id = task["task_id"]
    assert set(kv.tasks.values()) == {task_id}
    assert _kinds(guard, task_id) == [
        ("task_start", None),
        ("request", "kv_get"),
        ("outcome", "kv_get"),
        ("request", "kv_set"),
        ("outcome", "kv_set"),
        ("task_end", None),
    ]
    requests = guard.audit.events(task_id=task_id, kind="request")
    assert [e.correlation_id for e in requests] == ["c1", "c2"]
    assert [e.jti for e in requests] == [
        kv.credentials["agents:context:rules"].jti,
        kv.credentials["agents:jobs:42:state"].jti,
    ]
    written = kv.credentials["agents:jobs:42:state"]
    assert (written.operation, written.resources) == ("write", ("agents:jobs:42:state",))
    with pytest.raises(tg.CredentialRevoked, match="revoked"):
        guard.verifier().verify(written.token)


def test_middleware_async_run_is_one_task(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [
        turn(call("kv_set", "c1", key="agents:jobs:42:state", value="done")),
        answer("done"),
    ]
    agent = _agent(guard, script, kv.tools)

    result = asyncio.run(agent.ainvoke(USER, JOB))

    assert result["messages"][-1].content == "done"
    (task,) = _task_rows(guard)
    assert task["status"] == "ok"
    assert kv.tasks["agents:jobs:42:state"] == task["task_id"]
    assert [k for k, _ in _kinds(guard, task["task_id"])] == [
        "task_start",
        "request",
        "outcome",
        "task_end",
    ]
    with pytest.raises(tg.CredentialRevoked):
        guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)


def test_middleware_each_run_is_its_own_task(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [
        turn(call("kv_get", "a1", key="agents:jobs:42:state")),
        answer("first"),
        turn(call("kv_get", "b1", key="agents:jobs:7:state")),
        answer("second"),
    ]
    agent = _agent(guard, script, kv.tools)

    agent.invoke(USER, JOB)
    agent.invoke(USER, {"configurable": {"job_id": "7"}})

    first, second = _task_rows(guard)
    assert (first["params"], second["params"]) == ('{"job_id": "42"}', '{"job_id": "7"}')
    assert first["status"] == second["status"] == "ok"
    assert first["task_id"] != second["task_id"]


def test_middleware_denial_is_an_error_tool_message_and_the_run_goes_on(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [
        turn(call("kv_set", "c1", key="agents:jobs:7:state", value="x")),
        turn(call("kv_set", "c2", key="agents:jobs:42:state", value="y")),
        answer("done"),
    ]
    agent = _agent(guard, script, kv.tools)

    result = agent.invoke(USER, JOB)

    denied, allowed = _tool_messages(result)
    assert denied.status == "error"
    assert (denied.tool_call_id, denied.name) == ("c1", "kv_set")
    assert str(denied.content).startswith("Denied by toolguard: write on 'agents:jobs:7:state'")
    assert allowed.status == "success"
    assert "agents:jobs:7:state" not in kv.data
    assert kv.data["agents:jobs:42:state"] == "y"
    (event,) = guard.audit.events(kind="denied")
    assert (event.correlation_id, event.rule) == ("c1", "intents.process-job.allow.write")


def test_middleware_on_deny_raise_raises_and_run_helper_ends_the_task(guard: tg.Guard) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(guard, intent="process-job", on_deny="raise")
    script = [turn(call("kv_delete", "c1", key="agents:jobs:42:state")), answer("never")]
    agent = _agent(guard, script, kv.tools, middleware=[middleware])

    with pytest.raises(tg.PolicyDenied, match="kv_delete"):
        middleware.run(agent, USER, JOB)

    (task,) = _task_rows(guard)
    assert task["status"] == "error"
    assert middleware.active_tasks == []


def test_middleware_unknown_tool_is_denied_and_audited(guard: tg.Guard) -> None:
    script = [turn(call("drop_tables", "c1", table="jobs")), answer("done")]
    agent = _agent(guard, script, _Kv().tools)

    result = agent.invoke(USER, JOB)

    (message,) = _tool_messages(result)
    assert message.status == "error"
    assert "has no rule in tools:" in str(message.content)
    (event,) = guard.audit.events(kind="denied")
    assert (event.tool, event.rule) == ("drop_tables", "tools.drop_tables")


def test_middleware_tool_error_message_is_recorded_as_an_error_outcome(guard: tg.Guard) -> None:
    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        raise ToolException("the key-value service is down")

    kv_get.handle_tool_error = True
    agent = _agent(
        guard, [turn(call("kv_get", "c1", key="agents:jobs:42:x")), answer("ok")], [kv_get]
    )

    result = agent.invoke(USER, JOB)

    (message,) = _tool_messages(result)
    assert message.status == "error"
    (outcome,) = guard.audit.events(kind="outcome")
    assert outcome.outcome == "error"
    assert outcome.error == "ToolException: the key-value service is down"


def test_middleware_audit_error_always_raises(make_guard: Callable[..., tg.Guard]) -> None:
    guard = make_guard(busy_timeout=0.05)
    kv = _Kv()
    agent = _agent(
        guard,
        [turn(call("kv_get", "c1", key="agents:jobs:42:state")), answer("never")],
        kv.tools,
        middleware=[GuardMiddleware(guard)],
    )
    with guard.task("process-job", job_id="42"):
        locker = raw_connection(guard)  # holds the store's write lock
        pg = guard.config.store_location.is_postgres
        locker.execute("BEGIN IMMEDIATE" if pg else "BEGIN EXCLUSIVE")
        try:
            with pytest.raises(tg.AuditError, match="nothing ran"):
                agent.invoke(USER)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    assert kv.credentials == {}


# -- parameters ------------------------------------------------------------------------------


@dataclass
class _JobContext:
    job_id: str


def test_middleware_params_come_from_the_run_context(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [turn(call("kv_set", "c1", key="agents:jobs:9:state", value="v")), answer("ok")]
    agent = _agent(guard, script, kv.tools, context_schema=_JobContext)

    agent.invoke(USER, {"configurable": {"job_id": "42"}}, context=_JobContext(job_id="9"))

    (task,) = _task_rows(guard)
    assert task["params"] == '{"job_id": "9"}'
    assert kv.data["agents:jobs:9:state"] == "v"


def test_middleware_static_params_win_and_unrelated_config_is_not_recorded(
    guard: tg.Guard,
) -> None:
    middleware = GuardMiddleware(guard, intent="process-job", params={"job_id": 5})
    agent = _agent(guard, [answer("nothing to do")], [], middleware=[middleware])

    agent.invoke(USER, {"configurable": {"job_id": "42", "api_key": "secret"}})

    (task,) = _task_rows(guard)
    assert task["params"] == '{"job_id": "5"}'
    (start,) = guard.audit.events(kind="task_start")
    assert "secret" not in (start.args or "")


def test_middleware_missing_param_is_a_config_error_at_run_start(guard: tg.Guard) -> None:
    agent = _agent(guard, [answer("never")], _Kv().tools)

    with pytest.raises(tg.ConfigError, match="needs the task parameter\\(s\\) 'job_id'"):
        agent.invoke(USER)

    assert _task_rows(guard) == []


def test_middleware_unknown_intent_is_a_config_error(guard: tg.Guard) -> None:
    with pytest.raises(tg.ConfigError, match="intent 'nope' is not defined"):
        GuardMiddleware(guard, intent="nope")


def test_middleware_rejects_a_bad_on_deny(guard: tg.Guard) -> None:
    with pytest.raises(ValueError, match="on_deny"):
        GuardMiddleware(guard, intent="process-job", on_deny="ignore")  # type: ignore[arg-type]


def test_middleware_without_intent_uses_the_current_task(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v")), answer("ok")]
    agent = _agent(guard, script, kv.tools, middleware=[GuardMiddleware(guard)])

    with guard.task("process-job", job_id="42") as task:
        agent.invoke(USER)
        assert task.status == "active"

    assert kv.tasks["agents:jobs:42:state"] == task.task_id
    assert [t["task_id"] for t in _task_rows(guard)] == [task.task_id]


def test_middleware_without_intent_or_task_denies(guard: tg.Guard) -> None:
    kv = _Kv()
    script = [turn(call("kv_get", "c1", key="agents:jobs:42:state")), answer("ok")]
    agent = _agent(guard, script, kv.tools, middleware=[GuardMiddleware(guard)])

    result = agent.invoke(USER)

    (message,) = _tool_messages(result)
    assert message.status == "error"
    assert "outside a task" in str(message.content)
    assert kv.credentials == {}


# -- tools guarded both ways, injected credentials ------------------------------------------


def test_middleware_guarded_tool_is_checked_once(guard: tg.Guard) -> None:
    kv = _Kv()
    tools = tg.guard(kv.tools, guard)
    script = [
        turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v")),
        turn(call("kv_set", "c2", key="agents:jobs:7:state", value="v")),
        answer("ok"),
    ]
    agent = _agent(guard, script, tools)

    result = agent.invoke(USER, JOB)

    allowed, denied = _tool_messages(result)
    assert allowed.status == "success"
    assert denied.status == "error"
    assert str(denied.content).startswith("Denied by toolguard:")
    (task,) = _task_rows(guard)
    assert kv.tasks["agents:jobs:42:state"] == task["task_id"]
    assert [k for k, _ in _kinds(guard, task["task_id"])] == [
        "task_start",
        "request",
        "outcome",
        "denied",
        "task_end",
    ]
    assert [e.correlation_id for e in guard.audit.events(task_id=task["task_id"])][1:4] == [
        "c1",
        "c1",
        "c2",
    ]


def test_middleware_fills_injected_credential_arguments(guard: tg.Guard) -> None:
    seen: list[tg.Credential] = []

    @tool
    def kv_set(key: str, value: str, credential: Annotated[tg.Credential, InjectedToolArg]) -> str:
        """Write a key."""
        seen.append(credential)
        return "ok"

    script = [
        turn(call("kv_set", "c1", key="agents:jobs:42:s", value="v", credential="forged")),
        answer("ok"),
    ]
    agent = _agent(guard, script, [kv_set])

    agent.invoke(USER, JOB)

    (credential,) = seen
    assert isinstance(credential, tg.Credential)
    (request,) = guard.audit.events(kind="request")
    assert credential.jti == request.jti
    assert "forged" not in (request.args or "")


# -- runs that raise ------------------------------------------------------------------------


def _failing_tools(kv: _Kv) -> list[Any]:
    @tool
    def kv_delete(key: str) -> str:
        """Delete a key (this one crashes)."""
        raise RuntimeError("disk on fire")

    return [*kv.tools, kv_delete]


def _crash_script() -> list[Any]:
    return [
        turn(call("kv_set", "c1", key="agents:jobs:42:state", value="half")),
        turn(call("kv_delete", "c2", key="agents:jobs:42:state")),
        answer("never"),
    ]


class _FailsOnceAfterATool(AgentMiddleware[Any, Any, Any]):
    """Another middleware whose ``before_model`` raises (once) after a tool ran: a failure
    outside the model and tool calls, which GuardMiddleware's wrappers do not see."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def before_model(self, state: Any, runtime: Any) -> None:
        if not self.failed and any(isinstance(m, ToolMessage) for m in state["messages"]):
            self.failed = True
            raise RuntimeError("disk on fire")


@pytest.fixture
def crash_guard(make_guard: Callable[..., tg.Guard], clock: Any) -> tg.Guard:
    from conftest import BASE_CONFIG

    intents = {**BASE_CONFIG["intents"]}
    intents["process-job"] = {
        **intents["process-job"],
        "tools": ["kv_get", "kv_set", "kv_delete"],
        "allow": {**intents["process-job"]["allow"], "delete": ["agents:jobs:{job_id}:*"]},
    }
    return make_guard(clock=clock, intents=intents)


def test_middleware_run_that_raises_midway_revokes_credentials(crash_guard: tg.Guard) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(crash_guard, intent="process-job")
    agent = _agent(crash_guard, _crash_script(), _failing_tools(kv), middleware=[middleware])

    with pytest.raises(RuntimeError, match="disk on fire"):
        middleware.run(agent, USER, JOB)

    (task,) = _task_rows(crash_guard)
    assert task["status"] == "error"
    assert middleware.active_tasks == []
    kinds = _kinds(crash_guard, task["task_id"])
    assert kinds[-2:] == [("outcome", "kv_delete"), ("task_end", None)]
    (crashed,) = crash_guard.audit.events(kind="outcome", tool="kv_delete")
    assert crashed.error == "RuntimeError: disk on fire"
    with pytest.raises(tg.CredentialRevoked):
        crash_guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)


def test_middleware_async_run_that_raises_revokes_credentials(crash_guard: tg.Guard) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(crash_guard, intent="process-job")
    agent = _agent(crash_guard, _crash_script(), _failing_tools(kv), middleware=[middleware])

    with pytest.raises(RuntimeError, match="disk on fire"):
        asyncio.run(middleware.arun(agent, USER, JOB))

    (task,) = _task_rows(crash_guard)
    assert task["status"] == "error"
    with pytest.raises(tg.CredentialRevoked):
        crash_guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)


def test_middleware_scope_ends_the_task_of_a_streamed_run(crash_guard: tg.Guard) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(crash_guard, intent="process-job")
    agent = _agent(crash_guard, _crash_script(), _failing_tools(kv), middleware=[middleware])

    with pytest.raises(RuntimeError, match="disk on fire"), middleware.scope():
        for _ in agent.stream(USER, JOB):
            pass

    (task,) = _task_rows(crash_guard)
    assert task["status"] == "error"


def test_middleware_failed_run_task_is_ended_by_the_next_run_on_its_thread(
    crash_guard: tg.Guard,
) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(crash_guard, intent="process-job")
    script = [_crash_script()[0], answer("second run")]
    agent = _agent(
        crash_guard,
        script,
        _failing_tools(kv),
        middleware=[middleware, _FailsOnceAfterATool()],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"job_id": "42", "thread_id": "t1"}}

    with pytest.raises(RuntimeError, match="disk on fire"):
        agent.invoke(USER, config)
    (failed,) = middleware.active_tasks
    crash_guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)  # still valid

    agent.invoke(USER, config)

    first, second = _task_rows(crash_guard)
    assert first["task_id"] == failed.task_id
    assert (first["status"], second["status"]) == ("abandoned", "ok")
    with pytest.raises(tg.CredentialRevoked):
        crash_guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)


def test_middleware_close_ends_tasks_left_open(crash_guard: tg.Guard) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(crash_guard, intent="process-job")
    agent = _agent(
        crash_guard,
        _crash_script(),
        _failing_tools(kv),
        middleware=[middleware, _FailsOnceAfterATool()],
    )
    with pytest.raises(RuntimeError):
        agent.invoke(USER, JOB)
    assert len(middleware.active_tasks) == 1

    middleware.close()

    assert middleware.active_tasks == []
    (task,) = _task_rows(crash_guard)
    assert task["status"] == "abandoned"
    with pytest.raises(tg.CredentialRevoked):
        crash_guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)


def test_middleware_ttl_is_the_last_resort(crash_guard: tg.Guard, clock: Any) -> None:
    kv = _Kv()
    middleware = GuardMiddleware(crash_guard, intent="process-job")
    script = [_crash_script()[0], answer("later")]
    agent = _agent(
        crash_guard, script, _failing_tools(kv), middleware=[middleware, _FailsOnceAfterATool()]
    )
    with pytest.raises(RuntimeError):
        agent.invoke(USER, JOB)
    (left_open,) = middleware.active_tasks
    credential = kv.credentials["agents:jobs:42:state"]
    assert credential.expires_at <= left_open.deadline

    clock.advance(15 * 60 + 1)
    with pytest.raises(tg.CredentialExpired):
        crash_guard.verifier().verify(credential.token)
    agent.invoke(USER, JOB)  # the next run sweeps tasks past their TTL

    first, _ = _task_rows(crash_guard)
    assert first["status"] == "expired"


# -- interrupts and resumes -----------------------------------------------------------------


def test_middleware_interrupt_in_a_tool_keeps_the_task_and_resume_continues_it(
    guard: tg.Guard,
) -> None:
    runs: list[str | None] = []

    @tool
    def kv_set(key: str, value: str) -> str:
        """Write a key after a human approved it."""
        approval = interrupt({"approve": key})
        task = tg.current_task()
        runs.append(task.task_id if task else None)
        return f"written ({approval})"

    middleware = GuardMiddleware(guard, intent="process-job")
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v")), answer("ok")]
    agent = _agent(guard, script, [kv_set], middleware=[middleware], checkpointer=InMemorySaver())
    config: Any = {"configurable": {"job_id": "42", "thread_id": "hitl"}}

    first = middleware.run(agent, USER, config)

    assert first["__interrupt__"][0].value == {"approve": "agents:jobs:42:state"}
    (waiting,) = middleware.active_tasks
    assert [t["status"] for t in _task_rows(guard)] == ["active"]

    final = middleware.run(agent, Command(resume="approved"), config)

    assert final["messages"][-1].content == "ok"
    assert _tool_messages(final)[0].content == "written (approved)"
    assert runs == [waiting.task_id]
    (task,) = _task_rows(guard)
    assert (task["task_id"], task["status"]) == (waiting.task_id, "ok")
    outcomes = guard.audit.events(kind="outcome")
    assert [o.outcome for o in outcomes] == ["error", "ok"]
    assert outcomes[0].error is not None and outcomes[0].error.startswith("RunInterrupted:")
    assert {e.correlation_id for e in guard.audit.events(kind="request")} == {"c1"}


def test_middleware_human_in_the_loop_resume_continues_the_task(guard: tg.Guard) -> None:
    kv = _Kv()
    guard_mw = GuardMiddleware(guard, intent="process-job")
    hitl = HumanInTheLoopMiddleware(interrupt_on={"kv_set": True})
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v")), answer("ok")]
    agent = _agent(
        guard, script, kv.tools, middleware=[hitl, guard_mw], checkpointer=InMemorySaver()
    )
    config = {"configurable": {"job_id": "42", "thread_id": "review"}}

    paused = agent.invoke(USER, config)

    assert "__interrupt__" in paused
    assert kv.data.get("agents:jobs:42:state") is None
    (waiting,) = guard_mw.active_tasks

    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)

    assert kv.data["agents:jobs:42:state"] == "v"
    assert kv.tasks["agents:jobs:42:state"] == waiting.task_id
    (task,) = _task_rows(guard)
    assert task["status"] == "ok"


def _interrupted_elsewhere(
    guard: tg.Guard, kv: _Kv, saver: InMemorySaver, config: Any
) -> tuple[GuardMiddleware, Any, list[Any]]:
    """A run paused for approval by one worker (its own middleware); what a second worker
    needs to resume it: the human-in-the-loop middleware and the rest of the script."""
    hitl = HumanInTheLoopMiddleware(interrupt_on={"kv_set": True})
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v")), answer("ok")]
    first = GuardMiddleware(guard, intent="process-job")
    agent = _agent(guard, script, kv.tools, middleware=[hitl, first], checkpointer=saver)
    assert "__interrupt__" in agent.invoke(USER, config)
    return first, hitl, script[1:]


def test_middleware_resume_in_another_process_continues_the_task(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    """A worker that did not start the run (its own guard and middleware, as after a restart
    or on another machine) resumes it: same task, new credentials, the task ends with it."""
    kv, saver = _Kv(), InMemorySaver()
    config = {"configurable": {"job_id": "42", "thread_id": "moved"}}
    here, there = make_guard(clock=clock), make_guard(clock=clock)
    first, hitl, rest = _interrupted_elsewhere(here, kv, saver, config)
    (waiting,) = first.active_tasks
    second = GuardMiddleware(there, intent="process-job")
    agent = _agent(there, rest, kv.tools, middleware=[hitl, second], checkpointer=saver)

    result = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)

    (message,) = _tool_messages(result)
    assert message.status != "error"
    assert kv.data["agents:jobs:42:state"] == "v"
    assert kv.tasks["agents:jobs:42:state"] == waiting.task_id
    assert kv.credentials["agents:jobs:42:state"].task_id == waiting.task_id
    (task,) = _task_rows(there)
    assert (task["task_id"], task["status"]) == (waiting.task_id, "ok")
    kinds = [e.kind for e in there.audit.events(task_id=waiting.task_id)]
    assert kinds == ["task_start", "task_resume", "request", "outcome", "task_end"]
    assert second.active_tasks == []
    verifier = here.verifier(audience="kv-service")
    with pytest.raises(tg.CredentialRevoked):  # the task's end revoked it for every process
        verifier.verify(kv.credentials["agents:jobs:42:state"].token)


def test_middleware_async_resume_in_another_process_adopts_the_task_off_the_event_loop(
    make_guard: Callable[..., tg.Guard], clock: Any, store_writes: list[tuple[str, int]]
) -> None:
    """Issue 15: ``ainvoke`` resuming a run another worker interrupted adopts its task (reads
    the trail, records ``task_resume``) on the guard's writer thread, not on the loop."""
    kv, saver = _Kv(), InMemorySaver()
    config = {"configurable": {"job_id": "42", "thread_id": "moved-async"}}
    here, there = make_guard(clock=clock), make_guard(clock=clock)
    first, hitl, rest = _interrupted_elsewhere(here, kv, saver, config)
    (waiting,) = first.active_tasks
    second = GuardMiddleware(there, intent="process-job")
    agent = _agent(there, rest, kv.tools, middleware=[hitl, second], checkpointer=saver)
    writes = store_writes
    writes.clear()  # from here on

    async def main() -> int:
        resume = Command(resume={"decisions": [{"type": "approve"}]})
        result = await agent.ainvoke(resume, config)
        (message,) = _tool_messages(result)
        assert message.status != "error"
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    kinds = [e.kind for e in there.audit.events(task_id=waiting.task_id)]
    assert kinds == ["task_start", "task_resume", "request", "outcome", "task_end"]
    assert kv.tasks["agents:jobs:42:state"] == waiting.task_id
    assert writes and loop_thread not in {thread for _, thread in writes}, writes


def test_middleware_resume_of_a_task_that_ended_meanwhile_is_denied(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    kv, saver = _Kv(), InMemorySaver()
    config = {"configurable": {"job_id": "42", "thread_id": "moved"}}
    here, there = make_guard(clock=clock), make_guard(clock=clock)
    first, hitl, rest = _interrupted_elsewhere(here, kv, saver, config)
    (waiting,) = first.active_tasks
    first.close()  # the first worker shut down: the task ended (abandoned)
    agent = _agent(
        there,
        rest,
        kv.tools,
        middleware=[hitl, GuardMiddleware(there, intent="process-job")],
        checkpointer=saver,
    )

    result = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)

    (message,) = _tool_messages(result)
    assert message.status == "error"
    assert "outside a task" in str(message.content)
    assert "agents:jobs:42:state" not in kv.data
    (refused,) = there.audit.events(task_id=waiting.task_id, kind="denied")
    assert refused.rule == "task.resume"
    assert "has ended (abandoned)" in (refused.reason or "")


def test_middleware_does_not_resume_a_task_of_another_intent(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    kv, saver = _Kv(), InMemorySaver()
    config = {"configurable": {"job_id": "42", "thread_id": "moved"}}
    here, there = make_guard(clock=clock), make_guard(clock=clock)
    _, hitl, rest = _interrupted_elsewhere(here, kv, saver, config)
    other = GuardMiddleware(there, intent="summarise-job")
    agent = _agent(there, rest, kv.tools, middleware=[hitl, other], checkpointer=saver)

    result = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)

    (message,) = _tool_messages(result)
    assert message.status == "error"
    assert "agents:jobs:42:state" not in kv.data
    assert other.active_tasks == []
    (row,) = _task_rows(there)
    assert row["status"] == "active"  # left to the worker (or TTL) that owns it


# -- docs ------------------------------------------------------------------------------------

DOCS = EXAMPLES.parent / "docs" / "agents.md"


def _python_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] | None = None
    skip = False
    previous = ""
    for line in text.splitlines():
        if current is None and line.strip() == "```python":
            current, skip = [], previous.strip() == "<!-- no-test -->"
        elif current is not None and line.strip() == "```":
            if not skip:
                blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
        previous = line
    return blocks


def test_middleware_docs_python_blocks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _python_blocks(DOCS.read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    namespace: dict[str, Any] = {"__name__": "docs_agents"}
    try:
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"{DOCS.name} block {number}", "exec"), namespace)
    finally:
        for name in ("guard", "guard2"):
            if isinstance(namespace.get(name), tg.Guard):
                namespace[name].close()
    out = capsys.readouterr().out
    assert "[('c1', 'success'), ('c2', 'error')]" in out
    assert "read on 'agents:jobs:*' is wider than the parent's intent" in out


def test_middleware_resumed_run_that_raises_ends_the_task(guard: tg.Guard) -> None:
    @tool
    def kv_set(key: str, value: str) -> str:
        """Write a key after a human approved it; the service then fails."""
        interrupt({"approve": key})
        raise RuntimeError("service down after approval")

    middleware = GuardMiddleware(guard, intent="process-job")
    script = [turn(call("kv_set", "c1", key="agents:jobs:42:state", value="v")), answer("never")]
    agent = _agent(guard, script, [kv_set], middleware=[middleware], checkpointer=InMemorySaver())
    config: Any = {"configurable": {"job_id": "42", "thread_id": "resume-fails"}}
    middleware.run(agent, USER, config)
    assert len(middleware.active_tasks) == 1

    with pytest.raises(RuntimeError, match="service down"):
        middleware.run(agent, Command(resume="ok"), config)

    assert middleware.active_tasks == []
    (task,) = _task_rows(guard)
    assert task["status"] == "error"
