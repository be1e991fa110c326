"""``toolguard-mcp``: the guarding MCP proxy, with real processes and the official SDK.

The proxy runs as a subprocess (``python -m toolguard_mcp proxy ...``), the upstream is
``examples/mcp_upstream_server.py`` (a subprocess too), the client is ``mcp.ClientSession``;
over stdio and over streamable HTTP on 127.0.0.1. Faults that cannot be caused from outside
(an audit failure, a budget race) run the proxy in-process, with the upstream still a process.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")
pytest.importorskip("toolguard_mcp")

import anyio
import yaml
from conftest import make_config
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.shared.memory import create_client_server_memory_streams
from toolguard_mcp import CREDENTIAL_META_KEY, GuardingProxy, Upstream

import toolguard as tg

pytestmark = pytest.mark.slow  # every test here starts processes

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "examples" / "mcp_upstream_server.py"
PYTHONPATH = os.pathsep.join(
    str(ROOT / p)
    for p in ("", "integrations/langchain", "integrations/starlette", "integrations/mcp")
)
ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "PYTHONPATH": PYTHONPATH,
    "PYTHONUTF8": "1",
}
INTENT_TOOLS = ["kv_get", "kv_set", "debug_echo", "wait"]
KEY = "agents:jobs:42:state"


def write_config(tmp_path: Path) -> Path:
    config = make_config(tmp_path)
    config["tools"].update(
        debug_echo={"operation": "read", "resource": "{key}"},
        wait={"operation": "read", "resource": "{key}"},
    )
    config["intents"]["process-job"]["tools"] = INTENT_TOOLS
    path = tmp_path / "toolguard.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def upstream_command(config: Path, log: Path, *extra: str) -> list[str]:
    return [sys.executable, str(UPSTREAM), "--config", str(config), "--log", str(log), *extra]


def proxy_args(config: Path, *extra: str) -> list[str]:
    return [
        "-m", "toolguard_mcp", "proxy", "--config", str(config),
        "--intent", "process-job", "--param", "job_id=42", *extra,
    ]  # fmt: skip


def read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up)


def trail(config: Path) -> tuple[list[dict[str, Any]], list[tg.AuditEvent]]:
    with tg.Guard(config) as guard:
        return list(guard.audit.tasks()), list(guard.audit.events())


@asynccontextmanager
async def stdio_session(
    config: Path, log: Path, errlog: Any = None
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=[*proxy_args(config), "--", *upstream_command(config, log)],
        env=ENV,
        cwd=str(ROOT),
    )
    kwargs = {"errlog": errlog} if errlog is not None else {}
    async with stdio_client(params, **kwargs) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        yield s


async def upstream_tools(config: Path, log: Path) -> list[types.Tool]:
    """The upstream's own tools/list, asked directly (no proxy)."""
    cmd = upstream_command(config, log)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=ENV)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        return (await s.list_tools()).tools


async def exercise(session: ClientSession) -> dict[str, Any]:
    """The same conversation over either transport; returns what the client saw."""
    seen: dict[str, Any] = {}
    seen["tools"] = (await session.list_tools()).tools
    seen["set"] = await session.call_tool("kv_set", {"key": KEY, "value": "done"})
    seen["get"] = await session.call_tool("kv_get", {"key": KEY})
    seen["denied"] = await session.call_tool("kv_set", {"key": "agents:jobs:7:state", "value": "x"})
    seen["not_offered"] = await session.call_tool("kv_delete", {"key": KEY})
    seen["unknown"] = await session.call_tool("no_such_tool", {})
    seen["echo"] = await session.call_tool("debug_echo", {"key": KEY})
    seen["resource"] = await session.read_resource("kv://keys")  # type: ignore[arg-type]
    seen["prompt"] = await session.get_prompt("summarise", {"job_id": "42"})
    return seen


