"""A small upstream MCP server for ``toolguard-mcp``: a key-value store that accepts only
toolguard credentials, over stdio or streamable HTTP.

    python examples/mcp_upstream_server.py --config toolguard.yaml              # stdio
    python examples/mcp_upstream_server.py --config toolguard.yaml --http 127.0.0.1:8000

Every tool call must carry the credential of the guarded call: ``toolguard-mcp`` sends it in
``_meta["io.toolguard/credential"]`` (stdio) or as ``Authorization: Bearer`` (HTTP). The server
verifies it with the guard's public key and the shared audit store (signature, expiry,
revocation, and that it covers this operation on this key) before it reads or writes; a call
without a valid credential is refused. ``--log FILE`` appends one JSON line per call (the tool,
the token it received, whether it verified), so tests can check what reached the server.

Tools: ``kv_get``, ``kv_set`` (structured output), ``kv_delete``, ``debug_echo`` (carelessly
returns the credential it received: the proxy must scrub it) and ``wait`` (sleeps, for
cancellation); a resource ``kv://keys`` and a prompt ``summarise``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError

import toolguard as tg

META_KEY = "io.toolguard/credential"


def build_server(verifier: tg.Verifier | None, log: Path | None = None, **settings: Any) -> FastMCP:
    """The server; ``verifier=None`` accepts calls without checking (for benchmarks only)."""
    server = FastMCP("kv-upstream", log_level="WARNING", **settings)
    data: dict[str, str] = {}

    def note(**entry: Any) -> None:
        if log is not None:
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def presented(ctx: Context) -> tuple[str | None, str]:  # type: ignore[type-arg]
        """The call's token and where it came: ``_meta`` (stdio) or the bearer header (HTTP)."""
        meta = ctx.request_context.meta
        token = (meta.model_extra or {}).get(META_KEY) if meta is not None else None
        if isinstance(token, str):
            return token, "meta"
        request = ctx.request_context.request  # a starlette Request over HTTP
        header = request.headers.get("authorization", "") if request is not None else ""
        scheme, _, value = header.partition(" ")
        return (value, "header") if scheme.lower() == "bearer" and value else (None, "none")

    def check(ctx: Context, tool: str, operation: str, key: str) -> str:  # type: ignore[type-arg]
        if verifier is None:
            return ""
        token, via = presented(ctx)
        if token is None:
            note(tool=tool, token=None, via=via, verified=False)
            raise ToolError("refused: the call carries no toolguard credential")
        try:
            verifier.verify(token, operation=operation, resource=key)
        except tg.CredentialError as exc:
            note(tool=tool, token=token, via=via, verified=False, error=str(exc))
            raise ToolError(f"refused: {exc}") from None
        note(tool=tool, token=token, via=via, verified=True, operation=operation, key=key)
        return token

    @server.tool()
    def kv_get(key: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Read the value stored under a key."""
        check(ctx, "kv_get", "read", key)
        return data.get(key, "")

    @server.tool()
    def kv_set(key: str, value: str, ctx: Context) -> dict[str, Any]:  # type: ignore[type-arg]
        """Store a value under a key."""
        check(ctx, "kv_set", "write", key)
        data[key] = value
        return {"key": key, "stored": True}

    @server.tool()
    def kv_delete(key: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Delete a key."""
        check(ctx, "kv_delete", "delete", key)
        data.pop(key, None)
        return "deleted"

    @server.tool()
    def debug_echo(key: str, ctx: Context) -> dict[str, str]:  # type: ignore[type-arg]
        """Echo the request, credential and all (a careless tool)."""
        token = check(ctx, "debug_echo", "read", key)
        return {"key": key, "credential": token}

    @server.tool()
    async def wait(key: str, seconds: float, ctx: Context) -> str:  # type: ignore[type-arg]
        """Wait, then answer (to show cancellation)."""
        check(ctx, "wait", "read", key)
        await ctx.report_progress(0, seconds, "waiting")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            note(tool="wait", event="cancelled")
            raise
        return "waited"

    @server.resource("kv://keys")
    def keys() -> str:
        """The stored keys."""
        return json.dumps(sorted(data))

    @server.prompt()
    def summarise(job_id: str) -> str:
        """Ask for a summary of a job."""
        return f"Summarise job {job_id}."

    return server


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the toolguard config (keys, store)")
    parser.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP at /mcp")
    parser.add_argument("--log", type=Path, help="append a JSON line per call to this file")
    parser.add_argument(
        "--no-verify", action="store_true", help="accept calls unchecked (benchmarks only)"
    )
    args = parser.parse_args(argv)
    guard = tg.Guard(args.config)
    verifier = None if args.no_verify else guard.verifier()
    if args.log is not None:
        with args.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"event": "start", "pid": os.getpid()}) + "\n")
    if args.http:
        host, _, port = args.http.rpartition(":")
        server = build_server(verifier, args.log, host=host, port=int(port))
        server.run("streamable-http")
    else:
        build_server(verifier, args.log).run("stdio")


if __name__ == "__main__":
    main(sys.argv[1:])
