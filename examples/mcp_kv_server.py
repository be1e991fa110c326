"""A small MCP server (stdio) with a key-value store that accepts only toolguard credentials.

``examples/mcp_agent.py`` starts it as ``python examples/mcp_kv_server.py CONFIG WORKDIR``.
Every tool call must carry the just-in-time credential of the guarded call in the request's
``_meta`` (key ``io.toolguard/credential``); the server verifies it with the guard's public key and
the shared audit store (signature, expiry, revocation, and that it covers this operation on this
key) before it reads or writes. Calls without a valid credential are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError

import toolguard as tg

META_KEY = "io.toolguard/credential"
"""Where the client puts the credential: ``_meta`` of the ``tools/call`` request."""


def build_server(verifier: tg.Verifier) -> FastMCP:
    """The MCP server: tools ``kv_get`` and ``kv_set`` over an in-memory dict."""
    server = FastMCP("kv", log_level="WARNING")
    data: dict[str, str] = {}

    def check(ctx: Context, operation: str, key: str) -> None:  # type: ignore[type-arg]
        meta = ctx.request_context.meta
        token = (meta.model_extra or {}).get(META_KEY) if meta is not None else None
        if not isinstance(token, str):
            raise ToolError(
                "refused: the request carries no toolguard credential in _meta; call this "
                "server through a guarded agent"
            )
        try:
            verifier.verify(token, operation=operation, resource=key)
        except tg.CredentialError as exc:
            raise ToolError(f"refused: {exc}") from None

    @server.tool()
    def kv_get(key: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Read the value stored under a key."""
        check(ctx, "read", key)
        return data.get(key, "")

    @server.tool()
    def kv_set(key: str, value: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Store a value under a key."""
        check(ctx, "write", key)
        data[key] = value
        return "stored"

    return server


def main(argv: list[str]) -> None:
    config_path, workdir = Path(argv[0]), argv[1]
    config = tg.load_config(config_path).model_copy(update={"base_dir": workdir})
    guard = tg.Guard(config)
    build_server(guard.verifier()).run("stdio")


if __name__ == "__main__":
    main(sys.argv[1:])
