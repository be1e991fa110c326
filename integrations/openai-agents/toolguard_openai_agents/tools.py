"""``guard_tools()``: guarded ``FunctionTool``s for the OpenAI Agents SDK.

A guarded tool is a real ``FunctionTool`` with the wrapped tool's name, description, JSON schema
and strict flag (the model sees the same tool); only its ``on_invoke_tool`` differs. Each call:

1. ``guard.authorize(tool.name, arguments, correlation_id=ctx.tool_call_id)``: decision, budget,
   the ``request`` audit row and the call's credential (one SQLite transaction);
2. the wrapped tool runs with that credential current (``tg.current_credential()``, or
   :func:`tool_credential` with the tool's ``ToolContext``), under the SDK's own argument
   validation, failure handling and timeout;
3. ``guard.finish(permit, error=...)`` queues the ``outcome`` row; the call's token is scrubbed
   from the output (and from the error's message) before the model sees it.

A denial comes back to the model as the tool's output (``"Denied by toolguard: <reason>"``) and
the run goes on; ``on_deny="raise"`` raises :class:`~toolguard.PolicyDenied` instead. An
:class:`~toolguard.AuditError` (the trail could not be written; nothing ran) always raises.
"""

from __future__ import annotations

import contextvars
import copy
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Union, cast, overload

from agents import FunctionTool, RunContextWrapper, function_tool
from agents.tool_context import ToolContext

from toolguard import AuditError, Credential, Guard, PolicyDenied
from toolguard.adapters import DENIED, CallCredentials, call_secrets, scrub_error
from toolguard.context import permit_var, task_var
from toolguard.engine import OnDeny, Permit
from toolguard.scrub import scrub

from . import _run

__all__ = ["GuardedInvoker", "OnDeny", "guard_tools", "is_guarded", "tool_credential"]

Invoke = Callable[[ToolContext[Any], str], Awaitable[Any]]

# The SDK marks the invoker of a sync ``@function_tool`` (it refuses a timeout for those).
_SYNC_MARKER = "__agents_sync_function_tool__"
_BIND = "__agents_bind_function_tool__"

_errors: contextvars.ContextVar[list[BaseException] | None] = contextvars.ContextVar(
    "toolguard_openai_agents_errors", default=None
)
_credentials: CallCredentials[RunContextWrapper[Any]] = CallCredentials()


def tool_credential(ctx: RunContextWrapper[Any]) -> Credential:
    """The credential of the guarded call whose ``ToolContext`` is ``ctx``.

    For tools that take the SDK's context as their first parameter
    (``def tool(ctx: RunContextWrapper[Any], ...)``): the context is not part of the tool's
    JSON schema, so the model never sees it. Inside the call ``tg.current_credential()`` returns
    the same credential; this works from threads that do not carry the context too. Raises
    :class:`~toolguard.CredentialError` outside a guarded call.
    """
    return _credentials.current(ctx, wrapper="toolguard_openai_agents.guard_tools()")


