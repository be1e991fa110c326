"""A ``create_agent`` agent guarded by ``GuardMiddleware`` (offline: a scripted model).

Each run of the agent is one task of the intent ``process-job``; ``job_id`` comes from
``config["configurable"]``. Every tool call is checked against the intent, audited before it
runs, and gets its own short-lived credential, which the key-value service verifies. A call
outside the job is denied: the model reads the denial as a tool error and the run goes on.
The second run crashes midway: ``middleware.run`` ends its task all the same, so the credentials
it had handed out are revoked.

Run it: ``python examples/agent_middleware.py``
"""

from __future__ import annotations

import tempfile
from typing import Any

from _fake_model import KvService, ScriptedChatModel, answer, call, example_guard, kv_tools, turn
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from toolguard_langchain import GuardMiddleware

import toolguard as tg


def main(workdir: str) -> None:
    guard = example_guard(workdir)
    service = KvService(guard.verifier(), {"agents:context:rules": "keep a summary per job"})
    middleware = GuardMiddleware(guard, intent="process-job")
    model = ScriptedChatModel(
        script=[
            # run 1: read the rules, then two writes in parallel (one outside the job)
            turn(call("kv_get", "call-1", key="agents:context:rules")),
            turn(
                call("kv_set", "call-2", key="agents:jobs:42:state", value="processed"),
                call("kv_set", "call-3", key="agents:jobs:7:state", value="hijacked"),
            ),
            answer("Job 42 is processed; I was not allowed to touch job 7."),
            # run 2: the key-value service crashes on the second call
            turn(call("kv_get", "call-4", key="agents:jobs:42:state")),
            turn(call("kv_set", "call-5", key="agents:jobs:42:report", value="...")),
            answer("never reached"),
        ]
    )
    agent = create_agent(model, kv_tools(service), middleware=[middleware])
    config: Any = {"configurable": {"job_id": "42"}}
    user = {"messages": [{"role": "user", "content": "Process job 42."}]}

    print("== run 1: one task, every call checked")
    result = middleware.run(agent, user, config)
    for message in result["messages"]:
        if isinstance(message, ToolMessage):
            print(f"  {message.tool_call_id} {message.name}: [{message.status}] {message.content}")
    print(f"  answer: {result['messages'][-1].content}")
    (task,) = guard.audit.tasks(intent="process-job")
    print(f"  task: {task['purpose']} -> {task['status']}")
    print("  audit trail, per call:")
    for event in sorted(
        guard.audit.events(task_id=task["task_id"]),
        key=lambda e: (e.correlation_id or "", e.seq),
    ):
        what = event.decision or event.outcome or ""
        print(f"    {event.correlation_id or '-':7} {event.kind:10} {event.tool or '':7} {what}")
    print(
        f"  data: agents:jobs:42:state={service.data.get('agents:jobs:42:state')!r}, "
        f"agents:jobs:7:state={service.data.get('agents:jobs:7:state')!r}"
    )

    print("== run 2: the service crashes midway")
    service.fail_on.add("agents:jobs:42:report")
    before = len(service.tokens)
    try:
        middleware.run(agent, user, config)
    except RuntimeError as exc:
        print(f"  the run raised: {exc}")
    tasks = guard.audit.tasks(intent="process-job")
    print(f"  tasks: {sorted(t['status'] for t in tasks)}")
    earlier = service.tokens[before]  # the credential of call-4, which had succeeded
    try:
        guard.verifier().verify(earlier)
        print("  the credential of call-4 is still valid")
    except tg.CredentialRevoked:
        print("  the credential of call-4 is rejected now: revoked when the task ended")
    guard.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-example-") as tmp:
        main(tmp)
