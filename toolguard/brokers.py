"""External credential providers: an OAuth2 token-exchange broker and static secrets.

Both plug into ``Guard(config, providers={tool_name: provider})`` (see
:class:`toolguard.credentials.CredentialProvider`):

:class:`HttpTokenBroker`
    For each allowed call, exchanges a subject token for an access token at an OAuth2 token
    endpoint (RFC 8693), asking for an audience and scopes derived from the call
    (``scope = "<operation>:<resource>"`` per resource by default). By default the subject token
    is a toolguard credential for the call (task, identity, tool, operation, resources), signed
    by the guard's issuer, so the broker can check it against toolguard's JWKS. When the task
    ends, every token the broker issued for it is revoked (RFC 7009); a token that could not be
    revoked is recorded as an audit event (``kind="revoke"``, ``decision="failed"``) and kept for
    :meth:`HttpTokenBroker.retry_revocations`.

:class:`StaticSecretProvider`
    Hands a secret from the environment to legacy APIs that cannot mint tokens. Its credentials
    have ``jit=False`` and every task end records how many calls used the secret, so the weaker
    path stays visible in the trail.

Failure semantics: any failure to obtain a credential raises :class:`CredentialError` from
``mint`` and the guard denies the call (fail closed, audited with the message). Timeouts,
connection errors and HTTP 5xx answers are retried a bounded number of times with jittered
exponential backoff; 4xx answers are never retried. Tokens, subject tokens and client secrets
never appear in exceptions (which carry no chained httpx exception either) or logs.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol
from urllib.parse import quote_plus, urlsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from .chain import Event
from .credentials import Credential, Issuer, MintRequest
from .errors import ConfigError, CredentialError
from .httpauth import tls_context
from .numbers import MAX_DURATION, is_finite_number
from .redaction import scrub_text

if TYPE_CHECKING:
    from .engine import Guard

__all__ = [
    "GRANT_TOKEN_EXCHANGE",
    "TOKEN_TYPE_ACCESS_TOKEN",
    "TOKEN_TYPE_JWT",
    "AuditSink",
    "BrokerCall",
    "HttpTokenBroker",
    "StaticSecretProvider",
    "default_scopes",
]

log = logging.getLogger("toolguard.brokers")

#: ``grant_type`` of an RFC 8693 token exchange.
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
#: Token type URI of a JWT (the default ``subject_token_type``: a toolguard credential).
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URI, not a secret
#: Token type URI of an OAuth2 access token (the default ``requested_token_type``).
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")  # RFC 6749 §3.3 scope-token
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5B\x5D-\x7E]{1,64}")  # RFC 6749 §5.2 error
_LOOPBACK_NAMES = frozenset({"localhost"})
_PURGE_FLOOR = 1024


class AuditSink(Protocol):
    """Where a provider records audit events: ``guard.store`` (any object with ``append``)."""

    def append(self, event: Event) -> None:
        """Append one audit event (a typed :class:`~toolguard.chain.Event`) in its own
        transaction."""
        ...


BrokerCall = MintRequest
"""What a broker knows about the call it is asked a credential for: the guard's
:class:`~toolguard.credentials.MintRequest`, with the broker's ``audience=`` (when given) in
place of the call's. The name of earlier versions, kept for ``scopes=`` and ``subject=``
callables."""


def default_scopes(call: BrokerCall) -> list[str]:
    """The default requested scopes: ``"<operation>:<resource>"`` for each resource."""
    return [f"{call.operation}:{resource}" for resource in call.resources]


@dataclass(slots=True)
class _Issued:
    """A token the broker issued; kept in memory until its task ends (never logged)."""

    jti: str
    task_id: str
    identity: str
    intent: str
    tool: str
    operation: str
    resources: tuple[str, ...]
    expires_at: float
    token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)


class _ServerError(Exception):
    """An HTTP 5xx answer: transient, retried. Carries the status only."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TimeoutException, httpx.ConnectError, _ServerError))


