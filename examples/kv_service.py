"""A local key-value HTTP service that accepts only toolguard credentials.

It plays the downstream API of the quickstart: every request must carry a toolguard credential
for the route's operation on the key (``resource = key``). It needs only the issuer's JWKS and
read access to the audit store, never the signing key; revocations (``guard.revoke(...)`` or a
task end) are seen at once, even from another process.

    GET    /kv/{key}                     read    -> {"key": ..., "value": ...} or 404
    PUT    /kv/{key}  {"value": ...}     write   -> {"key": ..., "value": ..., "task_id": ...}
    DELETE /kv/{key}                     delete  -> 204 or 404
    GET    /healthz                      (no credential)

In a program: ``with serve(jwks=..., store_path=..., issuer=...) as base_url: ...`` runs it on
loopback in a background thread. As a script, in the foreground::

    python examples/kv_service.py --jwks jwks.json --db .toolguard/audit.db --issuer toolguard-local
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from toolguard_starlette import ToolGuardAuth, get_claims, verifier_from

from toolguard.credentials import Verifier
from toolguard.engine import StoreRevocations

__all__ = ["create_app", "main", "serve"]

_STARTUP_TIMEOUT = 10.0
_MAX_VALUE_BYTES = 64 * 1024


def create_app(verifier: Verifier) -> Starlette:
    """The key-value app; its data is an in-memory dict on ``app.state.kv``."""
    auth = ToolGuardAuth(verifier)
    data: dict[str, Any] = {}

    @auth.protect("read", "{key}")
    async def get_value(request: Request) -> Response:
        key = request.path_params["key"]
        if key not in data:
            return JSONResponse({"error": "not_found", "key": key}, status_code=404)
        return JSONResponse({"key": key, "value": data[key]})

    @auth.protect("write", "{key}")
    async def put_value(request: Request) -> Response:
        key = request.path_params["key"]
        raw = await request.body()
        try:
            body = json.loads(raw) if len(raw) <= _MAX_VALUE_BYTES else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or "value" not in body:
            return JSONResponse(
                {"error": "bad_request", "error_description": 'send JSON {"value": ...}'},
                status_code=400,
            )
        data[key] = body["value"]
        claims = get_claims(request)
        return JSONResponse(
            {"key": key, "value": body["value"], "task_id": claims["task_id"], "by": claims["sub"]}
        )

    @auth.protect("delete", "{key}")
    async def delete_value(request: Request) -> Response:
        if data.pop(request.path_params["key"], _MISSING) is _MISSING:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/kv/{key}", get_value, methods=["GET"]),
            Route("/kv/{key}", put_value, methods=["PUT"]),
            Route("/kv/{key}", delete_value, methods=["DELETE"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )
    app.state.kv = data
    return app


_MISSING = object()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit it: no Nagle + delayed-ACK stall (~45 ms) per request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)  # from here on connections queue up until uvicorn serves them
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the host program's logging alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        http="h11",
    )
    return uvicorn.Server(config)


def _close_store(verifier: Verifier) -> None:
    if isinstance(verifier.revocations, StoreRevocations):
        verifier.revocations.store.close()


@contextmanager
def serve(
    *,
    jwks: dict[str, Any],
    store_path: str,
    issuer: str,
    audience: str = "kv-service",
    host: str = "127.0.0.1",
    port: int = 0,
    max_ttl: float = 300.0,
) -> Iterator[str]:
    """Run the service with uvicorn in a background thread; yields its base URL.

    Waits (at most 10 s) until it serves, and stops it on exit. ``port=0`` picks a free port.
    ``max_ttl`` must be at least the issuer's credential ``ttl``.
    """
    verifier = verifier_from(
        jwks=jwks, store=store_path, issuer=issuer, audience=audience, max_ttl=max_ttl
    )
    server = _server(create_app(verifier))
    sock = _listen(host, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="kv-service", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the kv service stopped while starting; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kv service did not start in {_STARTUP_TIMEOUT:g}s")
            time.sleep(0.01)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=_STARTUP_TIMEOUT)
        sock.close()
        _close_store(verifier)


def main(argv: list[str] | None = None) -> int:
    """Run the service in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jwks", required=True, help="the issuer's JWKS file (public keys)")
    parser.add_argument("--db", required=True, help="the toolguard audit database (read only)")
    parser.add_argument("--issuer", default="toolguard-local", help="expected iss")
    parser.add_argument("--audience", default="kv-service", help="expected aud")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--max-ttl", type=float, default=300.0, help="longest credential, s")
    args = parser.parse_args(argv)
    verifier = verifier_from(
        jwks=args.jwks,
        store=args.db,
        issuer=args.issuer,
        audience=args.audience,
        max_ttl=args.max_ttl,
    )
    server = _server(create_app(verifier))
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"kv service listening on http://{host}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        _close_store(verifier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
