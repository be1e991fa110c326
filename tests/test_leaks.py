"""No issued token ever lands in the audit database (main file and WAL), the checkpoints file,
the logs, toolguard's own error messages, or what the model reads back from a tool."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from conftest import Clock
from langchain_core.messages import ToolMessage
from langchain_core.tools import InjectedToolArg, StructuredTool, ToolException, tool

import toolguard as tg

JOB_KEY = "agents:jobs:42:input"
OUT_KEY = "agents:jobs:42:result"


class _Issued:
    """Every token the tools saw (all of them were signed, so all were really issued)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def add(self, credential: tg.Credential) -> str:
        token = credential.token
        self.tokens.append(token)
        return token

    def needles(self) -> list[bytes]:
        """Each full token, and its signature alone (the part no other record could hold)."""
        out: list[bytes] = []
        for token in self.tokens:
            out.append(token.encode())
            out.append(token.rsplit(".", 1)[1].encode())
        return out


def _hits(data: bytes, needles: list[bytes]) -> int:
    return sum(data.count(n) for n in needles)


def _scan_files(directory: Path, needles: list[bytes]) -> dict[str, int]:
    """Hits per file under ``directory`` (the signing key files are not scanned: no tokens)."""
    found: dict[str, int] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "keys" not in path.parts:
            found[path.name] = _hits(path.read_bytes(), needles)
    return found


def _workload(guard: tg.Guard, issued: _Issued) -> tg.TaskSession:
    """Allowed calls reading their tokens every way, denials, a tool error, an async call,
    and a model that echoes a token it saw back as an argument."""

    def service(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"value": "v"})

    @tool
    def kv_get(key: str) -> str:
        """Read a key over HTTP with the call's credential."""
        issued.add(tg.current_credential())
        with httpx.Client(
            auth=tg.CredentialAuth(), transport=httpx.MockTransport(service)
        ) as client:
            return str(client.get(f"http://kv.local/kv/{key}").json()["value"])

    @tool
    def kv_set(key: str, value: str, credential: Annotated[tg.Credential, InjectedToolArg]) -> str:
        """Store a value; logs what it does (never the token)."""
        issued.add(credential)
        logging.getLogger("kv").info("stored %s with %r", key, credential)
        if value == "fail":
            raise ConnectionError(f"upstream refused {credential!r}")
        return "stored"

    @tool
    async def kv_get_async(key: str) -> str:
        """Async read."""
        issued.add(tg.current_credential())
        return "v"

    get, put = tg.guard([kv_get, kv_set], guard)
    aget = tg.guard(kv_get_async.model_copy(update={"name": "kv_get"}), guard)
    with guard.task("process-job", job_id="42") as task:
        for i in range(3):
            get.invoke(
                {"type": "tool_call", "id": f"g{i}", "name": "kv_get", "args": {"key": JOB_KEY}}
            )
            put.invoke({"key": OUT_KEY, "value": f"v{i}"})
        put.invoke({"key": "agents:jobs:43:result", "value": "x"})  # denied
        # The model echoes a token it should never have seen: the audit must not keep it.
        put.invoke({"key": OUT_KEY, "value": issued.tokens[0]})
        put.invoke({"key": "agents:jobs:43:result", "value": issued.tokens[1]})  # denied
        with pytest.raises(ConnectionError):
            put.invoke({"key": OUT_KEY, "value": "fail"})
        asyncio.run(aget.ainvoke({"key": JOB_KEY}))
    return task


