"""toolguard for PydanticAI (``toolguard_pydantic_ai``), end to end and offline.

Real ``Agent`` runs with PydanticAI's ``FunctionModel`` / ``TestModel`` (no network, no API key,
``ALLOW_MODEL_REQUESTS`` off), real SQLite trails, real keys, real JWTs checked by a real
verifier. Skipped where PydanticAI (``pip install -e integrations/pydantic-ai``) is not
installed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_core import SchemaValidator, core_schema

import toolguard as tg

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pydantic_ai_example.py"
DOCS = ROOT / "docs" / "agents.md"
JOB = {"job_id": "42"}


def _load_sdk() -> None:
    """Import PydanticAI and toolguard_pydantic_ai into this module when its first test runs,
    not when pytest collects it: they are among the slowest imports of the suite, and with
    ``make test-fast`` every worker collects every module (``--dist loadfile`` runs this
    module's tests on one of them). Skipped where PydanticAI is not installed."""
    if "Agent" in globals():
        return  # loaded (the helpers below call this too: other test modules import them)
    pytest.importorskip("pydantic_ai")
    pytest.importorskip("toolguard_pydantic_ai")
    global pydantic_ai, Agent, CallDeferred, DeferredToolRequests, ModelRetry, RunContext, Tool
    global ToolReturn, UsageLimitExceeded, ModelMessage, ModelRequest, ModelResponse, TextPart
    global ToolCallPart, ToolReturnPart, AgentInfo, DeltaToolCall, FunctionModel, TestModel
    global ToolDefinition, AbstractToolset, FunctionToolset, ToolsetTool, UsageLimits
    global GuardedAgent, GuardedToolset, guard_toolset, is_guarded, tool_credential
    global unguarded_tools
    import pydantic_ai.models
    from pydantic_ai import (
        Agent,
        CallDeferred,
        DeferredToolRequests,
        ModelRetry,
        RunContext,
        Tool,
        ToolReturn,
        UsageLimitExceeded,
    )
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
    from pydantic_ai.models.test import TestModel
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool
    from pydantic_ai.usage import UsageLimits
    from toolguard_pydantic_ai import (
        GuardedAgent,
        GuardedToolset,
        guard_toolset,
        is_guarded,
        tool_credential,
        unguarded_tools,
    )


@pytest.fixture(scope="module", autouse=True)
def _sdk() -> None:
    _load_sdk()


def _close_default_loop() -> None:
    """``run_sync`` runs on the thread's default event loop and leaves it open (as plain
    PydanticAI does); close it after each test, and before ``asyncio.run`` replaces it."""
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running():
        loop.close()
    policy.set_event_loop(None)


@pytest.fixture(autouse=True)
def _offline_and_tidy() -> Iterator[None]:
    previous = pydantic_ai.models.ALLOW_MODEL_REQUESTS
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = False
    yield
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = previous
    _close_default_loop()


# -- helpers ---------------------------------------------------------------------------------


class Script:
    """A ``FunctionModel`` that answers each model request with the next step: a list of tool
    calls, a final text, or an exception to raise. It keeps what the model was sent."""

    def __init__(self, steps: list[Any]) -> None:
        _load_sdk()
        self.steps = list(steps)
        self.seen: list[list[ModelMessage]] = []
        self.tools: list[list[ToolDefinition]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.seen.append(list(messages))
        self.tools.append(list(info.function_tools))
        step = self.steps.pop(0) if self.steps else "done"
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, str):
            return ModelResponse(parts=[TextPart(step)])
        return ModelResponse(parts=list(step))

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        """The same steps, streamed (for ``run_stream``)."""
        response = self(messages, info)
        for part in response.parts:
            if isinstance(part, TextPart):
                yield part.content
            elif isinstance(part, ToolCallPart):
                index = response.parts.index(part)
                yield {
                    index: DeltaToolCall(
                        part.tool_name, part.args_as_json_str(), tool_call_id=part.tool_call_id
                    )
                }

    def model(self) -> FunctionModel:
        return FunctionModel(self, stream_function=self.stream)

    def returns(self) -> dict[str, ToolReturnPart]:
        """tool_call_id -> the tool result the model was last sent for it."""
        found: dict[str, ToolReturnPart] = {}
        for messages in self.seen:
            for message in messages:
                if isinstance(message, ModelRequest):
                    for part in message.parts:
                        if isinstance(part, ToolReturnPart):
                            found[part.tool_call_id] = part
        return found

    def text(self) -> str:
        return json.dumps(
            [[repr(m) for m in messages] for messages in self.seen], default=str, ensure_ascii=False
        )


def _set(call_id: str, key: str, value: str = "v") -> ToolCallPart:
    _load_sdk()
    return ToolCallPart("kv_set", {"key": key, "value": value}, tool_call_id=call_id)


def _get(call_id: str, key: str) -> ToolCallPart:
    return ToolCallPart("kv_get", {"key": key}, tool_call_id=call_id)


class Kv:
    """Tools over a dict; each call records the credential it ran with (keyed by the key)."""

    def __init__(self) -> None:
        _load_sdk()
        self.data: dict[str, str] = {}
        self.credentials: dict[str, tg.Credential] = {}
        self.fail: BaseException | None = None

        def kv_get(key: str) -> str:
            """Read the value stored under a key."""
            self.credentials[key] = tg.current_credential()
            if self.fail is not None:
                raise self.fail
            return self.data.get(key, "")

        async def kv_set(ctx: RunContext[Any], key: str, value: str) -> str:
            """Store a value under a key."""
            credential = tool_credential(ctx)
            assert credential is tg.current_credential()
            self.credentials[key] = credential
            await asyncio.sleep(0)  # let parallel calls interleave
            self.data[key] = value
            return "stored"

        self.kv_get, self.kv_set = kv_get, kv_set
        self.tools: list[Any] = [kv_get, kv_set]


def _agent(toolset: Any, script: Script, **kwargs: Any) -> Agent[Any, str]:
    _load_sdk()
    return Agent(script.model(), toolsets=[toolset], **kwargs)


def _tasks(guard: tg.Guard) -> list[dict[str, Any]]:
    """The tasks in the order they started (the trail's order: the test clock stands still)."""
    order = [e.task_id for e in guard.audit.events() if e.kind == "task_start"]
    rows = {t["task_id"]: t for t in guard.audit.tasks(limit=None)}
    return [rows[task_id] for task_id in order]


def _events(guard: tg.Guard, kind: str) -> list[Any]:
    return [e for e in guard.audit.events() if e.kind == kind]


# -- guard_toolset ---------------------------------------------------------------------------


def test_the_model_sees_the_same_tools(guard: tg.Guard) -> None:
    kv = Kv()
    plain, guarded = Script(["ok"]), Script(["ok"])
    Agent(FunctionModel(plain), toolsets=[FunctionToolset(kv.tools)]).run_sync("go")
    toolset = guard_toolset(kv.tools, guard)
    Agent(FunctionModel(guarded), toolsets=[toolset]).run_sync("go")
    assert plain.tools == guarded.tools
    assert [t.name for t in guarded.tools[0]] == ["kv_get", "kv_set"]
    assert isinstance(toolset, GuardedToolset) and is_guarded(toolset, guard)
    assert guard_toolset(toolset, guard) is toolset  # guarding twice with one guard: no-op


def test_guard_toolset_refuses_what_it_cannot_guard(guard: tg.Guard, tmp_path: Path) -> None:
    kv = Kv()
    with pytest.raises(TypeError, match="PydanticAI toolset"):
        guard_toolset("kv_get", guard)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tool functions"):
        guard_toolset([42], guard)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="on_deny"):
        guard_toolset(kv.tools, guard, on_deny="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Guard"):
        guard_toolset(kv.tools, object())  # type: ignore[arg-type]
    other = tg.Guard({**guard.config.model_dump(), "store": str(tmp_path / "other.db")})
    try:
        with pytest.raises(ValueError, match="already guarded by another Guard"):
            guard_toolset(guard_toolset(kv.tools, guard), other)
    finally:
        other.close()


