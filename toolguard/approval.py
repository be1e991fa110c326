"""Human approval of a call, bound to the exact action (docs/agents.md, "Human approval").

A call the intent allows and an ``approve`` rule matches is *held*: :meth:`ApprovalGate.hold`
records an ``approval_requested`` event carrying the call's :func:`action_digest` and waits for
a decision, from (in this order)

* the guard's ``approver`` callable (sync or async), if it has one;
* a LangGraph ``interrupt`` whose value is the request, when the call runs inside a graph with
  a checkpointer: the run pauses and resumes with ``Command(resume=decision)``;
* else the store-backed queue, answered by ``toolguard approvals approve|reject``: the call
  polls the trail for at most ``approval_ttl``.

The decision is an ``approved``, ``rejected`` or ``approval_expired`` event (first one wins,
see :mod:`toolguard.store.approvals`). Only an approval lets the call go on to its ``request``
event, which checks, in its own transaction, that the approval is unused and unexpired. Nothing
is spent and no credential exists before that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import hmac
import inspect
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from .chain import Event
from .errors import ApprovalDenied, AuditError, ConfigError, PolicyDenied
from .intent import ApprovalRule, Call
from .jcs import CanonicalizationError, canonical_sha256, canonicalize
from .store.approvals import ApprovalRecord, request_event
from .text import MAX_NAME_CHARS, MAX_REASON_CHARS, check_text, clip, printable

if TYPE_CHECKING:
    from .config import GuardConfig
    from .engine import Guard
    from .task import TaskSession

__all__ = [
    "ApprovalGate",
    "Approver",
    "Decision",
    "action_digest",
    "approved_reason",
    "check_approver",
    "held_by",
    "config_hash",
    "parse_decision",
]

Approver = Callable[[Mapping[str, Any]], Any]
"""``approver(request) -> decision`` (or an awaitable of one): ``{"approved": bool, "by": str,
"note": str}`` or a bare bool."""

MAX_NOTE_CHARS = MAX_REASON_CHARS
"""A decision's note is at most this many characters."""
_POLL_FIRST, _POLL_MAX = 0.02, 0.5
"""The queue's polling interval: from 20 ms, growing to 0.5 s."""
_DECISION_KEYS = frozenset({"approved", "by", "note", "request_id", "digest"})


@dataclass(frozen=True, slots=True)
class Decision:
    """A valid decision on one request."""

    approved: bool
    by: str
    note: str | None = None


def config_hash(config: GuardConfig) -> str:
    """SHA-256 of the config's canonical JSON (secrets shown as ``**********``)."""
    return canonical_sha256(config.model_dump(mode="json"))


def action_digest(
    *,
    tool: str,
    operation: str,
    resources: list[str] | tuple[str, ...],
    args: Any,
    task_id: str,
    intent: str,
    config: str,
    args_key: bytes,
) -> str:
    """The digest an approval answers: SHA-256 (hex) of the RFC 8785 canonical JSON of the
    action: ``tool``, ``operation``, ``resources``, ``args`` (the arguments as their keyed
    digest: ``hmac-sha256:<hex>`` under the arguments key of their canonical JSON, so that the
    digest, stored in the trail, cannot be brute-forced for a low-entropy argument such as a
    PIN), ``task_id``, ``intent`` and ``config_hash``.
    :class:`~toolguard.jcs.CanonicalizationError` if the arguments are not JSON."""
    keyed = "hmac-sha256:" + hmac.new(args_key, canonicalize(args), hashlib.sha256).hexdigest()
    return canonical_sha256(
        {
            "tool": tool,
            "operation": operation,
            "resources": list(resources),
            "args": keyed,
            "task_id": task_id,
            "intent": intent,
            "config_hash": config,
        }
    )


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    problem = check_text(value, limit=limit)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return value


def parse_decision(value: Any, *, default_by: str) -> Decision:
    """A decision from an approver's return value or a resume value; :class:`ValueError`
    (with the reason) for anything that is not a decision. A bare bool is decided by
    ``default_by``."""
    if isinstance(value, bool):
        return Decision(value, default_by)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"a decision is {{'approved': bool, 'by': str, 'note': str}} or a bool, not "
            f"{type(value).__name__}"
        )
    unknown = sorted(str(k)[:40] for k in value if k not in _DECISION_KEYS)
    if unknown:
        raise ValueError(f"a decision has no keys {unknown}")
    approved = value.get("approved")
    if not isinstance(approved, bool):
        raise ValueError("a decision's 'approved' must be true or false")
    if "by" not in value:
        raise ValueError("a decision must say who decided ('by')")
    by = _text(value["by"], "a decision's 'by'", MAX_NAME_CHARS)
    if not by.strip():
        raise ValueError("a decision's 'by' is empty")
    note = value.get("note")
    if note is not None:
        note = _text(note, "a decision's 'note'", MAX_NOTE_CHARS)
    return Decision(approved, by, note or None)