class GuardedInvoker:
    """The ``on_invoke_tool`` of a guarded ``FunctionTool``: check, run, record, scrub."""

    def __init__(
        self,
        guard: Guard,
        on_deny: OnDeny,
        name: str,
        call: Invoke,
        *,
        records_errors: bool,
        sync: bool,
    ) -> None:
        self.guard = guard
        self.on_deny: OnDeny = on_deny
        self.name = name
        self._call = call
        self._records_errors = records_errors
        if sync:
            setattr(self, _SYNC_MARKER, True)

    def __agents_bind_function_tool__(self, tool: FunctionTool) -> GuardedInvoker:
        """Bind the SDK's failure handling to ``tool`` (a guarded tool, or a copy of one)."""
        bind = getattr(self._call, _BIND, None)
        call = bind(tool) if callable(bind) else self._call
        if call is self._call:
            return self
        return GuardedInvoker(
            self.guard,
            self.on_deny,
            self.name,
            call,
            records_errors=self._records_errors,
            sync=bool(getattr(self, _SYNC_MARKER, False)),
        )

    async def __call__(self, ctx: ToolContext[Any], input: str) -> Any:
        call_id = getattr(ctx, "tool_call_id", None)
        token = _run.enter_call(ctx)
        try:
            try:
                # The rule checked is the one of the tool that runs (its name when it was
                # guarded), never a name the call or a later rename of the tool claims.
                # (on the guard's writer thread: the event loop never waits for the store)
                arguments, input = _arguments(input)
                permit = await self.guard.aauthorize(
                    self.name, arguments, correlation_id=call_id or None
                )
            except AuditError:
                raise
            except PolicyDenied as denial:
                if self.on_deny == "raise":
                    raise
                return DENIED + _run.denial_reason(denial)
            return await self._run(permit, ctx, input)
        finally:
            if token is not None:
                _reset(token)

    async def _run(self, permit: Permit, ctx: ToolContext[Any], input: str) -> Any:
        credential = permit.credential
        errors: list[BaseException] = []
        errors_token = _errors.set(errors)
        _credentials.put(ctx, credential)
        try:
            with permit:
                try:
                    result = await self._call(ctx, input)
                except BaseException as exc:
                    self.guard.finish(permit, error=exc)
                    scrubbed = scrub_error(exc, credential)
                    if scrubbed is not exc:
                        raise scrubbed from None
                    raise
        finally:
            _credentials.drop(ctx)
            _errors.reset(errors_token)
        # A tool error the SDK's failure handling turned into a message for the model.
        self.guard.finish(permit, error=errors[0] if errors else None)
        return scrub(result, call_secrets(credential))


def _recording(impl: Invoke) -> Invoke:
    """``impl`` that notes its exception for the guarded call (the SDK's failure handling
    turns it into a message for the model; the audit records it as an ``error`` outcome)."""

    async def run(ctx: ToolContext[Any], input: str) -> Any:
        try:
            return await impl(ctx, input)
        except BaseException as exc:
            errors = _errors.get()
            if errors is not None:
                errors.append(exc)
            permit = permit_var.get()
            if permit is not None:  # the failure formatter may quote the message
                scrubbed = scrub_error(exc, permit.credential)
                if scrubbed is not exc:
                    raise scrubbed from None
            raise

    return run


def _arguments(input: str) -> tuple[dict[str, Any], str]:
    """The arguments the policy and the audit see, and the text the tool is given.

    The model's JSON object is parsed as the SDK parses it (empty means none), and the tool is
    given that object written out again, not the model's text: whatever parser the tool uses
    (a hand-made ``FunctionTool`` may keep the first of two repeated keys where ``json`` keeps
    the last), it reads exactly the values that were checked. Text that is not a JSON object
    (comments, a list, not JSON at all) is checked as ``{"input": <raw text>}`` and passed as
    it is: a tool whose resource needs an argument is then denied."""
    if not input:
        return {}, input
    try:
        parsed = json.loads(input)
    except ValueError:
        return {"input": input}, input
    if not isinstance(parsed, dict):
        return {"input": input}, input
    return parsed, json.dumps(parsed)


def _reset(token: contextvars.Token[Any]) -> None:
    try:
        task_var.reset(token)
    except ValueError:  # pragma: no cover - reset in another context
        task_var.set(None)


def is_guarded(tool: Any, guard: Guard | None = None) -> bool:
    """Whether ``tool`` is a ``FunctionTool`` guarded (by ``guard``, when given)."""
    invoker = getattr(tool, "on_invoke_tool", None)
    return isinstance(invoker, GuardedInvoker) and (guard is None or invoker.guard is guard)


@overload
def guard_tools(
    tools: FunctionTool, guard: Guard, *, on_deny: OnDeny = "message"
) -> FunctionTool: ...


@overload
def guard_tools(
    tools: Sequence[FunctionTool | Callable[..., Any]],
    guard: Guard,
    *,
    on_deny: OnDeny = "message",
) -> list[FunctionTool]: ...


