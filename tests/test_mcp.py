"""Tools from an MCP server (stdio, ``mcp`` + ``langchain-mcp-adapters``) guarded end to end."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools

import toolguard as tg

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` skips them

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str) -> Any:
    if str(EXAMPLES) not in sys.path:  # the example imports its sibling _fake_model
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _server(tmp_path: Path, config: Path) -> dict[str, Any]:
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(EXAMPLES / "mcp_kv_server.py"), str(config), str(tmp_path)],
    }


def test_mcp_guarded_tools_round_trip(tmp_path: Path) -> None:
    agent_example = _example("mcp_agent")
    fm = sys.modules["_fake_model"]
    guard = fm.example_guard(tmp_path)
    presented: list[str] = []

    async def main() -> tuple[str, str, str, str]:
        client = MultiServerMCPClient({"kv": _server(tmp_path, EXAMPLES / "agents.yaml")})  # type: ignore[dict-item]
        async with client.session("kv") as session:
            interceptor = agent_example.present_credential(session, presented)
            tools = await load_mcp_tools(session, tool_interceptors=[interceptor])
            kv_get, kv_set = (tg.guard(t, guard) for t in sorted(tools, key=lambda t: t.name))
            async with guard.task("process-job", job_id="42"):
                written = await kv_set.ainvoke({"key": "agents:jobs:42:state", "value": "v1"})
                denied = await kv_set.ainvoke({"key": "agents:jobs:7:state", "value": "x"})
                read = await kv_get.ainvoke({"key": "agents:jobs:42:state"})
            # The server itself refuses a replayed credential once the task ended.
            replay = await session.call_tool(
                "kv_get",
                {"key": "agents:jobs:42:state"},
                meta={"io.toolguard/credential": presented[1]},
            )
            return str(written), str(denied), str(read), agent_example._text(replay)

    try:
        written, denied, read, replay = asyncio.run(main())
    finally:
        guard.close()

    assert "stored" in written
    assert denied.startswith("Denied by toolguard: write on 'agents:jobs:7:state'")
    assert "v1" in read
    assert len(presented) == 2  # the denied call never reached the server
    assert "refused: credential was revoked" in replay
    kinds = [e.kind for e in guard.audit.events()]
    assert kinds.count("request") == 2
    assert kinds.count("denied") == 1


def test_mcp_server_refuses_a_credential_for_another_key(tmp_path: Path) -> None:
    agent_example = _example("mcp_agent")
    fm = sys.modules["_fake_model"]
    guard = fm.example_guard(tmp_path)

    async def main() -> str:
        client = MultiServerMCPClient({"kv": _server(tmp_path, EXAMPLES / "agents.yaml")})  # type: ignore[dict-item]
        async with client.session("kv") as session, guard.task("process-job", job_id="42"):
            permit = guard.authorize("kv_get", {"key": "agents:jobs:42:a"})
            result = await session.call_tool(
                "kv_get",
                {"key": "agents:jobs:42:b"},
                meta={"io.toolguard/credential": permit.credential.token},
            )
            guard.finish(permit)
            return str(agent_example._text(result))

    try:
        text = asyncio.run(main())
    finally:
        guard.close()

    assert text.startswith("Error executing tool kv_get: refused:")
    assert "agents:jobs:42:b" in text


def test_mcp_example_runs_offline(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "mcp_agent.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in [
        "tools loaded from the MCP server: ['kv_get', 'kv_set']",
        "  m1 kv_set: [success] stored",
        "  m2 kv_get: [success] processed",
        "calls that reached the server, each with its own credential: 2",
        "task: Process job 42 -> ok",
        "a call without a credential: Error executing tool kv_get: refused: the request carries "
        "no toolguard credential in _meta; call this server through a guarded agent",
    ]:
        assert expected in lines
    assert any(
        line.startswith("  m3 kv_set: [error] Denied by toolguard: write on 'agents:jobs:7:state'")
        for line in lines
    )
    assert any(
        line.startswith(
            "a credential replayed after the task ended: Error executing tool kv_get: "
            "refused: credential was revoked"
        )
        for line in lines
    )
    assert list(tmp_path.iterdir()) == []