def _answers(value: Mapping[str, Any], record: ApprovalRecord) -> bool:
    """A decision naming a request or a digest answers only that one."""
    rid, digest = value.get("request_id"), value.get("digest")
    return (rid is None or rid == record.request_id) and (digest is None or digest == record.digest)


def decision_reason(kind: str, by: str, note: str | None) -> str:
    """The ``reason`` column of a decision event: who decided, and their note."""
    verb = {"approved": "approved", "rejected": "rejected"}.get(kind, "expired")
    text = f"{verb} by {by}" + (f": {note}" if note else "")
    return clip(printable(text), MAX_REASON_CHARS)


def held_by(session: TaskSession, call: Call, *, outside: bool = False) -> ApprovalRule | None:
    """The ``approve`` rule that holds ``call``: the task's own, else one of its ancestors' (a
    delegated task cannot do without an approval its parent needs: approvals only add).

    ``outside``: the call is outside what the task allows and runs anyway (shadow mode, as a
    ``would_deny``). Then an ``approve`` rule of its operation holds it whatever its resources:
    an operation the intent wants a person for never runs on a resource the rule's pattern
    does not name without one (it would be denied in enforce mode)."""
    task: TaskSession | None = session
    while task is not None:
        if task.bound.approvals:
            rule = task.bound.held_by(call.operation, call.resources)
            if rule is None and outside:
                rule = next(
                    (r for r in task.bound.approvals if r.operation == call.operation), None
                )
            if rule is not None:
                return rule
        task = task.parent
    return None


def approved_reason(record: ApprovalRecord) -> str:
    """The ``reason`` of an approved call's ``request`` event: who approved it, which request."""
    return clip(
        printable(f"approved by {record.by} (approval request {record.request_id})"),
        MAX_REASON_CHARS,
    )


def check_approver(approver: object) -> None:
    """:class:`ConfigError` unless ``approver`` is None or a callable."""
    if approver is not None and not callable(approver):
        raise ConfigError(
            f"approver must be a callable taking the request, not {type(approver).__name__}"
        )


