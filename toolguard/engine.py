"""``Guard``: the pipeline of every guarded call, shared by every entry point.

authorize: find the task -> derive the call -> ``policy.decide`` -> one store transaction
(revocations, budgets, the ``request`` event, the jti) -> mint the credential.
finish: queue the ``outcome`` event (it rides in the next transaction).
Sync and async callers share this code; async callers run the store's part of it on the
guard's writer thread (:meth:`Guard.aauthorize`, :meth:`Guard.offload`, toolguard/offload.py),
so the wait for the database and its commits never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, overload

from .approval import ApprovalGate, Approver, approved_reason, check_approver, held_by
from .budget import Settlement, Spend, day_key, plan, task_spends
from .chain import Event
from .config import GuardConfig, load_config
from .context import permit_var, task_var
from .credentials import (
    Credential,
    CredentialProvider,
    Issuer,
    KeyRing,
    MintRequest,
    Verifier,
    as_provider,
    issued_token,
    new_jti,
)
from .errors import AuditError, ConfigError, NoActiveTask, PolicyDenied
from .integrity import guard_keys
from .intent import Call, Policy
from .keys import load_args_key
from .numbers import MAX_COST, check_timestamp, is_finite_number
from .offload import WriterThread
from .policy import Decision, decide, derive_call, shadowable
from .redaction import Redactor
from .store import Denial, PendingOutcome, StoreProtocol, open_store
from .store.approvals import ApprovalRecord
from .store.revocations import StoreRevocations
from .text import (
    MAX_ERROR_CHARS,
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    check_text,
    clip,
    neutral,
    printable,
)

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from .audit import AuditLog
    from .incident import Enablement, Revocation
    from .task import TaskSession
    from .tools import GuardedTool

__all__ = [
    "CheckedClock",
    "CredentialProvider",
    "Guard",
    "OnDeny",
    "Permit",
    "StoreRevocations",
]

log = logging.getLogger("toolguard")

_T = TypeVar("_T")


OnDeny = Literal["message", "raise"]
"""What a guarded tool does with a denial: return it to the model, or raise it. The one
definition (tools, middleware and the other adapters import it)."""


@dataclass(slots=True)
class Permit:
    """An allowed call in flight: its call, credential and the budget it reserved."""

    session: TaskSession
    call: Call
    credential: Credential
    spends: tuple[Spend, ...]
    started: float
    started_perf: float
    resources_json: str = "[]"
    actual_cost: float | None = None
    token: contextvars.Token[Permit | None] | None = field(default=None, repr=False)

    def __enter__(self) -> Credential:
        self.token = permit_var.set(self)
        return self.credential

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            try:
                permit_var.reset(self.token)
            except ValueError:  # pragma: no cover - exited in another context
                permit_var.set(None)
            self.token = None


class CheckedClock:
    """A ``clock=`` callable whose every value is checked: a value that is not a Unix time in
    seconds (nan, inf, a string, a negative number) raises :class:`AuditError` (nothing runs)
    instead of reaching the trail. :meth:`lenient` falls back to the system clock instead,
    with a warning: for what must be written whatever the clock says (a task end)."""

    __slots__ = ("clock",)

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def __call__(self) -> float:
        try:
            return check_timestamp(self.clock(), "the guard's clock")
        except ValueError as exc:
            raise AuditError(f"{exc}; nothing ran") from None

    def __getattr__(self, name: str) -> Any:  # the wrapped clock's own API (a test clock's)
        return getattr(self.clock, name)

    def lenient(self) -> float:
        try:
            return self()
        except Exception as exc:  # the user's clock may raise anything
            log.warning("toolguard: %s; using the system clock instead", exc)
            return time.time()


class Guard:
    """The guard: config, policy, store, keys, issuer; one per process and config.

    Build it with ``Guard.from_config("toolguard.yaml")``, a mapping, or a ``GuardConfig``.
    """

    def __init__(
        self,
        config: GuardConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        providers: Mapping[str, object] | None = None,
        approver: Approver | None = None,
    ) -> None:
        """``providers`` maps tool names to the credential provider of their calls (an external
        broker, a static secret: a :class:`~toolguard.credentials.CredentialProvider`, or a
        provider of the earlier keyword ``mint`` interface); every other tool gets credentials
        from the built-in issuer. ``approver`` decides the calls an ``approve`` rule holds
        (``approver(request) -> {"approved": bool, "by": str, "note": str}`` or a bool, sync or
        async); without one they wait for ``toolguard approvals`` or a LangGraph resume
        (docs/agents.md, "Human approval")."""
        self.config = load_config(config if config is not None else {})
        check_approver(approver)  # before anything is opened or created
        checked = clock if clock is time.time else CheckedClock(clock)
        self.clock: Callable[[], float] = checked
        """The guard's clock; a bad value (nan, inf, not a number) raises AuditError."""
        self.policy = Policy(self.config)
        self.store: StoreProtocol = open_store(
            self.config.store_location,
            pool_size=self.config.store_pool_size,
            durability=self.config.durability,
            busy_timeout=self.config.busy_timeout,
            # inside a transaction (settlements, task ends) a bad clock value must not poison
            # it: the store falls back to the system clock, with a warning
            clock=checked.lenient if isinstance(checked, CheckedClock) else checked,
        )
        issuer_cfg = self.config.issuer
        # Loads the keys, and refuses a trail behind its newest signed checkpoint, signed by a
        # key we do not hold, or a missing key file next to an existing trail (AuditError).
        try:
            self.keys: KeyRing = guard_keys(self.config, self.store)
        except BaseException:
            self.store.close()
            raise
        self.issuer = Issuer(
            name=issuer_cfg.name, audience=issuer_cfg.audience, keys=self.keys, ttl=issuer_cfg.ttl
        )
        args_key = load_args_key(self.config.args_key_path)  # args_sha256, approval digests
        self.redactor = Redactor(
            extra_keys=self.config.redact_keys,
            patterns=self.config.redact_patterns,
            max_chars=self.config.max_arg_chars,
            digest_key=args_key,
        )
        self.approvals = ApprovalGate(self, approver, args_key)
        """The approval step of held calls (its ``approver``, the queue, interrupts)."""
        self._redactors = {
            name: self.redactor.with_keys(rule.redact, patterns=rule.redact_patterns)
            for name, rule in self.config.tools.items()
        }
        self._audit: AuditLog | None = None
        self._writer = WriterThread()  # the store work of async callers (offload)
        self._reads_token: dict[str, bool] = {}  # per tool: did its last call read its token
        given = dict(providers or {})
        unknown = sorted(set(given) - set(self.config.tools))
        if unknown:
            raise ConfigError(f"providers given for tools without a rule under tools: {unknown}")
        adapted = {id(p): as_provider(p) for p in given.values()}  # each provider once
        self.providers: dict[str, CredentialProvider] = {
            tool: adapted[id(p)] for tool, p in given.items()
        }
        """The provider of each tool that has one (as :func:`~toolguard.credentials.as_provider`
        adapted it)."""
        self._distinct_providers = tuple(adapted.values())
        for provider in self._distinct_providers:
            provider.bind(self)  # brokers take the guard's issuer, store and clock

    @classmethod
    def from_config(
        cls,
        source: GuardConfig | Mapping[str, Any] | str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        providers: Mapping[str, object] | None = None,
        approver: Approver | None = None,
    ) -> Guard:
        """A guard from a config file (YAML, TOML, JSON), a mapping, or a ``GuardConfig``;
        every keyword of :class:`Guard` is accepted."""
        return cls(source, clock=clock, providers=providers, approver=approver)

    # -- public API --------------------------------------------------------------------------

    @property
    def audit(self) -> AuditLog:
        """The audit trail: ``guard.audit.events(task_id=...)``, ``verify()``, ..."""
        if self._audit is None:
            from .audit import AuditLog

            self._audit = AuditLog(
                self.store, keys=self.keys, checkpoints=self.config.checkpoints_path
            )
        return self._audit

    def task(self, intent: str, /, **params: Any) -> TaskSession:
        """A task of ``intent`` with its template parameters; use as a (async) context manager."""
        from .task import TaskSession

        return TaskSession(self, self.policy.bind(intent, params))

    def resume(self, task_id: str, *, intent: str | None = None) -> TaskSession:
        """Continue, in this process, an active task another process (or guard) started: e.g.
        an agent run interrupted for a human's approval and resumed by another worker.

        The task keeps its id, intent, parameters, identity, start and deadline; its budget
        counts what the trail says it spent; its calls here get new credentials. Records
        ``task_resume``. Raises :class:`PolicyDenied` (audited, rule ``task.resume``) if the
        task is unknown, has ended, is past its ttl, was revoked, is not of ``intent`` (when
        given: pass it when the id comes from somewhere a caller could influence), or its
        identity is disabled or no longer the one its intent runs as.

        The session is already active: make it current with ``with session:`` (which ends it
        on leaving) or end it with :meth:`TaskSession.end`. Its parents (for a delegated task)
        are only read: their own process ends them.
        """
        from .task import TaskSession

        return TaskSession.adopt(self, task_id, intent=intent)

    @overload
    def wrap(self, tools: BaseTool, *, on_deny: OnDeny = "message") -> GuardedTool: ...

    @overload
    def wrap(
        self, tools: Sequence[BaseTool], *, on_deny: OnDeny = "message"
    ) -> list[GuardedTool]: ...

    def wrap(
        self, tools: BaseTool | Sequence[BaseTool], *, on_deny: OnDeny = "message"
    ) -> GuardedTool | list[GuardedTool]:
        """Guard LangChain tools: one tool in, one out; a list in, a list out."""
        from .tools import guard as _guard

        return _guard(tools, self, on_deny=on_deny)

    def verifier(
        self,
        *,
        audience: str | None = None,
        single_use: bool = False,
        algorithms: Sequence[str] | None = None,
    ) -> Verifier:
        """A verifier for downstream services sharing this guard's keys and store."""
        cfg = self.config.issuer
        return Verifier(
            issuer=cfg.name,
            audience=audience or cfg.audience,
            keys=self.keys,
            # pinned to the algorithms of our own keys (active and retired), never the token's
            algorithms=tuple(
                algorithms or sorted({alg for alg, _ in self.keys.public_keys().values()})
            ),
            max_ttl=cfg.effective_max_ttl,
            leeway=cfg.leeway,
            revocations=StoreRevocations(self.store),
            single_use=single_use,
            clock=self.clock,
        )

    def revoke(
        self,
        *,
        task_id: str | None = None,
        identity: str | None = None,
        jti: str | None = None,
        reason: str = "revoked",
        disable: bool = False,
        by: str = "api",
    ) -> Revocation:
        """Revoke a task (and its children), an identity, or one credential.

        The target is resolved first: a task or credential id may be a unique prefix (at least
        6 characters; the full id is recorded), an identity must be in the config or the
        trail. An unknown, ambiguous or too short target raises :class:`UnknownTarget` and
        records nothing. Returns a :class:`~toolguard.incident.Revocation`: the live
        credentials and active tasks it revoked (as a sequence, the ids of the tasks it
        ended, as before). Verifiers sharing the store reject at once; ``disable=True`` (with
        ``identity``) also refuses the identity's new tasks."""
        from .incident import revoke_target

        result = revoke_target(
            self.store, task_id=task_id, identity=identity, jti=jti, reason=reason,
            disable=disable, by=by, now=self.clock(), identities=self.config.identities,
        )  # fmt: skip
        self._providers_end(result.ended)
        return result

    def _providers_end(self, task_ids: Sequence[str]) -> None:
        """Tell the providers (brokers) that tasks ended by a revocation have ended, so they
        revoke what they issued now, not when each task's block exits."""
        if not self.providers:
            return
        first: AuditError | None = None
        for task_id in task_ids:
            try:
                self.on_task_end(task_id, self.store.task_jtis(task_id))
            except AuditError as exc:
                first = first or exc
        if first is not None:
            raise first

    def enable(self, identity: str, *, reason: str = "re-enabled") -> Enablement:
        """Allow a disabled identity to start tasks again. Returns an
        :class:`~toolguard.incident.Enablement` (``changed`` is False, and nothing is written,
        when it was not disabled); an identity neither in the config nor in the trail raises
        :class:`~toolguard.errors.UnknownTarget`."""
        from .incident import enable_identity

        return enable_identity(
            self.store, identity, reason=reason, now=self.clock(),
            identities=self.config.identities,
        )  # fmt: skip

    def close(self) -> None:
        """Write pending outcomes and close the store's connections (after the store work
        async callers handed to the writer thread)."""
        try:
            self._writer.close()
        finally:
            self.store.close()

    async def offload(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        abandon: Callable[[_T], object] | None = None,
        always: bool = False,
        **kwargs: Any,
    ) -> _T:
        """``fn(*args, **kwargs)`` on the guard's writer thread (in a copy of the caller's
        context), awaited: how async code runs anything that writes to the store (a task's
        start and end, an authorization) without blocking the event loop. Jobs run one at a
        time, in order. If the caller is cancelled, ``fn`` still completes (unless it had not
        started; with ``always`` it runs all the same: for what must be written, like a task's
        end) and ``abandon(result)`` runs (in the writer thread) to undo what nobody uses."""
        return await self._writer.run(fn, *args, abandon=abandon, always=always, **kwargs)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """``fn(*args, **kwargs)`` on the guard's writer thread without waiting for it: for a
        callback of the event loop that cannot await (e.g. a task's end when a streamed run's
        loop finishes). It runs after every job handed to the writer thread before it (a
        task's calls), :meth:`close` waits for it, and what it raises is the returned
        ``concurrent.futures.Future``'s (nobody sees it unless they look: ``fn`` should log its
        own failures)."""
        return self._writer.submit(fn, *args, **kwargs)

    async def aclose(self) -> None:
        """:meth:`close` for async code: it waits for the writer thread's jobs and writes the
        pending outcomes on a worker thread, while the event loop keeps running. A cancelled
        ``aclose`` still closes the guard (the close goes on in its thread)."""
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(None, self.close))

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the pipeline -----------------------------------------------------------------------

    def authorize(
        self, tool: str, args: Mapping[str, Any], *, correlation_id: str | None = None
    ) -> Permit:
        """Decide, audit and mint for one call. Raises :class:`PolicyDenied` (audited) or
        :class:`AuditError` (nothing ran); otherwise the caller must run the tool and
        :meth:`finish` the permit."""
        cid = correlation_id or os.urandom(16).hex()
        # model-written identifiers: recorded (escaped, bounded) even when malformed
        if check_text(tool, limit=MAX_NAME_CHARS) is not None:
            tool = neutral(tool)
        if check_text(cid, limit=MAX_NAME_CHARS) is not None:
            cid = neutral(cid)
        session = task_var.get()
        now = self.clock()
        if session is None:
            self._audit_denial(None, tool, args, cid, now, NoActiveTask(tool=tool))
        derived = derive_call(self.policy.tools, tool, args, cid)
        if isinstance(derived, Decision):
            self._deny(session, tool, args, cid, now, derived, None)
        call = derived
        bound = session.bound
        decision = decide(
            bound, call, ended=session.ended_reason, now=now, deadline=session.deadline
        )
        # shadow mode (the task's and every ancestor's): a policy refusal runs, as would_deny
        shadow = _shadow(session)
        would: str | None = None
        if not decision.allowed:
            would = self._refuse(session, tool, args, cid, now, decision, call, shadow=shadow)
        held = held_by(session, call, outside=would is not None)
        approval: ApprovalRecord | None = None
        if held is not None:  # wait for a person; ApprovalDenied (audited) if none approves
            approval = self.approvals.hold(session, call, held, self._redactor(tool)(args)[0], now)
            self.approvals.confirm(session, call, held, approval)  # the arguments did not change
            now = self.clock()  # decided again now: the task may have ended while it waited
            decision = decide(
                bound, call, ended=session.ended_reason, now=now, deadline=session.deadline
            )
            would = None
            if not decision.allowed:
                would = self._refuse(session, tool, args, cid, now, decision, call, shadow=shadow)
        spends: tuple[Spend, ...] = plan(bound, session.task_id, call)
        inherited: list[tuple[Spend, ...]] = []
        parent = session.parent
        while parent is not None:  # a delegated call also spends its ancestors' task budgets
            inherited.append(task_spends(parent.bound, parent.task_id, call))
            parent = parent.parent
        jti = new_jti()
        redactor = self._redactor(tool)
        args_json, args_sha = redactor(args)
        resources_json = _stored_resources(redactor, call.resources)
        expires = min(now + self.issuer.ttl, session.deadline)
        event = Event(
            ts=now,
            kind="request",
            task_id=session.task_id,
            identity=bound.identity,
            intent=bound.intent,
            tool=tool,
            operation=call.operation,
            resources=resources_json,
            decision="allow" if would is None else "would_deny",
            reason=would if would is not None or approval is None else approved_reason(approval),
            rule="allow" if would is None else decision.rule,
            jti=jti,
            correlation_id=cid,
            args=args_json,
            args_sha256=args_sha,
            cost=call.cost or None,
        )

        def denied_event(error: PolicyDenied) -> Event:
            return event._replace(
                kind="denied", decision="deny", reason=error.reason, rule=error.rule, jti=None
            )

        provider = self.providers.get(tool, self.issuer)
        recorded = self.store.record_call(
            chain=session.chain,
            identity=bound.identity,
            task_started_at=session.started_at,
            spends=spends,
            event=event,
            credential=(
                jti,
                session.task_id,
                bound.identity,
                tool,
                call.operation,
                now,
                expires,
                1 if provider.jit else 0,  # a static secret is not JIT
            ),
            now=now,
            on_denied=denied_event,
            inherited=inherited,
            precheck=None if approval is None else self.approvals.precheck(approval, tool),
            shadow=shadow,
        )
        if isinstance(recorded, Denial):
            denial = recorded
            if denial.ended:  # an on_anomaly revocation ended the identity's tasks
                try:
                    self._providers_end(denial.ended)
                except AuditError as exc:  # the denial stands; the revocation is written
                    log.warning("toolguard: a provider could not record its revocation: %s", exc)
            raise denial.error
        if inherited:  # a refund after a failed mint gives the ancestors theirs back too
            spends = spends + tuple(s for group in inherited for s in group)
        try:
            credential = provider.mint(
                MintRequest(
                    jti, session.task_id, bound.identity, bound.intent, tool, call.operation,
                    call.resources, now, session.deadline,
                    self.policy.tools[tool].rule.audience or bound.audience, session.act,
                    recorded.decision == "would_deny",
                )
            )  # fmt: skip
        except Exception as exc:  # any provider failure denies the call (fail closed)
            self._mint_failed(session, call, jti, spends, now, exc, resources_json)
        session.jtis.append(jti)
        return Permit(session, call, credential, spends, now, time.perf_counter(), resources_json)

    async def aauthorize(
        self, tool: str, args: Mapping[str, Any], *, correlation_id: str | None = None
    ) -> Permit:
        """:meth:`authorize` for async callers: the same pipeline, on the guard's writer thread
        (the event loop never waits for the database). If the caller is cancelled meanwhile,
        an allowed call is recorded as not run (outcome ``error``; its credential is revoked
        with its task)."""
        # a call its task (or an ancestor) may hold for a person's approval can wait for
        # minutes: it goes to a side thread, not the writer thread's queue of every other call
        session = task_var.get()
        return await self._writer.run(
            self._authorize_signed, tool, args, correlation_id, abandon=self._abandoned,
            side=session is not None and _may_hold(session),
        )  # fmt: skip

    def _authorize_signed(
        self, tool: str, args: Mapping[str, Any], correlation_id: str | None
    ) -> Permit:
        """:meth:`authorize`, then, for a tool whose last call read its token, the token
        signed here, in the writer thread, rather than when the tool reads it on the event
        loop: the signature releases the GIL, and a loop thread that releases it in the
        middle of a callback waits for it to come back (up to ``sys.getswitchinterval()``,
        5 ms, while the writer thread runs Python). A tool that does not read its token is
        not made to pay for a signature."""
        permit = self.authorize(tool, args, correlation_id=correlation_id)
        if self._reads_token.get(tool, True):
            try:
                permit.credential._sign_ahead()
            except Exception:  # noqa: S110 - it fails again, in the tool, if the tool reads it
                pass
        return permit

    def _abandoned(self, permit: Permit) -> None:
        """The outcome of a call authorized for a caller that was cancelled meanwhile."""
        self.finish(permit, error=CallerCancelled())

    def finish(self, permit: Permit, *, error: BaseException | None = None) -> None:
        """Record a call's outcome (queued for the next transaction) and settle its cost."""
        duration_ms = (time.perf_counter() - permit.started_perf) * 1000.0
        call = permit.call
        self._reads_token[call.tool] = issued_token(permit.credential) is not None
        settle: tuple[Settlement, ...] = ()
        cost = call.cost
        actual, problem = permit.actual_cost, None
        if actual is not None and not (is_finite_number(actual) and 0 <= actual <= MAX_COST):
            # report_cost() checks its argument; this is a permit changed by hand. The
            # reservation stands, the outcome says why, and the task is tainted.
            problem = (
                f"the reported cost {actual!r} is not a finite number from 0 to {MAX_COST:g};"
                " the call's reservation stands"
            )
            log.warning("toolguard: call %s: %s", call.correlation_id, problem)
            actual = None
        if actual is not None and actual != call.cost:
            delta = actual - call.cost
            cost = actual
            day = day_key(permit.started)
            settle = tuple(
                Settlement(s, day if s.kind == "day" else "", delta)
                for s in permit.spends
                if s.label in ("max_cost", "cost_per_day")
            )
        session = permit.session
        self.store.queue_outcome(
            PendingOutcome(
                self._outcome_event(
                    session,
                    call,
                    permit.resources_json,
                    permit.credential.jti,
                    outcome="ok" if error is None else "error",
                    error="; ".join(
                        e
                        for e in (
                            None if error is None else self._describe(error, permit),
                            problem,
                        )
                        if e
                    )
                    or None,
                    duration_ms=round(duration_ms, 3),
                    cost=cost or None,
                ),
                settle,
                taint=problem is not None,
            )
        )

    def _outcome_event(
        self, session: TaskSession, call: Call, resources_json: str, jti: str, **fields: Any
    ) -> Event:
        """The ``outcome`` event of a call of ``session`` (``fields``: what it says of it)."""
        bound = session.bound
        return Event(
            ts=self.clock(),
            kind="outcome",
            task_id=session.task_id,
            identity=bound.identity,
            intent=bound.intent,
            tool=call.tool,
            operation=call.operation,
            resources=resources_json,
            jti=jti,
            correlation_id=call.correlation_id,
            **fields,
        )

    def _mint_failed(
        self,
        session: TaskSession,
        call: Call,
        jti: str,
        spends: Sequence[Spend],
        now: float,
        exc: Exception,
        resources_json: str,
    ) -> NoReturn:
        described = _describe(exc, scrub=self._redactor(call.tool).scrub)
        reason = f"no credential could be obtained for this call ({described}); it did not run"
        day = day_key(now)
        refund = tuple(
            Settlement(s, day if s.kind == "day" else "", -s.amount)
            for s in spends
            if s.kind != "rolling"
        )
        self.store.queue_outcome(
            PendingOutcome(
                self._outcome_event(
                    session,
                    call,
                    resources_json,
                    jti,
                    decision="deny",
                    reason=reason,
                    rule="credentials.provider",
                    outcome="not-run",
                ),
                refund,
            )
        )
        self.store.flush()
        raise PolicyDenied(
            reason, tool=call.tool, task_id=session.task_id, rule="credentials.provider"
        ) from exc

    def on_task_end(self, task_id: str, jtis: Sequence[str]) -> None:
        """Internal (called by :class:`TaskSession` when a task ends): let providers revoke what
        they issued for a task (brokers). Every provider runs;
        failures are logged, and the first AuditError is raised after all of them ran."""
        first: AuditError | None = None
        for provider in self._distinct_providers:
            try:
                provider.end_task(task_id, jtis)
            except AuditError as exc:
                first = first or exc
            except Exception as exc:  # a provider records its own failures; keep going
                log.warning("toolguard: provider %r failed at task end: %s", provider, exc)
        if first is not None:
            raise first

    # -- helpers ------------------------------------------------------------------------------

    def _refuse(
        self,
        session: TaskSession,
        tool: str,
        args: Mapping[str, Any],
        cid: str,
        now: float,
        decision: Decision,
        call: Call | None,
        *,
        shadow: bool,
    ) -> str:
        """Deny a refused call (audited, raises), unless shadow mode lets this refusal run:
        then the ``would_deny`` reason to record (docs/shadow.md)."""
        if not (shadow and shadowable(decision)):
            self._deny(session, tool, args, cid, now, decision, call)
        return clip(self._redactor(tool).scrub(decision.reason), MAX_REASON_CHARS)

    def _deny(
        self,
        session: TaskSession,
        tool: str,
        args: Mapping[str, Any],
        cid: str,
        now: float,
        decision: Decision,
        call: Call | None,
    ) -> NoReturn:
        scrubbed = self._redactor(tool).scrub(decision.reason)
        reason = clip(scrubbed, MAX_REASON_CHARS)
        error = PolicyDenied(reason, tool=tool, task_id=session.task_id, rule=decision.rule)
        self._audit_denial(session, tool, args, cid, now, error, call)

    def _audit_denial(
        self,
        session: TaskSession | None,
        tool: str,
        args: Mapping[str, Any],
        cid: str,
        now: float,
        error: PolicyDenied,
        call: Call | None = None,
    ) -> NoReturn:
        redactor = self._redactor(tool)
        args_json, args_sha = redactor(args)
        self.store.append(
            Event(
                ts=now,
                kind="denied",
                task_id=session.task_id if session else None,
                identity=session.bound.identity if session else None,
                intent=session.bound.intent if session else None,
                tool=tool,
                operation=call.operation if call else None,
                resources=_stored_resources(redactor, call.resources) if call else None,
                decision="deny",
                reason=error.reason,
                rule=error.rule,
                correlation_id=cid,
                args=args_json,
                args_sha256=args_sha,
            )
        )
        raise error

    def _redactor(self, tool: str) -> Redactor:
        """The tool's redaction rules (its own ``redact`` keys and patterns), else the guard's."""
        return self._redactors.get(tool, self.redactor)

    def _describe(self, error: BaseException, permit: Permit) -> str:
        redactor = self._redactor(permit.call.tool)
        return _describe(error, permit.credential, scrub=redactor.scrub)


