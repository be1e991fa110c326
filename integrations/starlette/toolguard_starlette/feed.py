"""A signed revocation feed over HTTP, for verifiers that cannot read the audit store.

The **server** (:func:`revocation_app`) runs next to the guards, with read access to the store
(SQLite file, or any backend behind :class:`toolguard.store.Store`'s public methods). It serves::

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
a verifier refuses a list older than the one it holds.

The **client** (:class:`RevocationFeed`, or ``verifier_from(..., feed=URL)``) polls the list on a
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
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from toolguard.errors import ConfigError, ToolGuardError
from toolguard.keys import (
    ALGORITHMS,
    KeyRing,
    PublicKeySource,
    b64url_decode,
    b64url_encode,
    verify_signature,
)
from toolguard.numbers import is_finite_number
from toolguard.store import Store, StoreLocation, open_store

__all__ = [
    "FEED_MEDIA_TYPE",
    "FEED_TYP",
    "FeedError",
    "RevocationFeed",
    "RevocationList",
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

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
_CLAIMS = frozenset({"iss", "iat", "version", "jti", "task", "identity"})
_SCOPES = ("jti", "task", "identity")
_DIGEST_CHARS = 22  # 16 bytes of SHA-256, base64url


class FeedError(ToolGuardError):
    """The revocation feed could not be fetched, or its reply was rejected."""


def revocation_digest(scope: str, value: str) -> str:
    """How a revoked ``value`` of ``scope`` (``jti``, ``task``, ``identity``) appears in the
    list: base64url(SHA-256(scope NUL value)), first 22 characters."""
    raw = hashlib.sha256(f"{scope}\x00{value}".encode()).digest()
    return b64url_encode(raw)[:_DIGEST_CHARS]


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
    (``{"iss":...}``), its version, and its ETag."""

    __slots__ = ("claims_json", "etag", "marker", "version")

    def __init__(self, marker: object, version: int, claims_json: str) -> None:
        self.marker = marker
        self.version = version
        self.claims_json = claims_json
        digest = hashlib.sha256(claims_json.encode()).hexdigest()[:32]
        self.etag = f'"v{version}-{digest}"'