class HttpTokenBroker:
    """Credentials from an OAuth2 token endpoint by token exchange (RFC 8693), revoked at task
    end (RFC 7009). See the module docstring for the flow and the failure semantics.

    ``subject`` is where the subject token comes from: an :class:`Issuer` (a toolguard
    credential for the call with audience ``subject_audience``, default ``token_url``), or a
    callable ``(BrokerCall) -> str``. Left out, :meth:`bind` uses the guard's issuer.
    ``scopes`` derives the requested scopes from the call (default :func:`default_scopes`);
    ``audience`` fixes the requested audience (default: the call's audience, if any).
    Client authentication: ``client_id`` and ``client_secret`` with HTTP Basic
    (``client_auth="basic"``, RFC 6749 §2.3.1) or in the form (``"post"``); a ``client_id``
    alone identifies a public client. ``store`` records failed revocations (default, after
    :meth:`bind`: the guard's store). ``sleep`` is tenacity's sleep between attempts.
    """

    jit = True
    """Broker tokens are minted per call: audited as just-in-time credentials."""

    def __init__(
        self,
        *,
        token_url: str,
        revocation_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        client_auth: Literal["basic", "post"] = "basic",
        subject: Issuer | Callable[[BrokerCall], str] | None = None,
        subject_audience: str | None = None,
        subject_token_type: str = TOKEN_TYPE_JWT,
        requested_token_type: str = TOKEN_TYPE_ACCESS_TOKEN,
        audience: str | None = None,
        scopes: Callable[[BrokerCall], Sequence[str]] = default_scopes,
        extra_params: Mapping[str, str] | None = None,
        default_ttl: float = 300.0,
        timeout: float | httpx.Timeout = 5.0,
        max_attempts: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        client: httpx.Client | None = None,
        store: AuditSink | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.token_url = _check_url(token_url, "token_url")
        self.revocation_url = (
            None if revocation_url is None else _check_url(revocation_url, "revocation_url")
        )
        if client_secret is not None and not client_id:
            raise ConfigError("client_secret needs a client_id; pass both")
        if client_auth not in ("basic", "post"):
            raise ConfigError(f"client_auth must be 'basic' or 'post', not {client_auth!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError("max_attempts must be a whole number, at least 1")
        for name, value in (("default_ttl", default_ttl), ("backoff", backoff)):
            if not is_finite_number(value) or not 0 < value <= MAX_DURATION:
                raise ConfigError(f"{name} must be a positive number of seconds (up to 100 years)")
        if not is_finite_number(max_backoff) or max_backoff < backoff:
            raise ConfigError("max_backoff must be a number of seconds, at least backoff")
        self.subject_audience = subject_audience or self.token_url
        self.subject_token_type = subject_token_type
        self.requested_token_type = requested_token_type
        self.audience = audience
        self.scopes = scopes
        self.default_ttl = float(default_ttl)
        self.max_attempts = max_attempts
        self._subject = subject
        self._store = store
        self._clock = clock
        self._extra = dict(extra_params or {})
        reserved = {"grant_type", "subject_token", "client_id", "client_secret"} & set(self._extra)
        if reserved:
            raise ConfigError(f"extra_params may not set {sorted(reserved)}; they are built in")
        self._headers = {"Accept": "application/json"}
        self._client_form: dict[str, str] = {}
        if client_id and client_secret is not None and client_auth == "basic":
            pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif client_id:
            self._client_form["client_id"] = client_id
            if client_secret is not None:
                self._client_form["client_secret"] = client_secret
        self._secrets = tuple(s for s in (client_secret,) if s)
        self._owns_client = client is None
        self._client = (
            client if client is not None else httpx.Client(timeout=timeout, verify=tls_context())
        )
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts),
            wait=wait_random_exponential(multiplier=backoff, max=max_backoff),
            retry=retry_if_exception(_transient),
            before_sleep=self._log_retry,
            sleep=sleep,
            reraise=True,
        )
        self._lock = threading.Lock()
        self._issued: dict[str, _Issued] = {}
        self._by_task: dict[str, list[str]] = {}
        self._failed: dict[str, _Issued] = {}
        self._purge_at = _PURGE_FLOOR

    # -- wiring ------------------------------------------------------------------------------

    def bind(self, guard: Guard) -> None:
        """Take what was not given from ``guard``: its issuer (subject tokens), its store
        (failed revocations) and its clock. Idempotent."""
        if self._subject is None:
            self._subject = guard.issuer
        if self._store is None:
            self._store = guard.store
        if self._clock is None:
            self._clock = guard.clock

    def close(self) -> None:
        """Close the HTTP client if the broker created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpTokenBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpTokenBroker(token_url={self.token_url!r})"

    # -- minting -----------------------------------------------------------------------------

    def mint(self, request: MintRequest | None = None, /, **keywords: Any) -> Credential:
        """Exchange a subject token for this call's access token (a :class:`MintRequest`, or
        its fields as keywords); :class:`CredentialError` if the broker cannot issue one (the
        guard then denies the call)."""
        call = MintRequest.of(request, keywords)
        if self.audience and call.audience != self.audience:
            call = replace(call, audience=self.audience)
        jti, task_id, identity, intent = call.jti, call.task_id, call.identity, call.intent
        tool, operation, now, act = call.tool, call.operation, call.now, call.act
        scopes = list(self.scopes(call))
        for scope in scopes:
            if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
                _fail(
                    f"the scope {str(scope)[:80]!r} derived for '{tool}' is not a valid OAuth "
                    "scope token (printable ASCII, no spaces, quotes or backslashes); change "
                    "the tool's resource or the broker's scopes=",
                    call,
                )
        subject_token = self._subject_token(call)
        form = {
            "grant_type": GRANT_TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": self.subject_token_type,
            "requested_token_type": self.requested_token_type,
            **self._extra,
            **self._client_form,
        }
        if call.audience:
            form["audience"] = call.audience
        if scopes:
            form["scope"] = " ".join(scopes)
        body = self._exchange(form, call, secrets=(subject_token,))
        issued = self._parse_token_response(body, call, set(scopes))
        self._remember(issued, now)
        claims: dict[str, Any] = {
            "sub": identity, "task_id": task_id, "intent": intent, "tool": tool, "op": operation,
            "res": list(call.resources), "jti": jti, "scope": " ".join(scopes),
            "issued_token_type": str(body.get("issued_token_type", self.requested_token_type)),
        }  # fmt: skip
        if call.audience:
            claims["aud"] = call.audience
        if act is not None:
            claims["act"] = act
        return Credential.from_token(
            issued.token, jti=jti, task_id=task_id, identity=identity, intent=intent, tool=tool,
            operation=operation, resources=call.resources, issued_at=now,
            expires_at=issued.expires_at, claims=claims, jit=True,
        )  # fmt: skip

    def _subject_token(self, call: BrokerCall) -> str:
        source = self._subject
        if source is None:
            _fail(
                "the token broker has no subject token source; pass subject= (an Issuer or a "
                "callable) or bind it to the guard with broker.bind(guard)",
                call,
            )
        try:
            if isinstance(source, Issuer):
                token = source.mint(replace(call, audience=self.subject_audience)).token
            else:
                token = source(call)
        except CredentialError:
            raise
        except Exception as exc:
            failure = f"the subject token source failed ({type(exc).__name__})"
        else:
            if isinstance(token, str) and token:
                return token
            failure = "the subject token source returned no token"
        _fail(f"{failure}; no credential was requested for '{call.tool}'", call)

    def _exchange(
        self, form: Mapping[str, str], call: BrokerCall, *, secrets: tuple[str, ...]
    ) -> dict[str, Any]:
        response, failure = self._post(self.token_url, form, secrets=secrets)
        if response is None:
            _fail(f"the token broker could not be reached: {failure}; the call is denied", call)
        status = response.status_code
        if status != 200:
            _fail(
                f"the token broker refused the token exchange (HTTP {status}"
                f"{_error_code(response)}); the call is denied. Check that the broker allows "
                f"identity '{call.identity}' the requested audience and scopes",
                call,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            _fail("the token broker's answer is not a JSON object; the call is denied", call)
        return body

    def _parse_token_response(
        self, body: Mapping[str, Any], call: BrokerCall, requested: set[str]
    ) -> _Issued:
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            _fail("the token broker's answer has no access_token; the call is denied", call)
        refresh = body.get("refresh_token")
        issued = _Issued(
            jti=call.jti, task_id=call.task_id, identity=call.identity, intent=call.intent,
            tool=call.tool, operation=call.operation, resources=tuple(call.resources),
            expires_at=call.now + self.default_ttl, token=token,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        )  # fmt: skip
        problem = None
        token_type = body.get("token_type", "Bearer")
        expires_in = body.get("expires_in")
        granted = body.get("scope")
        if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "n_a"):
            problem = "its token_type is not Bearer"
        elif expires_in is not None and (
            not is_finite_number(expires_in) or not 0 < expires_in <= MAX_DURATION
        ):
            problem = "its expires_in is not a positive number of seconds (up to 100 years)"
        elif granted is not None and (
            not isinstance(granted, str) or not set(granted.split()) <= requested
        ):
            problem = "it grants scopes that were not requested (least privilege)"
        if problem is None:
            if expires_in is not None:
                issued.expires_at = call.now + float(expires_in)
            elif call.deadline is not None:
                issued.expires_at = call.deadline
            return issued
        # The broker did issue a token: revoke it at once rather than leave it valid.
        if self.revocation_url is not None and self._revoke(issued) is None:
            _fail(f"the token broker's answer was refused: {problem}; the call is denied", call)
        self._record_failures(
            [(issued, f"it was refused ({problem})")], keep=self.revocation_url is not None
        )
        _fail(f"the token broker's answer was refused: {problem}; the call is denied", call)

    # -- revocation --------------------------------------------------------------------------

    def end_task(self, task_id: str, jtis: Sequence[str] = ()) -> None:
        """Revoke every token issued for ``task_id`` (and for ``jtis``) at the broker.

        Failed revocations are retried (transient errors), then recorded as ``revoke`` events
        with ``decision="failed"`` and kept for :meth:`retry_revocations`.
        """
        with self._lock:
            ids = self._by_task.pop(task_id, [])
            ids += [j for j in jtis if j in self._issued and j not in ids]
            entries = [e for e in (self._issued.pop(j, None) for j in ids) if e is not None]
            for entry in entries:  # a jti passed in from another task's list
                other = self._by_task.get(entry.task_id)
                if other is not None and entry.jti in other:
                    other.remove(entry.jti)
                    if not other:
                        del self._by_task[entry.task_id]
        if not entries:
            return
        if self.revocation_url is None:
            self._record_failures(
                [(e, "the broker has no revocation endpoint (revocation_url)") for e in entries],
                keep=False,
            )
            return
        failures = [(e, why) for e in entries if (why := self._revoke(e)) is not None]
        done = len(entries) - len(failures)
        if done:
            self._append(
                Event(
                    ts=self._now(),
                    task_id=task_id,
                    identity=entries[0].identity,
                    intent=entries[0].intent,
                    kind="revoke",
                    decision="revoke",
                    rule="broker.revoke",
                    reason=f"the token broker revoked {done} credential(s) of this task",
                )
            )
        self._record_failures(failures)

    def retry_revocations(self) -> list[str]:
        """Try again to revoke the tokens whose revocation failed; returns the jtis still
        unrevoked. Tokens past their expiry are dropped (they are no longer valid)."""
        now = self._now()
        with self._lock:
            pending = [e for e in self._failed.values() if e.expires_at > now]
            self._failed.clear()
        if self.revocation_url is None:
            return []
        failures = []
        for entry in pending:
            why = self._revoke(entry)
            if why is None:
                self._append(self._revoke_event(entry, "revoke", "revoked on retry"))
            else:
                failures.append((entry, why))
        with self._lock:
            self._failed.update((e.jti, e) for e, _ in failures)
        return [e.jti for e, _ in failures]

    @property
    def unrevoked(self) -> list[str]:
        """The jtis of the tokens whose revocation failed and that may still be valid."""
        now = self._now()
        with self._lock:
            return [j for j, e in self._failed.items() if e.expires_at > now]

    def _revoke(self, entry: _Issued) -> str | None:
        """Revoke one token (and its refresh token); ``None`` on success, else why not."""
        assert self.revocation_url is not None
        tokens = (entry.token, entry.refresh_token or "")
        for token, hint in ((entry.refresh_token, "refresh_token"), (entry.token, "access_token")):
            if token is None:
                continue
            form = {"token": token, "token_type_hint": hint, **self._client_form}
            response, failure = self._post(self.revocation_url, form, secrets=tokens)
            if response is None:
                return failure
            if response.status_code != 200:
                return f"HTTP {response.status_code}{_error_code(response)}"
        return None

    def _record_failures(self, failures: list[tuple[_Issued, str]], *, keep: bool = True) -> None:
        if not failures:
            return
        if keep:
            with self._lock:
                self._failed.update((e.jti, e) for e, _ in failures)
        for entry, why in failures:
            until = datetime.fromtimestamp(entry.expires_at, timezone.utc).isoformat()
            reason = (
                f"the token broker could not revoke this credential ({why}); it stays valid "
                f"until {until} unless it is revoked at the broker"
            )
            log.warning("toolguard: broker credential %s not revoked: %s", entry.jti, why)
            self._append(self._revoke_event(entry, "failed", reason))

    def _revoke_event(self, entry: _Issued, decision: str, reason: str) -> Event:
        return Event(
            ts=self._now(), task_id=entry.task_id, identity=entry.identity,
            intent=entry.intent, kind="revoke", tool=entry.tool,
            operation=entry.operation, resources=_json_list(entry.resources),
            decision=decision, reason=reason, rule="broker.revoke", jti=entry.jti,
        )  # fmt: skip

    # -- plumbing ----------------------------------------------------------------------------

    def _post(
        self, url: str, form: Mapping[str, str], *, secrets: tuple[str, ...]
    ) -> tuple[httpx.Response | None, str]:
        """POST with retries; ``(response, "")`` or ``(None, why)`` on a transient failure.

        Returns no exception object: httpx exceptions hold the request (and its form).
        """
        attempts = 0

        def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            response = self._client.post(url, data=dict(form), headers=self._headers)
            if response.status_code >= 500:
                raise _ServerError(response.status_code)
            return response

        try:
            return self._retrying(attempt), ""
        except _ServerError as exc:
            why = f"HTTP {exc.status}"
        except httpx.HTTPError as exc:
            why = scrub_text(f"{type(exc).__name__}: {exc}", (*secrets, *self._secrets))[:300]
        return None, f"{why} after {attempts} attempt(s)"

    def _remember(self, issued: _Issued, now: float) -> None:
        """Keep the token for revocation at task end; forget expired ones now and then (in
        case a task end never reaches the broker)."""
        with self._lock:
            if len(self._issued) >= self._purge_at:
                for jti in [j for j, e in self._issued.items() if e.expires_at <= now]:
                    stale = self._issued.pop(jti)
                    ids = self._by_task.get(stale.task_id)
                    if ids is not None and jti in ids:
                        ids.remove(jti)
                        if not ids:
                            del self._by_task[stale.task_id]
                self._purge_at = max(_PURGE_FLOOR, 2 * len(self._issued))
            self._issued[issued.jti] = issued
            self._by_task.setdefault(issued.task_id, []).append(issued.jti)

    def _append(self, event: Event) -> None:
        store = self._store
        if store is None:
            return
        try:
            store.append(event)
        except Exception:
            log.error(
                "toolguard: could not record a broker revocation event for task %s",
                event.task_id,
            )
            raise

    def _now(self) -> float:
        return (self._clock or time.time)()

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        what = f"HTTP {exc.status}" if isinstance(exc, _ServerError) else type(exc).__name__
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "toolguard: token broker attempt %d failed (%s); retrying in %.2fs",
            state.attempt_number, what, wait,
        )  # fmt: skip


class StaticSecretProvider:
    """A static secret from the environment, for legacy APIs that cannot mint tokens.

    The secret is read from ``os.environ[env]`` at construction (a missing one is a
    :class:`ConfigError` at start-up) and again at every call (so a rotated secret is picked
    up; a missing one denies the call). Its credentials have ``jit=False``; ``expires_at`` is the
    end of the call's use window (``ttl``, capped by the task deadline), not the secret's
    lifetime. At task end it records one ``revoke`` event with ``decision="not-revocable"``
    saying how many calls used the secret (in ``store``, or the guard's after :meth:`bind`).
    """

    jit = False
    """Static secrets are not just-in-time credentials: audited as ``jit: false``."""

    def __init__(
        self,
        *,
        env: str,
        ttl: float = 300.0,
        store: AuditSink | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(env, str) or not env:
            raise ConfigError("env must name the environment variable that holds the secret")
        if not is_finite_number(ttl) or not 1 <= ttl <= MAX_DURATION:
            raise ConfigError("ttl must be a number of seconds, at least 1 (up to 100 years)")
        if not os.environ.get(env):
            raise ConfigError(
                f"environment variable {env} is not set; export the legacy API's secret in it "
                "before starting the guard"
            )
        self.env = env
        self.ttl = float(ttl)
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._uses: dict[str, tuple[int, str, str, set[str]]] = {}

    def bind(self, guard: Guard) -> None:
        """Record the task-end notes in ``guard.store`` and use its clock, unless given."""
        if self._store is None:
            self._store = guard.store
        if self._clock is None:
            self._clock = guard.clock

    def mint(self, request: MintRequest | None = None, /, **keywords: Any) -> Credential:
        """A ``jit=False`` credential holding the secret (for a :class:`MintRequest`, or its
        fields as keywords); :class:`CredentialError` if unset."""
        r = MintRequest.of(request, keywords)
        jti, task_id, identity, intent, tool = r.jti, r.task_id, r.identity, r.intent, r.tool
        operation, resources, now, deadline, audience = (
            r.operation, r.resources, r.now, r.deadline, r.audience,
        )  # fmt: skip
        secret = os.environ.get(self.env)
        if not secret:
            raise CredentialError(
                f"environment variable {self.env} is not set; no secret for '{tool}', the call "
                "is denied. Export the secret and restart",
                tool=tool,
                task_id=task_id,
                rule="credentials.static",
            )
        expires = now + self.ttl if deadline is None else min(now + self.ttl, deadline)
        claims: dict[str, Any] = {
            "sub": identity, "task_id": task_id, "intent": intent, "tool": tool, "op": operation,
            "res": list(resources), "jti": jti, "jit": False,
        }  # fmt: skip
        if audience:
            claims["aud"] = audience
        with self._lock:
            count, ident, intent_name, tools = self._uses.get(task_id, (0, identity, intent, set()))
            tools.add(tool)
            self._uses[task_id] = (count + 1, ident, intent_name, tools)
        return Credential.from_token(
            secret, jti=jti, task_id=task_id, identity=identity, intent=intent, tool=tool,
            operation=operation, resources=resources, issued_at=now, expires_at=expires,
            claims=claims, jit=False,
        )  # fmt: skip

    def end_task(self, task_id: str, jtis: Sequence[str] = ()) -> None:
        """Record that the task's uses of the static secret cannot be revoked by toolguard."""
        with self._lock:
            uses = self._uses.pop(task_id, None)
        if uses is None or self._store is None:
            return
        count, identity, intent, tools = uses
        self._store.append(
            Event(
                ts=(self._clock or time.time)(),
                task_id=task_id,
                identity=identity,
                intent=intent,
                kind="revoke",
                decision="not-revocable",
                rule="credentials.static",
                tool=",".join(sorted(tools)),
                reason=(
                    f"{count} call(s) used the static secret from ${self.env} (jit: false); "
                    "toolguard cannot revoke it. Rotate it at the API if it may have leaked"
                ),
            )
        )

    def __repr__(self) -> str:
        return f"StaticSecretProvider(env={self.env!r}, jit=False)"


# -- helpers -------------------------------------------------------------------------------


def _fail(message: str, call: BrokerCall) -> NoReturn:
    raise CredentialError(message, tool=call.tool, task_id=call.task_id, rule="credentials.broker")


def _check_url(url: str, name: str) -> str:
    """An https URL, or http on a loopback host (client secrets never go out in the clear)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or not host or parts.scheme not in ("https", "http"):
        raise ConfigError(f"{name} must be an absolute https:// URL, not {url!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{name} must not hold credentials; pass client_id/client_secret")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"{name} uses plain http to {host}; use https (plain http is accepted for "
            "loopback hosts only)"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_code(response: httpx.Response) -> str:
    """``", error 'invalid_scope'"`` from an OAuth2 error answer; the description is left out
    (a broker may echo the request in it)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
        return f", error '{code}'"
    return ""


def _json_list(values: Sequence[str]) -> str:
    import json

    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))