def guard_tools(
    tools: Union[FunctionTool, Sequence[FunctionTool | Callable[..., Any]]],
    guard: Guard,
    *,
    on_deny: OnDeny = "message",
) -> Union[FunctionTool, list[FunctionTool]]:
    """Guard Agents SDK function tools: every call is checked, audited, and gets its own
    credential. One tool in, one guarded tool out; a list in, a list out (same order).

    Takes ``FunctionTool``s (``@function_tool`` functions, ``agent.as_tool()``, hand-made
    ones); a plain function in a list is made a tool with ``function_tool`` first. Hosted tools
    (web search, file search, hosted MCP, code interpreter, ...) run on the model provider's side
    and cannot be guarded here: they are refused with ``TypeError``. The guarded tools are new
    objects; the originals are unchanged (do not give those to an agent). ``on_deny="message"``
    (default) returns a denial to the model as the tool's output; ``"raise"`` raises
    :class:`~toolguard.PolicyDenied` (the SDK wraps it in ``UserError`` unless the run goes
    through :class:`~toolguard_openai_agents.GuardedRunner`). An
    :class:`~toolguard.AuditError` always raises.
    """
    if on_deny not in ("message", "raise"):
        raise ValueError("on_deny must be 'message' or 'raise'")
    if not isinstance(guard, Guard):
        raise TypeError(f"guard_tools() needs a toolguard Guard; got {type(guard).__name__}")
    if isinstance(tools, FunctionTool):
        return _wrap_one(tools, guard, on_deny)
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise TypeError("guard_tools() takes a FunctionTool or a list of them")
    return [_wrap_one(_as_tool(t), guard, on_deny) for t in tools]


def _as_tool(tool: Any) -> FunctionTool:
    if isinstance(tool, FunctionTool):
        return tool
    if callable(tool) and not hasattr(tool, "tool_config") and not hasattr(tool, "name"):
        return function_tool(tool)
    raise TypeError(
        f"guard_tools() guards function tools; got {type(tool).__name__}. Hosted tools run on "
        "the model provider's side, where toolguard cannot check them; wrap local functions "
        "with @function_tool (and guard MCP servers with toolguard-mcp)"
    )


def _wrap_one(tool: FunctionTool, g: Guard, on_deny: OnDeny) -> FunctionTool:
    tool = _as_tool(tool)
    invoker = tool.on_invoke_tool
    if isinstance(invoker, GuardedInvoker):
        if invoker.guard is g:
            return tool
        raise ValueError(f"tool '{tool.name}' is already guarded by another Guard")
    call, records = _inner_call(invoker)
    guarded = copy.copy(tool)  # every field, private ones too; the original is left as it was
    guarded.on_invoke_tool = GuardedInvoker(
        g,
        on_deny,
        tool.name,
        call,
        records_errors=records,
        sync=bool(getattr(invoker, _SYNC_MARKER, False)),
    ).__agents_bind_function_tool__(guarded)
    return guarded


def _inner_call(invoker: Any) -> tuple[Invoke, bool]:
    """What the guarded invoker runs: for a ``@function_tool`` tool, the SDK's own failure
    handling around the tool body, rebuilt so the body's exception is recorded; for any other
    ``on_invoke_tool``, that callable as it is (its exceptions are recorded as they leave)."""
    impl = getattr(invoker, "_invoke_tool_impl", None)
    on_handled = getattr(invoker, "_on_handled_error", None)
    if impl is not None and callable(on_handled):
        try:
            handled = type(invoker)(_recording(impl), on_handled)
        except TypeError:  # a future SDK changed its invoker: run it as it is
            return cast(Invoke, invoker), False
        if getattr(invoker, _SYNC_MARKER, False):
            setattr(handled, _SYNC_MARKER, True)
        return cast(Invoke, handled), True
    return cast(Invoke, invoker), False