def test_tool_objects_and_any_toolset_are_guarded(guard: tg.Guard) -> None:
    """A ``Tool``, a combined/prefixed toolset and a hand-made (non-function) toolset."""

    class Remote(AbstractToolset[Any]):  # e.g. a remote tool server's toolset
        calls: ClassVar[list[dict[str, Any]]] = []

        @property
        def id(self) -> str | None:
            return "remote"

        async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
            schema = {"type": "object", "properties": {"key": {"type": "string"}}}
            validator = SchemaValidator(core_schema.dict_schema(core_schema.str_schema()))
            return {
                "kv_get": ToolsetTool(
                    toolset=self,
                    tool_def=ToolDefinition(name="kv_get", parameters_json_schema=schema),
                    max_retries=1,
                    args_validator=validator,
                )
            }

        async def call_tool(
            self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: Any
        ) -> Any:
            self.calls.append({"args": tool_args, "sub": tg.current_credential().identity})
            return "remote value"

    kv = Kv()
    # a prefix added outside the guard changes what the model sees, not the rule (kv_set)
    prefixed = guard_toolset(FunctionToolset([Tool(kv.kv_set)]), guard).prefixed("local")
    script = Script(
        [
            [
                _get("c1", "agents:jobs:42:x"),
                ToolCallPart(
                    "local_kv_set", {"key": "agents:jobs:42:y", "value": "1"}, tool_call_id="c2"
                ),
                ToolCallPart(
                    "local_kv_set", {"key": "agents:jobs:7:y", "value": "1"}, tool_call_id="c3"
                ),
            ],
            "ok",
        ]
    )
    agent = Agent(
        FunctionModel(script),
        toolsets=[guard_toolset(Remote(), guard), prefixed],
    )
    GuardedAgent(agent, guard, "process-job", params=JOB).run_sync("go")
    returns = script.returns()
    assert returns["c1"].content == "remote value" and returns["c2"].content == "stored"
    assert str(returns["c3"].content).startswith("Denied by toolguard: write on")
    assert Remote.calls == [{"args": {"key": "agents:jobs:42:x"}, "sub": "agent-runner"}]
    assert kv.data == {"agents:jobs:42:y": "1"}
    assert {(e.tool, e.correlation_id) for e in _events(guard, "request")} == {
        ("kv_get", "c1"),
        ("kv_set", "c2"),
    }


