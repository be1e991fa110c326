"""toolguard for MCP servers: a guarding MCP proxy between any MCP client and any MCP server.

::

    toolguard-mcp proxy --config toolguard.yaml --intent process-job --param job_id=42 \\
        -- python my_server.py

Each client session is one task; ``tools/list`` offers the intent's tools only; every
``tools/call`` is checked, budgeted, audited and gets its own credential, sent to the upstream
with that call (``_meta["io.toolguard/credential"]`` over stdio, ``Authorization: Bearer`` over
HTTP). In Python: :class:`GuardingProxy` with :func:`serve_stdio` or :func:`asgi_app`.
"""

from .proxy import CREDENTIAL_META_KEY, GuardingProxy, Upstream, UpstreamToolError
from .serve import asgi_app, serve_http, serve_stdio

__all__ = [
    "CREDENTIAL_META_KEY",
    "GuardingProxy",
    "Upstream",
    "UpstreamToolError",
    "asgi_app",
    "serve_http",
    "serve_stdio",
]
