"""Just-in-time credentials: :class:`Credential`, :class:`Issuer` and :class:`Verifier`.

Every allowed tool call gets its own short-lived JWT (docs/credentials.md, docs/architecture.md
"The pipeline")::

    header  {"alg": "EdDSA" | "ES256", "typ": "at+jwt", "kid": <RFC 7638 thumbprint>}
    claims  iss sub aud iat nbf exp jti task_id intent tool op res [act]

The :class:`Issuer` builds the claims; the :class:`Credential` signs them lazily, once, the first
time its ``token`` is read (signing is most of the cost of a guarded call, and many tools never
read their token). Signing uses the ``cryptography`` key object directly, not ``jwt.encode``.

The :class:`Verifier` is for downstream services. It raises a :class:`CredentialError` subclass
on any doubt and never anything else: :class:`CredentialInvalid` (shape, header, signature,
claims, lifetime, ``iat`` in the future), :class:`CredentialExpired` (past ``exp``, or before
``nbf``), :class:`CredentialRevoked` (revoked, replayed, or the revocation store failed: fail
closed) and :class:`ScopeMismatch` (valid, but not for this tool / operation / resource). Cheap
header checks run before the signature check; claims are parsed only after it. Each error's
``rule`` names the failed check (``credential.alg``, ``credential.signature``,
``credential.claims.aud``, ``credential.exp``, ...); messages never contain the token. ``aud``
must be one string equal to the verifier's audience (a list, even of one, is rejected). Key
management lives in :mod:`toolguard.keys`; its main classes are re-exported here.
"""

from __future__ import annotations

import heapq
import inspect
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from json.encoder import encode_basestring_ascii
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol, runtime_checkable

from toolguard.errors import (
    ConfigError,
    CredentialError,
    CredentialExpired,
    CredentialInvalid,
    CredentialRevoked,
    ScopeMismatch,
)
from toolguard.keys import (
    ALGORITHMS,
    KeyRing,
    PublicKey,
    PublicKeys,
    PublicKeySource,
    SigningKey,
    b64url_decode,
    b64url_encode,
    verify_signature,
)
from toolguard.numbers import MAX_DURATION, is_finite_number

if TYPE_CHECKING:
    from toolguard.engine import Guard

__all__ = [
    "REQUIRED_CLAIMS",
    "Credential",
    "CredentialProvider",
    "Issuer",
    "KeyRing",
    "MintRequest",
    "PublicKeySource",
    "PublicKeys",
    "RevocationSource",
    "SigningKey",
    "Verifier",
    "as_provider",
    "issued_token",
    "new_jti",
    "revocation_source",
]

#: Claims every toolguard credential carries; the verifier rejects a token missing any of them.
REQUIRED_CLAIMS = (
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "task_id", "intent", "tool", "op", "res",
)  # fmt: skip
_STRING_CLAIMS = ("iss", "sub", "aud", "jti", "task_id", "intent", "tool", "op")
_MAX_TOKEN = 8 * 1024
_MAX_KID = 128
_MAX_ACT_DEPTH = 16
_REPLAY_SLACK = 60.0  # seconds a replay entry outlives its token, against clock steps back
_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Headers that would let the token choose its own key or change how it is processed.
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64", "zip", "enc", "cty")
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_PUBLISH = threading.Lock()


def new_jti() -> str:
    """A fresh credential id: 128 random bits, base64url (22 characters)."""
    return secrets.token_urlsafe(16)


def issued_token(credential: Credential) -> str | None:
    """The credential's token if it was signed (or given), without signing it now."""
    return credential._token


def _json_default(value: object) -> object:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)
_escape = encode_basestring_ascii  # the string escaping _ENCODER uses (ensure_ascii)