def test_a_rename_outside_the_guard_does_not_change_the_rule(guard: tg.Guard) -> None:
    kv = Kv()
    renamed = guard_toolset([kv.kv_set], guard).renamed({"kv_get": "kv_set"})
    script = Script(
        [[ToolCallPart("kv_get", {"key": "agents:context:x", "value": "v"}, "c1")], "ok"]
    )
    GuardedAgent(_agent(renamed, script), guard, "process-job", params=JOB).run_sync("go")
    assert str(script.returns()["c1"].content).startswith(
        "Denied by toolguard: write on 'agents:context:x'"
    )
    assert kv.data == {}
    (denied,) = _events(guard, "denied")
    assert denied.tool == "kv_set"


# -- one allowed call, end to end ------------------------------------------------------------


def test_sync_and_async_tools_get_their_call_credential_and_the_trail_matches_langchain(
    guard: tg.Guard,
) -> None:
    kv = Kv()
    script = Script(
        [[_set("call-a", "agents:jobs:42:state", "done")], [_get("call-b", "agents:jobs:42:state")],
         "finished"]
    )  # fmt: skip
    agent = GuardedAgent(_agent(guard_toolset(kv.tools, guard), script), guard, "process-job")
    result = asyncio.run(agent.run("go", deps=JOB))

    assert result.output == "finished"
    assert {k: p.content for k, p in script.returns().items()} == {
        "call-a": "stored",
        "call-b": "done",
    }
    (task,) = _tasks(guard)
    for call_id in ("call-a", "call-b"):
        events = [
            e for e in guard.audit.events(task_id=task["task_id"]) if e.correlation_id == call_id
        ]
        assert [e.kind for e in events] == ["request", "outcome"]
        request, outcome = events
        assert request.decision == "allow" and request.jti and outcome.jti == request.jti
        assert outcome.outcome == "ok"
    assert {c.jti for c in kv.credentials.values()} <= {e.jti for e in _events(guard, "request")}
    for credential in kv.credentials.values():
        assert credential.claims["sub"] == "agent-runner"
        assert credential.claims["aud"] == guard.config.issuer.audience
        assert credential.claims["task_id"] == task["task_id"]
    assert task["status"] == "ok"
    with pytest.raises(tg.CredentialRevoked):
        guard.verifier().verify(kv.credentials["agents:jobs:42:state"].token)
    assert guard.audit.verify().ok


def test_credentials_verify_while_the_run_goes_on(guard: tg.Guard) -> None:
    verifier = guard.verifier()
    seen: list[dict[str, Any]] = []

    def kv_get(key: str) -> str:
        """Read a key; the service verifies the call's credential."""
        seen.append(verifier.verify(tg.current_credential().token, operation="read", resource=key))
        return "v"

    script = Script([[_get("c1", "agents:jobs:42:x")], "ok"])
    GuardedAgent(_agent(guard_toolset([kv_get], guard), script), guard, "process-job").run_sync(
        "go", deps=JOB
    )
    (claims,) = seen
    assert claims["sub"] == "agent-runner" and claims["op"] == "read"
    with pytest.raises(tg.CredentialError, match="guard_toolset"):
        tool_credential(RunContext(deps=None, model=TestModel(), usage=None))  # type: ignore[arg-type]


# -- denials ---------------------------------------------------------------------------------


def test_a_denial_is_a_failed_tool_result_and_the_run_goes_on(guard: tg.Guard) -> None:
    kv = Kv()
    script = Script(
        [[_set("c1", "agents:jobs:7:state", "hijack")], [_set("c2", "agents:jobs:7:x")],
         [_set("c3", "agents:jobs:42:state", "ok")], "done"]
    )  # fmt: skip
    # no tool retries at all: a denial must not spend one (a ModelRetry would fail the run)
    toolset = guard_toolset(FunctionToolset(kv.tools, max_retries=0), guard)
    result = GuardedAgent(_agent(toolset, script), guard, "process-job", params=JOB).run_sync("go")

    returns = script.returns()
    assert returns["c1"].outcome == "failed"
    assert str(returns["c1"].content).startswith(
        "Denied by toolguard: write on 'agents:jobs:7:state'"
    )
    assert returns["c3"].content == "stored" and returns["c3"].outcome == "success"
    assert result.output == "done"
    assert kv.data == {"agents:jobs:42:state": "ok"}
    denied = _events(guard, "denied")
    assert [e.correlation_id for e in denied] == ["c1", "c2"] and denied[0].jti is None
    assert _tasks(guard)[0]["status"] == "ok"


