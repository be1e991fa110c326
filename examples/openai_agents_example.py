"""An OpenAI Agents SDK agent guarded by toolguard (offline: the SDK's ``ScriptedModel``).

``guard_tools()`` wraps the agent's function tools; ``GuardedRunner`` makes each run one task of
the intent ``process-job``. Every tool call is checked against the intent, audited before it
runs and gets its own short-lived credential, which the key-value service verifies. A call
outside the job is denied: the model reads the denial as the tool's output and the run goes on.
The worker hands off to a summariser agent: the handoff is a delegation (a child task of the
narrower intent ``summarise-job``, its credentials name the worker in their ``act`` claim).
In the second run the service crashes (an ``error`` outcome; the model reads the SDK's error
message), then the model provider fails and the run raises: its task ends all the same, so its
credentials are revoked.

Run it: ``python examples/openai_agents_example.py`` (needs ``toolguard-openai-agents``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from _fake_model import KvService, example_guard
from agents import Agent, RunContextWrapper, function_tool, set_tracing_disabled
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call
from toolguard_openai_agents import GuardedRunner, guard_tools, tool_credential

import toolguard as tg

os.environ.setdefault("OPENAI_API_KEY", "sk-offline-example")  # never used: no network
set_tracing_disabled(True)


def kv_tools(service: KvService) -> list[Any]:
    """``kv_get`` (sync, reads the credential from the context) and ``kv_set`` (async, takes
    the SDK's run context; the context is not part of the tool's schema)."""

    @function_tool
    def kv_get(key: str) -> str:
        """Read the value stored under a key."""
        return service.get(tg.current_credential().token, key)

    @function_tool
    async def kv_set(ctx: RunContextWrapper[Any], key: str, value: str) -> str:
        """Store a value under a key."""
        return service.set(tool_credential(ctx).token, key, value)

    return [kv_get, kv_set]


async def main(workdir: str) -> None:
    guard = example_guard(workdir)
    service = KvService(guard.verifier(), {"agents:context:rules": "keep a summary per job"})
    kv_get, kv_set = guard_tools(kv_tools(service), guard)
    summariser = Agent(
        name="summariser",
        instructions="Summarise the job.",
        tools=[kv_get],
        model=ScriptedModel(
            [
                [function_call("kv_get", {"key": "agents:jobs:42:state"}, call_id="call-5")],
                [assistant_message("Job 42: processed.")],
            ]
        ),
    )
    worker = Agent(
        name="worker",
        instructions="Process the job, then hand off to the summariser.",
        tools=[kv_get, kv_set],
        handoffs=[summariser],
        model=ScriptedModel(
            [
                # run 1: read the rules, two writes in parallel (one outside the job), hand off
                [function_call("kv_get", {"key": "agents:context:rules"}, call_id="call-1")],
                [
                    function_call(
                        "kv_set", {"key": "agents:jobs:42:state", "value": "processed"},
                        call_id="call-2",
                    ),
                    function_call(
                        "kv_set", {"key": "agents:jobs:7:state", "value": "hijacked"},
                        call_id="call-3",
                    ),
                ],
                [function_call("transfer_to_summariser", {}, call_id="call-4")],
                # run 2: the key-value service crashes (the model reads the tool's error), then
                # the model provider fails: the run raises
                [function_call("kv_get", {"key": "agents:jobs:42:report"}, call_id="call-6")],
                RuntimeError("the model provider is down"),
            ]
        ),
    )  # fmt: skip
    runner = GuardedRunner(
        guard, intent="process-job", handoff_intents={"summariser": "summarise-job"}
    )

    print("== run 1: one task, every call checked, the handoff delegated")
    result = await runner.run(worker, "Process job 42.", params={"job_id": "42"})
    for item in result.new_items:
        if isinstance(item, ToolCallOutputItem):
            raw: Any = item.raw_item
            print(f"  {raw['call_id']} ({item.agent.name}): {item.output}")
    print(f"  answer ({result.last_agent.name}): {result.final_output}")
    for task in sorted(guard.audit.tasks(), key=lambda t: t["started_at"]):
        print(f"  task {task['intent']}: {task['purpose'] or ''} -> {task['status']}")
    summary_claims = service.claims[-1]
    print(f"  the summariser's credential: sub={summary_claims['sub']}, acting for "
          f"{summary_claims['act']['sub']}")  # fmt: skip
    print("  audit trail, per call:")
    (worker_task,) = guard.audit.tasks(intent="process-job")
    for event in sorted(
        guard.audit.events(task_id=worker_task["task_id"]),
        key=lambda e: (e.correlation_id or "", e.seq),
    ):
        if event.kind in ("request", "denied", "outcome"):
            verdict = event.decision or event.outcome or ""
            jti = "yes" if event.jti else "-"
            print(f"    {event.correlation_id} {event.kind:8} {event.tool} {verdict} jti={jti}")

    print("== run 2: the service crashes; the task still ends and revokes")
    service.fail_on.add("agents:jobs:42:report")
    try:
        await runner.run(worker, "Process job 42 again.", params={"job_id": "42"})
    except RuntimeError as exc:
        print(f"  the run raised: {exc}")
    failed = max(guard.audit.tasks(intent="process-job"), key=lambda t: t["started_at"])
    (crash,) = [e for e in guard.audit.events(task_id=failed["task_id"]) if e.kind == "outcome"]
    print(f"  {crash.correlation_id} outcome: {crash.outcome} ({crash.error})")
    print(f"  task -> {failed['status']}")
    try:
        guard.verifier().verify(service.tokens[-1])
    except tg.CredentialRevoked:
        print("  its last credential is revoked: replaying it is refused")
    report = guard.audit.verify()
    print(f"  audit chain verifies: {report.ok}; tasks still running: {len(runner.active_tasks)}")
    guard.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-openai-agents-") as workdir:
        asyncio.run(main(workdir))
