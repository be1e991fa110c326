"""LangGraph: a StateGraph with a ToolNode of guarded tools (executor threads, async, denials,
interrupts), a ToolNode wrapped by GuardMiddleware, and the examples that show them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_model
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt
from toolguard_langchain import GuardMiddleware

import toolguard as tg

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer
USER = {"messages": [{"role": "user", "content": "go"}]}


def _graph(script: list[Any], tool_node: ToolNode, checkpointer: Any = None) -> Any:
    model = fm.ScriptedChatModel(script=script)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", tool_node)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    return graph.compile(checkpointer=checkpointer)


class _Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, tuple[tg.Credential, str | None, str]] = {}
        self._lock = threading.Lock()

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
        task = tg.current_task()
        with self._lock:
            self.seen[key] = (
                tg.current_credential(),
                task.task_id if task else None,
                threading.current_thread().name,
            )
        return f"ran {key}"


def _three_calls() -> list[Any]:
    return [
        turn(
            call("kv_get", "t1", key="agents:jobs:42:a"),
            call("kv_get", "t2", key="agents:jobs:42:b"),
            call("kv_set", "t3", key="agents:jobs:7:c", value="v"),
        ),
        answer("done"),
    ]


def _statuses(result: dict[str, Any]) -> dict[str, str]:
    return {m.tool_call_id: m.status for m in result["messages"] if isinstance(m, ToolMessage)}


def test_langgraph_toolnode_runs_guarded_tools_in_executor_threads(guard: tg.Guard) -> None:
    recorder = _Recorder()
    graph = _graph(_three_calls(), ToolNode(tg.guard(recorder.tools, guard)))

    with guard.task("process-job", job_id="42") as task:
        result = graph.invoke(USER)

    assert _statuses(result) == {"t1": "success", "t2": "success", "t3": "error"}
    assert set(recorder.seen) == {"agents:jobs:42:a", "agents:jobs:42:b"}
    for key, (credential, task_id, thread) in recorder.seen.items():
        assert task_id == credential.task_id == task.task_id
        assert credential.resources == (key,)
        assert thread != threading.current_thread().name  # ran in ToolNode's executor
    assert len({c.jti for c, _, _ in recorder.seen.values()}) == 2
    (denied,) = guard.audit.events(kind="denied")
    assert (denied.correlation_id, denied.task_id) == ("t3", task.task_id)


def test_langgraph_toolnode_async_graph(guard: tg.Guard) -> None:
    recorder = _Recorder()
    graph = _graph(_three_calls(), ToolNode(tg.guard(recorder.tools, guard)))

    async def main() -> tuple[dict[str, Any], str]:
        async with guard.task("process-job", job_id="42") as task:
            return await graph.ainvoke(USER), task.task_id

    result, task_id = asyncio.run(main())

    assert _statuses(result) == {"t1": "success", "t2": "success", "t3": "error"}
    assert {t for _, t, _ in recorder.seen.values()} == {task_id}
    assert sorted(e.correlation_id or "" for e in guard.audit.events(kind="request")) == [
        "t1",
        "t2",
    ]


def test_langgraph_toolnode_outside_a_task_denies_every_call(guard: tg.Guard) -> None:
    recorder = _Recorder()
    graph = _graph(_three_calls(), ToolNode(tg.guard(recorder.tools, guard)))

    result = graph.invoke(USER)

    assert set(_statuses(result).values()) == {"error"}
    assert recorder.seen == {}
    assert len(guard.audit.events(kind="denied")) == 3


def test_langgraph_toolnode_wrapped_by_the_middleware(guard: tg.Guard) -> None:
    recorder = _Recorder()
    middleware = GuardMiddleware(guard)
    node = ToolNode(
        recorder.tools,
        wrap_tool_call=middleware.wrap_tool_call,
        awrap_tool_call=middleware.awrap_tool_call,
    )
    graph = _graph(_three_calls(), node)

    with guard.task("process-job", job_id="42") as task:
        result = graph.invoke(USER)

    assert _statuses(result) == {"t1": "success", "t2": "success", "t3": "error"}
    assert {t for _, t, _ in recorder.seen.values()} == {task.task_id}


def test_langgraph_interrupt_passes_through_a_guarded_tool_and_resumes(guard: tg.Guard) -> None:
    ran: list[str] = []

    @tool
    def kv_set(key: str, value: str) -> str:
        """Write a key once a human approved it."""
        decision = interrupt({"write": key})
        ran.append(tg.current_credential().task_id)
        return f"written ({decision})"

    graph = _graph(
        [turn(call("kv_set", "h1", key="agents:jobs:42:s", value="v")), answer("ok")],
        ToolNode(tg.guard([kv_set], guard)),
        checkpointer=InMemorySaver(),
    )
    config: Any = {"configurable": {"thread_id": "review"}}

    with guard.task("process-job", job_id="42") as task:
        paused = graph.invoke(USER, config)
        assert paused["__interrupt__"][0].value == {"write": "agents:jobs:42:s"}
        assert ran == []
        final = graph.invoke(Command(resume="approved"), config)

    assert [m.content for m in final["messages"] if isinstance(m, ToolMessage)] == [
        "written (approved)"
    ]
    assert ran == [task.task_id]
    assert [o.outcome for o in guard.audit.events(kind="outcome")] == ["error", "ok"]


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        pytest.param(
            "langgraph_toolnode.py",
            [
                "  t1 kv_get: [success] keep a summary per job",
                "  t2 kv_set: [success] stored",
                "  t3 kv_set: [error] Denied by toolguard: write on 'agents:jobs:7:state' is "
                "outside what this task may do (intent 'process-job' allows write only on "
                "'agents:jobs:42:*')",
                "credentials minted: 2 (one per allowed call, each for its own key)",
                "audit events: task_start x1, request x2, outcome x2, denied x1, task_end x1",
                "correlation ids: ['t1', 't2', 't3']",
            ],
            id="langgraph_toolnode",
        ),
        pytest.param(
            "agent_middleware.py",
            [
                "  call-1 kv_get: [success] keep a summary per job",
                "  call-2 kv_set: [success] stored",
                "  answer: Job 42 is processed; I was not allowed to touch job 7.",
                "  task: Process job 42 -> ok",
                "    call-3  denied     kv_set  deny",
                "  data: agents:jobs:42:state='processed', agents:jobs:7:state=None",
                "  the run raised: the key-value service crashed while handling "
                "agents:jobs:42:report",
                "  tasks: ['error', 'ok']",
                "  the credential of call-4 is rejected now: revoked when the task ended",
            ],
            id="agent_middleware",
        ),
    ],
)
@pytest.mark.slow
def test_langgraph_examples_run_offline(example: str, expected: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for line in expected:
        assert line in lines
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory
