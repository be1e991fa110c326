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
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from .chain import Event
from .context import carry_task, task_var
from .errors import ConfigError, PolicyDenied, ToolGuardError
from .intent import BoundTask
from .redaction import scrub_text
from .text import MAX_NAME_CHARS, MAX_REASON_CHARS, check_text, clip, neutral, printable, quote

if TYPE_CHECKING:
    from .engine import Guard

__all__ = ["TaskSession"]

log = logging.getLogger("toolguard")

_P = ParamSpec("_P")
_R = TypeVar("_R")


class TaskSession:
    """A running task. Use ``with guard.task(...) as task`` or ``async with``."""

    def __init__(
        self,
        guard: Guard,
        bound: BoundTask,
        *,
        parent: TaskSession | None = None,
        task_id: str | None = None,
    ) -> None:
        self.guard = guard
        self.bound = bound
        self.parent = parent
        self.task_id = task_id or uuid.uuid4().hex
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
        self._detached = False  # the ancestor of a resumed task: its own process ends it
        self._resumed = False  # made active by Guard.resume, not yet entered

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
            Event(
                ts=now,
                task_id=self.task_id,
                identity=self.identity,
                intent=self.intent,
                kind="task_start",
                reason=self.bound.purpose,
                rule=f"intents.{self.intent}",
                correlation_id=self.parent.task_id if self.parent else None,
                args=guard.redactor(dict(self.bound.params))[0],
            ),
            disabled=config_disabled(guard, self.identity),
        )
        self.status = "active"
        self.ended_reason = None
        if self.parent is not None:
            self.parent.children.append(self)
        return self

    @classmethod
    def adopt(cls, guard: Guard, task_id: str, *, intent: str | None = None) -> TaskSession:
        """Internal: the session of an active task started elsewhere; use
        :meth:`Guard.resume`."""
        now = guard.clock()
        if check_text(task_id, limit=MAX_NAME_CHARS) is not None:  # no task has such an id
            task_id = neutral(task_id)
        row = guard.store.task_row(task_id)
        if row is None:
            _refuse_resume(guard, task_id, None, "no such task in the audit trail", now)
        if intent is not None and row["intent"] != intent:
            _refuse_resume(guard, task_id, row, f"it is not a task of intent {quote(intent)}", now)
        try:
            params = json.loads(row["params"] or "{}")
            if not isinstance(params, dict):
                raise ValueError("its params are not a JSON object")
            bound = guard.policy.bind(row["intent"], params)
        except (ConfigError, ValueError) as exc:  # ValueError: damaged params in the trail
            _refuse_resume(guard, task_id, row, f"its intent cannot be bound ({exc})", now)
        why = _not_resumable(guard, row, bound, now)
        if why is not None:
            _refuse_resume(guard, task_id, row, why, now)
        parent = cls._ancestor(guard, row["parent_id"]) if row["parent_id"] else None
        session = cls(guard, bound, parent=parent, task_id=task_id)
        session.started_at = float(row["started_at"])
        session.deadline = float(row["deadline"])
        revoked = guard.store.revoked_reason(
            jti="", task_id=task_id, identity=bound.identity, chain=session.chain[1:],
            issued_at=session.started_at,
        )  # fmt: skip
        if revoked is not None:
            _refuse_resume(guard, task_id, row, f"it was revoked ({revoked})", now)
        guard.store.append(
            Event(
                ts=now,
                task_id=task_id,
                identity=bound.identity,
                intent=bound.intent,
                kind="task_resume",
                decision="allow",
                reason="the task continues here (it was started by another process or guard)",
                rule=f"intents.{bound.intent}",
            )
        )
        session.status = "active"
        session.ended_reason = None
        session._resumed = True
        return session

    @classmethod
    def _ancestor(cls, guard: Guard, task_id: str) -> TaskSession:
        """A parent of a resumed task, for its delegation chain and budgets; never ended from
        here (its own process ends it, and ending it ends this child)."""
        row = guard.store.task_row(task_id)
        if row is None:
            raise PolicyDenied(
                f"the task cannot be resumed: its parent task {task_id} is not in the trail",
                task_id=task_id,
                rule="task.resume",
            )
        try:
            params = json.loads(row["params"] or "{}")
            if not isinstance(params, dict):
                raise ValueError("its params are not a JSON object")
            bound = guard.policy.bind(row["intent"], params)
        except (ConfigError, ValueError) as exc:  # ValueError: damaged params in the trail
            raise PolicyDenied(
                f"the task cannot be resumed: its parent task {task_id} cannot be bound ({exc})",
                task_id=task_id,
                rule="task.resume",
            ) from None
        parent = cls._ancestor(guard, row["parent_id"]) if row["parent_id"] else None
        session = cls(guard, bound, parent=parent, task_id=task_id)
        session.started_at = float(row["started_at"])
        session.deadline = float(row["deadline"])
        session.status = "active" if row["ended_at"] is None else str(row["status"])
        session.ended_reason = None if row["ended_at"] is None else str(row["status"])
        session._detached = True
        return session

    def end(self, status: str = "ok", *, reason: str | None = None) -> None:
        """End the task (idempotent): end its children, revoke its credentials, ``task_end``."""
        with self._lock:
            if self.status not in ("active",) or self._detached:
                return
            self.status = "ending"
        try:
            for child in list(self.children):
                child.end("parent-ended", reason=f"parent task {self.task_id} ended")
        finally:
            guard = self.guard
            # the end and its revocation are written whatever the clock says
            lenient = getattr(guard.clock, "lenient", None)  # engine.CheckedClock
            now = lenient() if lenient is not None else guard.clock()
            if status == "ok" and now >= self.deadline:
                status = "expired"
            status = neutral(status)  # caller text (an app may pass an exception's message):
            why = clip(printable(scrub_text(reason)), MAX_REASON_CHARS) if reason else None
            why = why or f"task ended ({status})"  # never a reason to fail the end
            self.ended_reason = status
            try:
                guard.store.end_task(
                    self.task_id,
                    status=status,
                    now=now,
                    reason=why,
                    events=[
                        Event(
                            ts=now,
                            task_id=self.task_id,
                            identity=self.identity,
                            intent=self.intent,
                            kind="task_end",
                            outcome=status,
                            reason=why,
                            rule="task.end",
                            duration_ms=round((now - self.started_at) * 1000.0, 3),
                        )
                    ],
                )
            finally:
                self.status = status
                try:
                    # providers revoke what they issued, even if the end could not be written
                    # (their events fall under the checkpoint)
                    guard.on_task_end(self.task_id, tuple(self.jtis))
                finally:
                    _anchor(guard, now)

    def _status_for(self, exc: BaseException | None) -> str:
        if exc is None:
            return "ok"
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            return "cancelled"
        return "error"

    def __enter__(self) -> TaskSession:
        if self._resumed:  # Guard.resume: already active
            self._resumed = False
        else:
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
        # the start is written on the guard's writer thread (never on the event loop); a
        # task started for a caller cancelled meanwhile is ended there too
        if self._resumed:
            self._resumed = False
        else:
            await self.guard.offload(self.start, abandon=_end_abandoned)
        self._token = task_var.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._reset()
        finally:  # on the writer thread; a cancellation of this await does not stop it
            await self.guard.offload(self.end, self._status_for(exc), always=True)

    async def astart(self) -> TaskSession:
        """:meth:`start` for async callers: written on the guard's writer thread."""
        return await self.guard.offload(self.start, abandon=_end_abandoned)

    async def aend(self, status: str = "ok", *, reason: str | None = None) -> None:
        """:meth:`end` for async callers: written on the guard's writer thread."""
        await self.guard.offload(self.end, status, reason=reason, always=True)

    def _leave(self, exc: BaseException | None) -> None:
        try:
            self._reset()
        finally:
            self.end(self._status_for(exc))

    def _reset(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                task_var.reset(token)
            except ValueError:  # left in another context (e.g. an async generator)
                pass

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
        if wider is None and bound.identity != self.identity:
            off = config_disabled(self.guard, bound.identity)
            off = off or self.guard.store.identity_disabled(bound.identity)
            if off is not None:
                wider = f"identity '{bound.identity}' is disabled ({off})"
        if wider is None:
            revoked = self.guard.store.revoked_reason(
                jti="", task_id=self.task_id, identity=self.identity, chain=self.chain[1:],
                issued_at=self.started_at,
            )  # fmt: skip
            if revoked is not None:
                wider = f"the parent task was revoked ({revoked})"
        if wider is not None:
            error = PolicyDenied(
                clip(f"delegation to intent '{intent}' refused: {wider}", MAX_REASON_CHARS),
                task_id=self.task_id,
                rule=f"intents.{intent}.delegation",
            )
            now = self.guard.clock()
            self.guard.store.append(
                Event(
                    ts=now,
                    task_id=self.task_id,
                    identity=self.identity,
                    intent=self.intent,
                    kind="denied",
                    decision="deny",
                    reason=error.reason,
                    rule=error.rule,
                    args=self.guard.redactor({"intent": intent, **params})[0],
                )
            )
            raise error
        return TaskSession(self.guard, bound, parent=self)

    def carry(self, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        """``fn`` bound to this task, for threads that do not inherit contextvars."""
        return carry_task(fn, task=self)


def _end_abandoned(session: TaskSession) -> None:
    """End a task started for an async caller that was cancelled while it started."""
    session.end("cancelled", reason="the caller was cancelled while the task started")


def config_disabled(guard: Guard, identity: str) -> str | None:
    """Why the config disables an identity (``identities.X.disabled: true``), or None."""
    config = guard.config.identities.get(identity)
    if config is not None and config.disabled:
        return f"by the config: identities.{identity}.disabled is true"
    return None


def _not_resumable(
    guard: Guard, row: Mapping[str, Any], bound: BoundTask, now: float
) -> str | None:
    if row["ended_at"] is not None:
        return f"it has ended ({row['status']})"
    if now >= float(row["deadline"]):
        return "it is past its time limit (ttl)"
    if bound.identity != row["identity"]:
        return (
            f"its intent '{bound.intent}' now runs as identity '{bound.identity}', not "
            f"'{row['identity']}'"
        )
    disabled = config_disabled(guard, bound.identity)
    disabled = disabled or guard.store.identity_disabled(bound.identity)
    if disabled is not None:
        return f"its identity '{bound.identity}' is disabled ({disabled})"
    return None


def _refuse_resume(
    guard: Guard, task_id: str, row: Mapping[str, Any] | None, why: str, now: float
) -> NoReturn:
    """Audit and raise the refusal of a resume."""
    error = PolicyDenied(
        f"task {task_id} cannot be resumed: {why}", task_id=task_id, rule="task.resume"
    )
    guard.store.append(
        Event(
            ts=now,
            task_id=task_id,
            identity=row["identity"] if row else None,
            intent=row["intent"] if row else None,
            kind="denied",
            decision="deny",
            reason=error.reason,
            rule=error.rule,
        )
    )
    raise error


def _anchor(guard: Guard, now: float) -> None:
    """A signed checkpoint of the chain head at task end; a failure is logged, not raised."""
    try:
        guard.audit.checkpoint(now=now)
    except ToolGuardError as exc:
        log.warning("toolguard: could not write the audit checkpoint: %s", exc)
