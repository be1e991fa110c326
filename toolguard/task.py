"""``TaskSession``: one run of an intent, as a sync and async context manager.

Entering records ``task_start`` and makes the task current (a contextvar that guarded tools read).
Leaving — normally, by exception, by cancellation, or after the TTL — revokes every credential
of the task and its children and records ``task_end`` with the status, in a ``finally`` path.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .context import carry_task, task_var
from .errors import PolicyDenied, ToolGuardError
from .intent import BoundTask

if TYPE_CHECKING:
    from .engine import Guard

__all__ = ["TaskSession"]

log = logging.getLogger("toolguard")

_P = ParamSpec("_P")
_R = TypeVar("_R")


class TaskSession:
    """A running task. Use ``with guard.task(...) as task`` or ``async with``."""

    def __init__(
        self, guard: Guard, bound: BoundTask, *, parent: TaskSession | None = None
    ) -> None:
        self.guard = guard
        self.bound = bound
        self.parent = parent
        self.task_id = uuid.uuid4().hex
        self.chain: tuple[str, ...] = (self.task_id, *(parent.chain if parent else ()))
        self.act: dict[str, Any] | None = None
        if parent is not None:
            self.act = {"sub": parent.bound.identity, "task_id": parent.task_id}
            if parent.act is not None:
                self.act["act"] = parent.act
        self.started_at = 0.0
        self.deadline = 0.0
        self.status: str = "pending"
        self.ended_reason: str | None = "not started"
        self.children: list[TaskSession] = []
        self.jtis: list[str] = []
        """The ids of the credentials issued in this task (for providers' revocation)."""
        self._token: contextvars.Token[TaskSession | None] | None = None
        self._lock = threading.Lock()

    # -- identity --------------------------------------------------------------------------

    @property
    def intent(self) -> str:
        return self.bound.intent

    @property
    def identity(self) -> str:
        return self.bound.identity

    @property
    def params(self) -> dict[str, str]:
        return dict(self.bound.params)

    def __repr__(self) -> str:
        return (
            f"TaskSession(task_id={self.task_id!r}, intent={self.intent!r}, "
            f"identity={self.identity!r}, status={self.status!r})"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TaskSession:
        """Record the start (``task_start``); refused if the identity is disabled."""
        if self.status != "pending":
            raise RuntimeError("a task session can be started only once; call guard.task() again")
        guard = self.guard
        now = guard.clock()
        self.started_at = now
        deadline = now + self.bound.ttl
        if self.parent is not None:
            deadline = min(deadline, self.parent.deadline)
        self.deadline = deadline
        guard.store.start_task(
            {
                "task_id": self.task_id,
                "parent_id": self.parent.task_id if self.parent else None,
                "intent": self.intent,
                "identity": self.identity,
                "params": json.dumps(dict(self.bound.params), sort_keys=True),
                "purpose": self.bound.purpose,
                "status": "active",
                "started_at": now,
                "deadline": deadline,
                "tainted": 0,
            },
            {
                "ts": now,
                "task_id": self.task_id,
                "identity": self.identity,
                "intent": self.intent,
                "kind": "task_start",
                "reason": self.bound.purpose,
                "rule": f"intents.{self.intent}",
                "correlation_id": self.parent.task_id if self.parent else None,
                "args": guard.redactor(dict(self.bound.params))[0],
            },
        )
        self.status = "active"
        self.ended_reason = None
        if self.parent is not None:
            self.parent.children.append(self)
        return self

    def end(self, status: str = "ok", *, reason: str | None = None) -> None:
        """End the task (idempotent): end its children, revoke its credentials, ``task_end``."""
        with self._lock:
            if self.status not in ("active",):
                return
            self.status = "ending"
        try:
            for child in list(self.children):
                child.end("parent-ended", reason=f"parent task {self.task_id} ended")
        finally:
            guard = self.guard
            now = guard.clock()
            if status == "ok" and now >= self.deadline:
                status = "expired"
            self.ended_reason = status
            why = reason or f"task ended ({status})"
            try:
                guard.store.end_task(
                    self.task_id,
                    status=status,
                    now=now,
                    reason=why,
                    events=[
                        {
                            "ts": now,
                            "task_id": self.task_id,
                            "identity": self.identity,
                            "intent": self.intent,
                            "kind": "task_end",
                            "outcome": status,
                            "reason": why,
                            "rule": "task.end",
                            "duration_ms": round((now - self.started_at) * 1000.0, 3),
                        }
                    ],
                )
            finally:
                self.status = status
                try:
                    # providers revoke what they issued, even if the end could not be written
                    # (their events fall under the checkpoint)
                    guard._on_task_end(self.task_id, tuple(self.jtis))
                finally:
                    _anchor(guard, now)

    def _status_for(self, exc: BaseException | None) -> str:
        if exc is None:
            return "ok"
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            return "cancelled"
        return "error"

    def __enter__(self) -> TaskSession:
        self.start()
        self._token = task_var.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave(exc)

    async def __aenter__(self) -> TaskSession:
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
        try:
            if token is not None:
                try:
                    task_var.reset(token)
                except ValueError:  # left in another context (e.g. an async generator)
                    pass
        finally:
            self.end(self._status_for(exc))

    # -- delegation ------------------------------------------------------------------------

    def delegate(self, intent: str, /, **params: Any) -> TaskSession:
        """A child task for a sub-agent: it may only narrow what this task may do.

        Raises :class:`PolicyDenied` (audited) when the child's tools or patterns are wider
        than this task's intent or identity ceiling. Use the result as a context manager.
        """
        if self.status != "active":
            raise PolicyDenied(
                f"task {self.task_id} is not active ({self.status}); it cannot delegate",
                task_id=self.task_id,
                rule="task.active",
            )
        bound = self.guard.policy.bind(intent, params)
        wider = bound.covered_by(self.bound)
        if wider is None and self.guard.clock() >= self.deadline:
            wider = "the parent task is past its time limit (ttl)"
        if wider is None:
            revoked = self.guard.store.revoked_reason(
                jti="", task_id=self.task_id, identity=self.identity, chain=self.chain[1:],
                issued_at=self.started_at,
            )  # fmt: skip
            if revoked is not None:
                wider = f"the parent task was revoked ({revoked})"
        if wider is not None:
            error = PolicyDenied(
                f"delegation to intent '{intent}' refused: {wider}",
                task_id=self.task_id,
                rule=f"intents.{intent}.delegation",
            )
            now = self.guard.clock()
            self.guard.store.append(
                {
                    "ts": now,
                    "task_id": self.task_id,
                    "identity": self.identity,
                    "intent": self.intent,
                    "kind": "denied",
                    "decision": "deny",
                    "reason": error.reason,
                    "rule": error.rule,
                    "args": self.guard.redactor({"intent": intent, **params})[0],
                }
            )
            raise error
        return TaskSession(self.guard, bound, parent=self)

    def carry(self, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        """``fn`` bound to this task, for threads that do not inherit contextvars."""
        return carry_task(fn, task=self)


def _anchor(guard: Guard, now: float) -> None:
    """A signed checkpoint of the chain head at task end; a failure is logged, not raised."""
    try:
        guard.audit.checkpoint(now=now)
    except ToolGuardError as exc:
        log.warning("toolguard: could not write the audit checkpoint: %s", exc)
