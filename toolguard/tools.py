"""``GuardedTool`` and ``guard()`` for LangChain tools.

A guarded tool is a real ``BaseTool`` with the wrapped tool's name, description and args schema
(the model sees the same tool). LangChain's ``run`` machinery runs once — for the guarded tool —
and then the wrapped tool's ``_run`` / ``_arun`` is called directly, never its ``invoke``.

This module deliberately does not use ``from __future__ import annotations``: LangChain resolves
the annotation of ``_run``'s ``config`` parameter on every call, and a string annotation makes
that resolution cost tens of microseconds.
"""

import typing
from collections.abc import Sequence
from typing import Any, Optional, Union, overload

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ._extras import LANGCHAIN, raise_if_missing

try:  # agent-toolguard-core alone has no LangChain: say what to install (toolguard/_extras.py)
    from langchain_core.callbacks import (
        AsyncCallbackManagerForToolRun,
        CallbackManagerForToolRun,
    )
    from langchain_core.messages import ToolMessage
    from langchain_core.runnables import RunnableConfig
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.tools import BaseTool, StructuredTool, ToolException
except ImportError as exc:
    raise_if_missing(LANGCHAIN, exc)
    raise

from ._langchain_compat import (
    get_all_basemodel_annotations,
    get_runnable_config_param,
    handle_tool_error,
    is_injected_arg_type,
    signature_parameters,
)
from .adapters import DENIED, call_secrets, policy_value, scrub_error
from .credentials import Credential
from .engine import Guard, OnDeny
from .errors import AuditError, PolicyDenied
from .scrub import scrub

__all__ = [
    "GuardedTool",
    "RunInterrupted",
    "ToolDenied",
    "credential_keys",
    "guard",
    "outcome_error",
    "result_error",
]

_CALL_ID = "__toolguard_call_id__"


class ToolDenied(ToolException):
    """A denial turned into a tool error: the model reads ``str(exc)`` and the run goes on."""

    def __init__(self, denial: PolicyDenied) -> None:
        super().__init__(DENIED + denial.reason)
        self.denial = denial


class RunInterrupted(Exception):
    """Recorded as the outcome of a call whose tool raised a LangGraph interrupt."""

    def __init__(self) -> None:
        super().__init__(
            "the run was interrupted inside the tool; the call runs again, with a new "
            "credential, when the run resumes"
        )


def outcome_error(exc: BaseException) -> BaseException:
    """What the trail records for an exception out of a tool: LangGraph control flow
    (``GraphBubbleUp``: an interrupt, a parent command) as :class:`RunInterrupted`."""
    if any(
        c.__name__ == "GraphBubbleUp" and c.__module__ == "langgraph.errors"
        for c in type(exc).__mro__
    ):
        return RunInterrupted()
    return exc


def result_error(result: Any) -> Optional[BaseException]:
    """What the trail records for what a tool returned: a ``ToolMessage`` with status
    ``error`` is an error outcome (``None`` otherwise)."""
    if isinstance(result, ToolMessage) and result.status == "error":
        return ToolException(str(result.content))
    return None


def credential_keys(tool: BaseTool) -> frozenset[str]:
    """Names of the tool's injected arguments typed as :class:`Credential`."""
    schema = tool.args_schema
    annotations: dict[str, Any] = {}
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        annotations = dict(get_all_basemodel_annotations(schema))
    else:
        func = getattr(tool, "func", None) or getattr(tool, "coroutine", None) or tool._run
        try:
            annotations = typing.get_type_hints(func, include_extras=True)
        except Exception:  # unresolvable hints: no credential injection
            annotations = {}
    keys = set()
    for name, annotation in annotations.items():
        if is_injected_arg_type(annotation) and _mentions_credential(annotation):
            keys.add(name)
    return frozenset(keys)


def _mentions_credential(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, Credential):
        return True
    return any(_mentions_credential(a) for a in typing.get_args(annotation))


def _scrubbed_error(exc: BaseException, credential: Credential) -> BaseException:
    """``exc`` without the call's token (scrubbed in place); a replacement only when its text
    still shows the token — a ``ToolException`` for a ``ToolException`` (the tool's error
    handling still applies), never for LangGraph control flow (interrupts keep their type)."""
    scrubbed = scrub_error(exc, credential)
    if scrubbed is exc or outcome_error(exc) is not exc:
        return exc
    if isinstance(exc, ToolException):
        return ToolException(str(scrubbed))
    return scrubbed


def _placeholder() -> Credential:
    """A stand-in that passes schema validation until the real credential is minted."""
    return object.__new__(Credential)


_PENDING = _placeholder()