class _Publisher:
    """Builds and signs the list. The store is read again only when its revocation marker
    (or this process's pending task ends) changed; digests of rows already seen are kept."""

    def __init__(
        self,
        store: Store,
        keys: KeyRing,
        issuer: str,
        clock: Callable[[], float],
        horizon: float | None = None,
    ) -> None:
        self.store, self.keys, self.issuer, self.clock = store, keys, issuer, clock
        self.horizon = horizon
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._digests: dict[tuple[str, str], str] = {}

    def _digest(self, scope: str, value: str) -> str:
        key = (scope, value)
        found = self._digests.get(key)
        if found is None:
            found = self._digests[key] = revocation_digest(scope, value)
        return found

    def snapshot(self) -> _Snapshot:
        """The current content (raises on any store failure)."""
        pending = self.store.pending_ends()
        now = self.clock()
        # with a horizon, old rows leave the list as time passes: rebuild once a minute too
        tick = None if self.horizon is None else int(now // 60)
        marker = (self.store.revocation_marker(), pending, tick)
        with self._lock:
            if self._snapshot is not None and self._snapshot.marker == marker:
                return self._snapshot
            rows = self.store.revocation_rows()
            digest = self._digest
            jtis: dict[str, None] = {}
            tasks: dict[str, None] = {}
            identities: dict[str, float] = {}
            cutoff = -math.inf if self.horizon is None else now - self.horizon
            for scope, value, ts in rows:
                if ts < cutoff and scope in ("task", "jti"):
                    continue  # every credential it could reject has expired (see horizon)
                if scope == "task":
                    tasks[digest("task", value)] = None
                elif scope == "jti":
                    jtis[digest("jti", value)] = None
                elif scope == "identity":
                    key = digest("identity", value)
                    identities[key] = max(ts, identities.get(key, -math.inf))
                else:  # a scope the feed does not know would be silently dropped: refuse
                    raise FeedError(f"the store holds a revocation of unknown scope {scope[:32]!r}")
            for task_id in sorted(pending):
                tasks[digest("task", task_id)] = None
            content = {
                "iss": self.issuer,
                "version": len(rows),
                "jti": list(jtis),
                "task": list(tasks),
                "identity": identities,
            }
            claims_json = json.dumps(content, separators=(",", ":"), allow_nan=False)
            self._snapshot = _Snapshot(marker, len(rows), claims_json)
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
    store: Store | StoreLocation | str | os.PathLike[str],
    keys: KeyRing,
    issuer: str,
    secret: str | None = None,
    busy_timeout: float = 2.0,
    clock: Callable[[], float] = time.time,
    horizon: float | None = None,
) -> Starlette:
    """The feed app: ``GET /revocations`` (the signed list) and ``GET /jwks.json``.

    ``store`` is a :class:`toolguard.store.Store` (e.g. ``guard.store``: its pending task ends
    are published too) or the path of the audit database (opened read-only). ``keys`` is the
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

    The list grows with every task end and every ``jti`` revocation, and the store never
    forgets them: past the clients' ``max_bytes`` (16 MiB: roughly 500,000 task ends) every
    verifier would reject it and fail closed. ``horizon`` (seconds) leaves out task and jti
    revocations older than that: set it to at least the verifiers' ``max_ttl`` plus their
    leeway (a credential lives at most ``max_ttl``, so every credential such a row could reject
    has expired). ``version`` still counts every revocation; identity revocations (one entry
    per identity) are always kept.
    """
    if horizon is not None and (not is_finite_number(horizon) or not 1 <= horizon <= 10**9):
        raise ConfigError(
            "horizon must be a number of seconds of at least 1 (at least the verifiers' "
            "max_ttl plus their leeway), or None to publish every revocation"
        )
    if not isinstance(keys, KeyRing):
        raise ConfigError("keys must be the issuer's KeyRing (it signs the revocation list)")
    if not isinstance(issuer, str) or not issuer:
        raise ConfigError("issuer must be the issuer's name, a non-empty string")
    expected = None if secret is None else _check_secret(secret).encode()
    if not isinstance(store, Store):  # a path, sqlite:/// or postgresql:// (parse_store)
        store = open_store(store, readonly=True, busy_timeout=busy_timeout)
    publisher = _Publisher(store, keys, issuer, clock, None if horizon is None else float(horizon))
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
) -> Starlette:
    """:func:`revocation_app` for a guard's config file (or mapping): its store (read-only),
    its issuer's name and signing key (``issuer.key``, else ``issuer.key_file``, which must
    exist: the feed never creates a key); ``secret`` as for :func:`revocation_app`. For an ASGI
    server's command line::

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
        busy_timeout=busy_timeout, horizon=horizon,
    )  # fmt: skip


# -- the client ----------------------------------------------------------------------------


class RevocationFeed:
    """A verifier's revocation source that polls a :func:`revocation_app` over HTTP.

    ``url`` is the feed's ``/revocations`` address (http or https); ``keys`` are the issuer's
    public keys (the verifier's JWKS) and ``issuer`` its name. A background thread starts a
    poll every ``interval`` seconds (each abandoned after ``timeout``: by default, and at
    most, ``interval``), so a revocation reaches :meth:`revoked_reason` within
    ``interval + timeout`` (default 1 s) while the feed answers. If it does not, or its reply
    is rejected, the last good list is used for ``grace`` seconds after the last successful
    poll; then every check raises :class:`FeedError` (the verifier rejects every credential:
    fail closed) until a poll succeeds again. Before the first good list, every check fails
    closed too.

    ``secret`` is the feed's client secret (``revocation_app(secret=...)``), sent as a bearer
    token; never logged (and never sent elsewhere: redirects are not followed).
    ``start=False`` does not start the thread: call :meth:`refresh` yourself. :meth:`close`
    stops the thread. ``clock`` is the verifier's clock (grace and ``iat`` checks).
    """

    def __init__(
        self,
        url: str,
        *,
        keys: PublicKeySource,
        issuer: str,
        algorithms: Iterable[str] | None = None,
        interval: float = 0.5,
        grace: float = 10.0,
        timeout: float | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        leeway: float = 5.0,
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
        start: bool = True,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "the revocation feed must be an http:// or https:// URL with a host, such as "
                "https://toolguard-feed.internal:8700/revocations"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError("the revocation feed URL must not carry credentials (user:pass@)")
        for name, value in (("interval", interval), ("grace", grace)):
            if not is_finite_number(value) or not 0 < value <= 3600:
                raise ConfigError(f"feed {name} must be a number of seconds, above 0, up to 3600")
        timeout = interval if timeout is None else timeout
        if not is_finite_number(timeout) or not 0 < timeout <= interval:
            raise ConfigError(
                "feed timeout must be a number of seconds, above 0, up to the poll interval"
            )
        if grace < interval:
            raise ConfigError(
                "feed grace must be at least the poll interval, else every poll would "
                "outlive it; raise grace or lower interval"
            )
        if type(max_bytes) is not int or max_bytes < 1024:
            raise ConfigError("feed max_bytes must be an integer of at least 1024")
        if not is_finite_number(leeway) or not 0 <= leeway <= 60:
            raise ConfigError("feed leeway must be between 0 and 60 seconds")
        if not isinstance(issuer, str) or not issuer:
            raise ConfigError("issuer must be the issuer's name, a non-empty string")
        available = {alg for alg, _ in keys.public_keys().values()}
        allowed = frozenset(available if algorithms is None else algorithms)
        if not allowed or allowed - set(ALGORITHMS):
            raise ConfigError(
                f"the feed's algorithms must be a non-empty list drawn from {', '.join(ALGORITHMS)}"
            )
        self._secret = None if secret is None else _check_secret(secret)
        self.url = url
        self.keys = keys
        self.issuer = issuer
        self.algorithms = allowed
        self.interval = float(interval)
        self.grace = float(grace)
        self.timeout = float(timeout)
        self.max_bytes = max_bytes
        self.leeway = float(leeway)
        self._clock = clock
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._list: RevocationList | None = None
        self._etag: str | None = None
        self._last_ok: float | None = None
        self.last_error: str | None = None
        """Why the last poll failed (None after a successful one); never holds a token."""
        self._stop = threading.Event()
        self._client = self._new_client()
        self._thread: threading.Thread | None = None
        _FEEDS.add(self)
        if start:
            self.start()

    def _new_client(self) -> httpx.Client:
        # identity: the reply is read raw and bounded by max_bytes; a compressed one (from a
        # proxy) would be refused, so none is asked for
        headers = {
            "Accept": FEED_MEDIA_TYPE,
            "Accept-Encoding": "identity",
            "User-Agent": "toolguard-starlette feed",
        }
        if self._secret is not None:
            headers["Authorization"] = f"Bearer {self._secret}"
        return httpx.Client(
            timeout=self.timeout, follow_redirects=False, trust_env=False, headers=headers
        )

    def _after_fork(self) -> None:
        """In a forked child (a pre-forking server's worker), before anything else runs: the
        parent's thread, connections and lock states did not come along; start over with the
        list inherited (its grace period runs on) and a thread of this process's own."""
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._client = self._new_client()
        self._stop = threading.Event()
        if self._thread is not None:
            self._thread = None
            self.start()

    # -- the verifier's side ------------------------------------------------------------

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float
    ) -> str | None:
        """Why a credential is revoked, or None; raises :class:`FeedError` when there is no
        list newer than the grace period (the verifier then rejects: fail closed)."""
        with self._lock:
            current, last_ok = self._list, self._last_ok
        if current is None or last_ok is None:
            raise FeedError("no revocation list has been received from the feed yet")
        age = self._clock() - last_ok
        if not age <= self.grace:
            raise FeedError(
                f"the revocation feed has not answered for {age:.1f}s (grace {self.grace:g}s)"
            )
        return current.revoked_reason(
            jti=jti, task_id=task_id, identity=identity, chain=chain, issued_at=issued_at
        )

    @property
    def current(self) -> RevocationList | None:
        """The last good list (None before the first)."""
        with self._lock:
            return self._list

    # -- polling -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Poll the feed once. True if the held list is current (a new valid list, or 304);
        False if the poll failed or was rejected (the reason is in :attr:`last_error`)."""
        with self._fetch_lock:
            try:
                self._poll()
            except FeedError as exc:
                self._failed(str(exc))
                return False
            except httpx.HTTPError as exc:
                self._failed(f"the feed cannot be reached ({type(exc).__name__})")
                return False
            except Exception as exc:  # whatever went wrong, keep the last good list
                self._failed(f"the feed's reply could not be read ({type(exc).__name__})")
                return False
        if self.last_error is not None:
            log.warning("revocation feed %s answers again", self.url)
        self.last_error = None
        return True

    def start(self) -> None:
        """Start the polling thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="toolguard-revocation-feed", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop polling. Later checks fail closed once the grace period has passed."""
        _FEEDS.discard(self)
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.timeout + 1.0)
        self._client.close()

    def __enter__(self) -> RevocationFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        held = self.current
        version = None if held is None else held.version
        return f"RevocationFeed(url={self.url!r}, version={version!r})"

    def _run(self) -> None:
        # fixed rate: a poll starts every interval (timeout <= interval), so a revocation
        # written just after one poll read the store is seen by the next one's end:
        # within interval + timeout
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._stop.wait(max(0.0, started + self.interval - time.monotonic()))

    def _failed(self, why: str) -> None:
        if self.last_error is None:
            log.warning("revocation feed %s: %s", self.url, why)
        self.last_error = why

    def _poll(self) -> None:
        now = self._clock()
        with self._lock:
            held, etag = self._list, self._etag
        conditional = held is not None and etag is not None and held.iat >= now - self.grace / 2
        headers = {"If-None-Match": etag} if conditional and etag is not None else {}
        deadline = time.monotonic() + self.timeout  # httpx's timeout is per read, not in all
        client = self._client
        # a reply that drips its status line or headers one byte per read keeps httpx waiting
        # (each read is within its timeout): past twice the timeout, close the client under
        # it (its next read fails) and start the next poll with a new one
        watchdog = threading.Timer(2 * self.timeout, client.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            self._fetch(client, headers, conditional, deadline)
        except Exception:
            if watchdog.finished.is_set() and client.is_closed:  # the watchdog fired
                raise FeedError(
                    f"the feed's reply took longer than twice the timeout ({self.timeout:g}s) "
                    "before its body; abandoned"
                ) from None
            raise
        finally:
            watchdog.cancel()
            if client.is_closed and not self._stop.is_set():
                self._client = self._new_client()

    def _fetch(
        self, client: httpx.Client, headers: dict[str, str], conditional: bool, deadline: float
    ) -> None:
        with client.stream("GET", self.url, headers=headers) as response:
            status = response.status_code
            if status == 304:
                if not conditional:
                    raise FeedError("the feed answered 304 to a request that was not conditional")
                self._succeeded(None, None)
                return
            if 300 <= status < 400:
                raise FeedError(f"the feed answered a redirect ({status}); redirects are refused")
            if status != 200:
                raise FeedError(f"the feed answered HTTP {status}")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != FEED_MEDIA_TYPE:
                raise FeedError(
                    f"the feed's reply is {kind[:60]!r}, not {FEED_MEDIA_TYPE}; check the URL"
                )
            declared = response.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
                raise FeedError(f"the feed's reply is larger than max_bytes ({self.max_bytes})")
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise FeedError(f"the feed's reply is larger than max_bytes ({self.max_bytes})")
                if time.monotonic() > deadline:
                    raise FeedError(
                        f"the feed's reply took longer than the timeout ({self.timeout:g}s)"
                    )
            new_etag = response.headers.get("etag")
        fresh = self._parse(bytes(body), self._clock())
        with self._lock:
            held = self._list
        if held is not None:
            if fresh.version < held.version:
                raise FeedError(
                    f"the feed sent version {fresh.version}, older than the held "
                    f"{held.version} (rollback); kept the held list"
                )
            if fresh.iat < held.iat:
                raise FeedError("the feed sent a list signed before the held one (replay)")
        self._succeeded(fresh, new_etag)

    def _succeeded(self, fresh: RevocationList | None, etag: str | None) -> None:
        now = self._clock()
        with self._lock:
            if fresh is not None:
                self._list, self._etag = fresh, etag
                # the grace period runs from when the list was signed (give or take the
                # leeway), not from when it arrived: a list replayed by a man in the middle
                # shortly before it would be refused as stale must not live a grace longer
                now = min(now, fresh.iat + self.leeway)
            self._last_ok = now

    def _parse(self, body: bytes, now: float) -> RevocationList:
        try:
            token = body.decode("ascii")
        except UnicodeDecodeError:
            raise FeedError("the feed's reply is not a compact JWS") from None
        segments = token.strip().split(".")
        if len(segments) != 3:
            raise FeedError("the feed's reply is not a compact JWS (three segments)")
        head, payload, signature = segments
        header = _json_object(head, "header")
        if header.get("typ") != FEED_TYP:
            raise FeedError(f"the feed's reply is not a revocation list (typ must be {FEED_TYP})")
        if set(header) - {"alg", "typ", "kid"}:
            raise FeedError("the revocation list's header has members other than alg, typ, kid")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise FeedError("the revocation list's algorithm is not allowed")
        entry = self.keys.public_keys().get(kid) if isinstance(kid, str) else None
        if entry is None or entry[0] != alg:
            raise FeedError("the revocation list is signed with a key not in the issuer's JWKS")
        try:
            raw_signature = b64url_decode(signature)
        except ValueError:
            raise FeedError("the revocation list's signature is not base64url") from None
        signing_input = f"{head}.{payload}".encode("ascii")
        if not verify_signature(alg, entry[1], raw_signature, signing_input):
            raise FeedError("the revocation list's signature is not valid")
        claims = _json_object(payload, "claims")
        return self._claims(claims, now)

    def _claims(self, claims: dict[str, Any], now: float) -> RevocationList:
        if set(claims) != _CLAIMS:
            raise FeedError(f"the revocation list must have exactly the claims {sorted(_CLAIMS)}")
        if claims["iss"] != self.issuer:
            raise FeedError("the revocation list was not issued by the expected issuer")
        version, iat = claims["version"], claims["iat"]
        if type(version) is not int or version < 0:
            raise FeedError("the revocation list's version must be a non-negative integer")
        if not is_finite_number(iat) or isinstance(iat, bool):
            raise FeedError("the revocation list's iat must be a number")
        if iat > now + self.leeway:
            raise FeedError("the revocation list was signed in the future; check the clocks")
        if iat < now - self.grace - self.leeway:
            raise FeedError("the revocation list was signed too long ago (stale or replayed)")
        sets: dict[str, frozenset[str]] = {}
        for scope in ("jti", "task"):
            values = claims[scope]
            if not isinstance(values, list) or not all(_is_digest(v) for v in values):
                raise FeedError(f"the revocation list's {scope!r} must be a list of digests")
            sets[scope] = frozenset(values)
        identities = claims["identity"]
        if not isinstance(identities, dict) or not all(
            _is_digest(k) and is_finite_number(v) and not isinstance(v, bool)
            for k, v in identities.items()
        ):
            raise FeedError("the revocation list's 'identity' must map digests to times")
        return RevocationList(
            version=version,
            iat=float(iat),
            jti=sets["jti"],
            task=sets["task"],
            identity={str(k): float(v) for k, v in identities.items()},
        )


_FEEDS: weakref.WeakSet[RevocationFeed] = weakref.WeakSet()
"""The live feed clients of this process, restarted in a forked child."""


def _restart_in_child() -> None:
    for feed in list(_FEEDS):
        feed._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_restart_in_child)


def _check_secret(secret: object) -> str:
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


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == _DIGEST_CHARS


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            b64url_decode(segment).decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError):
        raise FeedError(f"the revocation list's {what} is not JSON without duplicates") from None
    if not isinstance(value, dict):
        raise FeedError(f"the revocation list's {what} must be a JSON object")
    return value
