"""``GuardMiddleware``: toolguard for LangChain 1.x agents (``langchain.agents.create_agent``).

Each run of the agent is a task. ``before_agent`` starts it (the intent's parameters come from
the run's context or ``config["configurable"]``) and keeps its id in the graph state, so a run
resumed after an interrupt — same ``thread_id``, with a checkpointer — continues the same task.
Every tool call goes through the guard's pipeline (``Guard.authorize`` -> tool -> ``finish``),
the same one ``toolguard.guard()`` tools use; a denial comes back to the model as
``ToolMessage(status="error")`` and the run goes on. ``after_agent`` ends the task.

Every tool runs through a ``toolguard.guard()`` twin, so the guard checks and records the
arguments the tool will receive (after its args schema's validation), and the call's token is
scrubbed from what the tool returns or raises (:func:`toolguard.scrub.scrub`).

A run that raises never reaches ``after_agent``. When an exception (other than LangGraph
control flow: ``GraphBubbleUp``, i.e. interrupts and parent commands, and a resume value an
interrupt rejected) leaves a model call or a tool call through this middleware, the run's task
ends (``error``; ``cancelled`` for ``asyncio.CancelledError`` / ``KeyboardInterrupt``) and its
credentials are revoked before the exception goes on. Exceptions raised elsewhere (another
middleware's ``before_model`` ...) end it when they leave :meth:`GuardMiddleware.run` /
:meth:`GuardMiddleware.arun` / :meth:`GuardMiddleware.scope`, when the next run starts on the
same thread, on :meth:`GuardMiddleware.close`, and at the latest at the intent's TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Any, Optional

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
    ToolCallRequest,
)
from langchain_core.messages import ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime
from langgraph.types import Command
from typing_extensions import NotRequired

from toolguard import Guard, GuardedTool, PolicyDenied, TaskSession
from toolguard._langchain_compat import is_invalid_resume, var_child_runnable_config
from toolguard.adapters import DENIED, task_params
from toolguard.context import task_var
from toolguard.engine import OnDeny, Permit
from toolguard.intent import template_parameters
from toolguard.tools import RunInterrupted, guarded_twin, outcome_error, result_error

__all__ = ["STATE_KEY", "GuardMiddleware", "GuardState", "RunInterrupted", "RunScope"]

STATE_KEY = "toolguard_task_id"
"""The graph-state key that holds the id of the run's task (private to the middleware)."""

_scope_var: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "toolguard_run_scope", default=None
)
_MAX_TWINS = 1024  # guarded twins kept per middleware (tools added per request come and go)


class GuardState(AgentState[Any]):
    """The agent state with the id of the run's task (persisted with the checkpoints)."""

    toolguard_task_id: NotRequired[Annotated[Optional[str], PrivateStateAttr]]


class RunScope:
    """Ends the tasks of agent runs started inside it when an exception leaves it.

    ``with middleware.scope(): agent.invoke(...)`` (or ``async with``). A run that completes
    ends its own task; an interrupted run (LangGraph ``GraphBubbleUp``) keeps it for the resume.
    """

    def __init__(self) -> None:
        self.sessions: list[TaskSession] = []
        self._token: contextvars.Token[RunScope | None] | None = None

    def __enter__(self) -> RunScope:
        self._token = _scope_var.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave(exc)

    async def __aenter__(self) -> RunScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave(exc)

    def _leave(self, exc: BaseException | None) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                _scope_var.reset(token)
            except ValueError:  # left in another context
                pass
        if exc is None or isinstance(exc, GraphBubbleUp):
            return
        cancelled = isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
        status = "cancelled" if cancelled else "error"
        for session in reversed(self.sessions):
            if session.status == "active":
                session.end(status, reason=f"the agent run raised {type(exc).__name__}")


