"""Tests for toolguard.tools: ``guard()`` / ``GuardedTool`` around LangChain tools."""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForToolRun, Callbacks
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, ToolException, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, ValidationError

import toolguard as tg

JOB_KEY = "agents:jobs:42:input"
OUT_KEY = "agents:jobs:42:result"
OTHER_KEY = "agents:jobs:43:result"


def _call(name: str, args: dict[str, Any], call_id: str = "call-1") -> dict[str, Any]:
    return {"type": "tool_call", "id": call_id, "name": name, "args": args}


def _kinds(guard: tg.Guard, task_id: str) -> list[str]:
    return [e.kind for e in guard.audit.events(task_id=task_id)]


class _Counter(BaseCallbackHandler):
    """Counts LangChain's tool callbacks."""

    def __init__(self) -> None:
        self.starts = 0
        self.ends = 0
        self.errors = 0

    def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_tool_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends += 1

    def on_tool_error(self, *args: Any, **kwargs: Any) -> None:
        self.errors += 1


# -- the tools under test: every kind LangChain has ------------------------------------------


@tool
def kv_get(key: str, credential: Annotated[tg.Credential, InjectedToolArg]) -> str:
    """Read the value stored under a key."""
    return f"{key}|{credential.jti}|{tg.current_credential().jti}"


@tool
def kv_set(key: str, value: str) -> str:
    """Store a value under a key."""
    cred = tg.current_credential()
    return f"set {key}={value} {cred.operation} {list(cred.resources)}"


async def _get_async(key: str, credential: Annotated[tg.Credential, InjectedToolArg]) -> str:
    """Read a key, natively async."""
    await asyncio.sleep(0)
    return f"{key}|{credential.jti}|{threading.get_ident()}"


kv_get_async = StructuredTool.from_function(coroutine=_get_async, name="kv_get_async")


def _get(key: str) -> str:
    return f"structured {key} {tg.current_credential().operation}"


structured_get = StructuredTool.from_function(
    func=_get, name="kv_get", description="Read a key (StructuredTool)."
)


