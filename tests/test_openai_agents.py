"""toolguard for the OpenAI Agents SDK (``toolguard_openai_agents``), end to end and offline.

Real ``Agent``/``Runner`` runs with the SDK's ``ScriptedModel`` (its ``Model`` interface, no
network, no API key), real SQLite trails, real keys, real JWTs checked by a real verifier.
Skipped where the SDK (``pip install -e integrations/openai-agents``) is not installed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toolguard as tg

os.environ.setdefault("OPENAI_API_KEY", "sk-offline-test")  # never used: no network

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "openai_agents_example.py"
DOCS = ROOT / "docs" / "agents.md"
JOB = {"job_id": "42"}


def _load_sdk() -> None:
    """Import the OpenAI Agents SDK and toolguard_openai_agents into this module when its first
    test runs, not when pytest collects it: they are the slowest imports of the suite, and with
    ``make test-fast`` every worker collects every module (``--dist loadfile`` runs this
    module's tests on one of them). Skipped where the SDK is not installed."""
    if "Agent" in globals():
        return  # loaded (the helpers below call this too: other test modules import them)
    pytest.importorskip("agents")
    pytest.importorskip("toolguard_openai_agents")
    global Agent, FunctionTool, MaxTurnsExceeded, RunContextWrapper, Runner, ToolOutputText
    global UserError, WebSearchTool, function_tool, ToolCallOutputItem, ScriptedModel
    global assistant_message, function_call, GuardedRunner, guard_tools, is_guarded
    global tool_credential
    from agents import (
        Agent,
        FunctionTool,
        MaxTurnsExceeded,
        RunContextWrapper,
        Runner,
        ToolOutputText,
        UserError,
        WebSearchTool,
        function_tool,
        set_tracing_disabled,
    )
    from agents.items import ToolCallOutputItem
    from agents.testing import ScriptedModel, assistant_message, function_call
    from toolguard_openai_agents import (
        GuardedRunner,
        guard_tools,
        is_guarded,
        tool_credential,
    )

    set_tracing_disabled(True)


@pytest.fixture(scope="module", autouse=True)
def _sdk() -> None:
    _load_sdk()


# -- helpers ---------------------------------------------------------------------------------


def _close_default_loop() -> None:
    """``Runner.run_sync`` leaves the thread's default event loop open on purpose (for the SDK's
    loop-bound sessions); close it before ``asyncio.run`` replaces it, and after each test."""
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
def _close_the_sdks_loop() -> Iterator[None]:
    yield
    _close_default_loop()


class Kv:
    """Tools over a dict; each call records the credential it ran with (keyed by the key)."""

    def __init__(self) -> None:
        _load_sdk()
        self.data: dict[str, str] = {}
        self.credentials: dict[str, tg.Credential] = {}
        self.fail = False

        @function_tool
        def kv_get(key: str) -> str:
            """Read the value stored under a key."""
            self.credentials[key] = tg.current_credential()
            if self.fail:
                raise RuntimeError("the key-value service is down")
            return self.data.get(key, "")

        @function_tool
        async def kv_set(ctx: RunContextWrapper[Any], key: str, value: str) -> str:
            """Store a value under a key."""
            credential = tool_credential(ctx)
            assert credential is tg.current_credential()
            self.credentials[key] = credential
            await asyncio.sleep(0)  # let parallel calls interleave
            self.data[key] = value
            return "stored"

        self.kv_get, self.kv_set = kv_get, kv_set
        self.tools: list[FunctionTool] = [kv_get, kv_set]


def _agent(tools: list[Any], steps: list[Any], **kwargs: Any) -> Agent[Any]:
    _load_sdk()
    return Agent(
        name=kwargs.pop("name", "worker"), tools=tools, model=ScriptedModel(steps), **kwargs
    )


def _outputs(result: Any) -> dict[str, str]:
    """call_id -> the tool output the model read."""
    _load_sdk()
    return {
        item.raw_item["call_id"]: str(item.output)
        for item in result.new_items
        if isinstance(item, ToolCallOutputItem)
    }


def _set(call_id: str, key: str, value: str = "v") -> Any:
    _load_sdk()
    return function_call("kv_set", {"key": key, "value": value}, call_id=call_id)


def _get(call_id: str, key: str) -> Any:
    return function_call("kv_get", {"key": key}, call_id=call_id)


def _tasks(guard: tg.Guard) -> list[dict[str, Any]]:
    """The tasks in the order they started (the trail's order: the test clock stands still)."""
    order = [e.task_id for e in guard.audit.events() if e.kind == "task_start"]
    rows = {t["task_id"]: t for t in guard.audit.tasks(limit=None)}
    return [rows[task_id] for task_id in order]


def _events(guard: tg.Guard, kind: str) -> list[Any]:
    return [e for e in guard.audit.events() if e.kind == kind]


# -- guard_tools -----------------------------------------------------------------------------


def test_guarded_tools_keep_name_description_schema_and_strictness(guard: tg.Guard) -> None:
    @function_tool(strict_mode=False)
    def lax(key: str, limit: int = 3) -> str:
        """A tool with a non-strict schema."""
        return key

    kv = Kv()
    originals = [kv.kv_get, kv.kv_set, lax]
    guarded = guard_tools(originals, guard)
    for before, after in zip(originals, guarded):
        assert isinstance(after, FunctionTool)
        assert after is not before
        assert (after.name, after.description) == (before.name, before.description)
        assert after.params_json_schema == before.params_json_schema
        assert after.strict_json_schema == before.strict_json_schema
        assert is_guarded(after, guard) and not is_guarded(before)
    assert guarded[2].strict_json_schema is False
    single = guard_tools(kv.kv_get, guard)
    assert isinstance(single, FunctionTool) and is_guarded(single, guard)
    assert guard_tools(single, guard) is single  # guarding twice with the same guard: no-op


def test_guard_tools_refuses_what_it_cannot_guard(
    guard: tg.Guard, make_guard: Callable[..., tg.Guard], tmp_path: Path
) -> None:
    kv = Kv()
    with pytest.raises(TypeError, match="Hosted tools"):
        guard_tools([WebSearchTool()], guard)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="FunctionTool or a list"):
        guard_tools("kv_get", guard)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="on_deny"):
        guard_tools(kv.tools, guard, on_deny="ignore")  # type: ignore[arg-type]
    other = tg.Guard({**guard.config.model_dump(), "store": str(tmp_path / "other.db")})
    try:
        with pytest.raises(ValueError, match="already guarded by another Guard"):
            guard_tools(guard_tools(kv.kv_get, guard), other)
    finally:
        other.close()


