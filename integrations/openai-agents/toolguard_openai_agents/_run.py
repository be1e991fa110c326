"""The state of one guarded run, shared by :class:`GuardedRunner` and the guarded tools.

A run's state is put in a contextvar before the SDK's run starts, so every asyncio task the SDK
creates for the run (tool calls, hooks, the streamed run loop) sees the same object. Handoffs
change ``current`` (the task the next tool calls run under); the guarded tools read it.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any

from toolguard import PolicyDenied, TaskSession
from toolguard.context import task_var

__all__ = ["RunState", "denial_reason", "enter_call", "run_var"]


@dataclass(eq=False)
class RunState:
    """One run: its own task (if it started one), its delegated tasks, the current task."""

    root: TaskSession | None
    """The run's task; ``None`` when the run uses the caller's (``GuardedRunner(intent=None)``)."""
    started: list[TaskSession] = field(default_factory=list)
    """The tasks this run started (its own, then the handoffs' delegations), in order."""
    current: TaskSession | None = None
    """The task the agent acting now runs under (``root`` until a handoff)."""
    refused: PolicyDenied | None = None
    """A refused handoff delegation: every later call of the run is denied with its reason."""
    agent: str | None = None
    """The name of the agent acting now."""
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


run_var: contextvars.ContextVar[RunState | None] = contextvars.ContextVar(
    "toolguard_openai_agents_run", default=None
)


def enter_call(ctx: Any) -> contextvars.Token[TaskSession | None] | None:
    """Make the task of the run's current agent current for one tool call (after a handoff);
    returns the token to reset, or None when the context's task is already the right one."""
    state = run_var.get()
    if state is None:
        return None
    if state.refused is not None or state.ended:
        return task_var.set(None)  # the call is denied (and audited) as outside a task
    current = state.current
    if current is None or task_var.get() is current:
        return None
    return task_var.set(current)


def denial_reason(denial: PolicyDenied) -> str:
    """The reason the model reads: a refused handoff's, when the run has one."""
    state = run_var.get()
    if state is not None and state.refused is not None:
        return state.refused.reason
    return denial.reason
