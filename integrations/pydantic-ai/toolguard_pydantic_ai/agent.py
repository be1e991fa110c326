"""``GuardedAgent``: each run of a PydanticAI agent is one toolguard task.

``GuardedAgent`` is a ``WrapperAgent`` (PydanticAI's own base for agents that wrap another)
that overrides ``iter()``, the one method every way of running goes through: ``run``,
``run_sync``, ``run_stream``, ``run_stream_sync``, ``run_stream_events`` and ``iter`` itself. The
task starts before the run's first step, is current for everything the run does (its tool
calls, in tasks and worker threads), and ends — revoking every credential of the run and
recording ``task_end`` — however the run ends: finished (``ok``), raised (``error``: a tool, the
model, ``UsageLimitExceeded``, ``UnexpectedModelBehavior``), cancelled (``cancelled``:
``asyncio`` cancellation, ``RunCancelled``, ``RunTimedOut``), or left before it finished
(``abandoned``: an ``iter()`` loop broken off early).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic_ai import DeferredToolRequests
from pydantic_ai.agent import AbstractAgent, WrapperAgent
from pydantic_ai.exceptions import RunCancelled
from pydantic_ai.run import AgentRun
from pydantic_ai.toolsets import AbstractToolset, CombinedToolset, FunctionToolset, WrapperToolset

from toolguard import AuditError, ConfigError, Guard, PolicyDenied, TaskSession, ToolGuardError
from toolguard.adapters import task_params
from toolguard.context import task_var
from toolguard.intent import template_parameters

from .toolset import GuardedToolset

__all__ = ["GuardedAgent", "unguarded_tools"]

log = logging.getLogger("toolguard")


class GuardedAgent(WrapperAgent[Any, Any]):
    """A PydanticAI agent whose every run is one toolguard task.

    ``GuardedAgent(agent, guard, intent="process-job", params={"job_id": "42"})``, then use it
    as the agent: ``await guarded.run(prompt, deps=...)``, ``guarded.run_sync(...)``,
    ``async with guarded.run_stream(...)``, ``async with guarded.iter(...)``, with the arguments
    of PydanticAI's methods.

    ``intent``: each run is a task of this intent. Its template parameters come from
    ``params``, then the run's ``deps=`` (a key of a mapping, or an attribute), then — when
    delegating — the parent task; a missing one is a :class:`~toolguard.ConfigError` before the
    run starts, an unknown intent a ``ConfigError`` now. With ``intent=None`` the agent starts
    no task of its own: its calls run under the task current in the caller's context
    (``async with guard.task(...)``). ``delegate``: when a task is already current as the run
    starts (the run is inside a ``guard.task`` block, or inside a guarded tool of another agent:
    agent delegation), the run's task is delegated from it (attenuation only, the ``act``
    chain; a wider intent raises :class:`~toolguard.PolicyDenied` before the run starts).

    The agent's tools must be in toolsets wrapped with
    :func:`~toolguard_pydantic_ai.guard_toolset`; the wrapper checks no call itself. Fail
    closed: an agent (or a run's ``toolsets=``) with tools outside any guarded toolset
    (``@agent.tool``, ``Agent(tools=...)``, an unguarded toolset) is refused with
    :class:`~toolguard.ConfigError`, now and before each run starts, unless
    ``allow_unguarded=True`` says those tools may run unchecked.
    An :class:`~toolguard.AuditError` or :class:`~toolguard.PolicyDenied` that PydanticAI wrapped
    (in an exception group of parallel tool calls) leaves the run as itself.
    """

    def __init__(
        self,
        wrapped: AbstractAgent[Any, Any],
        guard: Guard,
        intent: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        delegate: bool = True,
        allow_unguarded: bool = False,
    ) -> None:
        if not isinstance(guard, Guard):
            raise TypeError(f"GuardedAgent needs a toolguard Guard; got {type(guard).__name__}")
        super().__init__(wrapped)
        self.guard = guard
        self.intent = intent
        self.params: dict[str, Any] = dict(params or {})
        self.delegate = delegate
        self.allow_unguarded = allow_unguarded
        self._refuse_unguarded(wrapped.toolsets)
        if intent is not None:
            template_parameters(
                guard.config, intent, where="GuardedAgent"
            )  # an unknown intent is a ConfigError now
        self._active: dict[int, TaskSession] = {}
        self._lock = threading.Lock()

    # -- the one entry point every run goes through ----------------------------------------

    @asynccontextmanager
    async def iter(  # PydanticAI's keyword arguments, passed on as they are
        self, user_prompt: Any = None, **kwargs: Any
    ) -> AsyncIterator[AgentRun[Any, Any]]:
        self._refuse_unguarded([*self.wrapped.toolsets, *(kwargs.get("toolsets") or ())])
        # the task's start and end are written on the guard's writer thread (never on the loop)
        session = await self.guard.offload(self._start, kwargs.get("deps"), abandon=self._abandoned)
        token = task_var.set(session) if session is not None else None
        run: AgentRun[Any, Any] | None = None
        try:
            async with self.wrapped.iter(user_prompt, **kwargs) as run:
                yield run
        except BaseException as exc:
            await self.guard.offload(self._end_quietly, session, exc, run, always=True)
            error = _unwrap(exc)
            if error is exc:
                raise
            raise error from None
        finally:
            if token is not None:
                _reset(token)
        await self.guard.offload(self._end, session, None, run, always=True)

    # -- tasks ----------------------------------------------------------------------------

    @property
    def active_tasks(self) -> list[TaskSession]:
        """The tasks of runs that have not ended yet."""
        with self._lock:
            sessions = list(self._active.values())
        return [s for s in sessions if s.status == "active"]

    def close(self, *, reason: str = "GuardedAgent.close() was called") -> None:
        """End the task of every run still going (e.g. at shutdown)."""
        with self._lock:
            sessions, self._active = list(self._active.values()), {}
        for session in sessions:
            session.end("abandoned", reason=reason)

    def _refuse_unguarded(self, toolsets: Any) -> None:
        if self.allow_unguarded:
            return
        found = unguarded_tools(toolsets)
        if found:
            names = ", ".join(found)
            raise ConfigError(
                f"the agent has tools outside any guarded toolset ({names}): they would run "
                "unchecked. Pass them to toolguard_pydantic_ai.guard_toolset() and give the "
                "result to the agent's toolsets=, or pass GuardedAgent(allow_unguarded=True) if "
                "they may run without toolguard",
                problems=[("toolsets", f"unguarded: {names}")],
            )

    def _start(self, deps: Any) -> TaskSession | None:
        if self.intent is None:
            return None
        parent = task_var.get() if self.delegate else None
        resolved = self._resolve(self.intent, deps, parent)
        if parent is not None:
            session = parent.delegate(self.intent, **resolved)
        else:
            session = self.guard.task(self.intent, **resolved)
        session.start()
        with self._lock:
            self._active[id(session)] = session
        return session

    def _abandoned(self, session: TaskSession | None) -> None:
        """End the task of a run whose caller was cancelled while it started."""
        self._end_quietly(session, asyncio.CancelledError(), None)

    def _end(
        self, session: TaskSession | None, exc: BaseException | None, run: AgentRun[Any, Any] | None
    ) -> None:
        if session is None:
            return
        with self._lock:
            self._active.pop(id(session), None)
        if exc is None:
            result = run.result if run is not None else None
            if result is None:
                session.end("abandoned", reason="the agent run was left before it finished")
            elif isinstance(result.output, DeferredToolRequests):
                session.end(
                    "ok",
                    reason="the agent run paused for deferred tool calls; resuming is a new run",
                )
            else:
                session.end("ok", reason="the agent run finished")
        elif isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, RunCancelled)):
            session.end("cancelled", reason=f"the agent run was cancelled ({type(exc).__name__})")
        elif isinstance(exc, GeneratorExit):
            session.end("abandoned", reason="the agent run was left before it finished")
        else:
            error = _unwrap(exc)
            session.end("error", reason=f"the agent run raised {type(error).__name__}")

    def _end_quietly(
        self, session: TaskSession | None, exc: BaseException, run: AgentRun[Any, Any] | None
    ) -> None:
        """:meth:`_end` while an error is already on its way: a failure to record the end is
        logged, not raised over the run's own error. The credentials are revoked in memory all
        the same, and no task outlives its ttl."""
        try:
            self._end(session, exc, run)
        except ToolGuardError as failure:
            log.warning("toolguard: could not record the end of the agent run's task: %s", failure)

    def _resolve(self, intent: str, deps: Any, parent: TaskSession | None) -> dict[str, Any]:
        return task_params(
            self.guard,
            intent,
            given=self.params,
            contexts=(deps,),
            parent=parent,
            where="GuardedAgent",
            how="GuardedAgent(params={{{first}: ...}}) or in the run's deps= (a key or an "
            "attribute)",
        )


def unguarded_tools(toolsets: Any) -> list[str]:
    """The tools (or, for toolsets that list their tools only during a run, the toolsets) in
    ``toolsets`` that no :class:`~toolguard_pydantic_ai.GuardedToolset` wraps."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(toolset: Any) -> None:
        if id(toolset) in seen or isinstance(toolset, GuardedToolset):
            return
        seen.add(id(toolset))
        if isinstance(toolset, WrapperToolset):
            walk(toolset.wrapped)
        elif isinstance(toolset, CombinedToolset):
            for inner in toolset.toolsets:
                walk(inner)
        elif isinstance(toolset, FunctionToolset):
            found.extend(repr(name) for name in toolset.tools)
        elif isinstance(toolset, AbstractToolset):
            found.append(toolset.label)
        else:  # a toolset function (``@agent.toolset``): its tools exist only during a run
            found.append(getattr(toolset, "__name__", type(toolset).__name__))

    for toolset in toolsets:
        walk(toolset)
    return found


def _reset(token: contextvars.Token[Any]) -> None:
    try:
        task_var.reset(token)
    except ValueError:  # left in another context (a stream closed from another task)
        pass


def _unwrap(exc: BaseException) -> BaseException:
    """A toolguard error PydanticAI wrapped (an exception group of parallel tool calls, a
    ``__cause__``), else ``exc``. An ``AuditError`` wins over a ``PolicyDenied``."""
    found: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (AuditError, PolicyDenied)):
            found.append(current)
            continue
        group = getattr(current, "exceptions", None)  # an ExceptionGroup (Python 3.11+)
        if isinstance(group, tuple):
            stack.extend(e for e in group if isinstance(e, BaseException))
        if current.__cause__ is not None:
            stack.append(current.__cause__)
    for kind in (AuditError, PolicyDenied):
        for error in found:
            if isinstance(error, kind):
                return error
    return exc