def test_plain_functions_are_made_function_tools(guard: tg.Guard) -> None:
    def kv_get(key: str) -> str:
        """Read a key."""
        return f"read {key} as {tg.current_credential().identity}"

    (tool,) = guard_tools([kv_get], guard)
    assert isinstance(tool, FunctionTool) and tool.name == "kv_get"
    agent = _agent([tool], [[_get("c1", "agents:jobs:42:x")], [assistant_message("ok")]])
    result = GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
    assert _outputs(result) == {"c1": "read agents:jobs:42:x as agent-runner"}


def test_the_rule_checked_is_the_guarded_tools_own_even_when_renamed(guard: tg.Guard) -> None:
    kv = Kv()
    renamed = copy.copy(guard_tools(kv.kv_set, guard))
    renamed.name = "kv_get"  # a read rule must not cover the write this body does
    agent = _agent(
        [renamed],
        [
            [function_call("kv_get", {"key": "agents:context:x", "value": "v"}, call_id="c1")],
            [assistant_message("ok")],
        ],
    )
    result = GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
    assert _outputs(result)["c1"].startswith("Denied by toolguard: write on 'agents:context:x'")
    assert kv.data == {}
    (denied,) = _events(guard, "denied")
    assert denied.tool == "kv_set"


# -- one allowed call, end to end ------------------------------------------------------------


def test_sync_and_async_tools_get_their_call_credential_and_the_trail_matches_langchain(
    guard: tg.Guard,
) -> None:
    kv = Kv()
    agent = _agent(
        guard_tools(kv.tools, guard),
        [
            [_set("call-a", "agents:jobs:42:state", "done")],
            [_get("call-b", "agents:jobs:42:state")],
            [assistant_message("finished")],
        ],
    )
    result = asyncio.run(GuardedRunner(guard, "process-job").run(agent, "go", params=JOB))

    assert result.final_output == "finished"
    assert _outputs(result) == {"call-a": "stored", "call-b": "done"}
    verifier = guard.verifier()
    (task,) = _tasks(guard)
    for call_id, key in (("call-a", "agents:jobs:42:state"), ("call-b", "agents:jobs:42:state")):
        events = [
            e for e in guard.audit.events(task_id=task["task_id"]) if e.correlation_id == call_id
        ]
        assert [e.kind for e in events] == ["request", "outcome"]
        request, outcome = events
        assert request.decision == "allow" and request.jti and outcome.jti == request.jti
        assert outcome.outcome == "ok"
        assert kv.credentials[key].jti in {e.jti for e in guard.audit.events() if e.jti}
    # the task has ended (its credentials are revoked); the credentials as they were issued:
    for credential in kv.credentials.values():
        assert credential.identity == "agent-runner"
        assert credential.claims["sub"] == "agent-runner"
        assert credential.claims["aud"] == guard.config.issuer.audience
        assert credential.claims["task_id"] == task["task_id"]
    assert task["status"] == "ok"
    with pytest.raises(tg.CredentialRevoked):
        verifier.verify(kv.credentials["agents:jobs:42:state"].token)
    assert guard.audit.verify().ok


def test_credentials_verify_while_the_run_goes_on(guard: tg.Guard) -> None:
    verifier = guard.verifier()
    seen: list[dict[str, Any]] = []

    @function_tool
    def kv_get(key: str) -> str:
        """Read a key; the service verifies the call's credential."""
        seen.append(verifier.verify(tg.current_credential().token, operation="read", resource=key))
        return "v"

    agent = _agent(
        guard_tools([kv_get], guard), [[_get("c1", "agents:jobs:42:x")], [assistant_message("ok")]]
    )
    GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
    (claims,) = seen
    assert claims["sub"] == "agent-runner" and claims["op"] == "read"