def test_a_call_outside_any_task_is_a_denial_and_the_run_finishes(guard: tg.Guard) -> None:
    kv = Kv()
    script = Script([[_set("c1", "agents:jobs:42:state")], "could not write"])
    result = _agent(guard_toolset(kv.tools, guard), script).run_sync("go")  # no task

    assert result.output == "could not write"
    assert str(script.returns()["c1"].content).startswith(
        "Denied by toolguard: tool 'kv_set' was called outside a task"
    )
    assert kv.data == {} and kv.credentials == {}
    (denied,) = _events(guard, "denied")
    assert (denied.rule, denied.correlation_id, denied.task_id) == ("task.active", "c1", None)


def test_a_plain_agent_inside_a_guard_task_block_works_too(guard: tg.Guard) -> None:
    kv = Kv()
    script = Script([[_set("c1", "agents:jobs:42:a")], "ok"])
    agent = _agent(guard_toolset(kv.tools, guard), script)

    async def main() -> str:
        async with guard.task("process-job", job_id="42") as task:
            await agent.run("go")
            return task.task_id

    task_id = asyncio.run(main())
    assert kv.credentials["agents:jobs:42:a"].task_id == task_id
    with guard.task("process-job", job_id="42") as task:  # and run_sync
        agent.run_sync("go", model=FunctionModel(Script([[_get("c2", "agents:jobs:42:b")], "ok"])))
    assert kv.credentials["agents:jobs:42:b"].task_id == task.task_id


def test_on_deny_raise_raises_policy_denied(guard: tg.Guard) -> None:
    kv = Kv()
    script = Script([[_set("c1", "agents:jobs:7:state")], "never"])
    toolset = guard_toolset(kv.tools, guard, on_deny="raise")
    with pytest.raises(tg.PolicyDenied, match="agents:jobs:7:state"):
        GuardedAgent(_agent(toolset, script), guard, "process-job", params=JOB).run_sync("go")
    (task,) = _tasks(guard)
    assert task["status"] == "error"
    assert kv.data == {} and len(script.seen) == 1


@pytest.mark.slow
@pytest.mark.parametrize("on_deny", ["message", "raise"])
@pytest.mark.parametrize("parallel", [False, True])
def test_an_audit_error_always_raises_and_nothing_runs(
    make_guard: Callable[..., tg.Guard], on_deny: Any, parallel: bool
) -> None:
    guard = make_guard(busy_timeout=0.05)
    kv = Kv()
    calls = [_set("c1", "agents:jobs:42:a")] + (
        [_get("c2", "agents:jobs:42:b")] if parallel else []
    )
    script = Script([calls, "never"])
    agent = GuardedAgent(
        _agent(guard_toolset(kv.tools, guard, on_deny=on_deny), script),
        guard,
        "process-job",
        params=JOB,
    )
    # authorize runs on the guard's writer thread (aauthorize), not on this one
    locker = sqlite3.connect(guard.config.store_path, isolation_level=None, check_same_thread=False)
    original = guard.authorize

    def authorize(*args: Any, **kwargs: Any) -> Any:
        if not locker.in_transaction:
            locker.execute("BEGIN EXCLUSIVE")
        return original(*args, **kwargs)

    guard.authorize = authorize  # type: ignore[method-assign]
    try:
        with pytest.raises(tg.AuditError, match="nothing ran"):
            agent.run_sync("go")
    finally:
        del guard.authorize
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
    assert kv.data == {} and kv.credentials == {}
    assert len(script.seen) == 1  # the run stopped at the call: the model never read a result


# -- tool errors, retries, deferrals and scrubbing -------------------------------------------


def test_tool_errors_are_recorded_as_error_outcomes(guard: tg.Guard) -> None:
    kv = Kv()
    kv.fail = ModelRetry("the key is locked, try another")
    script = Script([[_get("c1", "agents:jobs:42:x")], "sorry"])
    agent = GuardedAgent(_agent(guard_toolset(kv.tools, guard), script), guard, "process-job")
    agent.run_sync("go", deps=JOB)
    assert "the key is locked" in str(script.returns()["c1"].content)  # the model retries
    (outcome,) = _events(guard, "outcome")
    assert outcome.outcome == "error"
    assert outcome.error == "ModelRetry: the key is locked, try another"
    assert _tasks(guard)[0]["status"] == "ok"

    kv.fail = RuntimeError("the key-value service is down")
    with pytest.raises(RuntimeError, match="service is down"):
        agent.run_sync(
            "go", deps=JOB, model=FunctionModel(Script([[_get("c2", "agents:jobs:42:x")]]))
        )
    outcome = _events(guard, "outcome")[-1]
    assert (outcome.correlation_id, outcome.outcome) == ("c2", "error")
    assert _tasks(guard)[1]["status"] == "error"


def test_a_deferred_call_is_recorded_and_the_run_pauses(guard: tg.Guard) -> None:
    def kv_set(key: str, value: str) -> str:
        """Store a value (done outside the agent)."""
        tg.current_credential()
        raise CallDeferred(metadata={"queue": "writes"})

    script = Script([[_set("c1", "agents:jobs:42:x")]])
    agent = Agent(
        FunctionModel(script),
        toolsets=[guard_toolset([kv_set], guard)],
        output_type=[str, DeferredToolRequests],
    )
    result = GuardedAgent(agent, guard, "process-job", params=JOB).run_sync("go")
    assert isinstance(result.output, DeferredToolRequests)
    (outcome,) = _events(guard, "outcome")
    assert outcome.outcome == "error" and "CallDeferred" in (outcome.error or "")
    (end,) = _events(guard, "task_end")
    assert end.outcome == "ok" and "paused" in (end.reason or "")


