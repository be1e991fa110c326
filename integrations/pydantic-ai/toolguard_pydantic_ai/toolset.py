"""``guard_toolset()``: a PydanticAI toolset whose every call goes through a toolguard Guard.

A guarded toolset is a ``WrapperToolset`` (PydanticAI's own extension point for changing how
tools run): it lists the wrapped toolset's tools unchanged (same names, descriptions, JSON
schemas; the model sees the same tools) and wraps each call:

1. ``guard.authorize(name, arguments, correlation_id=ctx.tool_call_id)``: decision, budget,
   the ``request`` audit row and the call's credential (one SQLite transaction), after
   PydanticAI validated the arguments against the tool's schema;
2. the wrapped toolset's ``call_tool`` runs with that credential current
   (``tg.current_credential()``, also in sync tools, which PydanticAI runs in a worker thread;
   or :func:`tool_credential` with the tool's ``RunContext``);
3. ``guard.finish(permit, error=...)`` queues the ``outcome`` row; the call's token is scrubbed
   from the result (and from the message of an exception, ``ModelRetry`` and ``ToolFailed``
   included) before the model sees it.

A denial reaches the model as a failed tool result (PydanticAI's ``ToolFailed``: the model reads
``"Denied by toolguard: <reason>"``, the run goes on, and no tool retry is spent);
``on_deny="raise"`` raises :class:`~toolguard.PolicyDenied` instead. An
:class:`~toolguard.AuditError` (the trail could not be written; nothing ran) always raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ToolFailed
from pydantic_ai.tools import Tool
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool, WrapperToolset

from toolguard import AuditError, Credential, Guard, PolicyDenied
from toolguard.adapters import DENIED, CallCredentials, call_secrets, policy_value, scrub_error
from toolguard.engine import OnDeny, Permit
from toolguard.scrub import scrub

__all__ = [
    "CallDeferredOutcome",
    "GuardedToolset",
    "OnDeny",
    "guard_toolset",
    "is_guarded",
    "tool_credential",
]


_credentials: CallCredentials[RunContext[Any]] = CallCredentials()


class CallDeferredOutcome(Exception):
    """Recorded as the outcome of a call whose tool deferred it (``CallDeferred`` or
    ``ApprovalRequired`` raised by the tool itself): the tool did not finish here."""

    def __init__(self, deferral: BaseException) -> None:
        super().__init__(
            f"the tool deferred the call ({type(deferral).__name__}); a resumed run calls it "
            "again, with a new credential"
        )


def tool_credential(ctx: RunContext[Any]) -> Credential:
    """The credential of the guarded call whose ``RunContext`` is ``ctx``.

    For tools that take PydanticAI's ``RunContext`` as their first parameter: the context is not
    part of the tool's JSON schema, so the model never sees it. Inside the call
    ``tg.current_credential()`` returns the same credential. Raises
    :class:`~toolguard.CredentialError` outside a guarded call.
    """
    return _credentials.current(ctx, wrapper="toolguard_pydantic_ai.guard_toolset()")


@dataclass
class GuardedToolset(WrapperToolset[Any]):
    """A PydanticAI toolset whose every call is checked, audited and gets its own credential.

    Build it with :func:`guard_toolset`. The rule checked is the one named by the tool's name
    as the wrapped toolset offers it: renaming or prefixing *outside* the guard
    (``guard_toolset(ts, g).prefixed("kv")``) changes what the model sees, not the rule.
    """

    guard: Guard = field(kw_only=True)
    on_deny: OnDeny = field(default="message", kw_only=True)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        try:
            # on the guard's writer thread: the event loop never waits for the store
            permit = await self.guard.aauthorize(
                name, _policy_args(tool_args), correlation_id=ctx.tool_call_id or None
            )
        except AuditError:
            raise
        except PolicyDenied as denial:
            if self.on_deny == "raise":
                raise
            # A failed tool result: the model reads the reason and the run goes on. Unlike a
            # ModelRetry it spends no tool retry and does not ask the model to try again.
            raise ToolFailed(DENIED + denial.reason) from None
        return await self._run(permit, name, tool_args, ctx, tool)

    async def _run(
        self,
        permit: Permit,
        name: str,
        tool_args: dict[str, Any],
        ctx: RunContext[Any],
        tool: ToolsetTool[Any],
    ) -> Any:
        credential = permit.credential
        _credentials.put(ctx, credential)
        try:
            with permit:
                try:
                    result = await self.wrapped.call_tool(name, tool_args, ctx, tool)
                except (CallDeferred, ApprovalRequired) as deferral:
                    self.guard.finish(permit, error=CallDeferredOutcome(deferral))
                    raise
                except BaseException as exc:
                    self.guard.finish(permit, error=exc)
                    scrubbed = scrub_error(exc, credential)
                    if scrubbed is exc or not isinstance(scrubbed, BaseException):
                        raise
                    raise scrubbed from None
        finally:
            _credentials.drop(ctx)
        self.guard.finish(permit)
        return scrub(result, call_secrets(credential))


def _policy_args(args: dict[str, Any]) -> dict[str, Any]:
    """The validated arguments as the policy and the audit see them: plain JSON data (a model as
    its JSON form, a URL as its text, an enum as its value), so the resource checked is the
    one the tool receives. The ``RunContext`` is never among them."""
    return {str(k): policy_value(v) for k, v in args.items()}


def is_guarded(toolset: Any, guard: Guard | None = None) -> bool:
    """Whether ``toolset`` is a toolset guarded (by ``guard``, when given)."""
    return isinstance(toolset, GuardedToolset) and (guard is None or toolset.guard is guard)


ToolLike = Tool[Any] | Callable[..., Any]


def guard_toolset(
    toolset: AbstractToolset[Any] | Sequence[ToolLike],
    guard: Guard,
    *,
    on_deny: OnDeny = "message",
) -> GuardedToolset:
    """Guard a PydanticAI toolset: every call of its tools is checked, audited, and gets its
    own credential.

    ``toolset``: any PydanticAI toolset (``FunctionToolset``, an MCP server toolset, a
    ``CombinedToolset``, a prefixed or filtered one, ...) or a list of plain tool functions
    and ``Tool`` objects (put in a ``FunctionToolset`` first). Give the result to the agent:
    ``Agent(model, toolsets=[guard_toolset(...)])``. Tools registered on the agent itself
    (``@agent.tool``, ``Agent(tools=...)``) are not guarded: pass them here instead.

    ``on_deny="message"`` (default) returns a denial to the model as a failed tool result;
    ``"raise"`` raises :class:`~toolguard.PolicyDenied` (the run fails). An
    :class:`~toolguard.AuditError` always raises. Guarding twice with the same guard returns
    the toolset as it is; a toolset guarded by another guard is refused.
    """
    if on_deny not in ("message", "raise"):
        raise ValueError("on_deny must be 'message' or 'raise'")
    if not isinstance(guard, Guard):
        raise TypeError(f"guard_toolset() needs a toolguard Guard; got {type(guard).__name__}")
    if isinstance(toolset, GuardedToolset):
        if toolset.guard is guard:
            return toolset
        raise ValueError("this toolset is already guarded by another Guard")
    if not isinstance(toolset, AbstractToolset):
        if isinstance(toolset, (str, bytes)) or not isinstance(toolset, Sequence):
            raise TypeError(
                "guard_toolset() takes a PydanticAI toolset (FunctionToolset, an MCP toolset, "
                f"...) or a list of tool functions; got {type(toolset).__name__}"
            )
        for item in toolset:
            if not (isinstance(item, Tool) or callable(item)):
                raise TypeError(
                    "guard_toolset() takes tool functions or pydantic_ai.Tool objects in a "
                    f"list; got {type(item).__name__}"
                )
        toolset = FunctionToolset(list(toolset))
    return GuardedToolset(toolset, guard=guard, on_deny=on_deny)