def test_no_token_in_database_wal_checkpoints_or_logs(
    guard: tg.Guard, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = _Issued()

    task = _workload(guard, issued)

    needles = issued.needles()
    assert len(issued.tokens) == 9 and len(set(issued.tokens)) == 9
    # While the guard is open, the recent pages live in the WAL: scan it too.
    open_files = _scan_files(tmp_path, needles)
    assert {"audit.db", "audit.db-wal", "audit.db.checkpoints"} <= set(open_files)
    assert open_files == dict.fromkeys(open_files, 0)
    guard.close()  # checkpoints the WAL into the main file
    closed = _scan_files(tmp_path, needles)
    assert closed == dict.fromkeys(closed, 0)
    # The logs saw the calls, never a token.
    assert any("stored agents:jobs:42:result" in r.getMessage() for r in caplog.records)
    assert _hits(caplog.text.encode(), needles) == 0
    # The echoed token was redacted in the audit args, and the task's events exist.
    events = guard.audit.events(task_id=task.task_id)
    assert any(e.args and "[REDACTED]" in e.args for e in events)
    errors = [e.error for e in events if e.error]
    assert errors and all("Credential(jti=" in err for err in errors)


def test_no_token_in_exported_audit_rows(guard: tg.Guard) -> None:
    issued = _Issued()
    task = _workload(guard, issued)
    rows = [e.to_dict() for e in guard.audit.events()] + guard.audit.timeline(task.task_id)
    text = repr(rows).encode()
    assert _hits(text, issued.needles()) == 0


def test_no_token_in_toolguard_error_messages(guard: tg.Guard, clock: Clock) -> None:
    issued = _Issued()
    _workload(guard, issued)
    verifier = guard.verifier(audience="kv-service")
    token = issued.tokens[0]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    messages: list[str] = []
    cases: tuple[tuple[str, dict[str, Any]], ...] = (
        (token, {}),  # revoked: its task ended
        (tampered, {}),
        (token, {"operation": "delete"}),
        (token + "x", {}),
    )
    for candidate, kwargs in cases:
        with pytest.raises(tg.CredentialError) as info:
            verifier.verify(candidate, **kwargs)
        messages.append(f"{info.value} {info.value!r} {vars(info.value)}")
    clock.advance(3600)
    with pytest.raises(tg.CredentialError) as info:
        verifier.verify(token)
    messages.append(str(info.value))
    assert _hits(" ".join(messages).encode(), [*issued.needles(), tampered.encode()]) == 0


def test_credential_repr_and_str_hide_the_token(guard: tg.Guard) -> None:
    issued = _Issued()
    seen: list[tg.Credential] = []

    @tool
    def kv_get(key: str) -> str:
        """Read."""
        seen.append(tg.current_credential())
        issued.add(seen[-1])
        return "ok"

    with guard.task("process-job", job_id="42"):
        tg.guard(kv_get, guard).invoke({"key": JOB_KEY})
    (cred,) = seen
    assert _hits(f"{cred!r} {cred!s} {cred.claims}".encode(), issued.needles()) == 0


@tool
def careless_get(key: str) -> str:
    """A careless tool that returns its own credential."""
    return f"fetched {key} with {tg.current_credential().token}"


def test_token_returned_by_a_tool_is_not_echoed_to_the_model(guard: tg.Guard) -> None:
    kv_get = careless_get.model_copy(update={"name": "kv_get"})
    with guard.task("process-job", job_id="42"):
        message = tg.guard(kv_get, guard).invoke(
            {"type": "tool_call", "id": "c1", "name": "kv_get", "args": {"key": JOB_KEY}}
        )
    assert isinstance(message, ToolMessage)
    assert "eyJ" not in str(message.content)
    assert str(message.content).startswith(f"fetched {JOB_KEY} with ")


def test_token_in_a_tool_error_is_not_echoed_to_the_model(guard: tg.Guard) -> None:
    def kv_get(key: str) -> str:
        raise ToolException(f"the service rejected {tg.current_credential().token}")

    failing = StructuredTool.from_function(
        func=kv_get, name="kv_get", description="Read.", handle_tool_error=True
    )
    with guard.task("process-job", job_id="42"):
        message = tg.guard(failing, guard).invoke(
            {"type": "tool_call", "id": "c1", "name": "kv_get", "args": {"key": JOB_KEY}}
        )
    assert message.status == "error"
    assert "eyJ" not in str(message.content)