def test_approval_outside_the_guard_checks_only_approved_calls(guard: tg.Guard) -> None:
    kv = Kv()
    toolset = guard_toolset(kv.tools, guard).approval_required()
    script = Script([[_set("c1", "agents:jobs:42:x")]])
    agent = Agent(
        FunctionModel(script), toolsets=[toolset], output_type=[str, DeferredToolRequests]
    )
    result = GuardedAgent(agent, guard, "process-job", params=JOB).run_sync("go")
    assert isinstance(result.output, DeferredToolRequests)
    assert _events(guard, "request") == [] and kv.data == {}  # nothing checked nor spent yet


def test_the_calls_token_never_reaches_the_model(guard: tg.Guard) -> None:
    def leak_text(key: str) -> str:
        """Echo the token."""
        return f"token={tg.current_credential().token}"

    def leak_dict(key: str) -> dict[str, Any]:
        """Echo the token in a structure."""
        return {"auth": {"bearer": tg.current_credential().token}, "key": key}

    def leak_return(key: str) -> ToolReturn:
        """Echo the token as a structured return with content for the model."""
        token = tg.current_credential().token
        return ToolReturn(return_value=token, content=[f"also {token}"], metadata={"t": token})

    def leak_retry(key: str) -> str:
        """Ask for a retry quoting the token."""
        raise ModelRetry(f"rejected {tg.current_credential().token}")

    names = ["leak_text", "leak_dict", "leak_return", "leak_retry"]
    config = copy.deepcopy(guard.config.model_dump())
    for name in names:
        config["tools"][name] = {"operation": "read", "resource": "{key}"}
    config["intents"]["process-job"]["tools"] += names
    leaky = tg.Guard(config)
    try:
        script = Script(
            [[ToolCallPart(n, {"key": "agents:jobs:42:x"}, tool_call_id=f"c-{n}") for n in names],
             "done"]
        )  # fmt: skip
        toolset = guard_toolset([leak_text, leak_dict, leak_return, leak_retry], leaky)
        result = GuardedAgent(_agent(toolset, script), leaky, "process-job", params=JOB).run_sync(
            "go"
        )
        seen = script.text()
        assert seen.count("[REDACTED]") >= 4
        assert "eyJ" not in seen
        assert "eyJ" not in json.dumps([repr(m) for m in result.all_messages()])
        errors = [e.error for e in leaky.audit.events() if e.kind == "outcome" and e.error]
        assert errors and all("eyJ" not in e for e in errors)

        def leak_error(key: str) -> str:
            """Fail with the token in the message."""
            raise RuntimeError(f"rejected {tg.current_credential().token}")

        config["tools"]["leak_error"] = {"operation": "read", "resource": "{key}"}
        script = Script([[ToolCallPart("leak_error", {"key": "agents:jobs:42:x"}, "c9")]])
        failing = guard_toolset([leak_error], leaky)
        with pytest.raises(RuntimeError) as caught:
            # leak_error is not in the intent: allow it for this run only
            config["intents"]["process-job"]["tools"] += ["leak_error"]
            with tg.Guard(config) as other:
                GuardedAgent(
                    _agent(guard_toolset([leak_error], other), script), other, "process-job",
                    params=JOB,
                ).run_sync("go")  # fmt: skip
        assert "eyJ" not in str(caught.value) and "[REDACTED]" in str(caught.value)
        assert failing is not None
    finally:
        leaky.close()


# -- the run is a task -----------------------------------------------------------------------