def check_conversation(seen: dict[str, Any], upstream: list[types.Tool], log: Path) -> None:
    offered = {t.name: t for t in seen["tools"]}
    assert sorted(offered) == sorted(INTENT_TOOLS)  # kv_delete is not offered
    for tool in upstream:
        if tool.name in offered:  # schemas unchanged
            assert offered[tool.name].inputSchema == tool.inputSchema
            assert offered[tool.name].outputSchema == tool.outputSchema
    assert offered["kv_set"].outputSchema is not None
    assert not seen["set"].isError
    assert seen["set"].structuredContent == {"key": KEY, "stored": True}
    assert not seen["get"].isError and "done" in text(seen["get"])
    for name in ("denied", "not_offered", "unknown"):
        assert seen[name].isError and text(seen[name]).startswith("Denied by toolguard:"), name
    assert "outside what this task may do" in text(seen["denied"])
    echo = seen["echo"]
    assert not echo.isError
    assert echo.structuredContent == {"key": KEY, "credential": "[REDACTED]"}
    assert "eyJ" not in echo.model_dump_json()
    assert KEY in seen["resource"].contents[0].text
    assert "Summarise job 42" in seen["prompt"].messages[0].content.text
    calls = [e for e in read_log(log) if "tool" in e and e.get("event") != "cancelled"]
    # only allowed calls reached the upstream, each with a credential that verified then
    assert [c["tool"] for c in calls] == ["kv_set", "kv_get", "debug_echo"]
    assert all(c["verified"] for c in calls)
    assert len({c["token"] for c in calls}) == 3


def check_trail(config: Path, log: Path, *, status: str = "ok") -> list[tg.AuditEvent]:
    tasks, events = trail(config)
    (task,) = tasks
    assert task["status"] == status and task["intent"] == "process-job"
    requests = [e for e in events if e.kind == "request"]
    outcomes = {e.jti: e for e in events if e.kind == "outcome"}
    assert [e.tool for e in requests] == ["kv_set", "kv_get", "debug_echo"]
    for request in requests:
        assert request.jti and request.correlation_id
        assert outcomes[request.jti].outcome == "ok"
        assert outcomes[request.jti].correlation_id == request.correlation_id
    # correlation ids are the MCP request ids: distinct integers, in the client's order
    ids = [int(e.correlation_id or "") for e in requests]
    assert ids == sorted(ids) and len(set(ids)) == 3
    denied = [e for e in events if e.kind == "denied"]
    assert [e.tool for e in denied] == ["kv_set", "kv_delete", "no_such_tool"]
    assert events[-1].kind == "task_end"
    calls = [e for e in read_log(log) if e.get("verified")]
    jtis = {e.jti for e in requests}
    with tg.Guard(config) as guard:
        verifier = guard.verifier()
        for call in calls:
            token = call["token"]
            assert claims(token)["sub"] == "agent-runner"
            assert claims(token)["aud"] == "kv-service"
            assert claims(token)["jti"] in jtis
            with pytest.raises(tg.CredentialRevoked):  # the task ended: revoked
                verifier.verify(token, operation=call["operation"], resource=call["key"])
    return events


# -- the command ---------------------------------------------------------------------------------


def test_proxy_help_exits_0_and_the_module_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "toolguard_mcp", "proxy", "--help"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--upstream-url" in result.stdout and "--listen" in result.stdout


def test_the_console_script_is_declared() -> None:
    pyproject = (ROOT / "integrations" / "mcp" / "pyproject.toml").read_text(encoding="utf-8")
    assert 'toolguard-mcp = "toolguard_mcp.cli:main"' in pyproject


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "either as a command after '--' or with --upstream-url"),
        (["--param", "oops", "--", "true"], "is not NAME=VALUE"),
        (["--listen", "nowhere", "--", "true"], "is not HOST:PORT"),
        (["--intent", "no-such-intent", "--", "true"], "intent 'no-such-intent' is not defined"),
    ],
)
def test_bad_command_lines_are_refused_with_a_clear_message(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, *proxy_args(config), *extra],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_task_parameter_is_refused_before_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "toolguard_mcp", "proxy", "--config", str(config),
         "--intent", "process-job", "--", "true"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "job_id" in result.stderr and "Traceback" not in result.stderr


# -- stdio ---------------------------------------------------------------------------------------