class _KVGetArgs(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    key: str
    credential: Annotated[tg.Credential, InjectedToolArg]


class KVGetTool(BaseTool):
    """A BaseTool subclass with an explicit args schema and an injected credential."""

    name: str = "kv_get"
    description: str = "Read a key (BaseTool subclass)."
    args_schema: type[BaseModel] = _KVGetArgs

    def _run(
        self,
        key: str,
        credential: tg.Credential,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> str:
        assert run_manager is not None
        return f"subclass {key} {credential.jti}"


async_get = StructuredTool.from_function(
    coroutine=_get_async, name="kv_get", description="Read a key, natively async."
)

ALL_KINDS: list[Any] = [
    pytest.param(kv_get, id="tool-decorator"),
    pytest.param(structured_get, id="structured-tool"),
    pytest.param(KVGetTool(), id="basetool-subclass"),
    pytest.param(async_get, id="async-structured"),
]


# -- wrapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ALL_KINDS)
def test_guard_keeps_name_description_and_schemas(guard: tg.Guard, inner: BaseTool) -> None:
    guarded = tg.guard(inner, guard)

    assert isinstance(guarded, tg.GuardedTool)
    assert isinstance(guarded, BaseTool)
    assert guarded.name == inner.name
    assert guarded.description == inner.description
    assert guarded.args_schema is inner.args_schema
    assert (
        guarded.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
        == inner.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
    )
    assert guarded.args == inner.args
    assert convert_to_openai_tool(guarded) == convert_to_openai_tool(inner)


@pytest.mark.parametrize(
    "inner", [pytest.param(kv_get, id="decorator"), pytest.param(KVGetTool(), id="subclass")]
)
def test_injected_credential_hidden_from_model_schema(guard: tg.Guard, inner: BaseTool) -> None:
    guarded = tg.guard(inner, guard)
    model_schema = guarded.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
    assert list(model_schema["properties"]) == ["key"]
    assert "credential" not in str(convert_to_openai_tool(guarded))


def test_guard_list_in_list_out_and_one_in_one_out(guard: tg.Guard) -> None:
    many = tg.guard([kv_get, kv_set], guard)
    assert isinstance(many, list)
    assert [t.name for t in many] == ["kv_get", "kv_set"]
    one = tg.guard(kv_set, guard)
    assert isinstance(one, tg.GuardedTool)
    wrapped = guard.wrap([kv_set])
    assert [t.wrapped for t in wrapped] == [kv_set]


def test_guard_is_idempotent_for_the_same_guard(guard: tg.Guard) -> None:
    once = tg.guard(kv_set, guard)
    assert tg.guard(once, guard) is once


def test_guard_refuses_tool_guarded_by_another_guard(
    guard: tg.Guard, make_guard: Callable[..., tg.Guard]
) -> None:
    other = make_guard(store="other.db")
    with pytest.raises(ValueError, match="already guarded by another Guard"):
        tg.guard(tg.guard(kv_set, guard), other)


def test_guard_refuses_plain_functions(guard: tg.Guard) -> None:
    def plain(key: str) -> str:
        return key

    with pytest.raises(TypeError, match=r"Decorate functions with @tool first"):
        tg.guard([plain], guard)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="takes a LangChain BaseTool or a list"):
        tg.guard("kv_get", guard)  # type: ignore[arg-type]


def test_guard_refuses_unknown_on_deny(guard: tg.Guard) -> None:
    with pytest.raises(ValueError, match="on_deny must be 'message' or 'raise'"):
        tg.guard(kv_set, guard, on_deny="ignore")  # type: ignore[call-overload]


def test_guard_keeps_return_direct_and_response_format(guard: tg.Guard) -> None:
    @tool(return_direct=True, response_format="content_and_artifact")
    def kv_dump(key: str) -> tuple[str, dict[str, str]]:
        """Dump a key with an artifact."""
        return f"dumped {key}", {"key": key}

    guarded = tg.guard(kv_dump, guard)
    assert guarded.return_direct is True
    assert guarded.response_format == "content_and_artifact"


# -- running: every kind of tool, sync and async ---------------------------------------------


@pytest.mark.parametrize("inner", ALL_KINDS[:3])
def test_guarded_sync_tools_run_with_credential(guard: tg.Guard, inner: BaseTool) -> None:
    guarded = tg.guard(inner, guard)
    with guard.task("process-job", job_id="42") as task:
        result = guarded.invoke({"key": JOB_KEY})

    (request,) = [e for e in guard.audit.events(task_id=task.task_id) if e.kind == "request"]
    assert JOB_KEY in result
    assert request.tool == "kv_get"
    assert request.resources == (JOB_KEY,)
    if "structured" not in result:
        assert request.jti in result
    assert _kinds(guard, task.task_id) == ["task_start", "request", "outcome", "task_end"]


@pytest.mark.parametrize("inner", ALL_KINDS)
def test_guarded_tools_run_through_ainvoke(guard: tg.Guard, inner: BaseTool) -> None:
    """Async tools natively, sync tools (StructuredTool, subclass) through ``ainvoke`` too."""
    guarded = tg.guard(inner, guard)

    async def main() -> str:
        async with guard.task("process-job", job_id="42") as task:
            result = await guarded.ainvoke({"key": JOB_KEY})
        assert _kinds(guard, task.task_id) == ["task_start", "request", "outcome", "task_end"]
        return str(result)

    assert JOB_KEY in asyncio.run(main())


def test_async_tool_runs_natively_on_the_loop_thread(guard: tg.Guard) -> None:
    guarded = tg.guard(async_get, guard)

    async def main() -> tuple[str, int]:
        with guard.task("process-job", job_id="42"):
            return str(await guarded.ainvoke({"key": JOB_KEY})), threading.get_ident()

    result, loop_thread = asyncio.run(main())
    assert result.endswith(f"|{loop_thread}")


def test_sync_tool_through_ainvoke_gets_task_and_credential(guard: tg.Guard) -> None:
    seen: dict[str, Any] = {}

    @tool
    def kv_get(key: str, credential: Annotated[tg.Credential, InjectedToolArg]) -> str:
        """Read a key."""
        seen["thread"] = threading.get_ident()
        seen["task"] = tg.current_task()
        seen["same"] = tg.current_credential() is credential
        return "ok"

    guarded = tg.guard(kv_get, guard)

    async def main() -> tuple[tg.TaskSession, int]:
        with guard.task("process-job", job_id="42") as task:
            assert await guarded.ainvoke({"key": JOB_KEY}) == "ok"
        return task, threading.get_ident()

    task, loop_thread = asyncio.run(main())
    assert seen["thread"] != loop_thread  # it ran in LangChain's executor
    assert seen["task"] is task
    assert seen["same"] is True


def test_tool_gets_config_and_run_manager(guard: tg.Guard) -> None:
    seen: dict[str, Any] = {}

    @tool
    def kv_get(key: str, config: RunnableConfig) -> str:
        """Read a key."""
        seen["metadata"] = config.get("metadata", {})
        return "ok"

    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42"):
        guarded.invoke({"key": JOB_KEY}, config={"metadata": {"run": "r-1"}})
    assert seen["metadata"]["run"] == "r-1"


# -- credentials reach the tool --------------------------------------------------------------


def test_model_supplied_credential_is_overwritten(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task:
        result = guarded.invoke(
            _call("kv_get", {"key": JOB_KEY, "credential": "eyJhbGciOiJub25lIn0.e30."})
        )

    (request,) = [e for e in guard.audit.events(task_id=task.task_id) if e.kind == "request"]
    assert isinstance(result, ToolMessage)
    assert result.status == "success"
    assert result.content == f"{JOB_KEY}|{request.jti}|{request.jti}"
    assert request.args is not None and "credential" not in request.args


def test_credential_claims_match_the_call(guard: tg.Guard) -> None:
    captured: list[tg.Credential] = []

    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value."""
        captured.append(tg.current_credential())
        return "ok"

    guarded = tg.guard(kv_set, guard)
    with guard.task("process-job", job_id="42") as task:
        guarded.invoke({"key": OUT_KEY, "value": "v"})
        (cred,) = captured
        claims = guard.verifier(audience="kv-service").verify(
            cred.token, operation="write", resource=OUT_KEY
        )

    assert claims["sub"] == "agent-runner"
    assert claims["task_id"] == task.task_id
    assert claims["intent"] == "process-job"
    assert claims["tool"] == "kv_set"
    assert claims["op"] == "write"
    assert claims["res"] == [OUT_KEY]
    assert claims["exp"] - claims["iat"] <= 300
    assert cred.expires_at <= task.deadline


def test_httpx_credential_auth_sends_the_call_credential(guard: tg.Guard) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json={"value": "v"})

    @tool
    def kv_get(key: str) -> str:
        """Read a key over HTTP."""
        transport = httpx.MockTransport(handler)
        with httpx.Client(auth=tg.CredentialAuth(), transport=transport) as client:
            return str(client.get(f"http://kv.local/kv/{key}").json()["value"])

    guarded = tg.guard(kv_get, guard)
    verifier = guard.verifier(audience="kv-service")
    with guard.task("process-job", job_id="42"):
        assert guarded.invoke({"key": JOB_KEY}) == "v"
        (header,) = seen
        scheme, token = header.split(" ")
        assert scheme == "Bearer"
        assert verifier.verify(token, operation="read", resource=JOB_KEY)["tool"] == "kv_get"


def test_credential_auth_outside_a_guarded_call_refuses() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    with (
        httpx.Client(auth=tg.CredentialAuth(), transport=transport) as client,
        pytest.raises(tg.CredentialError, match="no guarded tool call is running"),
    ):
        client.get("http://kv.local/kv/x")


def test_current_credential_outside_a_call_raises(guard: tg.Guard) -> None:
    with (
        guard.task("process-job", job_id="42"),
        pytest.raises(tg.CredentialError, match="works only inside a tool wrapped"),
    ):
        tg.current_credential()


def test_each_call_gets_its_own_credential(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42"):
        first = guarded.invoke({"key": JOB_KEY}).split("|")[1]
        second = guarded.invoke({"key": JOB_KEY}).split("|")[1]
    assert first != second


# -- denials -----------------------------------------------------------------------------------


def test_denial_is_tool_message_with_status_error(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_set, guard)
    with guard.task("process-job", job_id="42") as task:
        message = guarded.invoke(_call("kv_set", {"key": OTHER_KEY, "value": "v"}, "call-9"))
        # The run goes on: the next call is allowed.
        allowed = guarded.invoke(_call("kv_set", {"key": OUT_KEY, "value": "v"}, "call-10"))

    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert message.tool_call_id == "call-9"
    assert message.content == (
        "Denied by toolguard: write on 'agents:jobs:43:result' is outside what this task may do "
        "(intent 'process-job' allows write only on 'agents:jobs:42:*')"
    )
    assert allowed.status == "success"
    denied = [e for e in guard.audit.events(task_id=task.task_id) if e.kind == "denied"]
    assert [(e.rule, e.correlation_id) for e in denied] == [
        ("intents.process-job.allow.write", "call-9")
    ]


def test_denial_without_tool_call_returns_text(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_set, guard)
    with guard.task("process-job", job_id="42"):
        result = guarded.invoke({"key": OTHER_KEY, "value": "v"})
    assert isinstance(result, str)
    assert result.startswith("Denied by toolguard: write on 'agents:jobs:43:result'")


def test_denial_does_not_run_the_tool(guard: tg.Guard) -> None:
    ran: list[str] = []

    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value."""
        ran.append(key)
        return "ok"

    guarded = tg.guard(kv_set, guard)
    with guard.task("process-job", job_id="42"):
        guarded.invoke({"key": OTHER_KEY, "value": "v"})
    assert ran == []


def test_on_deny_raise_raises_policy_denied(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_set, guard, on_deny="raise")
    with (
        guard.task("process-job", job_id="42") as task,
        pytest.raises(tg.PolicyDenied, match="outside what this task may do") as info,
    ):
        guarded.invoke(_call("kv_set", {"key": OTHER_KEY, "value": "v"}))

    assert info.value.rule == "intents.process-job.allow.write"
    assert info.value.tool == "kv_set"
    assert info.value.task_id == task.task_id
    assert "denied" in _kinds(guard, task.task_id)


def test_no_active_task_is_a_denial(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_set, guard)
    message = guarded.invoke(_call("kv_set", {"key": OUT_KEY, "value": "v"}))
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert "was called outside a task" in str(message.content)

    with pytest.raises(tg.NoActiveTask, match="outside a task"):
        tg.guard(kv_set, guard, on_deny="raise").invoke({"key": OUT_KEY, "value": "v"})

    (event, _) = guard.audit.events(kind="denied")
    assert event.task_id is None
    assert event.rule == "task.active"


def test_missing_template_argument_is_a_denial(guard: tg.Guard) -> None:
    """The rule names its resource ``{key}``, but this tool's argument is ``name``."""
    ran: list[str] = []

    @tool
    def kv_get(name: str) -> str:
        """Read a key by another argument name."""
        ran.append(name)
        return "ok"

    guarded = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task:
        message = guarded.invoke(_call("kv_get", {"name": JOB_KEY}))

    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert message.content == (
        "Denied by toolguard: tool 'kv_get' needs the argument 'key' to name its resource"
    )
    assert ran == []
    (denied,) = guard.audit.events(task_id=task.task_id, kind="denied")
    assert denied.rule == "tools.kv_get.resource"


def test_denial_through_ainvoke(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_get_async, guard)

    async def main() -> Any:
        async with guard.task("process-job", job_id="42"):
            return await guarded.ainvoke(_call("kv_get_async", {"key": "agents:secrets:x"}))

    message = asyncio.run(main())
    assert message.status == "error"
    assert "tool 'kv_get_async' has no rule in tools:" in message.content


def test_invalid_arguments_keep_langchain_validation(guard: tg.Guard) -> None:
    guarded = tg.guard(kv_set, guard)
    with guard.task("process-job", job_id="42") as task, pytest.raises(ValidationError):
        guarded.invoke({"key": OUT_KEY})
    assert _kinds(guard, task.task_id) == ["task_start", "task_end"]


# -- the wrapped tool's own errors -----------------------------------------------------------


def _failing(handle: Any) -> BaseTool:
    def kv_set(key: str, value: str) -> str:
        raise ToolException(f"the store refused {key}")

    return StructuredTool.from_function(
        func=kv_set, name="kv_set", description="Store a value.", handle_tool_error=handle
    )


@pytest.mark.parametrize(
    "handle",
    [
        pytest.param(True, id="true"),
        pytest.param("Storing failed, try later.", id="text"),
        pytest.param(lambda e: f"handled: {e}", id="callable"),
    ],
)
def test_wrapped_tool_error_handling_is_preserved(guard: tg.Guard, handle: Any) -> None:
    bare = _failing(handle)
    guarded = tg.guard(_failing(handle), guard)
    call = _call("kv_set", {"key": OUT_KEY, "value": "v"})

    expected = bare.invoke(call)
    with guard.task("process-job", job_id="42") as task:
        got = guarded.invoke(call)

    assert isinstance(got, ToolMessage)
    assert (got.content, got.status) == (expected.content, expected.status)
    assert got.status == "error"
    outcome = [e for e in guard.audit.events(task_id=task.task_id) if e.kind == "outcome"]
    assert [(e.outcome, e.error) for e in outcome] == [
        ("error", "ToolException: the store refused agents:jobs:42:result")
    ]


def test_wrapped_tool_exception_without_handler_raises(guard: tg.Guard) -> None:
    bare = _failing(False)
    guarded = tg.guard(_failing(False), guard)
    call = _call("kv_set", {"key": OUT_KEY, "value": "v"})

    with pytest.raises(ToolException, match="the store refused"):
        bare.invoke(call)
    with (
        guard.task("process-job", job_id="42"),
        pytest.raises(ToolException, match="the store refused"),
    ):
        guarded.invoke(call)


def test_wrapped_tool_other_exception_propagates(guard: tg.Guard) -> None:
    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value."""
        raise RuntimeError("disk on fire")

    guarded = tg.guard(kv_set, guard)
    task = guard.task("process-job", job_id="42")
    with pytest.raises(RuntimeError, match="disk on fire"), task:
        guarded.invoke({"key": OUT_KEY, "value": "v"})
    assert task.status == "error"


# -- LangChain's run machinery runs once -----------------------------------------------------


@pytest.mark.parametrize("inner", ALL_KINDS[:3])
def test_invoke_machinery_runs_once(guard: tg.Guard, inner: BaseTool) -> None:
    counter = _Counter()
    inner = inner.model_copy(update={"callbacks": [counter]})
    guarded = tg.guard(inner, guard)
    per_call = _Counter()

    with guard.task("process-job", job_id="42"):
        for _ in range(3):
            guarded.invoke({"key": JOB_KEY}, config={"callbacks": [per_call]})

    assert (counter.starts, counter.ends) == (3, 3)
    assert (per_call.starts, per_call.ends) == (3, 3)


def test_invoke_machinery_runs_once_async(guard: tg.Guard) -> None:
    counter = _Counter()
    guarded = tg.guard(async_get, guard)

    async def main() -> None:
        with guard.task("process-job", job_id="42"):
            for _ in range(2):
                await guarded.ainvoke(
                    _call("kv_get", {"key": JOB_KEY}), config={"callbacks": [counter]}
                )

    asyncio.run(main())
    assert (counter.starts, counter.ends) == (2, 2)


def test_denial_fires_tool_callbacks_once(guard: tg.Guard) -> None:
    counter = _Counter()
    guarded = tg.guard(kv_set, guard)
    with guard.task("process-job", job_id="42"):
        guarded.invoke(
            _call("kv_set", {"key": OTHER_KEY, "value": "v"}), config={"callbacks": [counter]}
        )
    assert counter.starts == 1
    assert counter.ends + counter.errors == 1


# -- in an agent ---------------------------------------------------------------------------------


class _ScriptedModel(GenericFakeChatModel):
    """GenericFakeChatModel that accepts ``bind_tools`` (create_agent needs it)."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> _ScriptedModel:
        return self


def _script(*messages: AIMessage) -> Iterator[AIMessage]:
    return iter(messages)


def test_agent_run_continues_after_denial(guard: tg.Guard) -> None:
    model = _ScriptedModel(
        messages=_script(
            AIMessage("", tool_calls=[_tc("kv_set", {"key": OTHER_KEY, "value": "v"}, "c1")]),
            AIMessage("", tool_calls=[_tc("kv_set", {"key": OUT_KEY, "value": "v"}, "c2")]),
            AIMessage("done"),
        )
    )
    agent = create_agent(model, tools=tg.guard([kv_set], guard))

    with guard.task("process-job", job_id="42") as task:
        result = agent.invoke({"messages": [HumanMessage("process job 42")]})

    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in tool_messages] == ["error", "success"]
    assert "Denied by toolguard" in str(tool_messages[0].content)
    assert result["messages"][-1].content == "done"
    kinds = _kinds(guard, task.task_id)
    assert kinds == ["task_start", "denied", "request", "outcome", "task_end"]


def _tc(name: str, args: dict[str, Any], call_id: str) -> Any:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


# -- issue 10: returned error messages, validated values ------------------------------------


def test_guarded_tool_returning_an_error_message_records_an_error_outcome(
    guard: tg.Guard,
) -> None:
    @tool
    def kv_get(key: str) -> ToolMessage:
        """Read a key (the service says no)."""
        return ToolMessage(content="upstream 503", tool_call_id="c1", status="error")

    with guard.task("process-job", job_id="42"):
        tg.guard(kv_get, guard).invoke({"key": "agents:jobs:42:a"})

    (outcome,) = guard.audit.events(kind="outcome")
    assert outcome.outcome == "error"
    assert outcome.error == "ToolException: upstream 503"


class Part(str, enum.Enum):
    STATE = "state"


class Meta(BaseModel):
    tags: list[str]


def test_guarded_tool_checks_enum_and_model_arguments_as_json(guard: tg.Guard) -> None:
    seen: list[Any] = []

    @tool
    def kv_set(key: str, value: Part, meta: Meta) -> str:
        """Write a key."""
        seen.append((value, meta))
        return "ok"

    with guard.task("process-job", job_id="42"):
        tg.guard(kv_set, guard).invoke(
            {"key": "agents:jobs:42:a", "value": "state", "meta": {"tags": ["x"]}}
        )

    (request,) = guard.audit.events(kind="request")
    assert request.args == '{"key":"agents:jobs:42:a","meta":{"tags":["x"]},"value":"state"}'
    ((value, meta),) = seen
    assert value is Part.STATE and isinstance(meta, Meta)  # the tool gets the validated objects


def test_a_guarded_structured_tool_gets_what_structured_tool_run_would_pass(
    guard: tg.Guard,
) -> None:
    """GuardedTool calls a plain StructuredTool's function itself (its signature inspected
    once, not on every call): the function still gets the run's config and child callbacks
    as StructuredTool._run passes them, on its own call and unguarded alike, and a function
    replaced on the tool is the one called."""
    seen: list[tuple[str, Any, Any]] = []

    def read(key: str, config: RunnableConfig, callbacks: Callbacks = None) -> str:
        seen.append(("first", config.get("tags"), callbacks))
        return f"value of {key}"

    def read_again(key: str, config: RunnableConfig) -> str:
        seen.append(("second", config.get("tags"), None))
        return f"again {key}"

    inner = StructuredTool.from_function(read, name="kv_get", description="Read a key.")
    guarded = tg.guard(inner, guard)
    with guard.task("process-job", job_id="42"):
        assert guarded.invoke({"key": JOB_KEY}, config={"tags": ["t1"]}) == f"value of {JOB_KEY}"
        inner.invoke({"key": JOB_KEY}, config={"tags": ["t1"]})  # what LangChain itself passes
        inner.func = read_again
        assert guarded.invoke({"key": JOB_KEY}, config={"tags": ["t2"]}) == f"again {JOB_KEY}"
    (guarded_call, bare_call, replaced) = seen
    assert guarded_call[1] == bare_call[1] == ["t1"]
    assert type(guarded_call[2]) is type(bare_call[2]) and guarded_call[2] is not None
    assert replaced == ("second", ["t2"], None)
