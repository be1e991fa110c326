"""Human approval bound to the exact action: an approver callable, then a LangGraph agent that
pauses for a person and resumes with the decision.

The intent ``clean-job`` may delete the job's keys, but every delete waits for a person
(``approve: {delete: ...}``). The request carries a digest of the exact action (tool, operation,
resources, arguments, task, intent, config): the approval covers that action only, once.

Run it: ``python examples/approvals.py``
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from _fake_model import ScriptedChatModel, answer, call, turn
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from toolguard_langchain import GuardMiddleware

import toolguard as tg


def config(workdir: str) -> dict[str, Any]:
    return {
        "store": str(Path(workdir) / "audit.db"),
        "issuer": {"key_file": str(Path(workdir) / "signing-key.pem")},
        "identities": {"janitor": {"allow": {"delete": ["agents:jobs:*"]}}},
        "tools": {"kv_delete": {"operation": "delete", "resource": "{key}"}},
        "intents": {
            "clean-job": {
                "identity": "janitor",
                "tools": ["kv_delete"],
                "allow": {"delete": ["agents:jobs:{job_id}:*"]},
                "approve": {"delete": ["agents:jobs:{job_id}:*"]},  # every delete needs a person
                "approval_ttl": "30m",
            }
        },
    }


deleted: list[str] = []


@tool
def kv_delete(key: str) -> str:
    """Delete a key (with the call's own credential)."""
    tg.current_credential()  # minted only after the approval
    deleted.append(key)
    return f"deleted {key}"


def with_an_approver(workdir: str) -> None:
    def approver(request: dict[str, Any]) -> dict[str, Any]:
        ok = request["resources"] == ["agents:jobs:42:tmp"]
        print(
            f"  asked: {request['tool']} {request['resources']} digest {request['digest'][:12]}"
            f" -> {'approve' if ok else 'reject'}"
        )
        return {"approved": ok, "by": "alice", "note": "temp data only"}

    guard = tg.Guard(config(workdir), approver=approver)
    delete = tg.guard(kv_delete, guard)
    with guard.task("clean-job", job_id="42"):
        print(" ", delete.invoke({"key": "agents:jobs:42:tmp"}))
        print(" ", delete.invoke({"key": "agents:jobs:42:results"}))
    guard.close()


def with_an_interrupt(workdir: str) -> None:
    guard = tg.Guard(config(workdir))  # no approver: the held call interrupts the graph run
    agent = create_agent(
        ScriptedChatModel(
            script=[
                turn(call("kv_delete", "d1", key="agents:jobs:7:cache")),
                answer("cache cleared"),
            ]
        ),
        [kv_delete],
        middleware=[GuardMiddleware(guard, intent="clean-job")],
        checkpointer=InMemorySaver(),
    )
    run: Any = {"configurable": {"thread_id": "job-7", "job_id": "7"}}
    paused = agent.invoke({"messages": [{"role": "user", "content": "clear the cache"}]}, run)
    request = paused["__interrupt__"][0].value
    print(f"  paused: {request['tool']} {request['resources']} ({request['reason']})")
    final = agent.invoke(Command(resume={"approved": True, "by": "bob"}), run)
    for message in final["messages"]:
        if isinstance(message, ToolMessage):
            print(f"  resumed: {message.content}")
    print(f"  the agent says: {final['messages'][-1].content}")
    counts = Counter(e.kind for e in guard.audit.events())
    order = ["approval_requested", "approved", "rejected", "request", "denied"]
    print("audit events: " + ", ".join(f"{k} x{counts[k]}" for k in order))
    print("trail verifies:", guard.audit.verify().ok)
    guard.close()


def main(workdir: str) -> None:
    print("1. an approver callable decides each held call:")
    with_an_approver(workdir)
    print("2. a LangGraph agent pauses for a person and resumes with the decision:")
    with_an_interrupt(workdir)
    print("deleted:", deleted)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)
