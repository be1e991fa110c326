"""A LangGraph ``StateGraph`` whose ``ToolNode`` runs guarded tools (offline: a scripted model).

No middleware here: the tools are wrapped with ``toolguard.guard()`` and the graph runs inside
``with guard.task(...)``. ``ToolNode`` runs the three tool calls of one model turn in parallel in
its executor threads; each call still gets its own decision, credential and audit events,
because LangGraph copies the context (and so the current task) into those threads.

Run it: ``python examples/langgraph_toolnode.py``
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import Any

from _fake_model import KvService, ScriptedChatModel, answer, call, example_guard, kv_tools, turn
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import toolguard as tg


def build_graph(model: BaseChatModel, tools: Sequence[BaseTool]) -> CompiledStateGraph[Any]:
    """model -> tools -> model ... until the model answers without tool calls."""

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    return graph.compile()


def main(workdir: str) -> None:
    guard = example_guard(workdir)
    service = KvService(guard.verifier(), {"agents:context:rules": "keep a summary per job"})
    tools = tg.guard(kv_tools(service), guard)
    model = ScriptedChatModel(
        script=[
            turn(
                call("kv_get", "t1", key="agents:context:rules"),
                call("kv_set", "t2", key="agents:jobs:42:state", value="processed"),
                call("kv_set", "t3", key="agents:jobs:7:state", value="hijacked"),
            ),
            answer("done"),
        ]
    )
    graph = build_graph(model, tools)

    with guard.task("process-job", job_id="42") as task:
        result = graph.invoke({"messages": [{"role": "user", "content": "Process job 42."}]})

    print("three tool calls in one model turn, run in parallel by ToolNode:")
    for message in result["messages"]:
        if isinstance(message, ToolMessage):
            print(f"  {message.tool_call_id} {message.name}: [{message.status}] {message.content}")
    events = guard.audit.events(task_id=task.task_id)
    jtis = {e.jti for e in events if e.kind == "request"}
    print(f"credentials minted: {len(jtis)} (one per allowed call, each for its own key)")
    counts = Counter(e.kind for e in events)
    order = ["task_start", "request", "outcome", "denied", "task_end"]
    print("audit events: " + ", ".join(f"{kind} x{counts[kind]}" for kind in order))
    print(f"correlation ids: {sorted({e.correlation_id or '' for e in events if e.tool})}")
    guard.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-example-") as tmp:
        main(tmp)