class GuardedTool(BaseTool):
    """A LangChain tool whose every call goes through a :class:`Guard`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wrapped: BaseTool
    """The tool being guarded; it is called directly, below LangChain's run machinery."""
    guard: Guard
    on_deny: OnDeny = "message"
    """``message``: the model reads the denial as a tool error; ``raise``: PolicyDenied."""

    _credential_keys: frozenset[str] = PrivateAttr(default=frozenset())
    _run_takes_manager: bool = PrivateAttr(default=False)
    _run_config_param: Optional[str] = PrivateAttr(default=None)
    _arun_takes_manager: bool = PrivateAttr(default=False)
    _arun_config_param: Optional[str] = PrivateAttr(default=None)
    _native_async: bool = PrivateAttr(default=False)
    _async_only: bool = PrivateAttr(default=False)
    _own_handler: Any = PrivateAttr(default=None)
    _direct: Any = PrivateAttr(default=None)  # (func, takes callbacks, its config parameter)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        inner = self.wrapped
        self._credential_keys = credential_keys(inner)
        self._run_takes_manager = "run_manager" in signature_parameters(inner._run)
        self._run_config_param = get_runnable_config_param(inner._run)
        self._arun_takes_manager = "run_manager" in signature_parameters(inner._arun)
        self._arun_config_param = get_runnable_config_param(inner._arun)
        if isinstance(inner, StructuredTool):
            self._native_async = inner.coroutine is not None
            self._async_only = inner.func is None
        else:
            self._native_async = type(inner)._arun is not BaseTool._arun
        self._own_handler = inner.handle_tool_error

    @property
    def _injected_args_keys(self) -> frozenset[str]:
        return self.wrapped._injected_args_keys

    # -- input --------------------------------------------------------------------------------

    def _parse_input(
        self, tool_input: Union[str, dict[str, Any]], tool_call_id: Optional[str]
    ) -> Union[str, dict[str, Any]]:
        if isinstance(tool_input, dict) and self._credential_keys:
            # The model can never supply a credential: whatever it sent is overwritten.
            tool_input = {**tool_input, **dict.fromkeys(self._credential_keys, _PENDING)}
        parsed = self.wrapped._parse_input(tool_input, tool_call_id)
        if isinstance(parsed, dict) and tool_call_id is not None:
            parsed = {**parsed, _CALL_ID: tool_call_id}
        return parsed

    def _call_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments the policy and the audit see: the values the tool will receive
        (after its schema's validation), as JSON data, without injected values."""
        if args and not kwargs and len(args) == 1:
            fields = list(self.tool_call_schema_fields())
            return {fields[0] if fields else "input": policy_value(args[0])}
        injected = self.wrapped._injected_args_keys
        return {k: policy_value(v) for k, v in kwargs.items() if k not in injected}

    def tool_call_schema_fields(self) -> list[str]:
        schema = self.args_schema
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return list(schema.model_fields)
        if isinstance(schema, dict):
            return list(schema.get("properties", {}))
        return []

    # -- run ----------------------------------------------------------------------------------

    def _run(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: Optional[CallbackManagerForToolRun] = None,
        **kwargs: Any,
    ) -> Any:
        cid = kwargs.pop(_CALL_ID, None)
        if self._async_only:  # fail before spending budget on a call that cannot run
            raise NotImplementedError(
                f"tool '{self.name}' is async-only; call it with ainvoke() or from async code"
            )
        permit = self._authorize(args, kwargs, cid)
        inner = self.wrapped
        if self._credential_keys:
            for key in self._credential_keys:
                kwargs[key] = permit.credential
        direct = self._direct_func(inner)
        if direct is not None:  # StructuredTool._run's own work, its inspection done once
            func, takes_callbacks, config_param = direct
            if takes_callbacks and run_manager:
                kwargs["callbacks"] = run_manager.get_child()
            if config_param:
                kwargs[config_param] = config
        else:
            if self._run_takes_manager:
                kwargs["run_manager"] = run_manager
            if self._run_config_param:
                kwargs[self._run_config_param] = config
            func = inner._run
        with permit:
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self.guard.finish(permit, error=outcome_error(exc))
                scrubbed = _scrubbed_error(exc, permit.credential)
                if scrubbed is exc:
                    raise
                raise scrubbed from None
        return self._finished(permit, result)

    def _direct_func(self, inner: BaseTool) -> Optional[tuple[Any, bool, Optional[str]]]:
        """For a plain ``StructuredTool`` with a sync function: the function, whether it takes
        ``callbacks`` and its ``RunnableConfig`` parameter, inspected once per function
        (``StructuredTool._run`` inspects them on every call) so that ``_run`` can call it
        the way ``StructuredTool._run`` would. None for any other tool."""
        if type(inner) is not StructuredTool:
            return None
        func = inner.func
        if func is None:
            return None
        direct = self._direct
        if direct is None or direct[0] is not func:  # first call, or the function replaced
            direct = self._direct = (
                func,
                bool(signature_parameters(func).get("callbacks")),
                get_runnable_config_param(func),
            )
        return direct  # type: ignore[no-any-return]

    async def _arun(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: Optional[AsyncCallbackManagerForToolRun] = None,
        **kwargs: Any,
    ) -> Any:
        cid = kwargs.pop(_CALL_ID, None)
        # authorized on the guard's writer thread: the event loop never waits for the store
        permit = await self._aauthorize(args, kwargs, cid)
        inner = self.wrapped
        if self._credential_keys:
            for key in self._credential_keys:
                kwargs[key] = permit.credential
        with permit:
            try:
                if self._native_async:
                    if self._arun_takes_manager:
                        kwargs["run_manager"] = run_manager
                    if self._arun_config_param:
                        kwargs[self._arun_config_param] = config
                    result = await inner._arun(*args, **kwargs)
                else:
                    if self._run_takes_manager:
                        kwargs["run_manager"] = run_manager.get_sync() if run_manager else None
                    if self._run_config_param:
                        kwargs[self._run_config_param] = config
                    # run_in_executor copies the context: the task and the credential go along.
                    result = await run_in_executor(None, inner._run, *args, **kwargs)
            except BaseException as exc:
                self.guard.finish(permit, error=outcome_error(exc))
                scrubbed = _scrubbed_error(exc, permit.credential)
                if scrubbed is exc:
                    raise
                raise scrubbed from None
        return self._finished(permit, result)

    def _finished(self, permit: Any, result: Any) -> Any:
        """Record the outcome (a returned error ``ToolMessage`` is an error) and return the
        result without the call's token."""
        self.guard.finish(permit, error=result_error(result))
        return scrub(result, call_secrets(permit.credential))

    def _authorize(self, args: tuple[Any, ...], kwargs: dict[str, Any], cid: Optional[str]) -> Any:
        try:
            return self.guard.authorize(
                self.name, self._call_args(args, kwargs), correlation_id=cid
            )
        except AuditError:
            raise
        except PolicyDenied as denial:
            if self.on_deny == "raise":
                raise
            raise ToolDenied(denial) from None

    async def _aauthorize(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], cid: Optional[str]
    ) -> Any:
        call_args = self._call_args(args, kwargs)
        try:
            return await self.guard.aauthorize(self.name, call_args, correlation_id=cid)
        except AuditError:
            raise
        except PolicyDenied as denial:
            if self.on_deny == "raise":
                raise
            raise ToolDenied(denial) from None

    def _handle_error(self, exc: ToolException) -> str:
        if isinstance(exc, ToolDenied):
            return str(exc)
        flag = self._own_handler
        if not flag:
            raise exc
        content = handle_tool_error(exc, flag=flag)
        return content if isinstance(content, str) else str(content)


