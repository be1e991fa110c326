"""Incident response across processes: a revocation in this process takes effect at once for a
verifier in another process that shares the audit store.

Two verifiers: a ``multiprocessing`` spawn child holding a ``verifier_from(jwks, store)``, and
the example key-value service run as a script (``python examples/kv_service.py``). Neither
sleeps: each request right after ``guard.revoke(...)`` must already be rejected.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import store_arg

import toolguard as tg

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
KEY = "agents:jobs:42:state"
ISS = "toolguard-test"
AUD = "kv-service"
_START_TIMEOUT = 60.0


def _verifier_child(conn: Connection) -> None:
    """Runs in a spawned process: verify each token received, answer with the outcome.

    ``("use", jwks, store)`` builds a new verifier (one per test); ``(token, operation)``
    verifies; ``None`` stops.
    """
    from toolguard_starlette import verifier_from

    verifier = None
    conn.send(("ready", os.getpid()))
    while (request := conn.recv()) is not None:
        if request[0] == "use":
            verifier = verifier_from(jwks=request[1], store=request[2], issuer=ISS, audience=AUD)
            conn.send(("ok", "", ""))
            continue
        token, operation = request
        assert verifier is not None
        try:
            claims = verifier.verify(token, operation=operation, resource=KEY)
        except tg.CredentialError as exc:
            conn.send(("rejected", type(exc).__name__, str(exc)))
        else:
            conn.send(("ok", claims["task_id"], ""))
    conn.close()


class _Child:
    """The parent's end of the verifier process."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def ask(self, request: tuple[Any, ...]) -> tuple[str, str, str]:
        self.conn.send(request)
        if not self.conn.poll(_START_TIMEOUT):
            raise TimeoutError("the verifier process did not answer")
        answer: tuple[str, str, str] = self.conn.recv()
        return answer

    def verify(self, token: str, operation: str = "write") -> tuple[str, str, str]:
        return self.ask((token, operation))


@pytest.fixture
def guard(make_guard: Callable[..., tg.Guard]) -> tg.Guard:
    guard = make_guard()  # the wall clock: the other process verifies with it too
    guard.store.open()
    return guard


@pytest.fixture(scope="module")
def verifier_process() -> Iterator[_Child]:
    """One spawned verifier process for the module (spawning costs seconds of imports)."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    process = ctx.Process(target=_verifier_child, args=(child_conn,), daemon=True)
    process.start()
    child_conn.close()
    try:
        assert parent_conn.poll(_START_TIMEOUT), "the verifier process did not start"
        ready, pid = parent_conn.recv()
        assert ready == "ready" and pid != os.getpid()
        yield _Child(parent_conn)
        parent_conn.send(None)
        process.join(_START_TIMEOUT)
    finally:
        if process.is_alive():
            process.terminate()
            process.join(_START_TIMEOUT)
        parent_conn.close()


@pytest.fixture
def child(verifier_process: _Child, guard: tg.Guard) -> _Child:
    """The verifier process, verifying against this test's guard (its JWKS and store)."""
    assert verifier_process.ask(("use", guard.keys.jwks(), store_arg(guard)))[0] == "ok"
    return verifier_process


def _credential(guard: tg.Guard, tool: str = "kv_set") -> tg.Credential:
    """The credential of one allowed call in the current task (as a guarded tool gets it)."""
    args = {"key": KEY, "value": "v"} if tool == "kv_set" else {"key": KEY}
    permit = guard.authorize(tool, args)
    guard.finish(permit)
    return permit.credential


def test_crossprocess_task_revocation_rejects_at_once(guard: tg.Guard, child: _Child) -> None:
    with guard.task("process-job", job_id="42") as task:
        token = _credential(guard).token
        assert child.verify(token) == ("ok", task.task_id, "")

        guard.revoke(task_id=task.task_id, reason="incident 17")
        status, kind, message = child.verify(token)

        assert (status, kind) == ("rejected", "CredentialRevoked")
        assert "incident 17" in message
        # Meanwhile this process's guard refuses the task's next calls too.
        with pytest.raises(tg.PolicyDenied, match="revoked"):
            guard.authorize("kv_get", {"key": KEY})


def test_crossprocess_identity_and_jti_revocations_reject_at_once(
    guard: tg.Guard, child: _Child
) -> None:
    with guard.task("process-job", job_id="42"):
        first, second = _credential(guard), _credential(guard).token
        assert child.verify(first.token)[0] == child.verify(second)[0] == "ok"

        guard.revoke(jti=first.jti)
        assert child.verify(first.token)[:2] == ("rejected", "CredentialRevoked")
        assert child.verify(second)[0] == "ok"

        guard.revoke(identity="agent-runner", reason="compromised runner")
        status, kind, message = child.verify(second)
        assert (status, kind) == ("rejected", "CredentialRevoked")
        assert "compromised runner" in message


def test_crossprocess_task_end_rejects_at_once(guard: tg.Guard, child: _Child) -> None:
    with guard.task("process-job", job_id="42"):
        token = _credential(guard).token
        assert child.verify(token)[0] == "ok"

    assert child.verify(token)[:2] == ("rejected", "CredentialRevoked")


# -- the example service, as a separate process -------------------------------------------------


@pytest.fixture
def kv_url(guard: tg.Guard, tmp_path: Path) -> Iterator[str]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(guard.keys.jwks()))
    log = (tmp_path / "kv.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "kv_service.py"),
            "--jwks",
            str(jwks),
            "--db",
            store_arg(guard),
            "--issuer",
            ISS,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], _START_TIMEOUT)
        line = process.stdout.readline().decode() if ready else ""
        match = re.fullmatch(r"kv service listening on (http://127\.0\.0\.1:\d+)\s*", line)
        assert match, f"the kv service did not start: {line!r}; see {log.name}"
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def test_crossprocess_kv_service_rejects_right_after_revoke(guard: tg.Guard, kv_url: str) -> None:
    with httpx.Client(base_url=kv_url, timeout=_START_TIMEOUT) as http:
        with guard.task("process-job", job_id="42") as task:
            headers = {"Authorization": f"Bearer {_credential(guard).token}"}
            stored = http.put(f"/kv/{KEY}", json={"value": "v1"}, headers=headers)
            assert stored.status_code == 200, stored.text
            assert stored.json()["task_id"] == task.task_id

            guard.revoke(task_id=task.task_id, reason="incident 17")
            refused = http.put(f"/kv/{KEY}", json={"value": "v2"}, headers=headers)

        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert "incident 17" in refused.json()["error_description"]
        with guard.task("summarise-job", job_id="42"):  # another task is unaffected
            reader = {"Authorization": f"Bearer {_credential(guard, 'kv_get').token}"}
            assert http.get(f"/kv/{KEY}", headers=reader).json() == {"key": KEY, "value": "v1"}
