"""Tests for toolguard.task: the task lifecycle (sync and async), its end on exception,
cancellation and TTL, and how the task reaches tools in other threads."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

import toolguard as tg

JOB_KEY = "agents:jobs:42:input"

_tokens: list[str] = []


@tool
def kv_get(key: str) -> str:
    """Read a key; keeps a copy of its token for the test to replay."""
    cred = tg.current_credential()
    _tokens.append(cred.token)
    return f"{key}@{cred.task_id}"


@pytest.fixture(autouse=True)
def _clear_tokens() -> Iterator[None]:
    _tokens.clear()
    yield
    _tokens.clear()


def _events(guard: tg.Guard, task_id: str) -> list[tg.AuditEvent]:
    return guard.audit.events(task_id=task_id)


def _task_end(guard: tg.Guard, task_id: str) -> tg.AuditEvent:
    (end,) = [e for e in _events(guard, task_id) if e.kind == "task_end"]
    return end


def _verify(guard: tg.Guard, token: str) -> dict[str, Any]:
    return guard.verifier(audience="kv-service").verify(token, operation="read", resource=JOB_KEY)


# -- lifecycle ---------------------------------------------------------------------------------


def test_task_start_records_event_and_makes_task_current(guard: tg.Guard, clock: Clock) -> None:
    assert tg.current_task() is None
    with guard.task("process-job", job_id=42) as task:
        assert tg.current_task() is task
        assert len(task.task_id) == 32 and int(task.task_id, 16) >= 0
        assert task.status == "active"
        assert task.intent == "process-job"
        assert task.identity == "agent-runner"
        assert task.params == {"job_id": "42"}
        assert task.deadline == clock.now + 900
        (start,) = _events(guard, task.task_id)
    assert tg.current_task() is None
    assert start.kind == "task_start"
    assert start.ts == clock.now
    assert start.identity == "agent-runner"
    assert start.intent == "process-job"
    assert start.reason == "Process job 42"
    assert json.loads(start.args or "null") == {"job_id": "42"}


def test_task_ends_ok_and_revokes_its_credentials(guard: tg.Guard, clock: Clock) -> None:
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task:
        guarded.invoke({"key": JOB_KEY})
        guarded.invoke({"key": JOB_KEY})
        for token in _tokens:
            assert _verify(guard, token)["task_id"] == task.task_id
        clock.advance(3)

    assert task.status == "ok"
    end = _task_end(guard, task.task_id)
    assert (end.outcome, end.reason, end.duration_ms) == ("ok", "task ended (ok)", 3000.0)
    assert len(_tokens) == 2
    for token in _tokens:
        with pytest.raises(tg.CredentialRevoked, match=r"revoked: task ended \(ok\)"):
            _verify(guard, token)
    row = guard.store.task_row(task.task_id)
    assert row is not None and (row["status"], row["ended_at"]) == ("ok", clock.now)


def test_task_ending_by_exception_revokes_and_records_error(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    with pytest.raises(KeyError, match="boom"), guard.task("process-job", job_id="42") as task:
        guarded.invoke({"key": JOB_KEY})
        raise KeyError("boom")

    assert task.status == "error"
    assert _task_end(guard, task.task_id).outcome == "error"
    with pytest.raises(tg.CredentialRevoked):
        _verify(guard, _tokens[0])
    assert tg.current_task() is None


def test_task_ending_by_keyboard_interrupt_is_cancelled(guard: tg.Guard) -> None:
    with pytest.raises(KeyboardInterrupt), guard.task("process-job", job_id="42") as task:
        raise KeyboardInterrupt
    assert _task_end(guard, task.task_id).outcome == "cancelled"


def test_calls_after_the_task_ended_are_denied(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard, on_deny="raise")
    with guard.task("process-job", job_id="42") as task:
        pass
    # A thread that kept the task (carry) cannot use it after the end.
    late = task.carry(lambda: guarded.invoke({"key": JOB_KEY}))
    with pytest.raises(tg.PolicyDenied, match=r"the task has ended \(ok\)"):
        late()


def test_task_end_is_idempotent(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task:
        pass
    task.end("error")
    assert task.status == "ok"
    assert [e.kind for e in _events(guard, task.task_id)].count("task_end") == 1


def test_task_cannot_start_twice(guard: tg.Guard) -> None:
    task = guard.task("process-job", job_id="42")
    with task:
        pass
    with pytest.raises(RuntimeError, match="can be started only once"), task:
        pass


def test_nested_tasks_restore_the_outer_one(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as outer:
        with guard.task("summarise-job", job_id="7") as inner:
            assert tg.current_task() is inner
        assert tg.current_task() is outer


def test_task_start_missing_parameter_is_config_error(guard: tg.Guard) -> None:
    with pytest.raises(tg.ConfigError, match=r"needs the task parameter 'job_id'"):
        guard.task("process-job")
    with pytest.raises(tg.ConfigError, match=r"intent 'nope' is not defined"):
        guard.task("nope", job_id="1")


def test_task_start_refused_for_disabled_identity(guard: tg.Guard) -> None:
    guard.revoke(identity="agent-runner", reason="incident 17", disable=True)
    refused = guard.task("process-job", job_id="42")
    with pytest.raises(tg.PolicyDenied, match=r"identity 'agent-runner' is disabled"), refused:
        pass
    guard.enable("agent-runner")
    with guard.task("process-job", job_id="42") as task:
        pass
    assert task.status == "ok"


# -- async and cancellation ------------------------------------------------------------------


def test_async_task_lifecycle(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)

    async def main() -> tg.TaskSession:
        async with guard.task("process-job", job_id="42") as task:
            assert tg.current_task() is task
            await guarded.ainvoke({"key": JOB_KEY})
        assert tg.current_task() is None
        return task

    task = asyncio.run(main())
    assert task.status == "ok"
    with pytest.raises(tg.CredentialRevoked):
        _verify(guard, _tokens[0])


def test_cancelled_async_task_revokes_and_records_cancelled(guard: tg.Guard) -> None:
    holder: list[tg.TaskSession] = []
    entered: list[asyncio.Event] = []

    @tool
    async def kv_get_slow(key: str) -> str:
        """Read a key slowly: waits until cancelled."""
        entered[0].set()
        await asyncio.Event().wait()
        return key

    guarded_get = tg.guard(kv_get, guard)
    guarded_wait = tg.guard(kv_get_slow.model_copy(update={"name": "kv_get"}), guard)

    async def worker() -> None:
        async with guard.task("process-job", job_id="42") as task:
            holder.append(task)
            await guarded_get.ainvoke({"key": JOB_KEY})
            await guarded_wait.ainvoke({"key": JOB_KEY})  # cancelled inside the tool

    async def main() -> None:
        entered.append(asyncio.Event())
        job = asyncio.create_task(worker())
        await entered[0].wait()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(main())
    (task,) = holder
    assert task.status == "cancelled"
    events = _events(guard, task.task_id)
    assert _task_end(guard, task.task_id).outcome == "cancelled"
    outcomes = [(e.outcome, e.error) for e in events if e.kind == "outcome"]
    assert outcomes == [("ok", None), ("error", "CancelledError: ")]
    assert len(_tokens) == 1
    with pytest.raises(tg.CredentialRevoked):
        _verify(guard, _tokens[0])


def test_async_task_exception(guard: tg.Guard) -> None:
    async def main() -> tg.TaskSession:
        task = guard.task("process-job", job_id="42")
        with pytest.raises(ValueError, match="bad input"):
            async with task:
                raise ValueError("bad input")
        return task

    assert asyncio.run(main()).status == "error"


def test_concurrent_async_tasks_are_isolated(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)

    async def one(job: str) -> tuple[str, str]:
        async with guard.task("process-job", job_id=job) as task:
            await asyncio.sleep(0)
            result = await guarded.ainvoke({"key": f"agents:jobs:{job}:input"})
            return task.task_id, str(result)

    async def main() -> list[tuple[str, str]]:
        return list(await asyncio.gather(one("1"), one("2"), one("3")))

    for task_id, result in asyncio.run(main()):
        assert result.endswith(f"@{task_id}")


# -- TTL -------------------------------------------------------------------------------------


def test_ttl_passed_denies_calls_and_ends_expired(guard: tg.Guard, clock: Clock) -> None:
    guarded = tg.guard(kv_get, guard, on_deny="raise")
    with guard.task("process-job", job_id="42") as task:
        guarded.invoke({"key": JOB_KEY})
        clock.advance(900)
        with pytest.raises(tg.PolicyDenied, match="past its time limit") as info:
            guarded.invoke({"key": JOB_KEY})
        assert info.value.rule == "task.ttl"

    assert task.status == "expired"
    assert _task_end(guard, task.task_id).outcome == "expired"
    with pytest.raises((tg.CredentialRevoked, tg.CredentialExpired)):
        _verify(guard, _tokens[0])


def test_credential_never_outlives_the_task_deadline(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    from conftest import BASE_CONFIG

    intents = {**BASE_CONFIG["intents"]}
    intents["process-job"] = {**intents["process-job"], "ttl": "2m"}
    guard = make_guard(clock=clock, intents=intents)
    guarded = tg.guard(kv_get, guard)
    captured: list[tg.Credential] = []

    @tool
    def kv_peek(key: str) -> str:
        """Keep the credential."""
        captured.append(tg.current_credential())
        return "ok"

    with guard.task("process-job", job_id="42") as task:
        guarded.invoke({"key": JOB_KEY})
        clock.advance(100)
        tg.guard(kv_peek.model_copy(update={"name": "kv_get"}), guard).invoke({"key": JOB_KEY})
        (cred,) = captured
        assert cred.expires_at == task.deadline
        assert cred.expires_at - cred.issued_at == 20
        clock.advance(25)  # past the deadline (and the 5 s leeway)
        with pytest.raises((tg.CredentialExpired, tg.CredentialRevoked)):
            _verify(guard, cred.token)


# -- threads ---------------------------------------------------------------------------------


def test_runnable_lambda_batch_threads_see_the_task(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    threads: set[int] = set()

    def read(key: str) -> str:
        threads.add(threading.get_ident())
        return str(guarded.invoke({"key": key}))

    with guard.task("process-job", job_id="42") as task:
        results = RunnableLambda(read).batch([JOB_KEY] * 4, config={"max_concurrency": 4})

    assert results == [f"{JOB_KEY}@{task.task_id}"] * 4
    assert threading.get_ident() not in threads


def test_plain_thread_pool_does_not_see_the_task(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard, on_deny="raise")
    with guard.task("process-job", job_id="42"), ThreadPoolExecutor(2) as pool:
        future = pool.submit(guarded.invoke, {"key": JOB_KEY})
        with pytest.raises(tg.NoActiveTask):
            future.result()


def test_carry_task_brings_the_task_into_a_thread_pool(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task, ThreadPoolExecutor(2) as pool:
        carried = pool.submit(tg.carry_task(guarded.invoke), {"key": JOB_KEY})
        explicit = pool.submit(tg.carry_task(guarded.invoke, task=task), {"key": JOB_KEY})
        method = pool.submit(task.carry(guarded.invoke), {"key": JOB_KEY})
        results = [f.result() for f in (carried, explicit, method)]
    assert results == [f"{JOB_KEY}@{task.task_id}"] * 3


def test_carry_task_outside_a_thread_is_reusable(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task:
        run = tg.carry_task(guarded.invoke)
    # Carried into a thread started after the with block: the task has ended there too.
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(run, {"key": JOB_KEY}).result()
    assert "the task has ended" in result
    assert task.status == "ok"


def test_threads_in_one_task_get_their_own_credentials(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task, ThreadPoolExecutor(4) as pool:
        list(pool.map(task.carry(guarded.invoke), [{"key": JOB_KEY}] * 8))
    requests = [e for e in _events(guard, task.task_id) if e.kind == "request"]
    assert len({e.jti for e in requests}) == 8
    assert len(set(_tokens)) == 8


class _ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> _ScriptedModel:
        return self


def test_tool_node_parallel_calls_see_the_task(guard: tg.Guard) -> None:
    calls = [
        {"name": "kv_get", "args": {"key": JOB_KEY}, "id": f"c{i}", "type": "tool_call"}
        for i in range(3)
    ]
    model = _ScriptedModel(messages=iter([AIMessage("", tool_calls=calls), AIMessage("done")]))
    agent = create_agent(model, tools=tg.guard([kv_get], guard))

    with guard.task("process-job", job_id="42") as task:
        result = agent.invoke({"messages": [HumanMessage("read job 42 three times")]})

    replies = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in replies] == ["success"] * 3
    assert all(m.content == f"{JOB_KEY}@{task.task_id}" for m in replies)


def test_each_task_end_appends_a_signed_checkpoint(
    guard: tg.Guard, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guarded = tg.guard(kv_get, guard)
    for job in ("1", "2", "3"):
        with guard.task("process-job", job_id=job):
            guarded.invoke({"key": f"agents:jobs:{job}:input"})

    lines = (tmp_path / "audit.db.checkpoints").read_text().splitlines()
    assert len(lines) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    report = guard.audit.verify()
    assert report.ok
    assert report.unanchored == 0