# -- denials ---------------------------------------------------------------------------------


def test_a_denial_is_the_tools_output_and_the_run_goes_on(guard: tg.Guard) -> None:
    kv = Kv()
    model_steps = [
        [_set("c1", "agents:jobs:7:state", "hijack")],
        [_set("c2", "agents:jobs:42:state", "ok")],
        [assistant_message("done")],
    ]
    agent = _agent(guard_tools(kv.tools, guard), model_steps)
    result = GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")

    outputs = _outputs(result)
    assert outputs["c1"].startswith("Denied by toolguard: write on 'agents:jobs:7:state'")
    assert outputs["c2"] == "stored"
    assert result.final_output == "done"
    assert kv.data == {"agents:jobs:42:state": "ok"}
    (denied,) = _events(guard, "denied")
    assert denied.correlation_id == "c1" and denied.jti is None
    model: Any = agent.model
    second_input = json.dumps(model.calls[1].input, default=str)
    assert "Denied by toolguard" in second_input  # the model read it


def test_a_call_outside_any_task_is_a_denial_and_the_run_finishes(guard: tg.Guard) -> None:
    kv = Kv()
    agent = _agent(
        guard_tools(kv.tools, guard),
        [[_set("c1", "agents:jobs:42:state")], [assistant_message("could not write")]],
    )
    result = Runner.run_sync(agent, "go")  # no task, no GuardedRunner

    assert result.final_output == "could not write"
    assert _outputs(result)["c1"].startswith(
        "Denied by toolguard: tool 'kv_set' was called outside a task"
    )
    assert kv.data == {} and kv.credentials == {}
    (denied,) = _events(guard, "denied")
    assert (denied.rule, denied.correlation_id, denied.task_id) == ("task.active", "c1", None)


def test_plain_runner_inside_a_guard_task_block_works_too(guard: tg.Guard) -> None:
    kv = Kv()
    agent = _agent(
        guard_tools(kv.tools, guard), [[_set("c1", "agents:jobs:42:a")], [assistant_message("ok")]]
    )

    async def main() -> str:
        async with guard.task("process-job", job_id="42") as task:
            await Runner.run(agent, "go")
            return task.task_id

    task_id = asyncio.run(main())
    assert kv.credentials["agents:jobs:42:a"].task_id == task_id


def test_on_deny_raise_raises_policy_denied(guard: tg.Guard) -> None:
    kv = Kv()
    steps = [[_set("c1", "agents:jobs:7:state")], [assistant_message("never")]]
    runner = GuardedRunner(guard, "process-job", params=JOB)
    with pytest.raises(tg.PolicyDenied, match="agents:jobs:7:state"):
        runner.run_sync(_agent(guard_tools(kv.tools, guard, on_deny="raise"), steps), "go")
    (task,) = _tasks(guard)
    assert task["status"] == "error"
    # without the GuardedRunner the SDK wraps it: UserError caused by the PolicyDenied
    steps = [[_set("c2", "agents:jobs:7:state")], [assistant_message("never")]]

    async def main() -> None:
        async with guard.task("process-job", job_id="42"):
            await Runner.run(_agent(guard_tools(Kv().tools, guard, on_deny="raise"), steps), "go")

    _close_default_loop()
    with pytest.raises(UserError) as caught:
        asyncio.run(main())
    assert isinstance(caught.value.__cause__, tg.PolicyDenied)
    assert kv.data == {}


@pytest.mark.slow
@pytest.mark.parametrize("on_deny", ["message", "raise"])
def test_an_audit_error_always_raises_and_nothing_runs(
    make_guard: Callable[..., tg.Guard], on_deny: Any
) -> None:
    guard = make_guard(busy_timeout=0.05)
    kv = Kv()
    agent = _agent(
        guard_tools(kv.tools, guard, on_deny=on_deny),
        [[_set("c1", "agents:jobs:42:state")], [assistant_message("never")]],
    )
    runner = GuardedRunner(guard, "process-job", params=JOB)
    with pytest.raises(tg.AuditError, match="nothing ran"):
        asyncio.run(_run_with_store_locked(guard, runner, agent))
    assert kv.data == {} and kv.credentials == {}
    model: Any = agent.model
    assert len(model.calls) == 1  # the run stopped at the call: the model never read a result


async def _run_with_store_locked(guard: tg.Guard, runner: GuardedRunner, agent: Any) -> Any:
    """Start the run's task, then lock the store before the first tool call is audited."""
    # authorize runs on the guard's writer thread (aauthorize), not on this one
    locker = sqlite3.connect(guard.config.store_path, isolation_level=None, check_same_thread=False)
    original = guard.authorize

    def authorize(*args: Any, **kwargs: Any) -> Any:
        if not locker.in_transaction:
            locker.execute("BEGIN EXCLUSIVE")
        return original(*args, **kwargs)

    guard.authorize = authorize  # type: ignore[method-assign]
    try:
        return await runner.run(agent, "go")
    finally:
        del guard.authorize
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()