class ApprovalGate:
    """The approval step of one guard's pipeline (see the module's docstring)."""

    def __init__(self, guard: Guard, approver: Approver | None, args_key: bytes) -> None:
        check_approver(approver)
        self.guard = guard
        self.approver = approver
        self._args_key = args_key
        """The guard's arguments key: the arguments enter the digest as their keyed hash."""
        self._config_hash: str | None = None

    @property
    def config_hash(self) -> str:
        if self._config_hash is None:
            self._config_hash = config_hash(self.guard.config)
        return self._config_hash

    def hold(
        self, session: TaskSession, call: Call, rule: ApprovalRule, args_json: str, now: float
    ) -> ApprovalRecord:
        """Wait for the decision on this call; the approved request, or :class:`ApprovalDenied`
        (audited) when it is rejected, expires or gets no valid decision."""
        bound = session.bound
        try:
            digest = self._digest(session, call)
        except CanonicalizationError as exc:
            self._deny(
                session, call, None, rule,
                f"this call needs a person's approval, but its arguments cannot be bound to "
                f"one ({exc}); it did not run",
            )  # fmt: skip
        record, fresh = self._request(session, call, rule, digest, args_json, now)
        if record.decision is None:
            self._wait(session, call, rule, record, fresh)
        if record.decision == "approved":
            return record
        rejected = decision_reason("rejected", record.by or "?", record.note)
        why = (
            f"a person rejected this call ({rejected})"
            if record.decision == "rejected"
            else f"this call needed a person's approval and none came within approval_ttl "
            f"({bound.approval_ttl:g}s); ask for it again or have someone answer with "
            "`toolguard approvals approve`"
        )
        self._deny(session, call, record, rule, why + "; it did not run")

    def confirm(
        self, session: TaskSession, call: Call, rule: ApprovalRule, record: ApprovalRecord
    ) -> None:
        """After the wait: the call about to run is still the approved action (its arguments
        were not changed meanwhile, by whoever else holds them), else :class:`ApprovalDenied`
        (audited)."""
        try:
            digest = self._digest(session, call)
        except CanonicalizationError:
            digest = ""
        if not hmac.compare_digest(digest, record.digest):
            self._deny(
                session, call, record, rule,
                "this call's arguments changed while it waited for approval, so the approval "
                "does not cover it; it did not run (ask again)",
            )  # fmt: skip

    def _digest(self, session: TaskSession, call: Call) -> str:
        return action_digest(
            tool=call.tool, operation=call.operation, resources=call.resources,
            args=dict(call.args), task_id=session.task_id, intent=session.bound.intent,
            config=self.config_hash, args_key=self._args_key,
        )  # fmt: skip

    def precheck(self, record: ApprovalRecord, tool: str) -> Callable[[float], PolicyDenied | None]:
        """The check of the call's ``request`` transaction: its approval is recorded, unexpired
        and unused (single use), else a denial."""
        store = self.guard.store

        def check(now: float) -> PolicyDenied | None:  # inside the store's transaction
            problem = store.unused_approval(record, now)
            if problem is None:
                return None
            return ApprovalDenied(
                f"this call was held for approval and {problem}; it did not run",
                tool=tool, task_id=record.task_id, rule=record.rule,
                request_id=record.request_id,
            )  # fmt: skip

        return check

    # -- steps ---------------------------------------------------------------------------------

    def _request(
        self,
        session: TaskSession,
        call: Call,
        rule: ApprovalRule,
        digest: str,
        args_json: str,
        now: float,
    ) -> tuple[ApprovalRecord, bool]:
        """The request this call waits on: an earlier one of the same call and digest that is
        still open (pending, or approved and unused: a run resumed after a restart), else a new
        one (``fresh``)."""
        store = self.guard.store
        for record in reversed(
            store.approval_requests(task_id=session.task_id, correlation_id=call.correlation_id)
        ):
            if record.digest != digest:
                continue
            state = record.state(now)
            if state == "pending":
                return record, False
            if state == "approved" and store.unused_approval(record, now) is None:
                return record, False
            if record.decision is None:  # past its expiry, never answered: recorded so
                self._settle(record, None)
            break
        request_id = os.urandom(12).hex()  # 24 hex digits: never read as a LangGraph interrupt id
        expires = now + session.bound.approval_ttl
        redactor = self.guard._redactor(call.tool)
        resources_json = json.dumps(
            [redactor.scrub(r) for r in call.resources], ensure_ascii=False, separators=(",", ":")
        )
        outside = not any(rule.pattern.match(r) for r in call.resources)
        reason = clip(
            f"{call.operation} on {', '.join(call.resources)} needs a person's approval "
            f"({rule.rule}: {rule.shown!r}"
            + (
                "; shadow mode runs this call outside what the task allows, and every "
                f"{call.operation} it approves needs a person)"
                if outside
                else ")"
            ),
            MAX_REASON_CHARS,
        )
        reason = redactor.scrub(reason)
        args_value = json.loads(args_json) if args_json else None
        event = request_event(
            Event(
                ts=now,
                kind="approval_requested",
                task_id=session.task_id,
                identity=session.bound.identity,
                intent=session.bound.intent,
                tool=call.tool,
                operation=call.operation,
                resources=resources_json,
                decision="hold",
                reason=reason,
                rule=rule.rule,
                correlation_id=call.correlation_id,
            ),
            {"request_id": request_id, "digest": digest, "expires_at": expires, "args": args_value},
        )
        store.append(event)
        record = ApprovalRecord(
            request_id=request_id, task_id=session.task_id, identity=session.bound.identity,
            intent=session.bound.intent, tool=call.tool, operation=call.operation,
            resources=json.loads(resources_json), correlation_id=call.correlation_id,
            rule=rule.rule, reason=reason, args=args_value, digest=digest, requested_at=now,
            expires_at=expires, seq=0,
        )  # fmt: skip
        return record, True

    def _wait(
        self, session: TaskSession, call: Call, rule: ApprovalRule, record: ApprovalRecord,
        fresh: bool,
    ) -> None:  # fmt: skip
        """Get the decision into ``record`` (and the trail)."""
        if self.approver is not None:
            try:
                value = self._ask(record)
                decision = parse_decision(value, default_by="approver")
                if isinstance(value, Mapping) and not _answers(value, record):
                    raise ValueError("the decision answers another request")
            except _Timeout:
                self._settle(record, None)
                return
            except AuditError:
                raise
            except Exception as exc:  # a failing approver or a bad decision: never an allow
                self._settle(record, Decision(False, "toolguard", _problem(exc)))
                return
            self._settle(record, decision)
            return
        if _in_graph():
            self._settle(record, self._interrupt(record, fresh))
            return
        self._poll(record)

    def _settle(self, record: ApprovalRecord, decision: Decision | None) -> None:
        """Record ``decision`` (None: the request expired); if another decision got there
        first (the CLI, the expiry), ``record`` takes that one instead."""
        guard = self.guard
        now = guard.clock()
        if decision is None:
            kind, by, note = "approval_expired", "toolguard", None
        else:
            kind = "approved" if decision.approved else "rejected"
            by, note = decision.by, decision.note
        result = guard.store.decide_approval(
            record, kind, by=by, note=note,
            reason=decision_reason(kind, by, note), now=now,
        )  # fmt: skip
        found = result.record
        if not result.recorded and found.decision is None:  # past its expiry: expire it now
            result = guard.store.decide_approval(
                found, "approval_expired", by="toolguard", note=None,
                reason=decision_reason("approval_expired", "toolguard", None), now=now,
            )  # fmt: skip
            found = result.record
        record.decision, record.by, record.note = found.decision, found.by, found.note
        record.decided_at, record.decided_seq = found.decided_at, found.decided_seq

    def _ask(self, record: ApprovalRecord) -> Any:
        """The approver's answer, waited for at most until the request expires (``_Timeout``):
        a sync approver that hangs bounds the call's wait as an async one does."""
        approver = self.approver
        assert approver is not None
        request = record.request()
        timeout = max(0.0, record.expires_at - self.guard.clock())

        def ask() -> Any:
            value = approver(request)
            if not inspect.isawaitable(value):
                return value

            async def wait() -> Any:
                return await value

            return asyncio.run(wait())

        # the guard's pipeline never awaits: the approver (and a coroutine it returns, on its
        # own loop) runs in a worker thread with the caller's context, for at most approval_ttl
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="toolguard-approver")
        try:
            future = pool.submit(contextvars.copy_context().run, ask)
            try:
                return future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                raise _Timeout from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _interrupt(self, record: ApprovalRecord, fresh: bool) -> Decision:
        """Pause the graph run with the request; the resume value is the decision. A value
        that does not answer this request (keyed by another request id, naming another digest,
        or given before this request existed) is skipped: the run pauses again.

        Resume values come back in the order the call's interrupts were raised, one per
        request of the call (the trail's order): a bare value at the position of an earlier
        request answered that one, not this one."""
        from ._langchain_compat import graph_interrupt

        earlier = 0
        if not fresh:
            earlier = sum(
                1
                for r in self.guard.store.approval_requests(
                    task_id=record.task_id, correlation_id=record.correlation_id
                )
                if r.seq < record.seq
            )
        position = 0
        while True:
            value = graph_interrupt(record.request())  # raises GraphInterrupt when there is none
            position += 1
            if isinstance(value, Mapping) and "approved" not in value:
                if record.request_id not in value:
                    continue
                value = value[record.request_id]
            elif fresh or position <= earlier:
                continue  # answered before this request existed: it answers another one
            if isinstance(value, Mapping) and not _answers(value, record):
                continue
            try:
                return parse_decision(value, default_by="resume")
            except ValueError as exc:
                return Decision(False, "toolguard", _problem(exc))

    def _poll(self, record: ApprovalRecord) -> None:
        """Wait for a decision in the trail (another process: the CLI) for at most the
        request's life, then expire it."""
        guard = self.guard
        deadline = time.monotonic() + max(0.0, record.expires_at - guard.clock())
        delay = _POLL_FIRST
        while True:
            for found in guard.store.approval_requests(
                task_id=record.task_id, correlation_id=record.correlation_id
            ):
                if found.request_id == record.request_id and found.decision is not None:
                    record.decision, record.by, record.note = found.decision, found.by, found.note
                    record.decided_at, record.decided_seq = found.decided_at, found.decided_seq
                    return
            now_mono = time.monotonic()
            if now_mono >= deadline or guard.clock() >= record.expires_at:
                self._settle(record, None)
                return
            time.sleep(min(delay, deadline - now_mono))
            delay = min(delay * 1.5, _POLL_MAX)

    def _deny(
        self,
        session: TaskSession,
        call: Call,
        record: ApprovalRecord | None,
        rule: ApprovalRule,
        reason: str,
    ) -> NoReturn:
        guard = self.guard
        reason = clip(guard._redactor(call.tool).scrub(reason), MAX_REASON_CHARS)
        error = ApprovalDenied(
            reason, tool=call.tool, task_id=session.task_id, rule=rule.rule,
            request_id=record.request_id if record else None,
        )  # fmt: skip
        guard._audit_denial(session, call.tool, call.args, call.correlation_id, guard.clock(),
                            error, call)  # fmt: skip
        raise error  # pragma: no cover - _audit_denial raises


class _Timeout(Exception):
    """The approver gave no decision within approval_ttl."""


def _problem(exc: BaseException) -> str:
    return clip(printable(f"no valid decision: {exc}"), MAX_NOTE_CHARS)


def _in_graph() -> bool:
    """True inside a LangGraph run that can be interrupted and resumed (a checkpointer)."""
    try:
        from ._langchain_compat import in_resumable_graph
    except ImportError:  # the core alone (MissingDependency): no LangGraph runs
        return False
    return in_resumable_graph()
