"""Serving a :class:`~toolguard_mcp.proxy.GuardingProxy`: over stdio, or streamable HTTP.

Stopping: over stdio the session ends when the client closes stdin (its normal shutdown), or
on SIGTERM / SIGINT; over HTTP each session ends when its client deletes it (or it idles out),
and every open session ends when the server stops (SIGTERM / SIGINT). Either way the tasks are
ended — credentials revoked, ``task_end`` recorded — before the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from .proxy import GuardingProxy

__all__ = ["asgi_app", "serve_http", "serve_stdio"]

log = logging.getLogger("toolguard_mcp")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def _watch_signals(proxy: GuardingProxy, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            reason = f"toolguard-mcp received {signal.Signals(signum).name}"
            proxy.stop_reason = reason
            await proxy.aend_all("cancelled", reason)  # revoke first, then stop serving
            scope.cancel()
            return


async def serve_stdio(
    proxy: GuardingProxy, *, on_abandon: Callable[[int], None] | None = None
) -> bool:
    """Serve one client over stdin/stdout until it closes stdin, the upstream goes away, or a
    SIGTERM / SIGINT; returns False when the session ended because the upstream went away.

    When the session ends while the client still holds stdin open (the upstream died, a
    signal), the SDK's stdin reader cannot be interrupted: ``on_abandon(exit_code)`` is called
    then (the command line closes the guard and exits the process, so the client sees the
    proxy go away). The session's task has ended before either happens.
    """
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_signals, proxy, group.cancel_scope)
        async with stdio_server() as (read_stream, write_stream):
            try:
                await proxy.run(read_stream, write_stream)
            finally:
                if on_abandon is not None and not proxy.client_closed:
                    on_abandon(1 if proxy.upstream_failures else 0)
        group.cancel_scope.cancel()
    return not proxy.upstream_failures


class _Endpoint:
    """The ASGI endpoint of the session manager (one path, every method)."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


def asgi_app(proxy: GuardingProxy, *, host: str = "127.0.0.1", path: str = "/mcp") -> Starlette:
    """The proxy as a Starlette app serving streamable HTTP at ``path``; on a loopback
    ``host``, requests whose Host or Origin header is not local are refused (DNS rebinding)."""
    from starlette.routing import Route

    security = None
    if host in _LOOPBACK:
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=hosts,
            allowed_origins=[f"http://{h}" for h in hosts],
        )
    manager = StreamableHTTPSessionManager(app=proxy, security_settings=security)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with manager.run():
                yield
        finally:
            with anyio.CancelScope(shield=True):
                await proxy.aend_all(
                    "cancelled", proxy.stop_reason or "toolguard-mcp stopped serving"
                )

    return Starlette(routes=[Route(path, endpoint=_Endpoint(manager))], lifespan=lifespan)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, proxy: GuardingProxy) -> None:
        super().__init__(config)
        self.proxy = proxy

    def handle_exit(self, sig: int, frame: Any) -> None:
        # a signal handler: only note why; the sessions end when the app shuts down
        self.proxy.stop_reason = f"toolguard-mcp received {signal.Signals(sig).name}"
        super().handle_exit(sig, frame)


def serve_http(proxy: GuardingProxy, host: str, port: int) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp`` until SIGTERM / SIGINT."""
    config = uvicorn.Config(
        asgi_app(proxy, host=host),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    _Server(config, proxy).run()