def test_stdio_end_to_end(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"

    async def main() -> tuple[dict[str, Any], list[types.Tool]]:
        upstream = await upstream_tools(config, tmp_path / "direct.log")
        async with stdio_session(config, log) as session:
            seen = await exercise(session)
        return seen, upstream

    seen, upstream = anyio.run(main)
    check_conversation(seen, upstream, log)
    assert {c["via"] for c in read_log(log) if c.get("verified")} == {"meta"}
    # the client's normal shutdown (stdin closed) ended the task before any SIGTERM
    events = check_trail(config, log)
    assert events[-1].outcome == "ok" and "client closed" in (events[-1].reason or "")


def test_a_client_cannot_smuggle_its_own_credential_in_meta(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"

    async def main() -> None:
        async with stdio_session(config, log) as session:
            result = await session.call_tool(
                "kv_get", {"key": KEY}, meta={CREDENTIAL_META_KEY: "forged", "trace": "t1"}
            )
            assert not result.isError

    anyio.run(main)
    (call,) = [e for e in read_log(log) if "tool" in e]
    assert call["verified"] and call["token"] != "forged"


def test_progress_passes_through_and_a_cancelled_call_is_recorded_as_its_outcome(
    tmp_path: Path,
) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def main() -> None:
        async with stdio_session(config, log) as session:
            failures: list[BaseException] = []

            async def slow() -> None:
                try:
                    await session.call_tool(
                        "wait", {"key": KEY, "seconds": 60}, progress_callback=on_progress
                    )
                except McpError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(slow)
                request = await anyio.to_thread.run_sync(
                    lambda: wait_for(lambda: _request_row(config, "wait"))
                )
                with anyio.fail_after(20):  # the upstream is running the call
                    while not progress:
                        await anyio.sleep(0.05)
                await session.send_notification(
                    types.ClientNotification(
                        types.CancelledNotification(
                            params=types.CancelledNotificationParams(
                                requestId=int(request.correlation_id), reason="user pressed stop"
                            )
                        )
                    )
                )
                with anyio.fail_after(20):
                    while not failures:
                        await anyio.sleep(0.05)
            # the session goes on after a cancellation
            assert not (await session.call_tool("kv_get", {"key": KEY})).isError

    anyio.run(main)
    assert progress == [(0.0, 60.0, "waiting")]  # the upstream's progress reached the client
    wait_for(lambda: any(e.get("event") == "cancelled" for e in read_log(log)))
    _, events = trail(config)
    (request,) = [e for e in events if e.kind == "request" and e.tool == "wait"]
    (outcome,) = [e for e in events if e.kind == "outcome" and e.jti == request.jti]
    assert outcome.outcome == "error"
    assert "CancelledError" in (outcome.error or "") and "user pressed stop" in (
        outcome.error or ""
    )


def _request_row(config: Path, tool: str) -> tg.AuditEvent | None:
    with tg.Guard(config) as guard:
        rows = [e for e in guard.audit.events(kind="request") if e.tool == tool]
    return rows[0] if rows else None


def test_the_upstream_dying_ends_the_task_and_the_proxy_exits(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    failures: list[BaseException] = []

    async def main() -> None:
        async with stdio_session(config, log) as session:
            assert not (await session.call_tool("kv_get", {"key": KEY})).isError
            (start,) = [e for e in read_log(log) if e.get("event") == "start"]
            os.kill(start["pid"], signal.SIGKILL)
            with anyio.fail_after(20):
                while True:  # the proxy goes away: calls fail from now on
                    await session.call_tool("kv_get", {"key": KEY})
                    await anyio.sleep(0.1)

    try:
        anyio.run(main)
    except BaseException as exc:  # the client's connection closed under it
        failures.append(exc)
    assert failures and not any(isinstance(f, TimeoutError) for f in _leaves(failures[0]))
    tasks, events = trail(config)
    assert tasks[0]["status"] == "error"
    (end,) = [e for e in events if e.kind == "task_end"]
    assert "upstream" in (end.reason or "")


def _leaves(exc: BaseException) -> list[BaseException]:
    group = getattr(exc, "exceptions", None)  # an exception group
    if group is not None:
        return [leaf for e in group for leaf in _leaves(e)]
    return [exc]


def test_sigterm_ends_the_task_and_revokes(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    tokens: list[str] = []

    async def main() -> None:
        async with stdio_session(config, log) as session:
            assert not (await session.call_tool("kv_get", {"key": KEY})).isError
            tokens.extend(c["token"] for c in read_log(log) if c.get("verified"))
            os.kill(_child_pid("toolguard_mcp"), signal.SIGTERM)
            wait_for(lambda: trail(config)[0][0]["status"] != "active", timeout=5)

    anyio.run(main)
    tasks, events = trail(config)
    assert tasks[0]["status"] == "cancelled"
    assert "SIGTERM" in (events[-1].reason or "")
    with tg.Guard(config) as guard, pytest.raises(tg.CredentialRevoked):
        guard.verifier().verify(tokens[0], operation="read", resource=KEY)


def _child_pid(marker: str) -> int:
    """The pid of this process's child whose command line contains ``marker`` (Linux)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and marker in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child process running {marker}")


# -- streamable HTTP -----------------------------------------------------------------------------


def test_streamable_http_end_to_end(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    up_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen(
        upstream_command(config, log, "--http", f"127.0.0.1:{up_port}"),
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    proxy = subprocess.Popen(
        [sys.executable, *proxy_args(config),
         "--upstream-url", f"http://127.0.0.1:{up_port}/mcp",
         "--listen", f"127.0.0.1:{proxy_port}"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{proxy_port}/mcp"
    try:
        wait_listening(up_port, upstream)
        wait_listening(proxy_port, proxy)

        async def main() -> tuple[dict[str, Any], list[types.Tool]]:
            direct_url = f"http://127.0.0.1:{up_port}/mcp"
            async with streamable_http_client(direct_url) as (r, w, _), ClientSession(r, w) as s:
                await s.initialize()
                upstream_list = (await s.list_tools()).tools
            async with streamable_http_client(url) as (r, w, _), ClientSession(r, w) as session:
                await session.initialize()
                seen = await exercise(session)
            return seen, upstream_list

        seen, upstream_list = anyio.run(main)
        check_conversation(seen, upstream_list, log)
        assert {c["via"] for c in read_log(log) if c.get("verified")} == {"header"}
        # the client deleted its session: the task ends while the proxy keeps serving
        wait_for(lambda: trail(config)[0][0]["status"] != "active")
        check_trail(config, log)

        async def second() -> None:  # a session still open when the proxy stops
            async with streamable_http_client(url) as (r, w, _), ClientSession(r, w) as session:
                await session.initialize()
                assert not (await session.call_tool("kv_get", {"key": KEY})).isError
                proxy.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(lambda: proxy.wait(timeout=10))

        anyio.run(second)
        tasks, _ = trail(config)
        assert sorted(t["status"] for t in tasks) == ["cancelled", "ok"]
    finally:
        for process in (proxy, upstream):
            process.terminate()
            process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()


# -- in-process faults (the upstream is still a real process) --------------------------------------


async def _in_process(proxy: GuardingProxy, body: Callable[[ClientSession], Any]) -> None:
    streams = create_client_server_memory_streams()
    async with streams as (client_streams, server_streams), anyio.create_task_group() as group:
        group.start_soon(proxy.run, *server_streams)
        async with ClientSession(*client_streams) as session:
            await session.initialize()
            await body(session)
        # the client closed its streams: the proxy's session ends by itself


def _proxy(guard: tg.Guard, config: Path, log: Path) -> GuardingProxy:
    cmd = upstream_command(config, log)
    return GuardingProxy(
        guard, "process-job", Upstream(command=tuple(cmd), env=ENV), params={"job_id": "42"}
    )


def test_an_audit_error_is_a_json_rpc_error_and_nothing_is_forwarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    guard = tg.Guard(config)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise tg.AuditError("the audit store is read-only; nothing ran")

    async def body(session: ClientSession) -> None:
        monkeypatch.setattr(guard, "authorize", broken)
        with pytest.raises(McpError, match=r"not forwarded.*read-only"):
            await session.call_tool("kv_get", {"key": KEY})
        monkeypatch.undo()
        assert not (await session.call_tool("kv_get", {"key": KEY})).isError

    try:
        anyio.run(_in_process, _proxy(guard, config, log), body)
    finally:
        guard.close()
    assert [e["tool"] for e in read_log(log) if "tool" in e] == ["kv_get"]


def test_parallel_calls_each_get_their_own_decision_and_the_budget_is_exact(
    tmp_path: Path,
) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    guard = tg.Guard(config)
    results: list[types.CallToolResult] = []

    async def body(session: ClientSession) -> None:
        async def one(i: int) -> None:
            results.append(
                await session.call_tool("kv_set", {"key": f"agents:jobs:42:k{i}", "value": "v"})
            )

        async with anyio.create_task_group() as group:
            for i in range(8):
                group.start_soon(one, i)

    try:
        anyio.run(_in_process, _proxy(guard, config, log), body)
    finally:
        guard.close()
    allowed = [r for r in results if not r.isError]
    assert len(allowed) == 5  # per_tool kv_set: 5
    assert all("budget" in text(r) for r in results if r.isError)
    tokens = [e["token"] for e in read_log(log) if e.get("verified")]
    assert len(set(tokens)) == 5
    _, events = trail(config)
    assert len({e.jti for e in events if e.kind == "request"}) == 5
    assert len([e for e in events if e.kind == "outcome"]) == 5


def test_the_session_task_start_calls_and_end_write_off_the_event_loop(
    tmp_path: Path, store_writes: list[tuple[str, int]]
) -> None:
    """Issue 15: the session's task start (at ``initialize``), its calls and its end are
    written on the guard's writer thread, never on the loop's."""
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    guard = tg.Guard(config)
    writes = store_writes
    writes.clear()  # from here on

    async def body(session: ClientSession) -> None:
        assert not (await session.call_tool("kv_get", {"key": KEY})).isError

    try:
        anyio.run(_in_process, _proxy(guard, config, log), body)
    finally:
        guard.close()
    kinds = [e.kind for e in trail(config)[1]]
    assert kinds[0] == "task_start" and kinds[-1] == "task_end" and "request" in kinds
    assert len(writes) >= 3
    assert threading.get_ident() not in {thread for _, thread in writes}, writes


def test_a_session_whose_task_cannot_start_refuses_every_call(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    guard = tg.Guard(config)
    guard.revoke(identity="agent-runner", disable=True, reason="incident 7")

    async def body(session: ClientSession) -> None:
        result = await session.call_tool("kv_get", {"key": KEY})
        assert result.isError and text(result).startswith("Denied by toolguard:")

    try:
        anyio.run(_in_process, _proxy(guard, config, log), body)
    finally:
        guard.close()
    assert not [e for e in read_log(log) if "tool" in e]


def test_the_example_runs_offline() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mcp_proxy_example.py")],
        capture_output=True, text=True, env=ENV, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "offered: ['kv_get', 'kv_set']" in out
    assert "Denied by toolguard" in out
    assert "rejected after the session: CredentialRevoked" in out


def test_an_upstream_that_cannot_start_is_reported_and_the_proxy_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, *proxy_args(config), "--", str(tmp_path / "no-such-server")],
        capture_output=True, text=True, env=ENV, timeout=60, stdin=subprocess.PIPE,
    )  # fmt: skip
    assert result.returncode == 1
    assert "could not be started or initialized" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_upstream_error_result_is_recorded_as_an_error_outcome(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    guard = tg.Guard(config)

    async def body(session: ClientSession) -> None:
        result = await session.call_tool("wait", {"key": KEY, "seconds": "not a number"})
        assert result.isError and not text(result).startswith("Denied by toolguard")

    try:
        anyio.run(_in_process, _proxy(guard, config, log), body)
    finally:
        guard.close()
    _, events = trail(config)
    (outcome,) = [e for e in events if e.kind == "outcome"]
    assert outcome.outcome == "error"
    assert (outcome.error or "").startswith("UpstreamToolError:")


def test_a_tool_the_upstream_does_not_offer_is_refused_after_the_policy_and_audited(
    tmp_path: Path,
) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    data = yaml.safe_load(config.read_text())
    data["tools"]["ghost"] = {"operation": "read", "resource": "{key}"}
    data["intents"]["process-job"]["tools"].append("ghost")
    config.write_text(yaml.safe_dump(data))
    guard = tg.Guard(config)

    async def body(session: ClientSession) -> None:
        result = await session.call_tool("ghost", {"key": KEY})
        assert result.isError and "offers no tool 'ghost'" in text(result)
        outside = await session.call_tool("ghost", {"key": "agents:jobs:7:state"})
        assert outside.isError and "offers no tool" not in text(outside)  # the policy first

    try:
        anyio.run(_in_process, _proxy(guard, config, log), body)
    finally:
        guard.close()
    assert not [e for e in read_log(log) if e.get("tool") == "ghost"]
    _, events = trail(config)
    ghost = [e for e in events if e.tool == "ghost"]
    assert [(e.kind, e.decision) for e in ghost if e.kind != "outcome"] == [
        ("request", "allow"),
        ("denied", "deny"),
    ]
    (outcome,) = [e for e in ghost if e.kind == "outcome"]
    assert outcome.outcome == "error" and "offers no tool 'ghost'" in (outcome.error or "")


def test_an_http_upstream_going_away_ends_the_task_as_an_error(tmp_path: Path) -> None:
    config, log = write_config(tmp_path), tmp_path / "upstream.log"
    up_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen(
        upstream_command(config, log, "--http", f"127.0.0.1:{up_port}"),
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proxy = subprocess.Popen(
        [sys.executable, *proxy_args(config),
         "--upstream-url", f"http://127.0.0.1:{up_port}/mcp",
         "--listen", f"127.0.0.1:{proxy_port}"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(up_port, upstream)
        wait_listening(proxy_port, proxy)

        async def main() -> None:
            url = f"http://127.0.0.1:{proxy_port}/mcp"
            async with streamable_http_client(url) as (r, w, _), ClientSession(r, w) as session:
                await session.initialize()
                assert not (await session.call_tool("kv_get", {"key": KEY})).isError
                upstream.kill()
                upstream.wait(timeout=10)
                with anyio.move_on_after(3):  # the proxy's session with it fails
                    await session.call_tool("kv_get", {"key": KEY})

        try:
            anyio.run(main)
        except Exception:  # the client's session may fail under it
            pass
        wait_for(lambda: trail(config)[0][0]["status"] != "active")
        tasks, events = trail(config)
        assert tasks[0]["status"] == "error"
        (end,) = [e for e in events if e.kind == "task_end"]
        assert "upstream" in (end.reason or "")
    finally:
        for process in (proxy, upstream):
            process.terminate()
            process.wait(timeout=10)


def test_http_upstream_clients_share_the_process_tls_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each session's client to an HTTPS upstream verifies certificates with the process's one
    TLS context (built once), not a CA bundle read per session on the event loop."""
    from toolguard_mcp import proxy as proxy_module

    from toolguard.httpauth import tls_context

    seen: list[Any] = []

    class Stop(Exception):
        pass

    def client(**kwargs: Any) -> Any:
        seen.append(kwargs["verify"])
        raise Stop

    monkeypatch.setattr(proxy_module.httpx, "AsyncClient", client)
    guard = tg.Guard(write_config(tmp_path))
    proxy = GuardingProxy(
        guard, "process-job", Upstream(url="https://mcp.internal/mcp"), params={"job_id": "42"}
    )

    async def connect() -> None:
        for _ in range(2):
            with pytest.raises(Stop):
                async with proxy._connect(proxy_module._Session(proxy)):
                    pass

    try:
        anyio.run(connect)
    finally:
        guard.close()
    assert len(seen) == 2 and seen[0] is seen[1] is tls_context()
    assert seen[0].verify_mode.name == "CERT_REQUIRED" and seen[0].check_hostname
