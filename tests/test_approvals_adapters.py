"""Human approval through the other adapters (OpenAI Agents SDK, PydanticAI, the MCP proxy):
they go through the guard's pipeline, so a held call waits for the guard's approver, runs when
approved and is a denial the model reads when rejected."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_config

import toolguard as tg

FINAL = "agents:jobs:42:final"


@pytest.fixture(autouse=True)
def _close_the_default_loop() -> Iterator[None]:
    """The SDKs' ``run_sync`` leave the thread's default event loop open: close it after each
    test (as their own test modules do)."""
    yield
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running():
        loop.close()
    policy.set_event_loop(None)


def _config(tmp_path: Path, store_config: dict[str, str]) -> dict[str, Any]:
    config = make_config(tmp_path, **store_config)
    config["intents"]["process-job"]["approve"] = {"write": ["agents:jobs:{job_id}:final"]}
    return config


class Approver:
    """Approves the first request, rejects the next ones; keeps what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(dict(request))
        if len(self.asked) == 1:
            return {"approved": True, "by": "alice"}
        return {"approved": False, "by": "bob", "note": "once is enough"}


def _check_trail(guard: tg.Guard, approver: Approver) -> None:
    assert [r["args"]["value"] for r in approver.asked] == ["a", "b"]
    kinds = [e.kind for e in guard.audit.events()]
    assert kinds.count("approval_requested") == 2
    assert kinds.count("approved") == 1 and kinds.count("rejected") == 1
    assert kinds.index("approved") < kinds.index("request")
    assert guard.audit.verify().ok


@pytest.mark.slow
def test_openai_agents_a_held_call_waits_for_the_approver(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    pytest.importorskip("agents")
    pytest.importorskip("toolguard_openai_agents")
    from test_openai_agents import JOB, Kv, _agent, _outputs, _set
    from toolguard_openai_agents import GuardedRunner, guard_tools

    approver = Approver()
    with tg.Guard(_config(tmp_path, store_config), approver=approver) as guard:
        kv = Kv()
        steps = [
            [_set("c1", FINAL, "a")],
            [_set("c2", FINAL, "b")],
            [_set("c3", "agents:jobs:42:x")],
            [_assistant("done")],
        ]
        agent = _agent(guard_tools(kv.tools, guard), steps)
        result = GuardedRunner(guard, "process-job", params=JOB).run_sync(agent, "go")
        outputs = _outputs(result)
        assert outputs["c1"] == "stored" and outputs["c3"] == "stored"
        assert "rejected by bob: once is enough" in outputs["c2"]
        assert kv.data[FINAL] == "a"
        _check_trail(guard, approver)


def _assistant(text: str) -> Any:
    from agents.testing import assistant_message

    return assistant_message(text)


@pytest.mark.slow
def test_pydantic_ai_a_held_call_waits_for_the_approver(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    pytest.importorskip("pydantic_ai")
    pytest.importorskip("toolguard_pydantic_ai")
    from pydantic_ai.toolsets import FunctionToolset
    from test_pydantic_ai import JOB, Kv, Script, _agent, _set
    from toolguard_pydantic_ai import GuardedAgent, guard_toolset

    approver = Approver()
    with tg.Guard(_config(tmp_path, store_config), approver=approver) as guard:
        kv = Kv()
        script = Script([[_set("c1", FINAL, "a")], [_set("c2", FINAL, "b")], "done"])
        toolset = guard_toolset(FunctionToolset(kv.tools, max_retries=0), guard)
        result = GuardedAgent(_agent(toolset, script), guard, "process-job", params=JOB).run_sync(
            "go"
        )
        returns = script.returns()
        assert returns["c1"].content == "stored"
        assert returns["c2"].outcome == "failed"
        assert "rejected by bob: once is enough" in str(returns["c2"].content)
        assert result.output == "done" and kv.data[FINAL] == "a"
        _check_trail(guard, approver)


@pytest.mark.slow
def test_mcp_proxy_a_held_call_waits_for_the_approver(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    pytest.importorskip("mcp")
    pytest.importorskip("toolguard_mcp")
    import anyio
    from mcp import ClientSession
    from test_mcp_proxy import _in_process, _proxy, read_log, text, write_config

    path = write_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["intents"]["process-job"]["approve"] = {"write": ["agents:jobs:{job_id}:final"]}
    config.update(store_config)
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "upstream.log"
    approver = Approver()
    results: dict[str, Any] = {}

    async def body(session: ClientSession) -> None:
        results["a"] = await session.call_tool("kv_set", {"key": FINAL, "value": "a"})
        results["b"] = await session.call_tool("kv_set", {"key": FINAL, "value": "b"})

    with tg.Guard.from_config(path, approver=approver) as guard:
        anyio.run(_in_process, _proxy(guard, path, log), body)
        assert not results["a"].isError
        assert results["b"].isError and "rejected by bob" in text(results["b"])
        forwarded = [e for e in read_log(log) if e.get("tool") == "kv_set"]
        assert len(forwarded) == 1  # the rejected call never reached the upstream
        _check_trail(guard, approver)
