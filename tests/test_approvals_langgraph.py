"""Human approval inside LangGraph: the held call raises ``interrupt(request)``; the run
resumes with ``Command(resume=decision)`` (in this process, or another with a checkpointer)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, Clock, fake_model, make_config
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command
from toolguard_langchain import GuardMiddleware

import toolguard as tg

fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer
USER = {"messages": [{"role": "user", "content": "clean up"}]}
KEY = "agents:jobs:42:tmp"


def approval_config(
    tmp_path: Path, store_config: Mapping[str, str] | None = None
) -> dict[str, Any]:
    config = make_config(tmp_path, **(store_config or {}))
    job = config["intents"]["process-job"]
    job["tools"] = ["kv_get", "kv_set", "kv_delete"]
    job["allow"]["delete"] = ["agents:jobs:{job_id}:*"]
    job["approve"] = {"delete": ["agents:jobs:{job_id}:*"]}
    return config


@pytest.fixture
def guard(tmp_path: Path, clock: Clock, store_config: dict[str, str]) -> Iterator[tg.Guard]:
    with tg.Guard(approval_config(tmp_path, store_config), clock=clock) as guard:
        yield guard


class Deleter:
    def __init__(self) -> None:
        self.deleted: list[str] = []

        @tool
        def kv_delete(key: str) -> str:
            """Delete a key."""
            tg.current_credential()  # it runs with a credential
            self.deleted.append(key)
            return f"deleted {key}"

        self.tool = kv_delete


def _agent(guard: tg.Guard, deleter: Deleter, script: list[Any]) -> Any:
    model = fm.ScriptedChatModel(script=script)
    return create_agent(
        model,
        [deleter.tool],
        middleware=[GuardMiddleware(guard, intent="process-job")],
        checkpointer=InMemorySaver(),
    )


def _config(thread: str = "t-1") -> Any:
    return {"configurable": {"thread_id": thread, "job_id": "42"}}


def _tool_messages(result: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}


def _kinds(guard: tg.Guard) -> list[str]:
    return [e.kind for e in guard.audit.events()]


def test_a_held_call_interrupts_the_run_with_its_request_and_resumes_approved(
    guard: tg.Guard,
) -> None:
    deleter = Deleter()
    agent = _agent(guard, deleter, [turn(call("kv_delete", "d1", key=KEY)), answer("done")])
    paused = agent.invoke(USER, _config())
    (pending,) = paused["__interrupt__"]
    request = pending.value
    assert request["tool"] == "kv_delete" and request["resources"] == [KEY]
    assert request["args"] == {"key": KEY} and len(request["digest"]) == 64
    assert {"request_id", "task_id", "operation", "reason", "expires_at"} <= set(request)
    assert deleter.deleted == []
    assert "request" not in _kinds(guard)  # no credential, nothing spent

    final = agent.invoke(Command(resume={"approved": True, "by": "alice"}), _config())
    assert deleter.deleted == [KEY]
    assert _tool_messages(final)["d1"].content == f"deleted {KEY}"
    kinds = _kinds(guard)
    assert kinds.index("approval_requested") < kinds.index("approved") < kinds.index("request")
    assert kinds.count("approval_requested") == 1  # the resumed call found its request
    assert guard.audit.verify().ok


def test_a_rejection_reaches_the_model_as_a_denial_and_the_run_goes_on(guard: tg.Guard) -> None:
    deleter = Deleter()
    agent = _agent(guard, deleter, [turn(call("kv_delete", "d1", key=KEY)), answer("ok, kept")])
    agent.invoke(USER, _config())
    final = agent.invoke(
        Command(resume={"approved": False, "by": "bob", "note": "keep it"}), _config()
    )
    message = _tool_messages(final)["d1"]
    assert message.status == "error" and "rejected by bob: keep it" in str(message.content)
    assert final["messages"][-1].content == "ok, kept"  # the run went on
    assert deleter.deleted == []
    assert "rejected" in _kinds(guard) and "request" not in _kinds(guard)


def test_a_bad_resume_value_is_a_denial(guard: tg.Guard) -> None:
    deleter = Deleter()
    agent = _agent(guard, deleter, [turn(call("kv_delete", "d1", key=KEY)), answer("ok")])
    agent.invoke(USER, _config())
    final = agent.invoke(Command(resume={"approved": "yes", "by": "x"}), _config())
    assert "no valid decision" in str(_tool_messages(final)["d1"].content)
    assert deleter.deleted == []


def test_parallel_held_calls_each_need_their_own_approval(guard: tg.Guard) -> None:
    deleter = Deleter()
    script = [
        turn(
            call("kv_delete", "d1", key="agents:jobs:42:a"),
            call("kv_delete", "d2", key="agents:jobs:42:b"),
        ),
        answer("done"),
    ]
    agent = _agent(guard, deleter, script)
    paused = agent.invoke(USER, _config())
    pending = {i.value["args"]["key"]: i for i in paused["__interrupt__"]}
    assert set(pending) == {"agents:jobs:42:a", "agents:jobs:42:b"}
    ids = {i.value["request_id"] for i in pending.values()}
    assert len(ids) == 2
    a, b = pending["agents:jobs:42:a"], pending["agents:jobs:42:b"]
    # each interrupt's value may also be the decisions keyed by request id
    by_request = {
        a.value["request_id"]: {"approved": True, "by": "alice"},
        b.value["request_id"]: {"approved": False, "by": "alice", "note": "not b"},
    }
    final = agent.invoke(Command(resume={a.id: by_request, b.id: by_request}), _config())
    assert deleter.deleted == ["agents:jobs:42:a"]
    messages = _tool_messages(final)
    assert messages["d1"].status != "error" and "not b" in str(messages["d2"].content)
    assert guard.audit.verify().ok


def _graph(script: list[Any], tools: list[Any], guard: tg.Guard) -> Any:
    model = fm.ScriptedChatModel(script=script)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tg.guard(tools, guard)))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    return graph.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"args": {"key": "agents:jobs:42:other"}}, id="another-argument"),
        pytest.param({"name": "kv_wipe", "args": {"key": KEY}}, id="another-tool"),
    ],
)
def test_an_action_edited_after_its_request_needs_a_new_approval(
    guard: tg.Guard, edit: dict[str, Any]
) -> None:
    """A guarded tool in a ToolNode; the pending tool call is edited in the checkpoint (other
    arguments, another tool) and the run resumed with an approval: the edited call is a new
    action, so it pauses again with a new request instead of running on the old approval."""
    deleter = Deleter()

    @tool
    def kv_wipe(key: str) -> str:
        """Delete a key too."""
        deleter.deleted.append("wipe " + key)
        return "wiped"

    config = {"configurable": {"thread_id": "edit"}}
    spec = copy.deepcopy(guard.config.model_dump(exclude={"base_dir"}))
    spec["tools"]["kv_wipe"] = {"operation": "delete", "resource": "{key}"}  # as kv_delete
    spec["intents"]["process-job"]["tools"].append("kv_wipe")
    guard2 = tg.Guard(spec, clock=guard.clock)
    with guard2:
        graph = _graph(
            [turn(call("kv_delete", "d1", key=KEY)), answer("done")],
            [deleter.tool, kv_wipe],
            guard2,
        )
        with guard2.task("process-job", job_id="42"):
            paused = graph.invoke(USER, config)
            first = paused["__interrupt__"][0].value
            state = graph.get_state(config)
            ai = state.values["messages"][-1]
            assert isinstance(ai, AIMessage)
            edited = {**ai.tool_calls[0], **edit}
            graph.update_state(
                config,
                {"messages": [AIMessage(content="", id=ai.id, tool_calls=[edited])]},
                as_node="model",
            )
            again = graph.invoke(Command(resume={"approved": True, "by": "alice"}), config)
            assert deleter.deleted == []
            (pending,) = again["__interrupt__"]
            second = pending.value
            assert second["request_id"] != first["request_id"]
            assert second["digest"] != first["digest"]
            assert (second["tool"], second["args"]) == (edited["name"], edited["args"])
            final = graph.invoke(
                Command(resume={second["request_id"]: {"approved": True, "by": "alice"}}), config
            )
        assert len(deleter.deleted) == 1 and final["messages"][-1].content == "done"
        assert guard2.audit.verify().ok


RESUMER = textwrap.dedent(
    """
    import json, sqlite3, sys
    sys.path.insert(0, sys.argv[1])
    from _fake_model import ScriptedChatModel, answer, call, turn
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.types import Command
    from toolguard_langchain import GuardMiddleware
    import toolguard as tg

    phase, config_file, checkpoints = sys.argv[2], sys.argv[3], sys.argv[4]

    @tool
    def kv_delete(key: str) -> str:
        \"\"\"Delete a key.\"\"\"
        return "deleted " + key + " in " + phase + " with " + tg.current_credential().jti

    script = [turn(call("kv_delete", "d1", key="agents:jobs:42:tmp")), answer("done")]
    if phase == "resume":
        script = [answer("done")]  # this process's model only answers after the tool
    conn = sqlite3.connect(checkpoints, check_same_thread=False)
    with tg.Guard.from_config(config_file) as guard:
        agent = create_agent(
            ScriptedChatModel(script=script), [kv_delete],
            middleware=[GuardMiddleware(guard, intent="process-job")],
            checkpointer=SqliteSaver(conn),
        )
        config = {"configurable": {"thread_id": "job-42", "job_id": "42"}}
        if phase == "start":
            result = agent.invoke({"messages": [{"role": "user", "content": "go"}]}, config)
            print(json.dumps(result["__interrupt__"][0].value))
        else:
            decision = json.loads(sys.argv[5])
            result = agent.invoke(Command(resume=decision), config)
            print(json.dumps([m.content for m in result["messages"] if m.type == "tool"]))
    """
)


@pytest.mark.slow
def test_an_interrupted_run_is_resumed_by_another_process_with_a_checkpointer(
    tmp_path: Path,
) -> None:
    pytest.importorskip("langgraph.checkpoint.sqlite", reason="langgraph-checkpoint-sqlite")
    config_file = tmp_path / "toolguard.json"
    config_file.write_text(json.dumps(approval_config(tmp_path)))
    script = tmp_path / "resumer.py"
    script.write_text(RESUMER)
    checkpoints = str(tmp_path / "checkpoints.db")

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(script), str(EXAMPLES), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    request = json.loads(run("start", str(config_file), checkpoints))
    assert request["tool"] == "kv_delete" and request["args"] == {"key": KEY}
    decision = json.dumps({"approved": True, "by": "alice", "note": "after the restart"})
    (message,) = json.loads(run("resume", str(config_file), checkpoints, decision))
    assert message.startswith(f"deleted {KEY} in resume with ")
    with tg.Guard.from_config(config_file) as guard:
        events = list(guard.audit.events())
        kinds = [e.kind for e in events]
        assert kinds.count("approval_requested") == 1 and kinds.count("approved") == 1
        assert kinds.index("approved") < kinds.index("request")
        assert "task_resume" in kinds  # the second process adopted the task
        (approved,) = [e for e in events if e.kind == "approved"]
        assert approved.reason == "approved by alice: after the restart"
        assert guard.audit.verify().ok


def test_a_request_that_expired_while_the_run_was_paused_is_asked_again(
    tmp_path: Path, clock: Clock
) -> None:
    config = approval_config(tmp_path)
    config["intents"]["process-job"]["approval_ttl"] = "5m"
    deleter = Deleter()
    with tg.Guard(config, clock=clock) as guard:
        agent = _agent(guard, deleter, [turn(call("kv_delete", "d1", key=KEY)), answer("done")])
        first = agent.invoke(USER, _config())["__interrupt__"][0].value
        clock.advance(6 * 60)  # past approval_ttl: the approval given now answers nothing
        again = agent.invoke(Command(resume={"approved": True, "by": "alice"}), _config())
        second = again["__interrupt__"][0].value
        assert second["request_id"] != first["request_id"] and deleter.deleted == []
        kinds = _kinds(guard)
        assert kinds.count("approval_expired") == 1 and "request" not in kinds
        # the late approval of the expired request answers only that one: the new request is
        # answered by the next resume value (here a rejection)
        final = agent.invoke(Command(resume={"approved": False, "by": "bob"}), _config())
        assert deleter.deleted == [] and "rejected by bob" in str(
            _tool_messages(final)["d1"].content
        )
