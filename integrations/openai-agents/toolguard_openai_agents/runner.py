"""``GuardedRunner``: one ``Runner.run`` / ``run_sync`` / ``run_streamed`` is one task.

The runner starts a task of its intent (or delegates one from the task current in the caller's
context), makes it current for everything the SDK runs, and ends it — revoking every credential
of the run and recording ``task_end`` — however the run ends: finished (``ok``), raised
(``error``: a tool, the model, ``MaxTurnsExceeded``, a guardrail), cancelled (``cancelled``).
A handoff to another agent is a delegation: the target agent's calls run under a child task
(attenuation only, the ``act`` chain names the delegating task's identity).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Mapping
from typing import Any

from agents import Agent, RunHooks, Runner
from agents.lifecycle import RunHooksBase
from agents.result import RunResult, RunResultStreaming

from toolguard import AuditError, Guard, PolicyDenied, TaskSession, ToolGuardError
from toolguard.adapters import task_params
from toolguard.context import task_var
from toolguard.engine import OnDeny
from toolguard.intent import template_parameters

from ._run import RunState, run_var

__all__ = ["GuardedRunner"]

log = logging.getLogger("toolguard")


class GuardedRunner:
    """Runs Agents SDK agents so that each run is one toolguard task.

    ``GuardedRunner(guard, intent="process-job", params={"job_id": "42"})``, then
    ``await runner.run(agent, input, ...)``, ``runner.run_sync(...)`` or
    ``runner.run_streamed(...)`` with the arguments of ``agents.Runner``'s methods.

    ``intent``: each run is a task of this intent. Its template parameters come from ``params``
    (the runner's, then the call's ``params=``), then the run's ``context=`` (a key or an
    attribute), then — when delegating — the parent task. With ``intent=None`` the run starts no
    task of its own: the calls run under the task current in the caller's context
    (``async with guard.task(...)``). ``delegate``: when a task is already current as the run
    starts (the run is inside a ``guard.task`` block or a guarded tool of another agent), the
    run's task is delegated from it (attenuation only: a wider intent raises
    :class:`~toolguard.PolicyDenied` before the run starts).

    ``handoff_intents`` maps agent names to intents: a handoff to such an agent delegates a
    task of that intent from the current one; a handoff to any other agent delegates a task of
    the current intent (same parameters). A refused delegation (wider than the current task)
    is audited; then ``on_deny="message"`` (default) lets the run go on and every later tool
    call of the run is denied with the refusal's reason, ``"raise"`` fails the run with
    :class:`~toolguard.PolicyDenied`.

    Tool errors the SDK wraps in ``UserError`` (``PolicyDenied`` from ``on_deny="raise"``
    tools, :class:`~toolguard.AuditError`) leave :meth:`run` and :meth:`run_sync` as themselves.
    """

    def __init__(
        self,
        guard: Guard,
        intent: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        handoff_intents: Mapping[str, str] | None = None,
        delegate: bool = True,
        on_deny: OnDeny = "message",
    ) -> None:
        if on_deny not in ("message", "raise"):
            raise ValueError("on_deny must be 'message' or 'raise'")
        self.guard = guard
        self.intent = intent
        self.params: dict[str, Any] = dict(params or {})
        self.handoff_intents: dict[str, str] = dict(handoff_intents or {})
        self.delegate = delegate
        self.on_deny: OnDeny = on_deny
        for name in [intent, *self.handoff_intents.values()]:
            if name is not None:
                template_parameters(
                    guard.config, name, where="GuardedRunner"
                )  # an unknown intent is a ConfigError now
        self._runs: dict[int, RunState] = {}
        self._lock = threading.Lock()

    # -- the three ways to run --------------------------------------------------------------

    async def run(
        self,
        starting_agent: Agent[Any],
        input: Any,
        *,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunResult:
        """``await Runner.run(starting_agent, input, **kwargs)`` as one task (its start and end
        are written on the guard's writer thread: the event loop never waits for the store)."""
        state = await self.guard.offload(self._start, params, kwargs, abandon=self._abandoned)
        tokens = _enter(state)
        try:
            result = await Runner.run(starting_agent, input, **kwargs)
        except BaseException as exc:
            await self.guard.offload(self._end_quietly, state, exc, always=True)
            error = _unwrap(exc)
            if error is exc:
                raise
            raise error from None
        finally:
            _leave(tokens)
        await self.guard.offload(self._end, state, None, result, always=True)
        return result

    def run_sync(
        self,
        starting_agent: Agent[Any],
        input: Any,
        *,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunResult:
        """``Runner.run_sync(starting_agent, input, **kwargs)`` as one task."""
        state = self._start(params, kwargs)
        tokens = _enter(state)
        try:
            result = Runner.run_sync(starting_agent, input, **kwargs)
        except BaseException as exc:
            self._end_quietly(state, exc)
            error = _unwrap(exc)
            if error is exc:
                raise
            raise error from None
        finally:
            _leave(tokens)
        self._end(state, None, result)
        return result

    def run_streamed(
        self,
        starting_agent: Agent[Any],
        input: Any,
        *,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunResultStreaming:
        """``Runner.run_streamed(starting_agent, input, **kwargs)`` as one task.

        Call it from a running event loop, as the SDK requires. The task's start is written
        here, on the calling thread (this call cannot await: from a coroutine prefer
        :meth:`arun_streamed`, which writes it on the guard's writer thread). The task ends
        when the streamed run's loop ends: it finished, raised, or was cancelled
        (``result.cancel()``, or the loop's task cancelled); that end is written on the
        guard's writer thread, after the run's calls (``guard.close()`` waits for it).
        """
        return self._streamed(self._start(params, kwargs), starting_agent, input, kwargs)

    async def arun_streamed(
        self,
        starting_agent: Agent[Any],
        input: Any,
        *,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RunResultStreaming:
        """:meth:`run_streamed` with the task's start written on the guard's writer thread
        too: the event loop never waits for the store."""
        state = await self.guard.offload(self._start, params, kwargs, abandon=self._abandoned)
        return self._streamed(state, starting_agent, input, kwargs)

    def _streamed(
        self, state: RunState, starting_agent: Agent[Any], input: Any, kwargs: dict[str, Any]
    ) -> RunResultStreaming:
        tokens = _enter(state)
        try:
            result = Runner.run_streamed(starting_agent, input, **kwargs)
        except BaseException as exc:
            self._end_quietly(state, exc)
            raise
        finally:
            _leave(tokens)
        loop_task = result.run_loop_task
        if loop_task is None:  # pragma: no cover - every SDK version we support sets it
            self._end(state, RuntimeError("the streamed run has no run loop to watch"))
            raise RuntimeError("Runner.run_streamed() returned no run loop; cannot guard it")

        def done(task: asyncio.Task[Any]) -> None:
            # a callback of the loop: the end is written on the writer thread, not awaited
            with self._lock:
                self._runs.pop(id(state), None)
            if task.cancelled():
                self.guard.submit(self._end_quietly, state, asyncio.CancelledError())
            else:
                # the SDK keeps a streamed run's error (MaxTurnsExceeded, a guardrail, a tool's
                # UserError) for stream_events() to raise: the loop's task itself succeeds
                error = task.exception() or getattr(result, "_stored_exception", None)
                self.guard.submit(self._end_quietly, state, error, result)

        loop_task.add_done_callback(done)
        return result

    # -- tasks ---------------------------------------------------------------------------------

    @property
    def active_tasks(self) -> list[TaskSession]:
        """The tasks of runs that have not ended yet."""
        with self._lock:
            states = list(self._runs.values())
        return [s for st in states for s in st.started if s.status == "active"]

    def close(self, *, reason: str = "GuardedRunner.close() was called") -> None:
        """End every task of runs still going (e.g. at shutdown)."""
        with self._lock:
            states, self._runs = list(self._runs.values()), {}
        for state in states:
            _end_sessions(state, "abandoned", reason)

    def _start(self, params: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> RunState:
        hooks = kwargs.get("hooks")
        if hooks is not None and not isinstance(hooks, RunHooksBase):  # before any task starts
            raise TypeError(
                f"hooks= must be RunHooks (agent-scoped AgentHooks go on the Agent); got "
                f"{type(hooks).__name__}"
            )
        values = {**self.params, **dict(params or {})}
        context = kwargs.get("context")
        parent = task_var.get()
        if self.intent is None:
            state = RunState(root=None, current=parent)
        else:
            source = parent if self.delegate else None
            resolved = self._resolve(self.intent, values, context, source)
            if parent is not None and self.delegate:
                session = parent.delegate(self.intent, **resolved)
            else:
                session = self.guard.task(self.intent, **resolved)
            session.start()
            state = RunState(root=session, current=session, started=[session])
        kwargs["hooks"] = _HandoffHooks(self, state, values, context, kwargs.get("hooks"))
        with self._lock:
            self._runs[id(state)] = state
        return state

    def _end(self, state: RunState, exc: BaseException | None, result: Any = None) -> None:
        with self._lock:
            self._runs.pop(id(state), None)
        if exc is None:
            paused = bool(getattr(result, "interruptions", None))
            reason = (
                "the agent run paused for approval; resuming it is a new run"
                if paused
                else "the agent run finished"
            )
            _end_sessions(state, "ok", reason)
        elif isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            _end_sessions(state, "cancelled", "the agent run was cancelled")
        else:
            error = _unwrap(exc)
            _end_sessions(state, "error", f"the agent run raised {type(error).__name__}")

    def _abandoned(self, state: RunState) -> None:
        """End the tasks of a run whose caller was cancelled while they started."""
        self._end_quietly(state, asyncio.CancelledError())

    def _end_quietly(self, state: RunState, exc: BaseException | None, result: Any = None) -> None:
        """:meth:`_end` where an error is already on its way (or nobody could catch one): a
        failure to record the end is logged, not raised over the run's own error. The
        credentials are revoked in memory all the same, and no task outlives its ttl."""
        try:
            self._end(state, exc, result)
        except ToolGuardError as failure:
            log.warning("toolguard: could not record the end of the agent run's task: %s", failure)

    def _resolve(
        self,
        intent: str,
        values: Mapping[str, Any],
        context: Any,
        parent: TaskSession | None,
    ) -> dict[str, Any]:
        return task_params(
            self.guard,
            intent,
            given=values,
            contexts=(context,),
            parent=parent,
            where="GuardedRunner",
            how="GuardedRunner(params=...), run(..., params={{{first}: ...}}) or in the run's "
            "context=",
        )

    def _handoff(
        self,
        state: RunState,
        values: Mapping[str, Any],
        context: Any,
        to_agent: Any,
    ) -> None:
        """Delegate the task of the agent handed off to from the current one."""
        name = str(getattr(to_agent, "name", "") or "")
        with state.lock:
            current = state.current
            if state.refused is not None or state.ended or current is None:
                return
            intent = self.handoff_intents.get(name, current.intent)
            try:
                if intent == current.intent and name not in self.handoff_intents:
                    child = current.delegate(intent, **current.params)
                else:
                    child = current.delegate(
                        intent, **self._resolve(intent, values, context, current)
                    )
                child.start()
            except PolicyDenied as refused:
                state.refused = PolicyDenied(
                    f"the handoff to agent '{name}' was refused: {refused.reason}",
                    task_id=refused.task_id,
                    rule=refused.rule,
                )
                if self.on_deny == "raise":
                    raise state.refused from refused
                return
            state.started.append(child)
            state.current = child
            state.agent = name


class _HandoffHooks(RunHooks[Any]):
    """The caller's run hooks (if any), plus: a handoff delegates the target agent's task."""

    def __init__(
        self,
        runner: GuardedRunner,
        state: RunState,
        values: Mapping[str, Any],
        context: Any,
        inner: RunHooks[Any] | None,
    ) -> None:
        self._tg = (runner, state, values, context)
        self._inner = inner if inner is not None else RunHooks()

    def __getattribute__(self, name: str) -> Any:
        # Every other hook (today's and future ones) is the caller's own.
        if name.startswith("on_") and name != "on_handoff":
            return getattr(object.__getattribute__(self, "_inner"), name)
        return object.__getattribute__(self, name)

    async def on_handoff(self, context: Any, from_agent: Any, to_agent: Any) -> None:
        runner, state, values, run_context = self._tg
        # the delegated task starts on the guard's writer thread (never on the event loop)
        await runner.guard.offload(runner._handoff, state, values, run_context, to_agent)
        await self._inner.on_handoff(context, from_agent, to_agent)


def _enter(state: RunState) -> tuple[contextvars.Token[Any], ...]:
    tokens: tuple[contextvars.Token[Any], ...] = (run_var.set(state),)
    if state.root is not None:
        tokens += (task_var.set(state.root),)
    return tokens


def _leave(tokens: tuple[contextvars.Token[Any], ...]) -> None:
    for var, token in reversed(list(zip((run_var, task_var), tokens))):
        try:
            var.reset(token)
        except ValueError:  # pragma: no cover - left in another context
            var.set(None)


def _end_sessions(state: RunState, status: str, reason: str) -> None:
    """End the run's tasks, the delegated ones first (ending the root ends them anyway)."""
    with state.lock:
        if state.ended:
            return
        state.ended = True
    first: BaseException | None = None
    for session in reversed(state.started):
        try:
            session.end(status, reason=reason)
        except ToolGuardError as exc:  # keep ending the others; raise the first after
            first = first or exc
    if first is not None:
        raise first


def _unwrap(exc: BaseException) -> BaseException:
    """A toolguard error the SDK wrapped (``UserError`` from a tool, ...), else ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (AuditError, PolicyDenied)):
            return current
        seen.add(id(current))
        current = current.__cause__
    return exc