# -- tool errors and scrubbing ---------------------------------------------------------------


def test_a_tool_error_the_sdk_turns_into_a_message_is_recorded_as_an_error_outcome(
    guard: tg.Guard,
) -> None:
    kv = Kv()
    kv.fail = True
    agent = _agent(
        guard_tools(kv.tools, guard),
        [[_get("c1", "agents:jobs:42:x")], [assistant_message("sorry")]],
    )
    result = GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")

    assert "An error occurred while running the tool" in _outputs(result)["c1"]
    (outcome,) = _events(guard, "outcome")
    assert outcome.outcome == "error"
    assert outcome.error == "RuntimeError: the key-value service is down"
    assert _tasks(guard)[0]["status"] == "ok"


def test_a_tool_error_with_failure_handling_off_fails_the_run_and_ends_the_task(
    guard: tg.Guard,
) -> None:
    @function_tool(failure_error_function=None)
    def kv_get(key: str) -> str:
        """Read a key."""
        raise RuntimeError("boom")

    agent = _agent(
        guard_tools([kv_get], guard), [[_get("c1", "agents:jobs:42:x")], [assistant_message("x")]]
    )
    with pytest.raises(UserError, match="boom"):
        GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
    (outcome,) = _events(guard, "outcome")
    assert outcome.outcome == "error" and "boom" in (outcome.error or "")
    assert _tasks(guard)[0]["status"] == "error"


def test_the_calls_token_never_reaches_the_model(guard: tg.Guard) -> None:
    def leak_text(key: str) -> str:
        """Echo the token."""
        return f"token={tg.current_credential().token}"

    def leak_dict(key: str) -> dict[str, Any]:
        """Echo the token in a structure."""
        return {"auth": {"bearer": tg.current_credential().token}, "key": key}

    def leak_output(key: str) -> ToolOutputText:
        """Echo the token as a structured SDK output."""
        return ToolOutputText(text=tg.current_credential().token)

    def leak_error(key: str) -> str:
        """Fail with the token in the message."""
        raise RuntimeError(f"rejected {tg.current_credential().token}")

    quoting = function_tool(leak_error, failure_error_function=lambda ctx, e: f"error: {e}")
    tools = [function_tool(f) for f in (leak_text, leak_dict, leak_output)] + [quoting]
    config = copy.deepcopy(guard.config.model_dump())
    for name in ("leak_text", "leak_dict", "leak_output", "leak_error"):
        config["tools"][name] = {"operation": "read", "resource": "{key}"}
    config["intents"]["process-job"]["tools"] += [
        "leak_text",
        "leak_dict",
        "leak_output",
        "leak_error",
    ]
    leaky = tg.Guard(config)
    try:
        steps = [
            [
                function_call(name, {"key": "agents:jobs:42:x"}, call_id=f"c-{name}")
                for name in ("leak_text", "leak_dict", "leak_output", "leak_error")
            ],
            [assistant_message("done")],
        ]
        agent = _agent(guard_tools(tools, leaky), steps)
        result = GuardedRunner(leaky, "process-job", params=JOB).run_sync(agent, "go")
        model: Any = agent.model
        seen_by_model = json.dumps(model.calls[1].input, default=str)
        outputs = _outputs(result)
        assert seen_by_model.count("[REDACTED]") >= 4
        assert "eyJ" not in seen_by_model and not any("eyJ" in o for o in outputs.values())
        errors = [e.error for e in leaky.audit.events() if e.kind == "outcome" and e.error]
        assert errors and all("eyJ" not in e for e in errors)
    finally:
        leaky.close()


def test_an_encoded_token_or_one_an_error_hides_never_reaches_the_model(guard: tg.Guard) -> None:
    import base64

    seen: list[str] = []

    class Rejected(Exception):
        def __init__(self, token: str) -> None:
            super().__init__()
            self.token = token

        def __str__(self) -> str:  # the token is in neither args nor the message text given
            return f"rejected {self.token}"

    def leak_b64(key: str) -> str:
        """Echo the token, base64-encoded as in a Basic header."""
        token = tg.current_credential().token
        seen.append(token)
        return base64.b64encode(f"Bearer {token}".encode()).decode()

    def leak_str(key: str) -> str:
        """Fail with an exception whose text shows the token."""
        token = tg.current_credential().token  # its own: the SDK runs both tools at once
        seen.append(token)
        raise Rejected(token)

    quoting = function_tool(leak_str, failure_error_function=lambda ctx, e: f"error: {e}")
    config = copy.deepcopy(guard.config.model_dump())
    for name in ("leak_b64", "leak_str"):
        config["tools"][name] = {"operation": "read", "resource": "{key}"}
    config["intents"]["process-job"]["tools"] += ["leak_b64", "leak_str"]
    leaky = tg.Guard(config)
    try:
        steps = [
            [
                function_call(name, {"key": "agents:jobs:42:x"}, call_id=f"c-{name}")
                for name in ("leak_b64", "leak_str")
            ],
            [assistant_message("done")],
        ]
        agent = _agent(guard_tools([function_tool(leak_b64), quoting], leaky), steps)
        GuardedRunner(leaky, "process-job", params=JOB).run_sync(agent, "go")
        model: Any = agent.model
        seen_by_model = json.dumps(model.calls[1].input, default=str)
        assert len(seen) == 2
        for token in seen:
            encoded = base64.b64encode(f"Bearer {token}".encode()).decode()
            assert token not in seen_by_model and encoded not in seen_by_model
        assert seen_by_model.count("[REDACTED]") >= 2
    finally:
        leaky.close()


