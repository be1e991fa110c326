"""The client of the signed revocation feed: :class:`RevocationFeed` polls a
:func:`~toolguard_starlette.feed.revocation_app` over HTTP and answers a verifier from memory.

The list's format, the staleness bound, the grace period and every reply the client rejects:
:mod:`toolguard_starlette.feed`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from toolguard.errors import ConfigError
from toolguard.httpauth import tls_context
from toolguard.keys import (
    ALGORITHMS,
    PublicKeySource,
    b64url_decode,
    verify_signature,
)
from toolguard.numbers import is_finite_number

from .feed import (
    DIGEST_CHARS,
    FEED_MEDIA_TYPE,
    FEED_TYP,
    FeedError,
    RevocationList,
    check_secret,
)

__all__ = ["DEFAULT_MAX_BYTES", "RevocationFeed"]

log = logging.getLogger("toolguard")

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""The largest list a client reads (about 500,000 task ends); a longer reply is rejected."""
_CLAIMS = frozenset({"iss", "iat", "version", "jti", "task", "identity"})


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
        self._secret = None if secret is None else check_secret(secret)
        self.url = url
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in (parts.hostname or "") and parts.hostname is not None:
            netloc = f"[{parts.hostname}]" + ("" if parts.port is None else f":{parts.port}")
        self.source = f"the revocation feed {parts.scheme}://{netloc}{parts.path}"
        """What it reads, in words, for the verifier's fail-closed message: the feed's address
        without its query or fragment (they may carry a secret; the URL has no user:pass@)."""
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
            timeout=self.timeout, follow_redirects=False, trust_env=False, headers=headers,
            verify=tls_context(trust_env=False),
        )  # fmt: skip

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


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == DIGEST_CHARS


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