class Credential:
    """The JIT credential of one tool call: handed to the tool, never to the model.

    Immutable (read-only properties over slots); equal and hashed by ``jti``. ``token`` is
    signed on first access and cached; ``repr``/``str`` never show it, and a credential cannot
    be pickled. ``jit`` is false for credentials that wrap a ready token (a broker's, or a
    static secret: :meth:`from_token`). ``claims`` is a read-only copy of the JWT claims
    (lists become tuples).
    """

    __slots__ = (
        "_ahead", "_claims", "_encode", "_expires_at", "_identity", "_intent", "_issued_at",
        "_jit", "_jti", "_operation", "_payload", "_resources", "_signer", "_task_id", "_token",
        "_tool",
    )  # fmt: skip

    _payload: dict[str, Any]
    _signer: SigningKey | None
    _token: str | None
    _ahead: str | None
    _encode: Callable[[dict[str, Any]], str]

    def __init__(
        self,
        *,
        jti: str,
        task_id: str,
        identity: str,
        intent: str,
        tool: str,
        operation: str,
        resources: Sequence[str],
        issued_at: float,
        expires_at: float,
        claims: Mapping[str, Any] | None = None,
        signer: SigningKey | None = None,
        token: str | None = None,
        jit: bool = True,
    ) -> None:
        if (signer is None) == (token is None):
            raise CredentialError("a Credential needs exactly one of signer= or token=")
        if token is not None and (not isinstance(token, str) or not token):
            raise CredentialError("token= must be a non-empty string")
        self._payload = {str(k): _freeze(v) for k, v in (claims or {}).items()}
        self._claims = MappingProxyType(self._payload)
        self._jti, self._task_id, self._identity, self._intent = jti, task_id, identity, intent
        self._tool, self._operation, self._resources = tool, operation, tuple(resources)
        self._issued_at, self._expires_at = float(issued_at), float(expires_at)
        self._jit, self._signer, self._token, self._encode = jit, signer, token, _ENCODER.encode
        self._ahead = None

    @classmethod
    def _minted(cls, payload: dict[str, Any], signer: SigningKey) -> Credential:
        """The issuer's fast path: fields read from a checked, frozen payload."""
        self = object.__new__(cls)
        self._payload, self._claims = payload, MappingProxyType(payload)
        self._jti, self._task_id = payload["jti"], payload["task_id"]
        self._identity, self._intent = payload["sub"], payload["intent"]
        self._tool, self._operation = payload["tool"], payload["op"]
        self._resources = payload["res"]
        self._issued_at, self._expires_at = float(payload["iat"]), float(payload["exp"])
        self._jit, self._signer, self._token, self._encode = True, signer, None, _encode_minted
        self._ahead = None
        return self

    @classmethod
    def from_token(
        cls,
        token: str,
        *,
        jti: str,
        task_id: str,
        identity: str,
        intent: str,
        tool: str,
        operation: str,
        resources: Sequence[str],
        issued_at: float,
        expires_at: float,
        claims: Mapping[str, Any] | None = None,
        jit: bool = False,
    ) -> Credential:
        """A credential around a ready token (a broker's, or a static secret: ``jit=False``)."""
        return cls(
            jti=jti, task_id=task_id, identity=identity, intent=intent, tool=tool,
            operation=operation, resources=resources, issued_at=issued_at,
            expires_at=expires_at, claims=claims, token=token, jit=jit,
        )  # fmt: skip

    @property
    def token(self) -> str:
        """The signed JWT (compact form). Signed on first access; always the same string."""
        token = self._token
        if token is not None:
            return token
        signed = self._ahead or self._sign()
        with _PUBLISH:  # a racing thread may have signed too: everyone returns the first token
            if self._token is None:
                self._token = signed
            return self._token

    def _sign(self) -> str:
        signer = self._signer
        assert signer is not None  # exactly one of signer/token is set
        body = b64url_encode(self._encode(self._payload).encode("utf-8"))
        signing_input = f"{signer.header_segment}.{body}"
        return f"{signing_input}.{b64url_encode(signer.sign(signing_input.encode('ascii')))}"

    def _sign_ahead(self) -> None:
        """Sign the token now, on this thread, for a reader on another (the event loop's: the
        signature releases the GIL, see ``Guard.aauthorize``). The token counts as issued
        (:func:`issued_token`) only once it is read."""
        if self._token is None and self._ahead is None:
            self._ahead = self._sign()

    @property
    def jti(self) -> str:
        """The credential id (128 random bits); the audit trail records it, never the token."""
        return self._jti

    @property
    def task_id(self) -> str:
        """The task this call belongs to."""
        return self._task_id

    @property
    def identity(self) -> str:
        """The identity the task runs as (the ``sub`` claim)."""
        return self._identity

    @property
    def intent(self) -> str:
        """The declared intent of the task."""
        return self._intent

    @property
    def tool(self) -> str:
        """The tool this credential is for."""
        return self._tool

    @property
    def operation(self) -> str:
        """The operation class of the call (the ``op`` claim)."""
        return self._operation

    @property
    def resources(self) -> tuple[str, ...]:
        """The exact resources of this call (the ``res`` claim)."""
        return self._resources

    @property
    def issued_at(self) -> float:
        """Unix time of issue (the ``iat`` claim)."""
        return self._issued_at

    @property
    def expires_at(self) -> float:
        """Unix time of expiry (the ``exp`` claim)."""
        return self._expires_at

    @property
    def claims(self) -> Mapping[str, Any]:
        """A read-only copy of the JWT claims."""
        return self._claims

    @property
    def jit(self) -> bool:
        """True for per-call signed credentials; false for wrapped ready tokens."""
        return self._jit

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credential):
            return NotImplemented
        return self._jti == other._jti

    def __hash__(self) -> int:
        return hash(self._jti)

    def __copy__(self) -> Credential:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Credential:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Credential cannot be pickled; pass its token to where it is needed")

    def __repr__(self) -> str:
        return (
            f"Credential(jti={self._jti!r}, tool={self._tool!r}, operation={self._operation!r}, "
            f"resources={self._resources!r}, expires_at={self._expires_at!r}, jit={self._jit!r})"
        )

    __str__ = __repr__


