"""An agent whose tools come from an MCP server, guarded end to end (offline, stdio).

The tools ``kv_get`` / ``kv_set`` are loaded from ``mcp_kv_server.py`` (started as a subprocess)
with ``langchain-mcp-adapters``; ``GuardMiddleware`` checks every call like any other tool's.
A small tool-call interceptor presents the call's just-in-time credential to the server in the
request's ``_meta``; the server verifies it before it touches the data. So a call the guard
denies never reaches the server, a call without a credential is refused by the server, and a
credential replayed after the task ended is rejected as revoked.

Run it: ``python examples/mcp_agent.py``
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _fake_model import ScriptedChatModel, answer, call, example_guard, turn
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.interceptors import (
    MCPToolCallRequest,
    MCPToolCallResult,
    ToolCallInterceptor,
)
from langchain_mcp_adapters.tools import load_mcp_tools
from mcp import ClientSession
from mcp.types import CallToolResult, TextContent
from toolguard_langchain import GuardMiddleware

import toolguard as tg

HERE = Path(__file__).resolve().parent
META_KEY = "io.toolguard/credential"


def present_credential(session: ClientSession, presented: list[str]) -> ToolCallInterceptor:
    """An MCP tool-call interceptor that sends the current call's credential in ``_meta``."""

    async def interceptor(
        request: MCPToolCallRequest, handler: Callable[..., Awaitable[Any]]
    ) -> MCPToolCallResult:
        token = tg.current_credential().token  # the credential of the guarded call
        presented.append(token)
        return await session.call_tool(request.name, request.args, meta={META_KEY: token})

    return interceptor


def _text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def amain(workdir: str) -> None:
    guard = example_guard(workdir)
    server = {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(HERE / "mcp_kv_server.py"), str(HERE / "agents.yaml"), workdir],
    }
    client = MultiServerMCPClient({"kv": server})  # type: ignore[dict-item]
    presented: list[str] = []
    async with client.session("kv") as session:
        tools = await load_mcp_tools(
            session, tool_interceptors=[present_credential(session, presented)]
        )
        print(f"tools loaded from the MCP server: {sorted(t.name for t in tools)}")
        middleware = GuardMiddleware(guard, intent="process-job")
        model = ScriptedChatModel(
            script=[
                turn(call("kv_set", "m1", key="agents:jobs:42:state", value="processed")),
                turn(
                    call("kv_get", "m2", key="agents:jobs:42:state"),
                    call("kv_set", "m3", key="agents:jobs:7:state", value="hijacked"),
                ),
                answer("done"),
            ]
        )
        agent = create_agent(model, tools, middleware=[middleware])
        result = await middleware.arun(
            agent,
            {"messages": [{"role": "user", "content": "Process job 42."}]},
            {"configurable": {"job_id": "42"}},
        )
        for message in result["messages"]:
            if isinstance(message, ToolMessage):
                content = message.content
                if isinstance(content, list):
                    content = " ".join(str(c.get("text", c)) for c in content)  # type: ignore[union-attr]
                print(f"  {message.tool_call_id} {message.name}: [{message.status}] {content}")
        print(f"calls that reached the server, each with its own credential: {len(presented)}")
        (task,) = guard.audit.tasks(intent="process-job")
        print(f"task: {task['purpose']} -> {task['status']}")

        bare = await session.call_tool("kv_get", {"key": "agents:jobs:42:state"})
        print(f"a call without a credential: {_text(bare)}")
        replay = await session.call_tool(
            "kv_get", {"key": "agents:jobs:42:state"}, meta={META_KEY: presented[1]}
        )
        print(f"a credential replayed after the task ended: {_text(replay)}")
    guard.close()


def main(workdir: str) -> None:
    asyncio.run(amain(workdir))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="toolguard-example-") as tmp:
        main(tmp)