# -- the run is a task -----------------------------------------------------------------------


def test_the_run_ends_its_task_however_it_ends(guard: tg.Guard) -> None:
    runner = GuardedRunner(guard, "process-job", params=JOB)
    kv = Kv()
    tools = guard_tools(kv.tools, guard)

    # finished
    runner.run_sync(
        _agent(tools, [[_set("c1", "agents:jobs:42:a")], [assistant_message("ok")]]), "go"
    )
    # raised by the model
    with pytest.raises(RuntimeError, match="provider down"):
        runner.run_sync(
            _agent(tools, [[_set("c2", "agents:jobs:42:b")], RuntimeError("provider down")]), "go"
        )
    # max turns exceeded
    looping = [[_set(f"m{i}", "agents:jobs:42:c")] for i in range(5)]
    with pytest.raises(MaxTurnsExceeded):
        runner.run_sync(_agent(tools, looping), "go", max_turns=2)

    # cancelled while a tool runs
    started = asyncio.Event()

    @function_tool
    async def kv_get(key: str) -> str:
        """Hang until cancelled."""
        started.set()
        await asyncio.sleep(3600)
        return "never"

    hanging = _agent(
        guard_tools([kv_get], guard), [[_get("c3", "agents:jobs:42:d")], [assistant_message("x")]]
    )

    async def cancel_midway() -> None:
        run = asyncio.ensure_future(runner.run(hanging, "go"))
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    _close_default_loop()
    asyncio.run(cancel_midway())

    statuses = [t["status"] for t in _tasks(guard)]
    assert statuses == ["ok", "error", "error", "cancelled"]
    assert runner.active_tasks == []
    verifier = guard.verifier()
    for credential in kv.credentials.values():
        with pytest.raises(tg.CredentialRevoked):
            verifier.verify(credential.token)
    reasons = {e.outcome: e.reason for e in _events(guard, "task_end")}
    assert reasons["error"] in (
        "the agent run raised RuntimeError",
        "the agent run raised MaxTurnsExceeded",
    )
    assert reasons["cancelled"] == "the agent run was cancelled"
    (hung,) = [e for e in _events(guard, "outcome") if e.correlation_id == "c3"]
    assert hung.outcome == "error" and "CancelledError" in (hung.error or "")


def test_run_streamed_is_one_task_ended_when_the_stream_ends(guard: tg.Guard) -> None:
    runner = GuardedRunner(guard, "process-job", params=JOB)
    kv = Kv()
    tools = guard_tools(kv.tools, guard)

    async def main() -> None:
        ok = runner.run_streamed(
            _agent(tools, [[_set("s1", "agents:jobs:42:a")], [assistant_message("ok")]]), "go"
        )
        assert len(runner.active_tasks) == 1
        async for _ in ok.stream_events():
            pass
        await asyncio.sleep(0)  # the run loop's done-callback
        assert ok.final_output == "ok"

        looping = [[_set(f"l{i}", "agents:jobs:42:b")] for i in range(4)]
        failing = runner.run_streamed(_agent(tools, looping), "go", max_turns=2)
        with pytest.raises(MaxTurnsExceeded):
            async for _ in failing.stream_events():
                pass
        await asyncio.sleep(0)

        endless = [[_set(f"e{i}", "agents:jobs:42:c")] for i in range(20)]
        cancelled = runner.run_streamed(_agent(tools, endless), "go")
        async for event in cancelled.stream_events():
            if event.type == "run_item_stream_event" and event.name == "tool_output":
                cancelled.cancel()
        assert cancelled.run_loop_task is not None
        await asyncio.gather(cancelled.run_loop_task, return_exceptions=True)
        await asyncio.sleep(0)
        await guard.offload(lambda: None)  # the ends are written on the writer thread

    asyncio.run(main())
    assert [t["status"] for t in _tasks(guard)] == ["ok", "error", "cancelled"]
    assert runner.active_tasks == []
    assert kv.data["agents:jobs:42:a"] == "v"