_MINTED = (
    '{"iss":%s,"sub":%s,"aud":%s,"iat":%d,"nbf":%d,"exp":%d,"jti":%s,"task_id":%s,'
    '"intent":%s,"tool":%s,"op":%s,"res":[%s]%s}'
)


def _encode_minted(p: dict[str, Any]) -> str:
    """JSON of an issuer-minted payload: the same bytes as ``_ENCODER``, about twice as fast."""
    esc, act = _escape, p.get("act")
    return _MINTED % (
        esc(p["iss"]), esc(p["sub"]), esc(p["aud"]), p["iat"], p["nbf"], p["exp"],
        esc(p["jti"]), esc(p["task_id"]), esc(p["intent"]), esc(p["tool"]), esc(p["op"]),
        ",".join(map(esc, p["res"])),
        ("" if act is None else ',"act":' + _ENCODER.encode(act))
        + ("" if "shadow" not in p else ',"shadow":' + esc(p["shadow"])),
    )  # fmt: skip


def _freeze(value: Any) -> Any:
    """A read-only deep copy of JSON-like data (mappings -> MappingProxyType, lists -> tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if value is None or isinstance(value, (str, int)) or is_finite_number(value):
        return value
    raise CredentialError(f"claim values must be JSON data, not {type(value).__name__}")


def _set_slots(obj: object, values: Mapping[str, object]) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class MintRequest:
    """Everything a provider knows about the allowed call it mints a credential for.

    Built by the guard once per allowed call (after its ``request`` event is recorded) and
    passed to :meth:`CredentialProvider.mint`; brokers pass it on to their ``scopes=`` and
    ``subject=`` callables (:class:`toolguard.brokers.BrokerCall` is this class)."""

    jti: str
    """The credential id toolguard recorded for this call (in the ``credentials`` table)."""
    task_id: str
    identity: str
    intent: str
    tool: str
    operation: str
    resources: Sequence[str]
    """The call's resources (a tuple when built from a sequence of strings)."""
    now: float
    deadline: float | None = None
    """The task's deadline: no credential outlives it."""
    audience: str | None = None
    """The audience the call's tool rule or intent asks for, if any."""
    act: Mapping[str, Any] | None = None
    """The delegation chain (``{"sub": parent identity, "task_id": ..., "act": ...}``)."""
    would_deny: bool = False
    """The call runs in shadow mode although the policy or a budget refused it (its
    ``request`` is recorded ``would_deny``); the issuer's token says so (claim ``shadow``)."""

    def __post_init__(self) -> None:
        resources = self.resources
        if not isinstance(resources, (str, tuple)):  # a str stays one: the issuer rejects it
            object.__setattr__(self, "resources", tuple(resources))

    @classmethod
    def of(cls, request: MintRequest | None, keywords: Mapping[str, Any]) -> MintRequest:
        """``request``, or one built from the keyword arguments of the ``mint(jti=..., ...)``
        signature of earlier versions (kept for callers of :meth:`Issuer.mint` and of the
        brokers' ``mint``). Raises :class:`TypeError` for a mix or unknown names."""
        if request is not None:
            if keywords:
                raise TypeError("mint() takes a MintRequest or keyword arguments, not both")
            if not isinstance(request, MintRequest):
                raise TypeError(f"mint() takes a MintRequest, not {type(request).__name__}")
            return request
        return cls(**keywords)

    def keywords(self) -> dict[str, Any]:
        """The request as the keyword arguments of the earlier ``mint(jti=..., ...)`` (which
        had no ``would_deny``: a provider of that interface is not told)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "would_deny"}


@runtime_checkable
class CredentialProvider(Protocol):
    """Mints the credential of one allowed call: the built-in :class:`Issuer`, an external
    token broker (:mod:`toolguard.brokers`), or a static secret for legacy APIs. Give one per
    tool with ``Guard(config, providers={tool: provider})``.

    Any exception from :meth:`mint` denies the call (fail closed, audited). Providers written
    for earlier versions (``mint(*, jti, task_id, ...)`` keywords, and ``bind``, ``end_task``,
    ``jit`` optional) still work: the guard adapts them (:func:`as_provider`).
    """

    jit: bool
    """False for credentials that are not just-in-time (a static secret): recorded in the
    credential's row (``credentials.jit``)."""

    def bind(self, guard: Guard) -> None:
        """Called once by the guard that uses the provider: take what was not given from it
        (its issuer, store, clock)."""
        ...

    def mint(self, request: MintRequest, /) -> Credential:
        """The credential of one allowed call; raise (any exception) to deny it."""
        ...

    def end_task(self, task_id: str, jtis: Sequence[str]) -> None:
        """A task ended (or was revoked): revoke what was issued for it and its ``jtis``."""
        ...


