"""Two agents, one delegation: a worker hands the summary of its job to a summariser agent.

The worker runs as a task of ``process-job`` (``GuardMiddleware``). Its tool ``summarise_job``
invokes the summariser agent, whose own ``GuardMiddleware(intent="summarise-job")`` finds the
worker's task current and *delegates* from it: the child task may only narrow what the parent may
do (attenuation only), its credentials carry the delegation chain in their ``act`` claim, and the
audit links child to parent. A wider delegation is refused at start, and ending the parent ends
and revokes its children.

Run it: ``python examples/delegation.py``
"""

from __future__ import annotations

import tempfile
from typing import Any

from _fake_model import KvService, ScriptedChatModel, answer, call, example_guard, kv_tools, turn
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from toolguard_langchain import GuardMiddleware

import toolguard as tg


def main(workdir: str) -> None:
    guard = example_guard(workdir)
    service = KvService(
        guard.verifier(),
        {"agents:jobs:42:state": "processed", "agents:jobs:7:state": "another team's job"},
    )
    kv_get, kv_set = kv_tools(service)

    # The sub-agent: reads only, and only its job.
    summariser = create_agent(
        ScriptedChatModel(
            script=[
                turn(
                    call("kv_get", "s1", key="agents:jobs:42:state"),
                    call("kv_get", "s2", key="agents:jobs:7:state"),
                ),
                answer("Job 42 is processed."),
            ]
        ),
        [kv_get],
        middleware=[GuardMiddleware(guard, intent="summarise-job")],
    )
    summariser_messages: list[Any] = []

    @tool
    def summarise_job(job_id: str) -> str:
        """Ask the summariser agent to summarise a job."""
        result = summariser.invoke(
            {"messages": [{"role": "user", "content": f"Summarise job {job_id}."}]},
            {"configurable": {"job_id": job_id}},
        )
        summariser_messages.extend(result["messages"])
        return str(result["messages"][-1].content)

    # The worker: writes its job's state, then delegates the summary.
    worker_mw = GuardMiddleware(guard, intent="process-job")
    worker = create_agent(
        ScriptedChatModel(
            script=[
                turn(call("kv_set", "w1", key="agents:jobs:42:state", value="processed")),
                turn(call("summarise_job", "w2", job_id="42")),
                answer("Done; the summariser says job 42 is processed."),
            ]
        ),
        [kv_get, kv_set, summarise_job],
        middleware=[worker_mw],
    )

    print("== a two-agent pipeline")
    result = worker_mw.run(
        worker,
        {"messages": [{"role": "user", "content": "Process job 42."}]},
        {"configurable": {"job_id": "42"}},
    )
    for message in [*summariser_messages, *result["messages"]]:
        if isinstance(message, ToolMessage):
            print(f"  {message.tool_call_id} {message.name}: [{message.status}] {message.content}")
    tasks = {t["intent"]: t for t in guard.audit.tasks()}
    worker_task, child_task = tasks["process-job"], tasks["summarise-job"]
    print(f"  tasks: worker {worker_task['status']}, summariser {child_task['status']}")
    print(
        f"  the summariser's task is a child of the worker's: "
        f"{child_task['parent_id'] == worker_task['task_id']}"
    )
    child_claims = next(c for c in service.claims if c["intent"] == "summarise-job")
    act = child_claims["act"]
    print(
        f"  summariser credential: sub={child_claims['sub']}, act.sub={act['sub']}, "
        f"act.task_id is the worker's task: {act['task_id'] == worker_task['task_id']}"
    )

    print("== a delegation that asks for more than the parent has")
    with guard.task("process-job", job_id="42") as parent:
        try:
            parent.delegate("audit-all-jobs")
        except tg.PolicyDenied as denied:
            print(f"  refused at start: {denied.reason}")

    print("== ending the parent ends and revokes its children")
    parent = guard.task("process-job", job_id="42").start()
    child = parent.delegate("summarise-job", job_id="42").start()
    guarded_get = tg.guard(kv_get, guard)
    child.carry(guarded_get.invoke)({"key": "agents:jobs:42:state"})
    token = service.tokens[-1]
    parent.end()
    print(f"  child status after the parent ended: {child.status}")
    try:
        guard.verifier().verify(token)
    except tg.CredentialRevoked:
        print("  the child's credential is rejected: revoked with its parent")
    guard.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-example-") as tmp:
        main(tmp)