def test_arun_streamed_writes_the_task_start_and_end_off_the_event_loop(
    guard: tg.Guard, store_writes: list[tuple[str, int]]
) -> None:
    """Issue 15: ``arun_streamed`` writes the task's start on the guard's writer thread, and
    the end (from the run loop's done-callback) goes there too; nothing runs on the loop."""
    writes = store_writes
    writes.clear()  # from here on
    runner = GuardedRunner(guard, "process-job", params=JOB)
    kv = Kv()
    tools = guard_tools(kv.tools, guard)

    async def main() -> int:
        ok = await runner.arun_streamed(
            _agent(tools, [[_set("s1", "agents:jobs:42:a")], [assistant_message("ok")]]), "go"
        )
        assert len(runner.active_tasks) == 1
        async for _ in ok.stream_events():
            pass
        assert ok.run_loop_task is not None
        await asyncio.gather(ok.run_loop_task, return_exceptions=True)
        await asyncio.sleep(0)  # the run loop's done-callback
        await guard.offload(lambda: None)  # after the end it submitted
        assert ok.final_output == "ok"
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert [t["status"] for t in _tasks(guard)] == ["ok"]
    assert runner.active_tasks == []
    assert len(writes) >= 3  # task start, the call, task end
    assert loop_thread not in {thread for _, thread in writes}, writes


def test_params_come_from_the_runner_the_call_and_the_context(guard: tg.Guard) -> None:
    class JobContext:
        job_id = "42"

    kv = Kv()
    tools = guard_tools(kv.tools, guard)
    runner = GuardedRunner(guard, "process-job")
    with pytest.raises(tg.ConfigError, match="needs the task parameter"):
        runner.run_sync(_agent(tools, [[assistant_message("x")]]), "go")
    assert _tasks(guard) == []
    runner.run_sync(
        _agent(tools, [[_set("c1", "agents:jobs:42:a")], [assistant_message("ok")]]),
        "go",
        context=JobContext(),
    )
    runner.run_sync(
        _agent(tools, [[_set("c2", "agents:jobs:42:b")], [assistant_message("ok")]]),
        "go",
        context={"job_id": "42"},
    )
    assert set(kv.data) == {"agents:jobs:42:a", "agents:jobs:42:b"}
    with pytest.raises(tg.ConfigError, match="not defined"):
        GuardedRunner(guard, "no-such-intent")
    with pytest.raises(tg.ConfigError, match="not defined"):
        GuardedRunner(guard, "process-job", handoff_intents={"x": "nope"})


def test_the_callers_run_hooks_still_run(guard: tg.Guard) -> None:
    from agents import RunHooks

    seen: list[str] = []

    class Hooks(RunHooks[Any]):
        async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
            seen.append(f"tool:{tool.name}")

        async def on_handoff(self, context: Any, from_agent: Any, to_agent: Any) -> None:
            seen.append(f"handoff:{to_agent.name}")

    kv = Kv()
    tools = guard_tools(kv.tools, guard)
    helper = _agent(tools, [[assistant_message("done")]], name="helper")
    agent = _agent(
        tools,
        [[_set("c1", "agents:jobs:42:a")], [function_call("transfer_to_helper", {}, call_id="h1")]],
        handoffs=[helper],
    )
    GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go", hooks=Hooks())
    assert seen == ["tool:kv_set", "handoff:helper"]
    from agents import AgentHooks

    with pytest.raises(TypeError, match="hooks= must be RunHooks"):
        GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go", hooks=AgentHooks())
    assert all(t["status"] == "ok" for t in _tasks(guard))  # no task left behind


# -- handoffs are delegations ----------------------------------------------------------------


def _wide_guard(make_guard: Callable[..., tg.Guard], clock: Any) -> tg.Guard:
    from conftest import BASE_CONFIG

    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["read-everything"] = {
        "identity": "summariser",
        "tools": ["kv_get"],
        "allow": {"read": ["agents:*"]},
    }
    return make_guard(clock=clock, intents=intents)