class _KeywordProvider:
    """A provider written for the earlier interface, as a :class:`CredentialProvider`: its
    ``mint`` takes the request's fields as keywords; a missing ``bind`` or ``end_task`` does
    nothing and a missing ``jit`` is True. Looked up once, here."""

    __slots__ = ("_bind", "_end_task", "jit", "provider")

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.jit = bool(getattr(provider, "jit", True))
        self._bind = getattr(provider, "bind", None)
        self._end_task = getattr(provider, "end_task", None)

    def bind(self, guard: Guard) -> None:
        if self._bind is not None:
            self._bind(guard)

    def mint(self, request: MintRequest, /) -> Credential:
        credential: Credential = self.provider.mint(**request.keywords())
        return credential

    def end_task(self, task_id: str, jtis: Sequence[str]) -> None:
        if self._end_task is not None:
            self._end_task(task_id, jtis)

    def __repr__(self) -> str:
        return repr(self.provider)


def as_provider(provider: object) -> CredentialProvider:
    """``provider`` itself if it implements :class:`CredentialProvider` (``jit``, ``bind``,
    ``mint(request)``, ``end_task``), else an adapter for a provider of the earlier interface
    (a ``mint`` with keyword parameters). :class:`ConfigError` for an object with no ``mint``."""
    mint = getattr(provider, "mint", None)
    if not callable(mint):
        raise ConfigError(
            f"a credential provider must have a mint() method; got {type(provider).__name__}"
        )
    if isinstance(provider, CredentialProvider):
        try:
            inspect.signature(mint).bind(None)  # mint(request): one positional argument
        except (TypeError, ValueError):
            pass
        else:
            return provider
    return _KeywordProvider(provider)


