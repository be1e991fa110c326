"""Async callers never run the store's work on the event loop (issue 15).

Every write transaction of the store (``Store._write``) records the thread it runs on; the
async entry points (``ainvoke`` of guarded tools, ``async with guard.task``, GuardMiddleware's
async hooks, ``Guard.aauthorize``) must run them on the guard's writer thread, never on the
loop's. Cancelling the awaiting coroutine must leave the trail whole: the call's ``request`` and
an ``outcome`` saying it did not run, the task ended and its credentials revoked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import fake_model
from langchain.agents import create_agent
from langchain_core.tools import tool
from toolguard_langchain import GuardMiddleware

import toolguard as tg
from toolguard.context import task_var
from toolguard.offload import WriterThread
from toolguard.store import Store

JOB_KEY = "agents:jobs:42:state"
fm: Any = fake_model()


@pytest.fixture
def writes(store_writes: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``(what, thread id)`` of every write transaction the store opens."""
    return store_writes


@pytest.fixture
def ran() -> list[str]:
    return []


@pytest.fixture
def kv_set(ran: list[str]) -> Any:
    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value under a key."""
        ran.append(key)
        return f"set {key} with {tg.current_credential().jti}"

    return kv_set


def _events(guard: tg.Guard) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.outcome, e.error) for e in guard.audit.events()]


def test_guarded_ainvoke_writes_on_the_writer_thread(
    guard: tg.Guard, kv_set: Any, writes: list[tuple[str, int]]
) -> None:
    guarded = tg.guard(kv_set, guard)

    async def main() -> int:
        async with guard.task("process-job", job_id="42"):
            assert "set" in await guarded.ainvoke({"key": JOB_KEY, "value": "1"})
            await asyncio.gather(
                *(guarded.ainvoke({"key": f"{JOB_KEY}:{i}", "value": "v"}) for i in range(3))
            )
            denied = await guarded.ainvoke({"key": "agents:jobs:43:x", "value": "v"})
            assert "denied" in denied.lower()  # the denial is audited (a write) off the loop too
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert {w for w, _ in writes} >= {"task start", "request", "denied", "task end"}
    assert all(thread != loop_thread for _, thread in writes), writes
    kinds = [k for k, _, _ in _events(guard)]
    assert kinds.count("request") == 4 and kinds.count("outcome") == 4
    assert guard.audit.verify().ok


def test_middleware_async_hooks_write_on_the_writer_thread(
    guard: tg.Guard, kv_set: Any, writes: list[tuple[str, int]]
) -> None:
    script = [fm.turn(fm.call("kv_set", "c1", key=JOB_KEY, value="done")), fm.answer("done")]
    agent = create_agent(
        fm.ScriptedChatModel(script=script),
        [kv_set],
        middleware=[GuardMiddleware(guard, intent="process-job")],
    )

    async def main() -> int:
        await agent.ainvoke(
            {"messages": [{"role": "user", "content": "go"}]}, {"configurable": {"job_id": "42"}}
        )
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert {w for w, _ in writes} >= {"task start", "request", "task end"}
    assert all(thread != loop_thread for _, thread in writes), writes
    assert [k for k, _, _ in _events(guard)] == ["task_start", "request", "outcome", "task_end"]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], _Gate]]:
    """``gate("record_call")``: that store method, once it has done its work, waits for
    ``release`` (and says so with ``entered``): the caller can be cancelled meanwhile."""
    gates: list[_Gate] = []

    def make(name: str) -> _Gate:
        g = _Gate()
        original = getattr(Store, name)

        def gated(self: Store, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            g.entered.set()
            assert g.release.wait(10), "the test never released the gate"
            return result

        monkeypatch.setattr(Store, name, gated)
        gates.append(g)
        return g

    yield make
    for g in gates:
        g.release.set()


class _Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    async def wait_entered(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10)


def test_a_call_cancelled_while_authorized_is_recorded_as_not_run(
    guard: tg.Guard, kv_set: Any, ran: list[str], gate: Callable[[str], _Gate]
) -> None:
    guarded = tg.guard(kv_set, guard)
    blocked = gate("record_call")
    issued: list[tg.TaskSession] = []

    async def main() -> None:
        async with guard.task("process-job", job_id="42") as task:
            issued.append(task)
            call = asyncio.ensure_future(guarded.ainvoke({"key": JOB_KEY, "value": "1"}))
            await blocked.wait_entered()  # the request row is written, the call not returned
            call.cancel()
            blocked.release.set()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(main())
    guard.close()
    assert ran == []  # the tool never ran
    (task,) = issued
    assert task.status == "ok"
    events = _events(guard)
    assert [k for k, _, _ in events] == ["task_start", "request", "outcome", "task_end"]
    _, outcome, error = events[2]
    assert outcome == "error" and error is not None
    assert "CallerCancelled" in error and "the tool did not run" in error
    (jti,) = task.jtis
    reason = guard.store.revoked_reason(
        jti=jti, task_id=task.task_id, identity=task.identity, chain=task.chain, issued_at=0.0
    )
    assert reason is not None and "task revoked" in reason
    assert guard.audit.verify().ok


def test_a_task_cancelled_while_it_starts_is_ended(
    guard: tg.Guard, gate: Callable[[str], _Gate]
) -> None:
    blocked = gate("start_task")
    session = guard.task("process-job", job_id="42")

    async def main() -> None:
        entering = asyncio.ensure_future(session.__aenter__())
        await blocked.wait_entered()
        entering.cancel()
        blocked.release.set()
        with pytest.raises(asyncio.CancelledError):
            await entering
        assert tg.current_task() is None

    asyncio.run(main())
    guard.close()  # waits for the writer thread: the abandoned start is ended by then
    assert session.status == "cancelled"
    (row,) = guard.audit.tasks()
    assert row["status"] == "cancelled" and row["ended_at"] is not None
    assert [k for k, _, _ in _events(guard)] == ["task_start", "task_end"]
    assert guard.audit.verify().ok


def test_a_job_cancelled_before_it_started_never_runs() -> None:
    writer = WriterThread()
    first_in, first_go = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        first_in.set()
        first_go.wait(10)
        ran.append("first")

    async def main() -> None:
        busy = asyncio.ensure_future(writer.run(first))
        await asyncio.get_running_loop().run_in_executor(None, first_in.wait, 10)
        queued = asyncio.ensure_future(writer.run(ran.append, "second"))
        await asyncio.sleep(0)  # submitted behind the busy job
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        first_go.set()
        await busy

    try:
        asyncio.run(main())
    finally:
        first_go.set()
        writer.close()
    assert ran == ["first"]


def test_the_writer_thread_runs_jobs_in_order_in_the_callers_context() -> None:
    writer = WriterThread()
    order: list[int] = []

    async def main() -> list[tg.TaskSession | None]:
        results = await asyncio.gather(*(writer.run(order.append, i) for i in range(20)))
        assert results == [None] * 20
        return [await writer.run(tg.current_task)]

    try:
        assert asyncio.run(main()) == [None]
    finally:
        writer.close()
    assert order == list(range(20))


def test_a_task_end_whose_await_is_cancelled_is_written_all_the_same(
    guard: tg.Guard, gate: Callable[[str], _Gate]
) -> None:
    """The writer thread is busy (another task's start); the coroutine leaving ``async with``
    is cancelled while its end waits in the queue: the end still runs, in order."""
    session = guard.task("process-job", job_id="42")
    blocked = gate("start_task")

    async def main() -> None:
        other = guard.task("process-job", job_id="43")

        async def leave() -> None:
            await session.__aexit__(None, None, None)

        blocked.release.set()  # the first start (this session's) passes
        await session.__aenter__()
        blocked.release.clear()
        blocked.entered.clear()
        starting = asyncio.ensure_future(other.astart())
        await blocked.wait_entered()  # the writer thread now waits inside other's start
        leaving = asyncio.ensure_future(leave())
        await asyncio.sleep(0)  # its end is queued behind the start
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        blocked.release.set()
        await starting
        await other.aend("ok")

    asyncio.run(main())
    guard.close()
    assert session.status == "ok"
    rows = {r["task_id"]: r for r in guard.audit.tasks()}
    assert rows[session.task_id]["status"] == "ok" and rows[session.task_id]["ended_at"]
    assert guard.audit.verify().ok


def test_a_call_held_for_approval_does_not_hold_up_other_async_calls(
    tmp_path: Any, clock: Any
) -> None:
    """While one coroutine's call waits for a person (its approver blocks), another task's
    call is checked and runs: held calls wait on a side thread, not the writer thread."""
    from conftest import make_config

    other_done = threading.Event()
    asked: list[str] = []

    def approver(request: dict[str, Any]) -> dict[str, Any]:
        asked.append(request["tool"])
        assert other_done.wait(10), "the other call never ran while this one was held"
        return {"approved": True, "by": "alice", "note": "ok"}

    config = make_config(tmp_path)
    config["intents"]["process-job"]["approve"] = {"write": ["agents:jobs:{job_id}:final"]}
    guard = tg.Guard(config, clock=clock, approver=approver)

    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value under a key."""
        return "stored"

    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        return "value"

    held_tool, free_tool = tg.guard(kv_set, guard), tg.guard(kv_get, guard)

    async def held() -> str:
        async with guard.task("process-job", job_id="42"):
            return str(await held_tool.ainvoke({"key": "agents:jobs:42:final", "value": "v"}))

    async def free() -> str:
        async with guard.task("summarise-job", job_id="42"):
            while not asked:  # the held call is waiting for its approver
                await asyncio.sleep(0.001)
            result = str(await free_tool.ainvoke({"key": "agents:jobs:42:x"}))
            other_done.set()
            return result

    async def main() -> list[str]:
        return list(await asyncio.gather(held(), free()))

    try:
        assert asyncio.run(main()) == ["stored", "value"]
    finally:
        other_done.set()
        guard.close()


def test_aauthorize_signs_the_token_on_the_writer_thread(
    guard: tg.Guard, kv_set: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ed25519 signature releases the GIL: signed on the loop (when the tool first reads
    its token), the loop thread would wait to get the GIL back, up to the switch interval
    (5 ms) while the writer thread runs. ``aauthorize`` signs it on the writer thread."""
    from toolguard.keys import SigningKey

    signed_on: list[int] = []
    original = SigningKey.sign

    def spy(self: SigningKey, data: bytes) -> bytes:
        if data.startswith(b"eyJ"):  # a JWT's signing input (not the task end's checkpoint)
            signed_on.append(threading.get_ident())
        return original(self, data)

    monkeypatch.setattr(SigningKey, "sign", spy)
    guarded = tg.guard(kv_set, guard)

    async def main() -> int:
        async with guard.task("process-job", job_id="42"):
            permit = await guard.aauthorize("kv_set", {"key": JOB_KEY, "value": "1"})
            assert len(signed_on) == 1  # before the tool reads it
            token = permit.credential.token
            assert token.count(".") == 2 and len(signed_on) == 1  # the same token, cached
            guard.finish(permit)
            assert "set" in await guarded.ainvoke({"key": JOB_KEY, "value": "2"})
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(signed_on) == 2
    assert loop_thread not in signed_on
    assert guard.audit.verify().ok


def test_aauthorize_does_not_sign_ahead_for_a_tool_that_does_not_read_its_token(
    guard: tg.Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing ahead is learnt per tool: after a call that did not read its token, the next
    call of that tool is not signed (a signature saved); a token signed ahead and never read
    is not issued (nothing to scrub from the result)."""
    from toolguard.credentials import issued_token
    from toolguard.keys import SigningKey

    signed: list[int] = []
    original = SigningKey.sign

    def spy(self: SigningKey, data: bytes) -> bytes:
        if data.startswith(b"eyJ"):
            signed.append(threading.get_ident())
        return original(self, data)

    monkeypatch.setattr(SigningKey, "sign", spy)

    async def main() -> None:
        async with guard.task("process-job", job_id="42"):
            first = await guard.aauthorize("kv_set", {"key": JOB_KEY, "value": "1"})
            assert len(signed) == 1 and issued_token(first.credential) is None
            guard.finish(first)  # the tool did not read it
            second = await guard.aauthorize("kv_set", {"key": JOB_KEY, "value": "2"})
            assert len(signed) == 1  # not signed ahead any more
            assert second.credential.token  # signed when read, here on the loop
            guard.finish(second)
            third = await guard.aauthorize("kv_set", {"key": JOB_KEY, "value": "3"})
            assert len(signed) == 3  # the last call read it: signed ahead again
            guard.finish(third)

    asyncio.run(main())


def test_the_writer_thread_lets_go_of_the_gil_after_a_millisecond_of_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs run back to back for ``pace`` seconds: the next one first sleeps ``rest`` (a
    thread waiting for the GIL, the loop's, gets it); a job after an idle wait does not."""
    import toolguard.offload as offload

    rests: list[float] = []
    monkeypatch.setattr(offload.time, "sleep", rests.append)
    now = [100.0]
    monkeypatch.setattr(offload.time, "perf_counter", lambda: now[0])
    pacer = offload._Pacer(pace=1e-3, rest=50e-6)

    def job(seconds: float) -> None:
        pacer.before()
        now[0] += seconds
        pacer.after()

    job(0.4e-3)  # after an idle wait: the writer thread's turn starts
    job(0.4e-3)
    assert rests == []
    job(0.4e-3)  # 0.8 ms of jobs so far
    assert rests == []
    job(0.4e-3)  # 1.2 ms back to back: this one lets go first
    assert rests == [50e-6]
    job(0.4e-3)
    assert rests == [50e-6]  # its turn started over
    now[0] += 1e-3  # the queue was empty: the writer waited (the GIL was free)
    for _ in range(2):
        job(0.4e-3)
    assert rests == [50e-6]


def test_a_submitted_job_runs_in_order_without_being_awaited() -> None:
    writer = WriterThread()
    order: list[int] = []

    async def main() -> None:
        first = asyncio.ensure_future(writer.run(order.append, 1))
        await asyncio.sleep(0)
        future = writer.submit(order.append, 2)  # e.g. from a loop callback
        await first
        await writer.run(order.append, 3)
        assert future.done() and future.result() is None

    try:
        asyncio.run(main())
        late = writer.submit(order.append, 4)
    finally:
        writer.close()  # waits for it
    assert late.done() and order == [1, 2, 3, 4]


def test_aclose_writes_the_pending_outcomes_off_the_event_loop(
    make_guard: Callable[..., tg.Guard], kv_set: Any, writes: list[tuple[str, int]]
) -> None:
    """``await guard.aclose()`` (and ``async with Guard(...)``): the outcome still queued
    and the store's close run on a worker thread; the guard is closed afterwards."""
    guard = make_guard()
    guarded = tg.guard(kv_set, guard)

    async def main() -> int:
        async with guard:
            session = await guard.task("process-job", job_id="42").astart()
            task_var.set(session)  # current, and left active: no task end flushes the outcome
            await guarded.ainvoke({"key": JOB_KEY, "value": "1"})
            assert guard.store._pending  # the outcome waits for the next transaction
            del writes[:]
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert [what for what, _ in writes] == ["outcomes"]
    assert loop_thread not in {thread for _, thread in writes}
    with tg.Guard(guard.config) as again:
        assert [e.kind for e in again.audit.events()] == ["task_start", "request", "outcome"]
