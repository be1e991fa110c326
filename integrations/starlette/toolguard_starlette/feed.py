"""A signed revocation feed over HTTP, for verifiers that cannot read the audit store.

The **server** (:func:`revocation_app`) runs next to the guards, with read access to the store
(SQLite or PostgreSQL: any store behind :class:`toolguard.store.StoreReader`). It serves::

    GET /revocations   the signed revocation list (below); ETag, If-None-Match -> 304,
                       Cache-Control: no-cache
    GET /jwks.json     the issuer's public keys (to pin in the verifiers' configuration)

The list is a compact JWS (``typ: toolguard-revocations+jwt``, media type
:data:`FEED_MEDIA_TYPE`) signed with the issuer's active key, so a verifier checks it with the
JWKS it already has for credentials. Its claims::

    {"iss": issuer, "iat": signing time, "version": number of revocations in the store,
     "jti": [digest, ...], "task": [digest, ...], "identity": {digest: newest revocation time}}

Each ``digest`` is base64url(SHA-256(scope NUL value))[:22]: the list does not spell out
identities, task ids or credential ids (it does not hide them from someone who can guess them).
It covers every scope the store-backed verifier checks: a credential's ``jti``, its task and
every delegating task of its ``act`` chain (``task``), its identity when revoked at or after the
credential's ``iat`` (``identity``), and the task ends this process has not written yet (when
the app is given a guard's own store). ``version`` only grows (revocations are never deleted):
a verifier refuses a list older than the one it holds. The list itself holds only the
revocations that can still reject a credential: a task or jti revocation leaves it once every
credential it can reject has passed its ``exp`` plus the verifiers' leeway, an identity
revocation once the identity is enabled and its credentials have expired likewise (see
:func:`revocation_app`), so it stays bounded however many tasks end.

The **client** (:class:`~toolguard_starlette.feed_client.RevocationFeed`, in
:mod:`toolguard_starlette.feed_client`, or ``verifier_from(..., feed=URL)``) polls the list on a
background thread every ``interval`` seconds and answers the verifier from memory:

- **Staleness bound**: while the feed answers, a revocation written to the store reaches the
  verifier within ``interval + timeout`` (default 0.5 s + 0.5 s = 1 s).
- **Grace period, then fail closed**: if the feed cannot be reached, or its reply is rejected,
  the verifier keeps its last good list for ``grace`` seconds (default 10 s) after the last
  successful poll (for a new list: after its ``iat`` plus ``leeway``, if that is earlier, so a
  replayed list never outlives ``grace + leeway`` from its signing), then rejects every
  credential (503 from :class:`ToolGuardAuth`) until the
  feed answers again. A conditional poll (If-None-Match) answered 304 counts as success only
  while the held list was signed less than ``grace / 2`` ago; after that the client asks for a
  freshly signed list, so a replayed or forged 304 cannot keep an old list alive for longer
  than ``1.5 * grace``.
- **Rejected replies** (each counts as a failed poll; the last good list is kept): a status
  other than 200/304 (redirects are never followed), another content type, a body over
  ``max_bytes`` (read no further) or still arriving after ``timeout`` (its status line and
  headers: after twice ``timeout``), a token that is not a
  JWS with the feed's ``typ``, an unknown key or a bad signature, claims that are not exactly
  the ones above, another ``iss``, a ``version`` lower than the held one (rollback), an ``iat``
  older than the held list's (replay), older than ``grace`` or in the future.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from toolguard.errors import ConfigError, ToolGuardError
from toolguard.keys import (
    KeyRing,
    b64url_encode,
)
from toolguard.numbers import is_finite_number
from toolguard.store import StoreLocation, StoreReader, open_store

__all__ = [
    "FEED_MEDIA_TYPE",
    "FEED_TYP",
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_TTL",
    "DIGEST_CHARS",
    "FeedError",
    "RevocationList",
    "check_secret",
    "revocation_app",
    "revocation_app_from_config",
    "revocation_digest",
]

log = logging.getLogger("toolguard")

FEED_TYP = "toolguard-revocations+jwt"
"""The JWS ``typ`` of a revocation list (a credential's is ``at+jwt``: neither passes for the
other)."""

FEED_MEDIA_TYPE = "application/toolguard-revocations+jwt"
"""The ``Content-Type`` of ``GET /revocations``; the client accepts no other."""

DIGEST_CHARS = 22  # 16 bytes of SHA-256, base64url

DEFAULT_LEEWAY = 60.0
"""The verifiers' largest clock leeway the feed allows for by default (the most a
:class:`~toolguard.credentials.Verifier` accepts): a revoked credential is rejected until its
``exp`` plus this."""

DEFAULT_MAX_TTL = 300.0
"""The longest credential lifetime (``exp - iat``) the verifiers accept, by default (the
verifiers' and the issuer's default ``max_ttl``)."""


class FeedError(ToolGuardError):
    """The revocation feed could not be fetched, or its reply was rejected."""


def revocation_digest(scope: str, value: str) -> str:
    """How a revoked ``value`` of ``scope`` (``jti``, ``task``, ``identity``) appears in the
    list: base64url(SHA-256(scope NUL value)), first 22 characters."""
    raw = hashlib.sha256(f"{scope}\x00{value}".encode()).digest()
    return b64url_encode(raw)[:DIGEST_CHARS]


@dataclass(frozen=True)
class RevocationList:
    """A verified revocation list: its ``version``, signing time ``iat`` and digests."""

    version: int
    iat: float
    jti: frozenset[str]
    task: frozenset[str]
    identity: Mapping[str, float]

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float
    ) -> str | None:
        """Why a credential is revoked according to this list, or None (the store's rules)."""
        if revocation_digest("jti", jti) in self.jti:
            return "jti revoked (revocation feed)"
        for task in (task_id, *chain):
            if revocation_digest("task", task) in self.task:
                return "task revoked or ended (revocation feed)"
        cutoff = self.identity.get(revocation_digest("identity", identity))
        if cutoff is not None and cutoff >= issued_at:
            return "identity revoked (revocation feed)"
        return None


# -- the server ----------------------------------------------------------------------------


class _Snapshot:
    """The published content for one state of the store: the claims without ``iat`` as JSON
    (``{"iss":...}``), its version, its ETag, and until when it holds (the time the next row
    may leave the list)."""

    __slots__ = ("claims_json", "etag", "marker", "valid_until", "version")

    def __init__(self, marker: object, version: int, claims_json: str, valid_until: float):
        self.marker = marker
        self.version = version
        self.claims_json = claims_json
        self.valid_until = valid_until
        digest = hashlib.sha256(claims_json.encode()).hexdigest()[:32]
        self.etag = f'"v{version}-{digest}"'


class _Publisher:
    """Builds and signs the list. The store is read again only when its revocation marker
    (or this process's pending task ends) changed, or when a row's last credential has
    expired (it leaves the list); digests of the rows published last time are kept."""

    def __init__(
        self,
        store: StoreReader,
        keys: KeyRing,
        issuer: str,
        clock: Callable[[], float],
        horizon: float | None = None,
        leeway: float = DEFAULT_LEEWAY,
        max_ttl: float = DEFAULT_MAX_TTL,
    ) -> None:
        self.store, self.keys, self.issuer, self.clock = store, keys, issuer, clock
        self.horizon = horizon
        self.leeway = leeway
        self.max_ttl = max_ttl
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._digests: dict[tuple[str, str], str] = {}

    def snapshot(self) -> _Snapshot:
        """The current content (raises on any store failure)."""
        pending = self.store.pending_ends()
        now = self.clock()
        # with a horizon, old rows leave the list as time passes: rebuild once a minute too
        tick = None if self.horizon is None else int(now // 60)
        marker = (self.store.revocation_marker(), pending, tick)
        with self._lock:
            held = self._snapshot
            if held is not None and held.marker == marker and now < held.valid_until:
                return held
            # a credential is accepted while now < exp + leeway: a row matters while one of the
            # credentials it can reject has exp > now - leeway (read in one statement)
            life, leeway = self.max_ttl, self.leeway
            total, rows = self.store.revocation_reach(now - leeway, now - life - leeway)
            seen, digests = self._digests, {}

            def digest(scope: str, value: str) -> str:
                key = (scope, value)
                found = seen.get(key)
                if found is None:
                    found = revocation_digest(scope, value)
                digests[key] = found
                return found

            jtis: dict[str, None] = {}
            tasks: dict[str, None] = {}
            identities: dict[str, float] = {}
            valid_until = math.inf
            cutoff = -math.inf if self.horizon is None else now - self.horizon
            for scope, value, ts, until, disabled in rows:
                # it can reject a credential issued before it (a verifier accepts a lifetime of
                # max_ttl at most) or one the store knows is still valid, until leeway after
                # either expires; a disabled identity's revocation stays
                drop_at = max(ts + life, -math.inf if until is None else until) + leeway
                if scope in ("task", "jti"):
                    if now >= drop_at or ts < cutoff:
                        continue  # every credential it could reject has expired
                    valid_until = min(valid_until, drop_at)
                    if scope == "task":
                        tasks[digest("task", value)] = None
                    else:
                        jtis[digest("jti", value)] = None
                elif scope == "identity":
                    if disabled:  # enabling writes no revocation: look again in a minute
                        valid_until = min(valid_until, now + 60.0)
                    elif now >= drop_at:
                        continue  # enabled, and every credential it could reject has expired
                    else:
                        valid_until = min(valid_until, drop_at)
                    key = digest("identity", value)
                    identities[key] = max(ts, identities.get(key, -math.inf))
                else:  # a scope the feed does not know would be silently dropped: refuse
                    raise FeedError(f"the store holds a revocation of unknown scope {scope[:32]!r}")
            for task_id in sorted(pending):
                tasks[digest("task", task_id)] = None
            self._digests = digests
            content = {
                "iss": self.issuer,
                "version": total,
                "jti": list(jtis),
                "task": list(tasks),
                "identity": identities,
            }
            claims_json = json.dumps(content, separators=(",", ":"), allow_nan=False)
            self._snapshot = _Snapshot(marker, total, claims_json, valid_until)
            return self._snapshot

    def sign(self, snap: _Snapshot) -> bytes:
        """The list as a compact JWS, signed now (its ``iat``)."""
        key = self.keys.active
        header = {"alg": key.algorithm, "typ": FEED_TYP, "kid": key.kid}
        claims = f'{{"iat":{json.dumps(float(self.clock()))},{snap.claims_json[1:]}'
        signing_input = (
            b64url_encode(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url_encode(claims.encode())
        )
        return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}".encode()


def revocation_app(
    *,
    store: StoreReader | StoreLocation | str | os.PathLike[str],
    keys: KeyRing,
    issuer: str,
    secret: str | None = None,
    busy_timeout: float = 2.0,
    clock: Callable[[], float] = time.time,
    horizon: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
    max_ttl: float = DEFAULT_MAX_TTL,
) -> Starlette:
    """The feed app: ``GET /revocations`` (the signed list) and ``GET /jwks.json``.

    ``store`` is a store (a :class:`toolguard.store.StoreReader`, e.g. ``guard.store``: its
    pending task ends are published too) or the path or URL of the audit database (opened
    read-only). ``keys`` is the
    issuer's :class:`~toolguard.keys.KeyRing` (``guard.keys``, or ``KeyRing.load(key_file)``):
    the list is signed with its active key. ``issuer`` is the issuer's name (the ``iss`` the
    verifiers expect). Run it with any ASGI server, or mount it in an app::

        app = revocation_app(store=".toolguard/audit.db", keys=KeyRing.load(key_file),
                             issuer="toolguard-local")
        uvicorn.run(app, host="0.0.0.0", port=8700)

    With ``secret`` (at least 16 characters), ``/revocations`` answers only requests with
    ``Authorization: Bearer <secret>`` (compared in constant time; 401 otherwise): give it to
    the verifiers as ``feed_secret=``. If the store cannot be read, ``/revocations`` answers
    503 (verifiers keep their last list for their grace period, then fail closed).

    The store keeps every revocation (every task end is one), but the list holds only those
    that can still reject a credential, so it stays bounded however long the store runs: a
    ``task`` or ``jti`` revocation leaves it once every credential it can reject has expired
    for every verifier, that is ``leeway`` seconds after the later of (a) the revocation's
    time plus ``max_ttl`` (a verifier accepts no lifetime longer than its ``max_ttl``, and no
    credential of a revoked task or jti is minted after its revocation) and (b) the latest
    ``exp`` among the credentials the store recorded that it can reject (that credential; the
    task's and its delegated tasks' credentials: this covers clocks that disagree). An
    ``identity`` revocation stays while the identity is disabled, else leaves likewise (with
    every credential of the identity). ``max_ttl`` (default :data:`DEFAULT_MAX_TTL`, 300) and
    ``leeway`` (default :data:`DEFAULT_LEEWAY`, 60, the most a verifier accepts) must be at
    least the verifiers' own. ``horizon`` (seconds), optional, also leaves out task and jti
    revocations older than that, whatever their credentials. ``version`` still counts every
    revocation.
    """
    if horizon is not None and (not is_finite_number(horizon) or not 1 <= horizon <= 10**9):
        raise ConfigError(
            "horizon must be a number of seconds of at least 1 (at least the verifiers' "
            "max_ttl plus their leeway), or None to publish every revocation"
        )
    if not is_finite_number(max_ttl) or not 0 < max_ttl <= 10**9:
        raise ConfigError(
            "max_ttl must be the verifiers' longest accepted credential lifetime in seconds, "
            f"above 0 (default {DEFAULT_MAX_TTL:g})"
        )
    if not is_finite_number(leeway) or not 0 <= leeway <= 3600:
        raise ConfigError(
            "leeway must be the verifiers' largest clock leeway, from 0 to 3600 seconds "
            f"(default {DEFAULT_LEEWAY:g})"
        )
    if not isinstance(keys, KeyRing):
        raise ConfigError("keys must be the issuer's KeyRing (it signs the revocation list)")
    if not isinstance(issuer, str) or not issuer:
        raise ConfigError("issuer must be the issuer's name, a non-empty string")
    expected = None if secret is None else check_secret(secret).encode()
    if isinstance(store, (StoreLocation, str, os.PathLike)) or not callable(
        getattr(store, "revocation_reach", None)
    ):  # a path, sqlite:/// or postgresql:// (parse_store: anything else is a ConfigError)
        store = open_store(cast(Any, store), readonly=True, busy_timeout=busy_timeout)
    publisher = _Publisher(
        store, keys, issuer, clock, None if horizon is None else float(horizon), float(leeway),
        float(max_ttl),
    )  # fmt: skip
    jwks = keys.jwks()

    def revocations(request: Request) -> Response:
        if expected is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), expected
            ):
                return JSONResponse(
                    {
                        "error": "invalid_client",
                        "error_description": "this feed needs Authorization: Bearer <secret>",
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="toolguard-feed"'},
                )
        try:
            snap = publisher.snapshot()
        except Exception as exc:
            log.warning("revocation feed: the store cannot be read (%s)", type(exc).__name__)
            return JSONResponse(
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the revocation store cannot be read; retry later",
                },
                status_code=503,
                headers={"Cache-Control": "no-store", "Retry-After": "1"},
            )
        headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
        wanted = request.headers.get("if-none-match")
        if wanted is not None and any(
            hmac.compare_digest(tag.strip(), snap.etag) for tag in wanted.split(",")
        ):
            return Response(status_code=304, headers=headers)
        return Response(publisher.sign(snap), media_type=FEED_MEDIA_TYPE, headers=headers)

    def keyset(request: Request) -> Response:
        return JSONResponse(jwks, headers={"Cache-Control": "max-age=60"})

    return Starlette(
        routes=[
            Route("/revocations", revocations, methods=["GET"]),
            Route("/jwks.json", keyset, methods=["GET"]),
        ]
    )