class Issuer:
    """Mints the credential of one call: claims now, signature on first use of ``token``.

    The guard's built-in :class:`CredentialProvider` (for every tool without a provider)."""

    __slots__ = ("audience", "keys", "name", "ttl")

    jit: ClassVar[bool] = True
    """Its credentials are just-in-time: one per call, expiring with the task at the latest."""

    name: str
    audience: str
    keys: KeyRing
    ttl: float

    def __init__(self, *, name: str, audience: str, keys: KeyRing, ttl: float = 300.0) -> None:
        if not _nonempty(name) or not _nonempty(audience):
            raise ConfigError("issuer name and audience must be non-empty strings")
        if not isinstance(keys, KeyRing):
            raise ConfigError("keys must be a KeyRing (it holds the private signing key)")
        if not is_finite_number(ttl) or not 1 <= ttl <= MAX_DURATION:
            raise ConfigError(
                "issuer ttl must be a number of seconds, at least 1 (up to 100 years)"
            )
        _set_slots(self, {"name": name, "audience": audience, "keys": keys, "ttl": ttl})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Issuer is immutable")

    def bind(self, guard: Guard) -> None:
        """Nothing to take from the guard (it built this issuer)."""

    def end_task(self, task_id: str, jtis: Sequence[str]) -> None:
        """Nothing to do: the task's revocation in the store covers its credentials."""

    def mint(self, request: MintRequest | None = None, /, **keywords: Any) -> Credential:
        """The credential for one call (a :class:`MintRequest`, or its fields as keywords);
        ``exp`` is ``now + ttl`` capped by the task ``deadline``.

        Raises :class:`CredentialError` if the deadline has passed or an argument is malformed.
        """
        r = MintRequest.of(request, keywords)
        jti, task_id, identity, intent, tool, operation, resources, now, deadline = (
            r.jti, r.task_id, r.identity, r.intent, r.tool, r.operation, r.resources, r.now,
            r.deadline,
        )  # fmt: skip
        audience, act = r.audience, r.act
        res = tuple(resources)
        if isinstance(resources, str) or not all(type(r) is str for r in res):
            raise CredentialError(
                "resources must be a sequence of strings (not one string)", tool=tool
            )
        aud = self.audience if audience is None else audience
        for value in (jti, task_id, identity, intent, tool, operation, aud):
            if type(value) is not str or not value:
                raise CredentialError(
                    "jti, task_id, identity, intent, tool, operation and audience must be "
                    "non-empty strings",
                    tool=tool if isinstance(tool, str) else None,
                )
        if not is_finite_number(now) or (deadline is not None and not is_finite_number(deadline)):
            raise CredentialError("now and deadline must be finite unix times", tool=tool)
        end = now + self.ttl if deadline is None else min(now + self.ttl, deadline)
        exp = int(end)
        if exp <= now:
            raise CredentialError(
                f"task deadline passed; no credential is minted for '{tool}'. "
                "Start a new task to continue",
                tool=tool,
                task_id=task_id,
            )
        iat = math.floor(now)
        payload: dict[str, Any] = {
            "iss": self.name, "sub": identity, "aud": aud, "iat": iat, "nbf": iat, "exp": exp,
            "jti": jti, "task_id": task_id, "intent": intent, "tool": tool, "op": operation,
            "res": res,
        }  # fmt: skip
        if act is not None:
            payload["act"] = _freeze(act)
        if r.would_deny:  # a downstream service may refuse what enforce mode would have
            payload["shadow"] = "would_deny"
        return Credential._minted(payload, self.keys.active)

    def verifier(
        self,
        *,
        audience: str | None = None,
        max_ttl: float | None = None,
        leeway: float = 5.0,
        revocations: RevocationSource | None = None,
        single_use: bool = False,
    ) -> Verifier:
        """A :class:`Verifier` for this issuer's tokens, pinned to its keys' algorithms."""
        algorithms = sorted({alg for alg, _ in self.keys.public_keys().values()})
        return Verifier(
            issuer=self.name, audience=self.audience if audience is None else audience,
            keys=self.keys, algorithms=algorithms,
            max_ttl=self.ttl if max_ttl is None else max_ttl, leeway=leeway,
            revocations=revocations, single_use=single_use,
        )  # fmt: skip


class RevocationSource(Protocol):
    """Where a verifier asks whether a credential was revoked (e.g. the audit store).

    Return ``None`` if nothing applies, else the reason. ``chain`` lists the task ids of the
    delegating tasks from the ``act`` claims, parent first; ``issued_at`` is the token's ``iat``
    (an identity revocation covers the credentials issued before it). Any exception fails
    closed.

    A source may also have a ``source`` attribute: what it reads, in words, without secrets
    (``"the revocation store /srv/audit.db"``, ``"the revocation feed https://feed/revocations"``);
    the verifier's fail-closed message names it (see :func:`revocation_source`).
    """

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float
    ) -> str | None:
        """The revocation reason for this credential, or ``None``."""
        ...


