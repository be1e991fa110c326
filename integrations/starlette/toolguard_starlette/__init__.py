"""Verify toolguard credentials in Starlette and FastAPI services.

A downstream service checks, for every request, that the bearer credential is a valid toolguard
credential for the route's declared operation and resource (taken from the path parameters)::

    verifier = verifier_from(jwks="jwks.json", store=".toolguard/audit.db",
                             issuer="toolguard-local", audience="kv-service")
    auth = ToolGuardAuth(verifier)

    @auth.protect("write", "{key}")                 # Starlette endpoint
    async def put_value(request: Request) -> Response:
        claims = get_claims(request)                # task_id, sub (identity), tool, op, res, ...

    @app.put("/kv/{key}")                           # FastAPI: the same check as a dependency
    def put_value(key: str, claims: dict = Depends(auth.require("write", "{key}"))): ...

or for a whole app, by path: ``CredentialMiddleware(app, auth=auth, rules=[PathRule(...)])``.

Answers (RFC 6750): no bearer credential -> 401 with ``WWW-Authenticate: Bearer realm=...``;
an invalid, expired or revoked one -> 401 ``error="invalid_token"``; a valid one for another
operation, resource or tool -> 403 ``error="insufficient_scope"``; the revocation store cannot
be read -> 503 (fail closed: nothing is let through). The service needs only the issuer's JWKS
and read access to the audit store: revocations (``guard.revoke(...)``, task ends) take effect
at once for every verifier sharing the store, in any process.

A service without database access polls a signed revocation list over HTTP instead
(``verifier_from(jwks=..., feed="https://.../revocations", ...)``, served by
:func:`revocation_app` next to the guards; see :mod:`toolguard_starlette.feed`): a revocation
reaches it within 1 s by default, and if the feed goes silent it keeps its last list for a
10 s grace period, then rejects every credential (503) until the feed answers again.

This module does not use ``from __future__ import annotations``: FastAPI resolves a
dependency's annotations from its module globals, and string annotations would not resolve.
"""

import functools
import inspect
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, cast

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from toolguard.credentials import RevocationSource, Verifier
from toolguard.errors import (
    ConfigError,
    CredentialError,
    CredentialRevoked,
    ScopeMismatch,
)
from toolguard.keys import PublicKeys
from toolguard.store import StoreRevocations, open_store, parse_store
from toolguard.text import PLACEHOLDER

from .feed import FeedError, revocation_app, revocation_app_from_config
from .feed_client import RevocationFeed

__all__ = [
    "CLAIMS_STATE_KEY",
    "AuthFailure",
    "CredentialMiddleware",
    "FeedError",
    "PathRule",
    "RevocationFeed",
    "ToolGuardAuth",
    "get_claims",
    "revocation_app",
    "revocation_app_from_config",
    "verifier_from",
]

CLAIMS_STATE_KEY = "toolguard_claims"
"""Where the verified claims are kept: ``request.state.toolguard_claims``."""

_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5B\x5D-\x7E]")  # RFC 6750 §3 quoted-string content
_E = TypeVar("_E", bound=Callable[..., Any])