def test_the_run_ends_its_task_however_it_ends(guard: tg.Guard) -> None:
    kv = Kv()
    toolset = guard_toolset(kv.tools, guard)
    agent = GuardedAgent(Agent(toolsets=[toolset]), guard, "process-job", params=JOB)

    def model(*steps: Any) -> FunctionModel:
        return Script(list(steps)).model()

    # finished
    agent.run_sync("go", model=model([_set("c1", "agents:jobs:42:a")], "ok"))
    # raised by the model
    with pytest.raises(RuntimeError, match="provider down"):
        agent.run_sync(
            "go", model=model([_set("c2", "agents:jobs:42:b")], RuntimeError("provider down"))
        )
    # usage limit exceeded
    looping = [[_set(f"m{i}", "agents:jobs:42:c")] for i in range(5)]
    with pytest.raises(UsageLimitExceeded):
        agent.run_sync("go", model=model(*looping), usage_limits=UsageLimits(request_limit=2))

    # cancelled while a tool runs
    started = asyncio.Event()

    async def kv_get(key: str) -> str:
        """Hang until cancelled."""
        started.set()
        await asyncio.sleep(3600)
        return "never"

    hanging = GuardedAgent(
        Agent(
            model([_get("c3", "agents:jobs:42:d")], "x"), toolsets=[guard_toolset([kv_get], guard)]
        ),
        guard,
        "process-job",
        params=JOB,
    )

    async def cancel_midway() -> None:
        run = asyncio.ensure_future(hanging.run("go"))
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    _close_default_loop()
    asyncio.run(cancel_midway())

    # cancelled by the application (RunContext.cancel -> RunCancelled)
    async def kv_set(ctx: RunContext[Any], key: str, value: str) -> str:
        """Cancel the run."""
        ctx.cancel()
        await asyncio.sleep(0)
        return "never"

    cancelling = GuardedAgent(
        Agent(
            model([_set("c4", "agents:jobs:42:e")], "x"), toolsets=[guard_toolset([kv_set], guard)]
        ),
        guard,
        "process-job",
        params=JOB,
    )
    with pytest.raises(pydantic_ai.exceptions.RunCancelled):
        cancelling.run_sync("go")

    # an iter() loop left before the run finished
    async def leave_early() -> None:
        async with agent.iter("go", model=model([_set("c5", "agents:jobs:42:f")], "ok")) as run:
            async for _node in run:
                break

    _close_default_loop()
    asyncio.run(leave_early())

    statuses = [t["status"] for t in _tasks(guard)]
    assert statuses == ["ok", "error", "error", "cancelled", "cancelled", "abandoned"]
    assert agent.active_tasks == [] and hanging.active_tasks == []
    verifier = guard.verifier()
    for credential in kv.credentials.values():
        with pytest.raises(tg.CredentialRevoked):
            verifier.verify(credential.token)
    reasons = [e.reason for e in _events(guard, "task_end")]
    assert reasons[1] == "the agent run raised RuntimeError"
    assert reasons[2] == "the agent run raised UsageLimitExceeded"
    assert reasons[3] == "the agent run was cancelled (CancelledError)"
    assert reasons[4] == "the agent run was cancelled (RunCancelled)"
    (hung,) = [e for e in _events(guard, "outcome") if e.correlation_id == "c3"]
    assert hung.outcome == "error" and "CancelledError" in (hung.error or "")


def test_run_stream_and_run_stream_events_are_one_task_each(guard: tg.Guard) -> None:
    kv = Kv()
    agent = GuardedAgent(
        Agent(toolsets=[guard_toolset(kv.tools, guard)]), guard, "process-job", params=JOB
    )

    def model(*steps: Any) -> FunctionModel:
        return Script(list(steps)).model()

    async def main() -> None:
        async with agent.run_stream("go", model=model([_set("s1", "agents:jobs:42:a")], "ok")) as s:
            assert len(agent.active_tasks) == 1
            assert await s.get_output() == "ok"
        stream = agent.run_stream_events("go", model=model([_set("s2", "agents:jobs:42:b")], "ok"))
        async with stream as events:
            seen = [e async for e in events]
        assert seen

    asyncio.run(main())
    assert [t["status"] for t in _tasks(guard)] == ["ok", "ok"]
    assert kv.data == {"agents:jobs:42:a": "v", "agents:jobs:42:b": "v"}
    assert agent.active_tasks == []


def test_params_come_from_the_agent_the_deps_and_their_attributes(guard: tg.Guard) -> None:
    kv = Kv()
    agent = GuardedAgent(Agent(toolsets=[guard_toolset(kv.tools, guard)]), guard, "process-job")

    @dataclass
    class Deps:
        job_id: str

    agent.run_sync(
        "go", deps=Deps("7"), model=FunctionModel(Script([[_set("a", "agents:jobs:7:x")]]))
    )
    agent.run_sync(
        "go", deps={"job_id": "8"}, model=FunctionModel(Script([[_set("b", "agents:jobs:8:x")]]))
    )
    assert [t["params"] for t in _tasks(guard)] == ['{"job_id": "7"}', '{"job_id": "8"}']
    assert set(kv.data) == {"agents:jobs:7:x", "agents:jobs:8:x"}
    with pytest.raises(tg.ConfigError, match="'job_id'"):
        agent.run_sync("go", model=FunctionModel(Script(["x"])))
    with pytest.raises(tg.ConfigError, match="not defined"):
        GuardedAgent(Agent(), guard, "no-such-intent")
    with pytest.raises(TypeError, match="Guard"):
        GuardedAgent(Agent(), object(), "process-job")  # type: ignore[arg-type]
    assert len(_tasks(guard)) == 2  # a run refused before it started starts no task