def test_a_handoff_delegates_a_narrower_task_with_the_act_chain(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    guard = _wide_guard(make_guard, clock)
    kv = Kv()
    kv_get, kv_set = guard_tools(kv.tools, guard)
    summariser = _agent(
        [kv_get],
        [
            [_get("s1", "agents:jobs:42:state")],
            [_get("s2", "agents:context:x")],
            [assistant_message("summary")],
        ],
        name="summariser",
    )
    helper = _agent(
        [kv_get, kv_set],
        [
            [_set("h2", "agents:jobs:42:helper")],
            [function_call("transfer_to_summariser", {}, call_id="h3")],
        ],
        name="helper",
        handoffs=[summariser],
    )
    worker = _agent(
        [kv_set],
        [
            [_set("w1", "agents:jobs:42:state", "done")],
            [function_call("transfer_to_helper", {}, call_id="h1")],
        ],
        handoffs=[helper],
    )
    runner = GuardedRunner(
        guard, "process-job", params=JOB, handoff_intents={"summariser": "summarise-job"}
    )
    result = runner.run_sync(worker, "go")

    assert result.final_output == "summary"
    outputs = _outputs(result)
    assert outputs["s1"] == "done"
    assert outputs["s2"].startswith("Denied by toolguard")  # outside summarise-job
    root, helper_task, summary_task = _tasks(guard)
    assert (root["intent"], helper_task["intent"], summary_task["intent"]) == (
        "process-job",
        "process-job",
        "summarise-job",
    )
    assert helper_task["parent_id"] == root["task_id"]
    assert summary_task["parent_id"] == helper_task["task_id"]
    assert {t["status"] for t in (root, helper_task, summary_task)} == {"ok"}
    helper_credential = kv.credentials["agents:jobs:42:helper"]
    assert helper_credential.task_id == helper_task["task_id"]
    claims = kv.credentials["agents:jobs:42:state"].claims  # the summariser's read (last)
    assert claims["sub"] == "summariser"
    assert claims["act"]["sub"] == "agent-runner"
    assert claims["act"]["task_id"] == helper_task["task_id"]
    assert claims["act"]["act"]["task_id"] == root["task_id"]


@pytest.mark.parametrize("on_deny", ["message", "raise"])
def test_a_wider_handoff_is_refused(
    make_guard: Callable[..., tg.Guard], clock: Any, on_deny: Any
) -> None:
    guard = _wide_guard(make_guard, clock)
    kv = Kv()
    kv_get, kv_set = guard_tools(kv.tools, guard)
    auditor = _agent(
        [kv_get],
        [[_get("a1", "agents:jobs:42:state")], [assistant_message("read it all")]],
        name="auditor",
    )
    worker = _agent(
        [kv_set], [[function_call("transfer_to_auditor", {}, call_id="h1")]], handoffs=[auditor]
    )
    runner = GuardedRunner(
        guard,
        "process-job",
        params=JOB,
        handoff_intents={"auditor": "read-everything"},
        on_deny=on_deny,
    )
    if on_deny == "raise":
        with pytest.raises(tg.PolicyDenied, match="the handoff to agent 'auditor' was refused"):
            runner.run_sync(worker, "go")
    else:
        result = runner.run_sync(worker, "go")
        assert _outputs(result)["a1"] == (
            "Denied by toolguard: the handoff to agent 'auditor' was refused: delegation to "
            "intent 'read-everything' refused: "
            + _outputs(result)["a1"].split(
                "refused: delegation to intent 'read-everything' refused: ", 1
            )[1]
        )
        assert "wider" in _outputs(result)["a1"]
    assert kv.credentials == {}
    refusal = [
        e for e in _events(guard, "denied") if e.rule == "intents.read-everything.delegation"
    ]
    assert len(refusal) == 1
    later = [e for e in _events(guard, "denied") if e.correlation_id == "a1"]
    assert [e.rule for e in later] == (["task.active"] if on_deny == "message" else [])
    (root,) = _tasks(guard)
    assert root["status"] == ("error" if on_deny == "raise" else "ok")


# -- parallel calls --------------------------------------------------------------------------


def test_parallel_calls_each_get_their_own_decision_and_credential(guard: tg.Guard) -> None:
    kv = Kv()
    calls = [_set(f"p{i}", f"agents:jobs:42:k{i}") for i in range(7)]
    agent = _agent(guard_tools(kv.tools, guard), [calls, [assistant_message("done")]])
    result = asyncio.run(GuardedRunner(guard, "process-job", params=JOB).run(agent, "go"))

    outputs = _outputs(result)
    allowed = [c for c, o in outputs.items() if o == "stored"]
    denied = [c for c, o in outputs.items() if o.startswith("Denied by toolguard")]
    assert len(allowed) == 5 and len(denied) == 2  # per_tool: {kv_set: 5}, exactly
    requests = _events(guard, "request")
    assert sorted(e.correlation_id for e in requests) == sorted(allowed)
    assert len({e.jti for e in requests}) == 5
    assert len({c.jti for c in kv.credentials.values()}) == 5
    for event in _events(guard, "denied"):
        assert event.rule == "budget.per_tool" or "budget" in (event.rule or "")


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

    @function_tool(strict_mode=False)
    def kv_get(key: Any = None) -> str:
        """Read a key."""
        ran.append(str(key))
        return "v"

    agent = _agent(
        guard_tools([kv_get], guard),
        [[function_call("kv_get", raw, call_id="c1")], [assistant_message("ok")]],
    )
    GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
    for key in ran:  # whatever ran was allowed by the policy for this job
        assert key.startswith(("agents:jobs:42:", "agents:context:")), key
    if ran:
        assert _events(guard, "request")[-1].correlation_id == "c1"


def test_a_hand_made_tool_runs_on_exactly_the_arguments_that_were_checked(
    guard: tg.Guard,
) -> None:
    """A ``FunctionTool`` with its own argument parser: it keeps the first of two repeated keys
    (``json`` keeps the last, and the policy reads what ``json`` reads) and reads comments. The
    model's text is never handed to it as it came: it gets the checked object written out
    again, so a key the policy never saw cannot reach it."""
    ran: list[Any] = []

    def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            out.setdefault(key, value)
        return out

    async def invoke(ctx: Any, input: str) -> str:
        text = "\n".join(line.split("//")[0] for line in input.splitlines())
        ran.append(json.loads(text, object_pairs_hook=first_wins).get("key"))
        return "v"

    kv_get = FunctionTool(
        name="kv_get",
        description="Read a key.",
        params_json_schema={"type": "object", "properties": {"key": {"type": "string"}}},
        on_invoke_tool=invoke,
        strict_json_schema=False,
    )
    smuggled = '{"key": "agents:jobs:7:secret", "key": "agents:jobs:42:x"}'
    agent = _agent(
        guard_tools([kv_get], guard),
        [[function_call("kv_get", smuggled, call_id="c1")], [assistant_message("ok")]],
    )
    GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
    assert ran == ["agents:jobs:42:x"]  # the value the policy allowed, not the first one
    request = _events(guard, "request")[-1]
    assert request.decision == "allow" and "agents:jobs:7" not in str(request.resources)


# -- the example and the docs ----------------------------------------------------------------


@pytest.mark.slow
def test_the_example_runs_offline() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, env=env,
        cwd=ROOT / "examples",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "call-2 (worker): stored" in out
    assert "call-3 (worker): Denied by toolguard: write on 'agents:jobs:7:state'" in out
    assert "call-5 (summariser): processed" in out
    assert "sub=summariser, acting for agent-runner" in out
    assert "task -> error" in out and "is revoked" in out
    assert "audit chain verifies: True; tasks still running: 0" in out
    assert "eyJ" not in out


def _section_blocks() -> list[str]:
    text = DOCS.read_text()
    start = text.index("## OpenAI Agents SDK")
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
    namespace: dict[str, Any] = {"__name__": "docs_openai_agents"}
    try:
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"{DOCS.name} openai block {number}", "exec"), namespace)
    finally:
        if isinstance(namespace.get("guard"), tg.Guard):
            namespace["guard"].close()
    out = capsys.readouterr().out
    assert "Denied by toolguard" in out