@dataclass(slots=True)
class _Prepared:
    """One tool call after the check: a denial, or the request to run (with its permit)."""

    request: ToolCallRequest
    token: contextvars.Token[TaskSession | None] | None = None
    permit: Permit | None = None
    denial: ToolMessage | None = None
    unchecked: bool = False
    """A call of a tool the model invented, not yet authorized (``_prepare(authorize=False)``)."""


class GuardMiddleware(AgentMiddleware[GuardState, Any, Any]):
    """toolguard for ``create_agent(..., middleware=[GuardMiddleware(guard, intent=...)])``.

    ``intent``: each run is a task of this intent; its template parameters come from ``params``,
    then the run's context (``invoke(..., context=...)``), then ``config["configurable"]``, then
    the parent task when delegating. With ``intent=None`` the calls run under the task current
    in the caller's context (``with guard.task(...): agent.invoke(...)``).

    ``delegate``: when a task is already current as the run starts (the agent runs inside a
    ``guard.task`` block or inside a guarded tool of another agent), the run's task is delegated
    from it — attenuation only: a wider intent is refused with :class:`PolicyDenied`.

    ``on_deny``: ``"message"`` (default) returns a denial to the model as
    ``ToolMessage(status="error")``; ``"raise"`` raises :class:`PolicyDenied`. An
    :class:`AuditError` always raises. Every tool runs through its ``guard()`` twin (cached):
    the call is checked with the arguments the tool receives after validation, an injected
    ``Credential`` argument is filled in, the token is scrubbed from results and errors. Tools
    already wrapped with ``toolguard.guard()`` by the same guard are used as they are.

    The run's task ends in ``after_agent``; when an exception leaves a model call or a tool
    call of the run through this middleware, it ends (``error``) before the exception goes on
    (put ``GuardMiddleware`` first in ``middleware=[...]`` so retries and fallbacks happen
    inside it). Other failures end it when they leave :meth:`run`, :meth:`arun` or
    :meth:`scope`, else at the next run on the same thread, on :meth:`close`, or at the
    intent's TTL. Raises :class:`ConfigError` for an unknown intent.
    """

    state_schema = GuardState

    def __init__(
        self,
        guard: Guard,
        *,
        intent: str | None = None,
        params: Mapping[str, Any] | None = None,
        delegate: bool = True,
        on_deny: OnDeny = "message",
    ) -> None:
        super().__init__()
        if on_deny not in ("message", "raise"):
            raise ValueError("on_deny must be 'message' or 'raise'")
        self.guard = guard
        self.intent = intent
        self.params: dict[str, Any] = dict(params or {})
        self.delegate = delegate
        self.on_deny: OnDeny = on_deny
        self.tools: list[BaseTool] = []
        if intent is not None:  # an unknown intent is a ConfigError now
            template_parameters(guard.config, intent, where="GuardMiddleware")
        self._sessions: dict[str, TaskSession] = {}
        self._lock = threading.Lock()
        self._twins: dict[int, tuple[BaseTool, GuardedTool]] = {}
        self._unresumable: dict[str, None] = {}  # task ids a resume was refused for

    # -- the run's task -----------------------------------------------------------------------

    def before_agent(
        self,
        state: GuardState,
        runtime: Runtime[Any],
        config: Optional[RunnableConfig] = None,
    ) -> dict[str, Any] | None:
        """Start the run's task (ending a task a failed earlier run on this thread left open)."""
        stale = self._sessions.get(_task_id(state) or "")
        if stale is not None and stale.status == "active":
            stale.end(
                "abandoned",
                reason="a new run started on this thread before the previous run ended",
            )
        self._prune()
        if self.intent is None:
            return None
        if config is None:
            config = var_child_runnable_config.get() or {}
        parent = task_var.get() if self.delegate else None
        params = task_params(
            self.guard,
            self.intent,
            given=self.params,
            contexts=(runtime.context, config.get("configurable") or {}),
            parent=parent,
            where="GuardMiddleware",
            how="config={{'configurable': {{{first}: ...}}}}, in the run's context, or as "
            "GuardMiddleware(params=...)",
        )
        if parent is not None:
            session = parent.delegate(self.intent, **params)
        else:
            session = self.guard.task(self.intent, **params)
        session.start()
        with self._lock:
            self._sessions[session.task_id] = session
        scope = _scope_var.get()
        if scope is not None:
            scope.sessions.append(session)
        return {STATE_KEY: session.task_id}

    async def abefore_agent(
        self,
        state: GuardState,
        runtime: Runtime[Any],
        config: Optional[RunnableConfig] = None,
    ) -> dict[str, Any] | None:
        """Async twin of :meth:`before_agent`: the task starts on the guard's writer thread
        (the store is synchronous; the event loop never waits for it)."""
        if config is None:
            config = var_child_runnable_config.get() or {}
        return await self.guard.offload(
            self.before_agent, state, runtime, config, abandon=self._abandon_start
        )

    def _abandon_start(self, update: dict[str, Any] | None) -> None:
        """End a run's task started for a caller cancelled meanwhile (in the writer thread)."""
        task_id = (update or {}).get(STATE_KEY)
        with self._lock:
            session = self._sessions.pop(task_id or "", None)
        if session is not None:
            session.end("cancelled", reason="the agent run was cancelled while its task started")

    def after_agent(self, state: GuardState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the run's task: revoke its credentials and record ``task_end``."""
        task_id = _task_id(state)
        if task_id is None:
            return None
        with self._lock:
            session = self._sessions.pop(task_id, None)
        if session is None:  # a run resumed here after another process interrupted it
            session = self._adopt(task_id)
            if session is not None:
                with self._lock:
                    self._sessions.pop(task_id, None)
        if session is not None:
            session.end("ok")
        return {STATE_KEY: None}

    async def aafter_agent(self, state: GuardState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`after_agent` (the end is written on the guard's writer thread)."""
        return await self.guard.offload(self.after_agent, state, runtime, always=True)

    def _prune(self) -> None:
        """Forget ended tasks; end the ones past their TTL (the last resort)."""
        now = self.guard.clock()
        with self._lock:
            sessions = list(self._sessions.items())
        for task_id, session in sessions:
            if session.status == "active" and now >= session.deadline:
                session.end("expired", reason="the task passed its ttl before its run ended")
            if session.status != "active":
                with self._lock:
                    self._sessions.pop(task_id, None)

    def _adopt(self, task_id: str) -> TaskSession | None:
        """Resume the task of a run another process (or an earlier middleware) started and
        interrupted: same task id, a task of this middleware's intent, still active. None if
        it cannot continue (the refusal is in the trail)."""
        if self.intent is None:
            return None
        with self._lock:  # two parallel tool calls of the resumed run adopt it once
            session = self._sessions.get(task_id)
            if session is not None or task_id in self._unresumable:
                return session
            try:
                session = self.guard.resume(task_id, intent=self.intent)
            except PolicyDenied:
                self._unresumable[task_id] = None  # refused (and audited) once, not per call
                if len(self._unresumable) > 256:
                    del self._unresumable[next(iter(self._unresumable))]
                return None
            self._sessions[task_id] = session
        return session

    async def _aadopt(self, task_id: str | None) -> None:
        """:meth:`_adopt` on the guard's writer thread (it reads the trail and records
        ``task_resume``), when the run's task is not known here yet."""
        if (
            task_id is not None
            and self.intent is not None
            and task_id not in self._sessions
            and task_id not in self._unresumable
        ):
            await self.guard.offload(self._adopt, task_id)

    @property
    def active_tasks(self) -> list[TaskSession]:
        """The tasks of runs that have not ended yet (running, interrupted or failed)."""
        with self._lock:
            return [s for s in self._sessions.values() if s.status == "active"]

    def close(self, *, reason: str = "GuardMiddleware.close() was called") -> None:
        """End every task this middleware still holds (e.g. at shutdown)."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.end("abandoned", reason=reason)

    # -- runs that may raise -------------------------------------------------------------------

    def scope(self) -> RunScope:
        """A (sync or async) context manager: runs started inside it that raise end their task.

        Works for ``invoke``, ``stream`` and nested agents alike; interrupts keep the task.
        """
        return RunScope()

    def run(
        self,
        agent: Runnable[Any, Any],
        inputs: Any,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        """``agent.invoke(inputs, config, **kwargs)``, ending the run's task if it raises."""
        with RunScope():
            return agent.invoke(inputs, config, **kwargs)

    async def arun(
        self,
        agent: Runnable[Any, Any],
        inputs: Any,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        """``await agent.ainvoke(inputs, config, **kwargs)``, ending the task if it raises."""
        async with RunScope():
            return await agent.ainvoke(inputs, config, **kwargs)

    # -- tool calls ------------------------------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Call the model; a failure that leaves this call ends the run's task first."""
        try:
            return handler(request)
        except BaseException as exc:
            self._abort(request.state, exc, "a model call")
            raise

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of :meth:`wrap_model_call`."""
        try:
            return await handler(request)
        except BaseException as exc:
            await self.guard.offload(self._abort, request.state, exc, "a model call", always=True)
            raise

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Check the call, run it with its credential, record the outcome. An exception that
        leaves the call ends the run's task (credentials revoked) before it goes on."""
        try:
            prepared = self._prepare(request)
            try:
                if prepared.denial is not None:
                    return prepared.denial
                permit = prepared.permit
                if permit is None:
                    return handler(prepared.request)
                with permit:
                    try:
                        result = handler(prepared.request)
                    except BaseException as exc:
                        self._failed(permit, exc)
                        raise
                self._finished(permit, result)
                return result
            finally:
                _reset(prepared.token)
        except BaseException as exc:
            self._abort(request.state, exc, f"tool call '{request.tool_call.get('name')}'")
            raise

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async twin of :meth:`wrap_tool_call`; parallel calls each get their own check, on
        the guard's writer thread (the event loop never waits for the store)."""
        try:
            await self._aadopt(_task_id(request.state))
            prepared = self._prepare(request, authorize=False)
            if prepared.unchecked:
                prepared = await self._acheck(prepared)
            try:
                if prepared.denial is not None:
                    return prepared.denial
                permit = prepared.permit
                if permit is None:
                    return await handler(prepared.request)
                with permit:
                    try:
                        result = await handler(prepared.request)
                    except BaseException as exc:
                        self._failed(permit, exc)
                        raise
                self._finished(permit, result)
                return result
            finally:
                _reset(prepared.token)
        except BaseException as exc:
            where = f"tool call '{request.tool_call.get('name')}'"
            await self.guard.offload(self._abort, request.state, exc, where, always=True)
            raise

    def _abort(self, state: Any, exc: BaseException, where: str) -> None:
        """End the run's task because ``exc`` leaves ``where`` (not for control flow)."""
        if isinstance(exc, GraphBubbleUp) or is_invalid_resume(exc):
            return  # an interrupt, or a resume value to answer again: the run goes on later
        task_id = _task_id(state)
        if task_id is None:
            return
        session = self._sessions.get(task_id)
        if session is None:
            try:
                session = self._adopt(task_id)  # a resumed run that fails before a tool call
            except Exception as error:  # the run's own exception goes on
                _note(exc, f"toolguard could not end task {task_id}: {error}")
                return
        if session is None or session.status != "active":
            return
        cancelled = isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
        try:
            session.end(
                "cancelled" if cancelled else "error",
                reason=f"{where} of the agent run raised {type(exc).__name__}",
            )
        except Exception as error:  # the run's own exception goes on
            _note(
                exc,
                f"toolguard could not end task {task_id} ({type(error).__name__}: {error}); "
                "its credentials stay valid until middleware.close() or the task's ttl",
            )
            return
        # the ended session stays known until the next run prunes it: a call of this run
        # that still comes (a retry outside this middleware) is denied as "task ended"

    def _prepare(self, request: ToolCallRequest, *, authorize: bool = True) -> _Prepared:
        """Make the run's task current and authorize the call (unless the tool checks itself;
        with ``authorize=False`` a call of an invented tool comes back ``unchecked``)."""
        token: contextvars.Token[TaskSession | None] | None = None
        task_id = _task_id(request.state)
        if task_id is not None:
            session = self._sessions.get(task_id)
            if session is None:  # a run resumed here after another process interrupted it
                session = self._adopt(task_id)
            if session is not None:
                token = task_var.set(session)
                scope = _scope_var.get()
                if scope is not None and session not in scope.sessions:
                    scope.sessions.append(session)  # a resumed run: its scope ends it too
            # else: a task that cannot continue here (ended, revoked, of another intent): the
            # engine denies the call as outside a task.
            elif task_var.get() is not None:
                token = task_var.set(None)
        try:
            tool = request.tool
            if isinstance(tool, GuardedTool) and tool.guard is self.guard:
                return _Prepared(request, token)
            if tool is not None:
                # The twin checks the arguments the tool receives (validated by its schema),
                # fills an injected credential in and scrubs the token from the result.
                return _Prepared(request.override(tool=self._guarded_twin(tool)), token)
            # A tool the model invented: nothing runs it, the call is checked as written.
            if not authorize:
                return _Prepared(request, token, unchecked=True)
            call = request.tool_call
            try:
                permit = self.guard.authorize(
                    call["name"], dict(call.get("args") or {}), correlation_id=call.get("id")
                )
            except PolicyDenied as denial:
                return self._denied(request, token, denial)
            return _Prepared(request, token, permit=permit)
        except BaseException:
            _reset(token)
            raise

    async def _acheck(self, prepared: _Prepared) -> _Prepared:
        """Authorize an ``unchecked`` call on the guard's writer thread."""
        request, token = prepared.request, prepared.token
        call = request.tool_call
        try:
            try:
                permit = await self.guard.aauthorize(
                    call["name"], dict(call.get("args") or {}), correlation_id=call.get("id")
                )
            except PolicyDenied as denial:
                return self._denied(request, token, denial)
        except BaseException:
            _reset(token)
            raise
        return _Prepared(request, token, permit=permit)

    def _denied(self, request: ToolCallRequest, token: Any, denial: PolicyDenied) -> _Prepared:
        """A denial of an invented tool's call: raised, or a message to the model."""
        if self.on_deny == "raise":
            raise denial
        call = request.tool_call
        message = ToolMessage(
            content=DENIED + denial.reason,
            status="error",
            tool_call_id=call.get("id") or "",
            name=call["name"],
        )
        return _Prepared(request, token, denial=message)

    def _guarded_twin(self, tool: BaseTool) -> GuardedTool:
        """The tool's ``guard()`` twin (cached per tool object)."""
        cached = self._twins.get(id(tool))
        if cached is None or cached[0] is not tool:
            cached = (tool, guarded_twin(tool, self.guard, self.on_deny))
            with self._lock:
                if len(self._twins) >= _MAX_TWINS:
                    del self._twins[next(iter(self._twins))]
                self._twins[id(tool)] = cached
        return cached[1]

    def _failed(self, permit: Permit, exc: BaseException) -> None:
        self.guard.finish(permit, error=outcome_error(exc))

    def _finished(self, permit: Permit, result: ToolMessage | Command[Any]) -> None:
        self.guard.finish(permit, error=result_error(result))


def _note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to ``exc`` (Python 3.11+ shows it under the traceback)."""
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        with contextlib.suppress(Exception):
            exc.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(text)


def _reset(token: contextvars.Token[TaskSession | None] | None) -> None:
    if token is not None:
        try:
            task_var.reset(token)
        except ValueError:  # pragma: no cover - reset in another context
            task_var.set(None)


def _task_id(state: Any) -> str | None:
    value = state.get(STATE_KEY) if isinstance(state, Mapping) else getattr(state, STATE_KEY, None)
    return value if isinstance(value, str) and value else None
