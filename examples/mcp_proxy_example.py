"""Any MCP client, any MCP server, guarded by ``toolguard-mcp`` (offline, stdio).

The client here is the official ``mcp`` SDK's ``ClientSession``; it starts the proxy as its
server, exactly as Claude Desktop or an IDE would::

    toolguard-mcp proxy --config toolguard.yaml --intent process-job --param job_id=42 \\
        -- python examples/mcp_upstream_server.py --config toolguard.yaml

and the proxy starts the upstream server (``examples/mcp_upstream_server.py``, which verifies
every call's credential). The session is one task: the client sees only the intent's tools, a
call outside the task is denied (and never reaches the server), the credential a careless tool
echoes is scrubbed, and once the client closes the session every credential is revoked.

Run it: ``python examples/mcp_proxy_example.py``
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import anyio
import yaml
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

import toolguard as tg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIG = {
    "store": "audit.db",
    "issuer": {"name": "toolguard-examples", "audience": "kv-service", "key_file": "key.pem"},
    "identities": {
        "agent-runner": {"allow": {"read": ["agents:*"], "write": ["agents:jobs:*"]}},
    },
    "tools": {
        "kv_get": {"operation": "read", "resource": "{key}"},
        "kv_set": {"operation": "write", "resource": "{key}"},
        "debug_echo": {"operation": "read", "resource": "{key}"},
    },
    "intents": {
        "process-job": {
            "identity": "agent-runner",
            "purpose": "Process job {job_id}",
            "tools": ["kv_get", "kv_set"],
            "allow": {"read": ["agents:jobs:{job_id}:*"], "write": ["agents:jobs:{job_id}:*"]},
            "budget": {"max_calls": 20},
            "ttl": "15m",
        },
        "debug-job": {
            "identity": "agent-runner",
            "tools": ["debug_echo"],
            "allow": {"read": ["agents:jobs:{job_id}:*"]},
        },
    },
}


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _env() -> dict[str, str]:
    """This checkout's code first (for a run from a source tree), then what is installed."""
    paths = [str(ROOT), str(ROOT / "integrations" / "mcp"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _proxy(config: Path, log: Path, intent: str) -> StdioServerParameters:
    upstream = [sys.executable, str(HERE / "mcp_upstream_server.py"), "--config", str(config)]
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "toolguard_mcp", "proxy", "--config", str(config), "--intent", intent,
            "--param", "job_id=42", "--", *upstream, "--log", str(log),
        ],
        env=_env(),
    )  # fmt: skip


async def amain(workdir: Path) -> None:
    config = workdir / "toolguard.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    log = workdir / "upstream.log"

    first = stdio_client(_proxy(config, log, "process-job"))
    async with first as (read, write), ClientSession(read, write) as session:  # one task
        await session.initialize()
        tools = await session.list_tools()
        print(f"offered: {sorted(t.name for t in tools.tools)}")
        stored = await session.call_tool(
            "kv_set", {"key": "agents:jobs:42:state", "value": "processed"}
        )
        print(f"kv_set job 42: {stored.structuredContent}")
        denied = await session.call_tool(
            "kv_set", {"key": "agents:jobs:7:state", "value": "hijacked"}
        )
        print(f"kv_set job 7: {_text(denied)}")
        value = await session.call_tool("kv_get", {"key": "agents:jobs:42:state"})
        print(f"kv_get job 42: {_text(value)}")

    second = stdio_client(_proxy(config, log, "debug-job"))
    async with second as (read, write), ClientSession(read, write) as session:  # another
        await session.initialize()
        echo = await session.call_tool("debug_echo", {"key": "agents:jobs:42:state"})
        print(f"a tool that echoes its credential: {echo.structuredContent}")

    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    received = [c for c in calls if c.get("verified")]
    print(f"calls that reached the server, each with its own credential: {len(received)}")
    with tg.Guard(config) as guard:
        for task in guard.audit.tasks():
            print(f"task {task['intent']}: {task['status']}, {task['calls']} calls")
        try:
            guard.verifier().verify(
                received[0]["token"], operation="write", resource="agents:jobs:42:state"
            )
        except tg.CredentialError as exc:
            print(f"a credential the server received, rejected after the session: "
                  f"{type(exc).__name__}")  # fmt: skip


def main(workdir: str) -> None:
    anyio.run(amain, Path(workdir))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-example-") as tmp:
        main(tmp)