def test_an_agent_run_inside_a_guarded_tool_is_delegated_from_the_callers_task(
    guard: tg.Guard,
) -> None:
    inner = Kv()
    summariser = GuardedAgent(
        Agent(toolsets=[guard_toolset(inner.tools, guard)]), guard, "summarise-job"
    )  # job_id comes from the parent task

    async def kv_get(key: str) -> str:
        """Ask a sub-agent to read the key."""
        script = Script([[_get("sub-1", key)], [_set("sub-2", key)], "read"])
        return (await summariser.run("read it", model=FunctionModel(script))).output

    outer = GuardedAgent(
        _agent(guard_toolset([kv_get], guard), Script([[_get("c1", "agents:jobs:42:x")], "ok"])),
        guard,
        "process-job",
        params=JOB,
    )
    asyncio.run(outer.run("go"))

    parent, child = _tasks(guard)
    assert (parent["intent"], child["intent"]) == ("process-job", "summarise-job")
    assert child["parent_id"] == parent["task_id"] and child["status"] == "ok"
    claims = inner.credentials["agents:jobs:42:x"].claims
    assert claims["sub"] == "summariser" and claims["act"]["task_id"] == parent["task_id"]
    assert inner.data == {}  # kv_set is outside summarise-job
    (denied,) = _events(guard, "denied")
    assert denied.correlation_id == "sub-2" and denied.task_id == child["task_id"]

    # a wider delegation is refused before the sub-run starts
    wider = GuardedAgent(Agent(toolsets=[guard_toolset(inner.tools, guard)]), guard, "process-job")

    async def refused() -> None:
        async with guard.task("summarise-job", job_id="42"):
            await wider.run("go", model=FunctionModel(Script(["x"])))

    with pytest.raises(tg.PolicyDenied, match="delegation"):
        asyncio.run(refused())


def test_tools_outside_any_guarded_toolset_are_refused(guard: tg.Guard) -> None:
    kv = Kv()
    agent = Agent(toolsets=[guard_toolset([kv.kv_get], guard)])

    @agent.tool_plain
    def kv_delete(key: str) -> str:
        """Delete a key (registered on the agent: not guarded)."""
        return "deleted"

    with pytest.raises(tg.ConfigError, match="'kv_delete'"):
        GuardedAgent(agent, guard, "process-job", params=JOB)
    assert unguarded_tools(agent.toolsets) == ["'kv_delete'"]

    clean = GuardedAgent(Agent(toolsets=[guard_toolset([kv.kv_get], guard)]), guard, "process-job")
    script = Script([[_set("c1", "agents:jobs:42:x")], "ok"])
    with pytest.raises(tg.ConfigError, match="'kv_set'"):  # a run's own unguarded toolset
        clean.run_sync(
            "go", deps=JOB, model=script.model(), toolsets=[FunctionToolset([kv.kv_set])]
        )
    assert _tasks(guard) == [] and kv.data == {} and script.seen == []
    clean.run_sync(
        "go", deps=JOB, model=script.model(), toolsets=[guard_toolset([kv.kv_set], guard)]
    )
    assert kv.data == {"agents:jobs:42:x": "v"}

    # opted out: the unguarded tool runs unchecked, the guarded ones are still checked
    script = Script([[ToolCallPart("kv_delete", {"key": "agents:jobs:7:x"}, "d1")], "ok"])
    lax = GuardedAgent(agent, guard, "process-job", params=JOB, allow_unguarded=True)
    lax.run_sync("go", model=script.model())
    assert script.returns()["d1"].content == "deleted"
    assert [e.correlation_id for e in _events(guard, "request")] == ["c1"]


# -- parallel calls --------------------------------------------------------------------------


def test_parallel_calls_each_get_their_own_decision_and_credential(guard: tg.Guard) -> None:
    kv = Kv()
    script = Script([[_set(f"p{i}", f"agents:jobs:42:k{i}") for i in range(7)], "done"])
    agent = GuardedAgent(_agent(guard_toolset(kv.tools, guard), script), guard, "process-job")
    asyncio.run(agent.run("go", deps=JOB))

    returns = script.returns()
    allowed = [c for c, p in returns.items() if p.content == "stored"]
    denied = [c for c, p in returns.items() if str(p.content).startswith("Denied by toolguard")]
    assert len(allowed) == 5 and len(denied) == 2  # per_tool: {kv_set: 5}, exactly
    requests = _events(guard, "request")
    assert sorted(e.correlation_id for e in requests) == sorted(allowed)
    assert len({e.jti for e in requests}) == 5
    assert len({c.jti for c in kv.credentials.values()}) == 5
    assert {e.rule for e in _events(guard, "denied")} == {
        "intents.process-job.budget.per_tool.kv_set"
    }


def test_test_model_calls_every_tool_through_the_guard(guard: tg.Guard) -> None:
    kv = Kv()
    agent = Agent(TestModel(), toolsets=[guard_toolset(kv.tools, guard)])
    result = GuardedAgent(agent, guard, "process-job", params=JOB).run_sync("go")
    # TestModel makes up arguments ("a"): not a key of job 42, so both calls are denied
    assert "Denied by toolguard" in result.output
    assert {e.tool for e in _events(guard, "denied")} == {"kv_get", "kv_set"}
    assert kv.credentials == {}


# -- open-ended arguments --------------------------------------------------------------------