def verifier_from(
    *,
    jwks: Union[Mapping[str, Any], str, "os.PathLike[str]"],
    store: Union[str, "os.PathLike[str]", None] = None,
    feed: Union[str, RevocationFeed, None] = None,
    issuer: str,
    audience: str,
    algorithms: Sequence[str] | None = None,
    max_ttl: float = 300.0,
    leeway: float = 5.0,
    single_use: bool = False,
    busy_timeout: float = 2.0,
    feed_interval: float = 0.5,
    feed_grace: float = 10.0,
    feed_secret: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Verifier:
    """A :class:`toolguard.Verifier` from the issuer's JWKS and a revocation source: the audit
    store (``store=``: a SQLite path or ``sqlite:///`` URL, or
    ``postgresql://user:password@host:port/dbname``) or the URL of a revocation feed
    (``feed=``); exactly one.

    ``jwks`` is a JWKS document or the path of a JSON file holding one (public keys only);
    ``algorithms`` defaults to those of its keys. With ``store``, revocations are read through a
    read-only connection on every verification (no cache, so a revocation counts at once); if
    the store cannot be read, every credential is rejected. With ``feed`` (the ``/revocations``
    address of a :func:`revocation_app`, or a :class:`RevocationFeed`), the signed revocation
    list is polled every ``feed_interval`` seconds on a background thread: a revocation counts
    within ``feed_interval`` + the poll's timeout (by default 0.5 s + 0.5 s = 1 s) while the
    feed answers; when it does not (or sends a reply that is rejected: bad signature, older
    version, ...), the last good list is used for ``feed_grace`` seconds (default 10 s) after
    the last successful poll, then every credential is rejected (503) until the feed answers
    again. The list is signed with the issuer's key and checked against ``jwks``;
    ``feed_secret`` is the feed's client secret, if it has one (``revocation_app(secret=)``).
    Stop the polling with ``verifier.revocations.close()``. ``max_ttl`` must be at least the
    issuer's ``ttl`` (``issuer.max_ttl`` in the guard's config).
    """
    keys = PublicKeys.from_jwks(jwks)
    if not keys.public_keys():
        raise ConfigError("the JWKS holds no keys; export the issuer's with `toolguard keys jwks`")
    algs = algorithms or sorted({alg for alg, _ in keys.public_keys().values()})
    revocations: RevocationSource
    if (store is None) == (feed is None):
        raise ConfigError(
            "give exactly one revocation source: store= (the audit database) or feed= (the URL "
            "of a revocation feed, for services without database access)"
        )
    if feed_secret is not None and not isinstance(feed, str):
        raise ConfigError(
            "feed_secret goes with feed=URL; a RevocationFeed takes its own secret= argument"
        )
    if isinstance(feed, RevocationFeed):
        revocations = feed
    elif feed is not None:
        revocations = RevocationFeed(
            feed, keys=keys, issuer=issuer, algorithms=algs, interval=feed_interval,
            grace=feed_grace, leeway=leeway, secret=feed_secret, clock=clock,
        )  # fmt: skip
    else:
        assert store is not None
        # a path or sqlite:/// URL (SQLite), or postgresql://... (ConfigError for other schemes)
        location = parse_store(store)
        revocations = StoreRevocations(
            open_store(location, readonly=True, busy_timeout=busy_timeout)
        )
    return Verifier(
        issuer=issuer,
        audience=audience,
        keys=keys,
        algorithms=tuple(algs),
        max_ttl=max_ttl,
        leeway=leeway,
        revocations=revocations,
        single_use=single_use,
        clock=clock,
    )


class AuthFailure(Exception):
    """Why a request was refused: its status, OAuth error code, description and headers."""

    def __init__(
        self,
        status: int,
        error: str | None,
        description: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers: dict[str, str] = dict(headers or {})

    def response(self) -> Response:
        """The refusal as a JSON response (``{"error": ..., "error_description": ...}``)."""
        body = {"error": self.error or "unauthorized", "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=dict(self.headers))

    def http_exception(self) -> HTTPException:
        """The refusal as Starlette's (and FastAPI's) ``HTTPException``."""
        return HTTPException(self.status, detail=self.description, headers=dict(self.headers))


class _Template:
    """A resource template such as ``"agents:{key}"``, filled from path parameters."""

    __slots__ = ("names", "parts", "text")

    def __init__(self, text: str) -> None:
        parts: list[str] = []
        names: list[str] = []
        pos = 0
        for match in PLACEHOLDER.finditer(text):
            parts.append(text[pos : match.start()])
            names.append(match.group(1))
            pos = match.end()
        parts.append(text[pos:])
        if any("{" in p or "}" in p for p in parts):
            raise ConfigError(
                f"resource template {text!r} has a stray brace; use {{name}} placeholders "
                "naming path parameters"
            )
        self.text, self.parts, self.names = text, parts, names

    def fill(self, params: Mapping[str, Any]) -> str:
        out = [self.parts[0]]
        for name, part in zip(self.names, self.parts[1:]):
            if name not in params:
                raise ConfigError(
                    f"the route has no path parameter {name!r} for the resource template "
                    f"{self.text!r}; fix the template or the route"
                )
            out.append(str(params[name]))
            out.append(part)
        return "".join(out)


class ToolGuardAuth:
    """Checks bearer credentials against a :class:`toolguard.Verifier` for routes.

    ``realm`` (default: the verifier's audience) goes into ``WWW-Authenticate``.
    """

    def __init__(self, verifier: Verifier, *, realm: str | None = None) -> None:
        self.verifier = verifier
        self.realm = _quote(realm if realm is not None else verifier.audience)

    def check(
        self,
        conn: HTTPConnection,
        operation: str,
        resource: str | None = None,
        *,
        tool: str | None = None,
    ) -> dict[str, Any]:
        """The verified claims of ``conn``'s bearer credential for ``operation`` on the concrete
        ``resource``; raises :class:`AuthFailure` otherwise. Stores them on the request state."""
        token = self._bearer(conn)
        try:
            claims = self.verifier.verify(token, operation=operation, resource=resource, tool=tool)
        except ScopeMismatch as exc:
            wanted = f"{operation}:{resource}" if resource is not None else operation
            raise AuthFailure(
                403,
                "insufficient_scope",
                _quote(exc.message),
                {"WWW-Authenticate": self._challenge("insufficient_scope", exc.message, wanted)},
            ) from None
        except CredentialRevoked as exc:
            if exc.rule == "credential.revocation":  # the store could not be read: fail closed
                feed = isinstance(self.verifier.revocations, RevocationFeed)
                what = "feed" if feed else "store"
                raise AuthFailure(
                    503,
                    "temporarily_unavailable",
                    f"the revocation {what} cannot be read, so no credential is accepted; "
                    "retry later",
                    {"Retry-After": "5"},
                ) from None
            raise self._invalid(exc) from None
        except CredentialError as exc:
            raise self._invalid(exc) from None
        conn.scope.setdefault("state", {})[CLAIMS_STATE_KEY] = claims
        return claims

    async def acheck(
        self,
        conn: HTTPConnection,
        operation: str,
        resource: str | None = None,
        *,
        tool: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`check` for async code: with a store as the revocation source (a database
        read, over the network for PostgreSQL, which waits up to the store's ``busy_timeout``
        when the server is slow or gone) the check runs on a worker thread, so the event loop
        serves other requests meanwhile; with the feed (an in-memory list) or none, inline."""
        if not isinstance(self.verifier.revocations, StoreRevocations):
            return self.check(conn, operation, resource, tool=tool)
        return await run_in_threadpool(self.check, conn, operation, resource, tool=tool)

    def require(
        self, operation: str, resource: str | None = "{key}", *, tool: str | None = None
    ) -> Callable[[Request], dict[str, Any]]:
        """A dependency ``(request) -> claims`` for ``operation`` on the resource built from the
        route's path parameters (``resource=None``: no resource check). It raises Starlette's
        ``HTTPException`` (401/403/503 with ``WWW-Authenticate``), so it works with FastAPI's
        ``Depends``, or called at the top of any endpoint."""
        template = None if resource is None else _Template(resource)

        def toolguard_credential(request: Request) -> dict[str, Any]:
            concrete = None if template is None else template.fill(request.path_params)
            try:
                return self.check(request, operation, concrete, tool=tool)
            except AuthFailure as failure:
                raise failure.http_exception() from None

        return toolguard_credential

    def protect(
        self, operation: str, resource: str | None = "{key}", *, tool: str | None = None
    ) -> Callable[[_E], _E]:
        """A decorator for Starlette endpoints ``(request) -> Response``, sync or async: the
        endpoint runs only with a credential for ``operation`` on the resource built from the
        path parameters; otherwise the refusal is answered as JSON."""
        template = None if resource is None else _Template(resource)

        def decorate(endpoint: _E) -> _E:
            def verified(request: Request) -> Response | None:
                concrete = None if template is None else template.fill(request.path_params)
                try:
                    self.check(request, operation, concrete, tool=tool)
                except AuthFailure as failure:
                    return failure.response()
                return None

            if inspect.iscoroutinefunction(endpoint):

                @functools.wraps(endpoint)
                async def protected_async(request: Request) -> Response:
                    concrete = None if template is None else template.fill(request.path_params)
                    try:
                        await self.acheck(request, operation, concrete, tool=tool)
                    except AuthFailure as failure:
                        return failure.response()
                    return await cast(Callable[[Request], Awaitable[Response]], endpoint)(request)

                return cast(_E, protected_async)

            @functools.wraps(endpoint)
            def protected(request: Request) -> Response:
                refused = verified(request)
                if refused is not None:
                    return refused
                return cast(Callable[[Request], Response], endpoint)(request)

            return cast(_E, protected)

        return decorate

    # -- helpers ----------------------------------------------------------------------------

    def _bearer(self, conn: HTTPConnection) -> str:
        values = conn.headers.getlist("authorization")
        if len(values) > 1:
            raise AuthFailure(
                400,
                "invalid_request",
                "send exactly one Authorization header",
                {
                    "WWW-Authenticate": self._challenge(
                        "invalid_request", "send exactly one Authorization header"
                    )
                },
            )
        scheme, _, token = values[0].partition(" ") if values else ("", "", "")
        if scheme.lower() != "bearer":
            raise AuthFailure(
                401,
                None,
                "this route needs a toolguard credential: send Authorization: Bearer <token>",
                {"WWW-Authenticate": f'Bearer realm="{self.realm}"'},
            )
        return token.strip(" ")

    def _invalid(self, exc: CredentialError) -> AuthFailure:
        return AuthFailure(
            401,
            "invalid_token",
            _quote(exc.message),
            {"WWW-Authenticate": self._challenge("invalid_token", exc.message)},
        )

    def _challenge(self, error: str, description: str, scope: str | None = None) -> str:
        value = f'Bearer realm="{self.realm}", error="{error}"'
        value += f', error_description="{_quote(description)}"'
        if scope is not None:
            value += f', scope="{_quote(scope)}"'
        return value


@dataclass(frozen=True)
class PathRule:
    """A path-based rule for :class:`CredentialMiddleware`: requests whose method is in
    ``methods`` and whose path matches ``path`` (Starlette syntax, ``"/kv/{key}"``) need a
    credential for ``operation`` on ``resource`` (a template over the path parameters)."""

    path: str
    operation: str
    resource: str | None = "{key}"
    methods: Sequence[str] = ("GET",)
    tool: str | None = None


@dataclass(frozen=True)
class _CompiledRule:
    rule: PathRule
    regex: "re.Pattern[str]"
    convertors: Mapping[str, Any]
    methods: frozenset[str]
    template: _Template | None


class CredentialMiddleware:
    """ASGI middleware checking toolguard credentials by path and method.

    The first rule whose method and path match decides; requests that match no rule are
    refused with 403 (``unmatched="deny"``, the default) or passed on (``"allow"``). Verified
    claims are on ``request.state.toolguard_claims``. WebSocket connections are closed (1008)
    unless ``unmatched="allow"``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: ToolGuardAuth | Verifier,
        rules: Sequence[PathRule],
        unmatched: Literal["deny", "allow"] = "deny",
    ) -> None:
        if unmatched not in ("deny", "allow"):
            raise ConfigError(f"unmatched must be 'deny' or 'allow', not {unmatched!r}")
        self.app = app
        self.auth = auth if isinstance(auth, ToolGuardAuth) else ToolGuardAuth(auth)
        self.unmatched = unmatched
        self.rules = [self._compile(rule) for rule in rules]

    @staticmethod
    def _compile(rule: PathRule) -> _CompiledRule:
        regex, _, convertors = compile_path(rule.path)
        template = None if rule.resource is None else _Template(rule.resource)
        missing = sorted(set(template.names) - set(convertors)) if template else []
        if missing:
            raise ConfigError(
                f"rule for {rule.path!r}: the resource template {rule.resource!r} names "
                f"{missing}, which are not path parameters"
            )
        methods = {m.upper() for m in rule.methods}
        if "GET" in methods:
            methods.add("HEAD")
        return _CompiledRule(rule, regex, convertors, frozenset(methods), template)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or (kind == "websocket" and self.unmatched == "allow"):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        conn = HTTPConnection(scope)
        path = _route_path(scope)
        for compiled in self.rules:
            if scope["method"] not in compiled.methods:
                continue
            match = compiled.regex.match(path)
            if match is None:
                continue
            params = {
                name: compiled.convertors[name].convert(value)
                for name, value in match.groupdict().items()
            }
            resource = None if compiled.template is None else compiled.template.fill(params)
            try:
                await self.auth.acheck(
                    conn, compiled.rule.operation, resource, tool=compiled.rule.tool
                )
            except AuthFailure as failure:
                await failure.response()(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if self.unmatched == "allow":
            await self.app(scope, receive, send)
            return
        refusal = AuthFailure(
            403, "insufficient_scope", "no credential rule covers this method and path"
        )
        await refusal.response()(scope, receive, send)


def get_claims(conn: HTTPConnection) -> dict[str, Any]:
    """The verified credential claims of this request (``task_id``, ``sub`` = identity,
    ``intent``, ``tool``, ``op``, ``res``, ``jti``, ``exp``, ``act`` when delegated).

    Raises ``LookupError`` if the route is not protected by toolguard.
    """
    claims = conn.scope.get("state", {}).get(CLAIMS_STATE_KEY)
    if not isinstance(claims, dict):
        raise LookupError(
            "this request carries no verified toolguard credential; protect the route with "
            "ToolGuardAuth.protect/require or CredentialMiddleware"
        )
    return claims


def _route_path(scope: Scope) -> str:
    """The path below the app's ``root_path`` (as Starlette's router matches it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


def _quote(text: str) -> str:
    """``text`` safe inside a quoted-string of ``WWW-Authenticate`` (no quotes, CR/LF)."""
    return _UNSAFE.sub("?", text)[:200]