def test_a_guarded_run_inside_a_guarded_tool_is_delegated_from_the_callers_task(
    guard: tg.Guard,
) -> None:
    inner_kv = Kv()
    inner_tools = guard_tools(inner_kv.tools, guard)
    sub_runner = GuardedRunner(guard, "summarise-job")  # job_id comes from the parent task

    @function_tool
    async def kv_get(key: str) -> str:
        """Ask a sub-agent to read the key."""
        sub = _agent(
            inner_tools, [[_get("sub-1", key)], [_set("sub-2", key)], [assistant_message("read")]]
        )
        return str((await sub_runner.run(sub, "read it")).final_output)

    outer = _agent(
        guard_tools([kv_get], guard), [[_get("c1", "agents:jobs:42:x")], [assistant_message("ok")]]
    )
    asyncio.run(GuardedRunner(guard, "process-job", params=JOB).run(outer, "go"))

    parent, child = _tasks(guard)
    assert (parent["intent"], child["intent"]) == ("process-job", "summarise-job")
    assert child["parent_id"] == parent["task_id"] and child["status"] == "ok"
    claims = inner_kv.credentials["agents:jobs:42:x"].claims
    assert claims["sub"] == "summariser" and claims["act"]["task_id"] == parent["task_id"]
    assert inner_kv.data == {}  # kv_set is outside summarise-job
    (denied,) = _events(guard, "denied")
    assert denied.correlation_id == "sub-2" and denied.task_id == child["task_id"]


@pytest.mark.slow
def test_the_wheel_holds_the_package(tmp_path: Path) -> None:
    import shutil
    import zipfile

    project = ROOT / "integrations" / "openai-agents"
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
        p.relative_to(project).as_posix()
        for p in (project / "toolguard_openai_agents").rglob("*.py")
    }
    assert on_disk <= names and "toolguard_openai_agents/py.typed" in names
    assert "Requires-Dist: openai-agents<1,>=0.24" in metadata


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
    openai_guard = make_guard(clock=clock, store=str(tmp_path / "openai.db"))
    langchain_guard = make_guard(clock=clock, store=str(tmp_path / "langchain.db"))
    kv = Kv()
    agent = _agent(
        guard_tools([kv.kv_get], openai_guard),
        [
            [_get("c1", "agents:jobs:42:x"), _get("c2", "agents:jobs:7:x")],
            [assistant_message("ok")],
        ],
    )
    GuardedRunner(openai_guard, "process-job", params=JOB).run_sync(agent, "go")

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

    assert sorted(shape(openai_guard), key=str) == sorted(shape(langchain_guard), key=str)
    assert {e[0] for e in shape(openai_guard)} == {"request", "outcome", "denied"}


def test_the_runs_store_work_never_runs_on_the_event_loop(
    guard: tg.Guard, store_writes: list[tuple[str, int]]
) -> None:
    """The task's start and end and every check are written on the guard's writer thread."""
    import threading

    seen = store_writes
    seen.clear()  # from here on
    kv = Kv()
    agent = _agent(
        guard_tools(kv.tools, guard),
        [[_set("call-a", "agents:jobs:42:state", "done")], [assistant_message("finished")]],
    )

    async def main() -> int:
        await GuardedRunner(guard, "process-job").run(agent, "go", params=JOB)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert {w for w, _ in seen} >= {"task start", "request", "task end"}
    assert all(thread != loop_thread for _, thread in seen), seen