@overload
def guard(tools: BaseTool, guard: Guard, *, on_deny: OnDeny = "message") -> GuardedTool: ...


@overload
def guard(
    tools: Sequence[BaseTool], guard: Guard, *, on_deny: OnDeny = "message"
) -> list[GuardedTool]: ...


def guard(
    tools: Union[BaseTool, Sequence[BaseTool]], guard: Guard, *, on_deny: OnDeny = "message"
) -> Union[GuardedTool, list[GuardedTool]]:
    """Wrap LangChain tools so every call is checked, audited and gets its own credential.

    One tool in, one guarded tool out; a list in, a list out. ``on_deny="message"`` (default)
    returns denials to the model as tool errors so the run goes on; ``"raise"`` raises
    :class:`PolicyDenied`. Audit failures always raise :class:`AuditError`.
    """
    if on_deny not in ("message", "raise"):
        raise ValueError("on_deny must be 'message' or 'raise'")
    if isinstance(tools, BaseTool):
        return _wrap_one(tools, guard, on_deny)
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise TypeError("guard() takes a LangChain BaseTool or a list of them")
    return [_wrap_one(t, guard, on_deny) for t in tools]


def _wrap_one(tool: BaseTool, g: Guard, on_deny: OnDeny) -> GuardedTool:
    if isinstance(tool, GuardedTool):
        if tool.guard is g:
            return tool
        raise ValueError(f"tool '{tool.name}' is already guarded by another Guard")
    if not isinstance(tool, BaseTool):
        raise TypeError(
            f"guard() takes LangChain tools (BaseTool); got {type(tool).__name__}. Decorate "
            "functions with @tool first"
        )
    return guarded_twin(tool, g, on_deny)


def guarded_twin(tool: BaseTool, g: Guard, on_deny: OnDeny) -> GuardedTool:
    """The guarded twin of ``tool`` (also of a tool another Guard already guards: both check),
    without :func:`guard`'s checks; for adapters (``GuardMiddleware``) that cache twins."""
    guarded = GuardedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
        return_direct=tool.return_direct,
        verbose=tool.verbose,
        callbacks=tool.callbacks,
        tags=tool.tags,
        metadata=tool.metadata,
        response_format=tool.response_format,
        handle_validation_error=tool.handle_validation_error,
        extras=getattr(tool, "extras", None),
        wrapped=tool,
        guard=g,
        on_deny=on_deny,
    )
    guarded.handle_tool_error = guarded._handle_error
    return guarded