@pytest.mark.slow
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.one_of(
        st.text(max_size=40),
        st.dictionaries(
            st.sampled_from(["key", "value", "extra"]), st.text(max_size=20), max_size=3
        ).map(json.dumps),
        st.sampled_from(
            ["[]", "null", "42", '"agents:jobs:42:x"', '{"key": 7}', '{"key": "agents:jobs:7:x"}']
        ),
    )
)
def test_any_arguments_are_checked_before_the_tool_runs(guard: tg.Guard, raw: str) -> None:
    ran: list[str] = []

    def kv_get(key: Any = None) -> str:
        """Read a key."""
        ran.append(str(key))
        return "v"

    script = Script([[ToolCallPart("kv_get", raw, tool_call_id="c1")], "ok"])
    agent = GuardedAgent(
        _agent(guard_toolset([kv_get], guard), script, retries=0), guard, "process-job", params=JOB
    )
    try:
        agent.run_sync("go")
    except pydantic_ai.exceptions.UnexpectedModelBehavior:
        pass  # arguments PydanticAI itself refused, with no retry left: nothing ran
    for key in ran:  # whatever ran was allowed by the policy for this job
        assert key.startswith(("agents:jobs:42:", "agents:context:")), key
    if ran:
        assert _events(guard, "request")[-1].correlation_id == "c1"


# -- the same trail as LangChain -------------------------------------------------------------


def test_the_trail_looks_the_same_as_for_a_langchain_guarded_tool(
    make_guard: Callable[..., tg.Guard], clock: Any, tmp_path: Path
) -> None:
    from langchain_core.tools import tool as lc_tool

    def shape(guard: tg.Guard) -> list[tuple[Any, ...]]:
        return [
            (e.kind, e.tool, e.operation, e.resources, e.decision, e.outcome, e.rule,
             e.correlation_id, e.identity, e.intent, bool(e.jti), e.args)
            for e in guard.audit.events()
            if e.kind in ("request", "outcome", "denied")
        ]  # fmt: skip

    # two trails (each guard its own store), compared
    pyd_guard = make_guard(clock=clock, store=str(tmp_path / "pydantic-ai.db"))
    langchain_guard = make_guard(clock=clock, store=str(tmp_path / "langchain.db"))
    kv = Kv()
    script = Script([[_get("c1", "agents:jobs:42:x"), _get("c2", "agents:jobs:7:x")], "ok"])
    GuardedAgent(
        _agent(guard_toolset([kv.kv_get], pyd_guard), script), pyd_guard, "process-job", params=JOB
    ).run_sync("go")

    @lc_tool
    def kv_get(key: str) -> str:
        """Read the value stored under a key."""
        return ""

    guarded = tg.guard(kv_get, langchain_guard)
    with langchain_guard.task("process-job", job_id="42"):
        for call_id, key in (("c1", "agents:jobs:42:x"), ("c2", "agents:jobs:7:x")):
            guarded.invoke(
                {"type": "tool_call", "id": call_id, "name": "kv_get", "args": {"key": key}}
            )

    assert sorted(shape(pyd_guard), key=str) == sorted(shape(langchain_guard), key=str)
    assert {e[0] for e in shape(pyd_guard)} == {"request", "outcome", "denied"}
    assert len(shape(pyd_guard)) == 3  # c1: request + outcome, c2: denied; nothing else


# -- the example, the docs and the wheel -----------------------------------------------------


@pytest.mark.slow
def test_the_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120,
        cwd=ROOT / "examples",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "c2 (worker): stored" in out
    assert "c3 (worker): Denied by toolguard: write on 'agents:jobs:7:state'" in out
    assert "s1 (summariser): processed" in out
    assert "sub=summariser, acting for agent-runner" in out
    assert "task -> error" in out and "is revoked" in out
    assert "audit chain verifies: True; tasks still running: 0" in out
    assert "eyJ" not in out


def _section_blocks() -> list[str]:
    text = DOCS.read_text()
    start = text.index("## PydanticAI")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    blocks, current = [], None
    for line in section.splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_docs_section_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _section_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs_pydantic_ai"}
    try:
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"{DOCS.name} pydantic-ai block {number}", "exec"), namespace)
    finally:
        if isinstance(namespace.get("guard"), tg.Guard):
            namespace["guard"].close()
    out = capsys.readouterr().out
    assert "Denied by toolguard" in out


@pytest.mark.slow
def test_the_wheel_holds_the_package(tmp_path: Path) -> None:
    import shutil
    import zipfile

    project = ROOT / "integrations" / "pydantic-ai"
    source = tmp_path / "src"
    shutil.copytree(
        project, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
         "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    on_disk = {
        p.relative_to(project).as_posix() for p in (project / "toolguard_pydantic_ai").rglob("*.py")
    }
    assert on_disk <= names and "toolguard_pydantic_ai/py.typed" in names
    assert "Requires-Dist: pydantic-ai-slim<3,>=2.78" in metadata


def test_the_runs_store_work_never_runs_on_the_event_loop(
    guard: tg.Guard, store_writes: list[tuple[str, int]]
) -> None:
    """The task's start and end and every check are written on the guard's writer thread."""
    import threading

    seen = store_writes
    seen.clear()  # from here on
    kv = Kv()
    script = Script([[_set("call-a", "agents:jobs:42:state", "done")], "finished"])
    agent = GuardedAgent(_agent(guard_toolset(kv.tools, guard), script), guard, "process-job")

    async def main() -> int:
        await agent.run("go", deps=JOB)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert {w for w, _ in seen} >= {"task start", "request", "task end"}
    assert all(thread != loop_thread for _, thread in seen), seen
