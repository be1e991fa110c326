"""A PydanticAI agent guarded by toolguard (offline: PydanticAI's ``FunctionModel``).

``guard_toolset()`` wraps the agent's toolset; ``GuardedAgent`` makes each run one task of the
intent ``process-job`` (its ``job_id`` comes from the run's ``deps``). Every tool call is
checked against the intent, audited before it runs and gets its own short-lived credential,
which the key-value service verifies. A call outside the job is denied: the model reads the
denial as a failed tool result and the run goes on. The worker delegates to a summariser
agent from inside a tool (PydanticAI's agent delegation): the summariser's run is a child task
of the narrower intent ``summarise-job``, its credentials name the worker in their ``act``
claim. In the second run the key-value service crashes and the run raises: its task ends all
the same, so its credentials are revoked.

Run it: ``python examples/pydantic_ai_example.py`` (needs ``toolguard-pydantic-ai``).
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import pydantic_ai.models
from _fake_model import KvService, example_guard
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from toolguard_pydantic_ai import GuardedAgent, guard_toolset, tool_credential

import toolguard as tg

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False  # only the scripted model below: no network


def scripted(*steps: Any) -> FunctionModel:
    """A model that answers each request with the next step: tool calls, a text, or an error."""
    remaining = list(steps)

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        step = remaining.pop(0)
        if isinstance(step, BaseException):
            raise step
        parts = [TextPart(step)] if isinstance(step, str) else step
        return ModelResponse(parts=parts)

    return FunctionModel(respond)


def call(tool: str, call_id: str, **args: str) -> ToolCallPart:
    return ToolCallPart(tool, args, tool_call_id=call_id)


def show(result: Any, agent: str) -> None:
    """Print each tool result the model read in this run."""
    for message in result.new_messages():
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    print(f"  {part.tool_call_id} ({agent}): {part.content}")


async def main(workdir: str) -> None:
    guard = example_guard(workdir)
    service = KvService(guard.verifier(), {"agents:context:rules": "keep a summary per job"})

    def kv_get(key: str) -> str:
        """Read the value stored under a key (sync: PydanticAI runs it in a worker thread)."""
        return service.get(tg.current_credential().token, key)

    async def kv_set(ctx: RunContext[Any], key: str, value: str) -> str:
        """Store a value under a key (the RunContext is not part of the tool's schema)."""
        return service.set(tool_credential(ctx).token, key, value)

    readers = guard_toolset([kv_get], guard)
    summariser = GuardedAgent(
        Agent(
            scripted([call("kv_get", "s1", key="agents:jobs:42:state")], "Job 42: processed."),
            toolsets=[readers],
            name="summariser",
        ),
        guard,
        intent="summarise-job",  # job_id comes from the worker's task
    )

    async def summarise_job(job_id: str) -> str:
        """Ask the summariser agent for a summary of the job."""
        result = await summariser.run(f"Summarise job {job_id}.")
        show(result, "summariser")
        return result.output

    worker = GuardedAgent(
        Agent(
            scripted(
                # run 1: read the rules, two writes in parallel (one outside the job), summarise
                [call("kv_get", "c1", key="agents:context:rules")],
                [
                    call("kv_set", "c2", key="agents:jobs:42:state", value="processed"),
                    call("kv_set", "c3", key="agents:jobs:7:state", value="hijacked"),
                ],
                [call("summarise_job", "c4", job_id="42")],
                "Job 42 is processed and summarised.",
                # run 2: the key-value service crashes: the run raises
                [call("kv_get", "c5", key="agents:jobs:42:report")],
            ),
            toolsets=[guard_toolset([kv_get, kv_set, summarise_job], guard)],
            name="worker",
        ),
        guard,
        intent="process-job",
    )

    print("== run 1: one task, every call checked, the sub-agent delegated")
    result = await worker.run("Process job 42.", deps={"job_id": "42"})
    show(result, "worker")
    print(f"  answer: {result.output}")
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
        await worker.run("Process job 42 again.", deps={"job_id": "42"})
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
    running = len(worker.active_tasks) + len(summariser.active_tasks)
    print(f"  audit chain verifies: {report.ok}; tasks still running: {running}")
    guard.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-pydantic-ai-") as workdir:
        asyncio.run(main(workdir))