def revocation_app_from_config(
    config: str | os.PathLike[str] | Mapping[str, Any],
    *,
    secret: str | None = None,
    busy_timeout: float = 2.0,
    horizon: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
) -> Starlette:
    """:func:`revocation_app` for a guard's config file (or mapping): its store (read-only),
    its issuer's name and signing key (``issuer.key``, else ``issuer.key_file``, which must
    exist: the feed never creates a key), its ``issuer.max_ttl``; ``secret``, ``horizon`` and
    ``leeway`` as for :func:`revocation_app`. For an ASGI server's command line::

        # feed.py
        from toolguard_starlette import revocation_app_from_config
        app = revocation_app_from_config("toolguard.yaml")

        $ uvicorn feed:app --host 0.0.0.0 --port 8700
    """
    from toolguard.config import load_config

    cfg = load_config(config)
    issuer = cfg.issuer
    if issuer.key is not None:
        keys = KeyRing.from_pem(issuer.key.get_secret_value())
    else:
        keys = KeyRing.load(cfg.resolve_path(issuer.key_file), create=False)
    return revocation_app(
        store=cfg.store_location, keys=keys, issuer=issuer.name, secret=secret,
        busy_timeout=busy_timeout, horizon=horizon, leeway=leeway,
        max_ttl=issuer.effective_max_ttl,
    )  # fmt: skip


def check_secret(secret: object) -> str:
    """The feed's client secret, checked (server and client alike); else ConfigError."""
    if (
        not isinstance(secret, str)
        or len(secret) < 16
        or not secret.isprintable()
        or (secret != secret.strip())
    ):
        raise ConfigError(
            "the feed secret must be a string of at least 16 printable characters without "
            'surrounding spaces; generate one with `python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"`'
        )
    return secret