class CallerCancelled(Exception):
    """The outcome error of a call whose async caller was cancelled before the tool ran."""

    def __init__(self) -> None:
        super().__init__(
            "the caller was cancelled while the call was authorized; the tool did not run"
        )


def _may_hold(session: TaskSession) -> bool:
    """Whether the task or one of its ancestors has ``approve`` rules (see ``held_by``)."""
    s: TaskSession | None = session
    while s is not None:
        if s.bound.approvals:
            return True
        s = s.parent
    return False


def _shadow(session: TaskSession) -> bool:
    """A task runs in shadow mode when its intent does and so does every ancestor's: a
    delegated task never runs what an enforcing parent would refuse."""
    s: TaskSession | None = session
    while s is not None:
        if s.bound.mode != "shadow":
            return False
        s = s.parent
    return True


_list_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _stored_resources(redactor: Redactor, resources: Sequence[str]) -> str:
    """The ``resources`` column: the call's resources (decided on as they are) with the
    redaction rules applied, since a model can write a secret into a key."""
    return _list_encoder([redactor.scrub(r) for r in resources])


def _describe(
    error: BaseException,
    credential: Credential | None = None,
    *,
    scrub: Callable[[str, Sequence[str]], str] | None = None,
) -> str:
    """A one-line description of an error (the ``error`` column, a provider's failure in a
    denial): the call's token, the redaction rules' secrets and unsafe characters removed,
    at most :data:`~toolguard.text.MAX_ERROR_CHARS` characters."""
    from .redaction import scrub_text

    try:
        text = f"{type(error).__name__}: {error}"
    except Exception:  # an exception whose __str__ raises is described by its type
        text = f"{type(error).__name__}: <unprintable>"
    text = text[: 8 * MAX_ERROR_CHARS]  # what is cut off is never shown: never scanned either
    token = issued_token(credential) if credential is not None else None
    secrets = [token] if token else []
    text = scrub(text, secrets) if scrub is not None else scrub_text(text, secrets)
    return clip(printable(text), MAX_ERROR_CHARS)