def revocation_source(revocations: object) -> str:
    """What a revocation source reads, for a message: its ``source`` attribute when it is a
    short printable text, else ``"the revocation source <its type>"``."""
    source = getattr(revocations, "source", None)
    if isinstance(source, str) and source.strip() and source.isprintable():
        return source if len(source) <= 300 else source[:300] + "..."
    return f"the revocation source {type(revocations).__name__}"


class Verifier:
    """Verifies toolguard credentials in a downstream service; see the module docstring."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: PublicKeySource,
        algorithms: Sequence[str] = ("EdDSA",),
        max_ttl: float = 300.0,
        leeway: float = 5.0,
        revocations: RevocationSource | None = None,
        single_use: bool = False,
        clock: Callable[[], float] = time.time,
        replay_cache_size: int = 100_000,
    ) -> None:
        if not _nonempty(issuer) or not _nonempty(audience):
            raise ConfigError("verifier issuer and audience must be non-empty strings")
        if isinstance(algorithms, str) or not algorithms or set(algorithms) - set(ALGORITHMS):
            raise ConfigError(
                f"algorithms must be a non-empty list drawn from {', '.join(ALGORITHMS)}"
            )
        if not is_finite_number(max_ttl) or not 0 < max_ttl <= MAX_DURATION:
            raise ConfigError("max_ttl must be a positive number of seconds (up to 100 years)")
        if not is_finite_number(leeway) or not 0 <= leeway <= 60:
            raise ConfigError("leeway must be between 0 and 60 seconds")
        if type(replay_cache_size) is not int or replay_cache_size < 1:
            raise ConfigError("replay_cache_size must be a positive integer")
        available = {alg for alg, _ in keys.public_keys().values()}
        if available and not available & set(algorithms):
            raise ConfigError(
                f"the verifier's keys are {', '.join(sorted(available))} but algorithms="
                f"{list(algorithms)}; pin the algorithm of your keys"
            )
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.algorithms = frozenset(algorithms)
        self.max_ttl = float(max_ttl)
        self.leeway = float(leeway)
        self.revocations = revocations
        self.single_use = single_use
        self._clock = clock
        self._replay_cap = replay_cache_size
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    @classmethod
    def from_jwks(
        cls,
        jwks: Mapping[str, Any] | str | os.PathLike[str],
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = ("EdDSA",),
        max_ttl: float = 300.0,
        leeway: float = 5.0,
        revocations: RevocationSource | None = None,
        single_use: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> Verifier:
        """A verifier whose keys come from a JWKS document, or the path of a JWKS JSON file."""
        return cls(
            issuer=issuer, audience=audience, keys=PublicKeys.from_jwks(jwks),
            algorithms=algorithms, max_ttl=max_ttl, leeway=leeway, revocations=revocations,
            single_use=single_use, clock=clock,
        )  # fmt: skip

    def verify(
        self,
        token: str,
        *,
        operation: str | None = None,
        resource: str | None = None,
        tool: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """The claims of ``token`` if it is valid for this call; else a CredentialError.

        ``operation``, ``resource`` and ``tool``, when given, must be covered by the token's
        ``op``, ``res`` (exact match of one entry) and ``tool``.
        """
        try:
            return self._verify(token, operation, resource, tool, now)
        except CredentialError:
            raise
        except Exception as exc:  # last resort: whatever went wrong, the token is rejected
            raise CredentialInvalid(
                "credential could not be verified and is rejected", rule="credential"
            ) from exc

    # -- the checks, cheapest first ---------------------------------------------------------

    def _verify(
        self,
        token: object,
        operation: str | None,
        resource: str | None,
        tool: str | None,
        now: float | None,
    ) -> dict[str, Any]:
        if not isinstance(token, str):
            _invalid(f"credential must be a string, not {type(token).__name__}", "shape")
        if not token or len(token) > _MAX_TOKEN:
            _invalid(f"credential must be 1 to {_MAX_TOKEN} characters long", "shape")
        if not _TOKEN_SHAPE.fullmatch(token):
            _invalid("credential is not a compact JWS (three base64url segments)", "shape")
        head, body, sig = token.split(".")
        header = _decode_json(head, "header")
        alg, public_key = self._key_for(header)
        signing_input = token[: len(head) + 1 + len(body)].encode("ascii")
        if not verify_signature(alg, public_key, _decode(sig, "signature"), signing_input):
            _invalid("credential signature is not valid", "signature")
        claims = _decode_json(body, "claims")
        self._check_claims(claims)
        now = self._clock() if now is None else now
        if not is_finite_number(now):
            _invalid("the verification time is not a finite number; check the clock", "now")
        self._check_times(claims, now)
        self._check_scope(claims, operation, resource, tool)
        if self.revocations is not None:
            self._check_revoked(claims)
        if self.single_use:
            self._check_replay(claims, now)
        return claims

    def _key_for(self, header: dict[str, Any]) -> tuple[str, PublicKey]:
        for name in _FORBIDDEN_HEADERS:
            if name in header:
                _invalid(f"credential header '{name}' is not accepted", f"header.{name}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            _invalid("unsigned credentials (alg 'none' or missing) are never accepted", "alg")
        if alg not in self.algorithms:
            _invalid(
                f"credential algorithm {alg[:16]!r} is not allowed; this verifier accepts "
                f"{', '.join(sorted(self.algorithms))}",
                "alg",
            )
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYPES:
            _invalid("credential 'typ' must be 'at+jwt' (RFC 9068)", "typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID:
            _invalid(f"credential 'kid' must be a string of 1 to {_MAX_KID} characters", "kid")
        entry = self.keys.public_keys().get(kid)
        if entry is None:
            _invalid(
                f"credential key id {kid[:48]!r} is unknown; if the issuer rotated its key, "
                "refresh this verifier's JWKS",
                "kid",
            )
        key_alg, public_key = entry
        if key_alg != alg:
            _invalid(f"credential algorithm {alg} does not match its key ({key_alg})", "alg")
        return alg, public_key

    def _check_claims(self, claims: dict[str, Any]) -> None:
        missing = [name for name in REQUIRED_CLAIMS if name not in claims]
        if missing:
            _invalid(f"credential lacks required claim(s) {', '.join(missing)}", "claims")
        for name in _STRING_CLAIMS:
            if not _nonempty(claims[name]):
                _invalid(f"credential claim '{name}' must be a non-empty string", f"claims.{name}")
        for name in ("iat", "nbf", "exp"):
            if not is_finite_number(claims[name]):
                _invalid(f"credential claim '{name}' must be a number", f"claims.{name}")
        res = claims["res"]
        if not isinstance(res, list) or not all(isinstance(r, str) for r in res):
            _invalid("credential claim 'res' must be a list of strings", "claims.res")
        if claims["iss"] != self.issuer:
            _invalid("credential was not issued by the expected issuer", "claims.iss")
        if claims["aud"] != self.audience:
            _invalid("credential is not for this audience (aud must be one string)", "claims.aud")
        _act_chain(claims)  # validates the shape of 'act' if present

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        iat, nbf, exp = claims["iat"], claims["nbf"], claims["exp"]
        fields = {"tool": claims["tool"], "task_id": claims["task_id"]}
        if exp <= iat or exp - iat > self.max_ttl:
            raise CredentialInvalid(
                f"credential lifetime must be positive and at most {self.max_ttl:g}s",
                rule="credential.lifetime", **fields,
            )  # fmt: skip
        if now >= exp + self.leeway:
            raise CredentialExpired(
                "credential has expired; each call gets a fresh one, do not keep tokens",
                rule="credential.exp", **fields,
            )  # fmt: skip
        if nbf > now + self.leeway:
            raise CredentialExpired(
                "credential is not valid yet (nbf); check the issuer's and this host's clocks",
                rule="credential.nbf", **fields,
            )  # fmt: skip
        if iat > now + self.leeway:
            raise CredentialInvalid(
                "credential was issued in the future (iat); check the clocks",
                rule="credential.iat", **fields,
            )  # fmt: skip

    def _check_scope(
        self,
        claims: dict[str, Any],
        operation: str | None,
        resource: str | None,
        tool: str | None,
    ) -> None:
        got_tool, task_id = claims["tool"], claims["task_id"]
        if tool is not None and tool != got_tool:
            raise ScopeMismatch(
                f"credential is for tool '{got_tool}', not '{tool}'",
                tool=got_tool, task_id=task_id, rule="credential.tool",
            )  # fmt: skip
        if operation is not None and operation != claims["op"]:
            raise ScopeMismatch(
                f"credential is for operation '{claims['op']}', not '{operation}'",
                tool=got_tool, task_id=task_id, rule="credential.op",
            )  # fmt: skip
        if resource is not None and resource not in claims["res"]:
            raise ScopeMismatch(
                f"credential does not cover resource '{resource}'",
                tool=got_tool, task_id=task_id, rule="credential.res",
            )  # fmt: skip

    def _check_revoked(self, claims: dict[str, Any]) -> None:
        assert self.revocations is not None
        fields = {"tool": claims["tool"], "task_id": claims["task_id"]}
        try:
            reason = self.revocations.revoked_reason(
                jti=claims["jti"],
                task_id=claims["task_id"],
                identity=claims["sub"],
                chain=_act_chain(claims),
                issued_at=claims["iat"],
            )
        except Exception as exc:
            raise CredentialRevoked(
                f"{revocation_source(self.revocations)} unavailable; rejecting (fail closed)",
                rule="credential.revocation", **fields,
            ) from exc  # fmt: skip
        if reason is not None:
            why = str(reason)[:200] or "no reason given"
            raise CredentialRevoked(
                f"credential was revoked: {why}", rule="credential.revoked", **fields
            )

    def _check_replay(self, claims: dict[str, Any], now: float) -> None:
        jti, fields = claims["jti"], {"tool": claims["tool"], "task_id": claims["task_id"]}
        with self._lock:
            heap, seen = self._expiries, self._seen
            while heap and heap[0][0] <= now:
                _, old = heapq.heappop(heap)
                seen.pop(old, None)
            if jti in seen:
                raise CredentialRevoked(
                    "credential was already used (replayed); it is single-use",
                    rule="credential.replay", **fields,
                )  # fmt: skip
            if len(seen) >= self._replay_cap:
                raise CredentialRevoked(
                    "replay cache is full; rejecting (fail closed). Raise replay_cache_size",
                    rule="credential.replay", **fields,
                )  # fmt: skip
            forget_at = claims["exp"] + self.leeway + _REPLAY_SLACK
            seen[jti] = forget_at
            heapq.heappush(heap, (forget_at, jti))

    def __repr__(self) -> str:
        return (
            f"Verifier(issuer={self.issuer!r}, audience={self.audience!r}, "
            f"algorithms={sorted(self.algorithms)!r})"
        )


# -- helpers -------------------------------------------------------------------------------


def _invalid(message: str, rule: str) -> NoReturn:
    raise CredentialInvalid(message, rule=f"credential.{rule}")


def _nonempty(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _decode(segment: str, what: str) -> bytes:
    try:
        return b64url_decode(segment)
    except ValueError as exc:
        raise CredentialInvalid(
            f"credential {what} is not valid base64url", rule=f"credential.{what}"
        ) from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _decode_json(segment: str, what: str) -> dict[str, Any]:
    raw = _decode(segment, what)
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants
        )
    except (ValueError, RecursionError) as exc:
        raise CredentialInvalid(
            f"credential {what} is not JSON without duplicate names", rule=f"credential.{what}"
        ) from exc
    if not isinstance(value, dict):
        _invalid(f"credential {what} must be a JSON object", what)
    return value


def _act_chain(claims: Mapping[str, Any]) -> list[str]:
    """Task ids of the delegating tasks in the nested ``act`` claims, parent first."""
    chain: list[str] = []
    act = claims.get("act")
    while act is not None:
        if (
            not isinstance(act, dict)
            or not _nonempty(act.get("sub"))
            or not _nonempty(act.get("task_id"))
            or len(chain) >= _MAX_ACT_DEPTH
        ):
            _invalid(
                f"credential claim 'act' must nest objects with 'sub' and 'task_id' "
                f"(at most {_MAX_ACT_DEPTH} deep)",
                "claims.act",
            )
        chain.append(act["task_id"])
        act = act.get("act")
    return chain
