"""Tests for toolguard.engine: the pipeline of a guarded call (budget and ``request`` event
committed before the tool runs, credential minted, ``outcome`` recorded), the guard's verifier,
and failing closed when the audit trail cannot be written."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, tool

import toolguard as tg
from toolguard.config import Budget
from toolguard.store.sqlite.budgets import usage

JOB_KEY = "agents:jobs:42:input"
OUT_KEY = "agents:jobs:42:result"


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_call", "id": "call-1", "name": name, "args": args}


def _header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


class _Recorder:
    """Tools that record what they saw, including the committed audit state when they ran."""

    def __init__(self, db: Path, connect: Callable[[], Any]) -> None:
        self.db = db  # the SQLite file (its folder holds the test's other files)
        self.connect = connect  # a read connection of one's own to the store
        self.ran: list[str] = []
        self.seen: list[dict[str, Any]] = []
        self.credentials: list[tg.Credential] = []

        @tool
        def kv_get(key: str) -> str:
            """Read a key."""
            self.ran.append(key)
            self.credentials.append(tg.current_credential())
            return f"value of {key}"

        @tool
        def kv_set(key: str, value: str) -> str:
            """Store a value; looks at the committed audit trail from another connection."""
            self.ran.append(key)
            cred = tg.current_credential()
            self.credentials.append(cred)
            other = self.connect()
            try:
                request = other.execute(
                    "SELECT kind, tool, resources FROM events WHERE jti = ? AND kind = 'request'",
                    (cred.jti,),
                ).fetchall()
                used = usage(other, now=0.0, task_id=cred.task_id, budget=_BUDGET)
                calls = [(float(used["task.max_calls"]),)]
                stored = other.execute(
                    "SELECT task_id, tool, operation FROM credentials WHERE jti = ?", (cred.jti,)
                ).fetchall()
            finally:
                other.close()
            self.seen.append({"request": request, "calls": calls, "credential": stored})
            return "stored"

        self.kv_get = kv_get
        self.kv_set = kv_set

    def tools(self) -> list[BaseTool]:
        return [self.kv_get, self.kv_set]


@pytest.fixture
def recorder(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> _Recorder:
    if backend == "postgres":
        import psycopg

        from toolguard.store.postgres.connection import PgConnection

        url = request.getfixturevalue("pg_url")  # the database of make_guard

        def connect() -> Any:
            return PgConnection(psycopg.connect(url, autocommit=True), lock_timeout=5.0)

        return _Recorder(tmp_path / "audit.db", connect)

    def connect_sqlite() -> Any:
        conn = sqlite3.connect(tmp_path / "audit.db")
        conn.execute("PRAGMA query_only=1")
        return conn

    return _Recorder(tmp_path / "audit.db", connect_sqlite)


# -- the allowed call --------------------------------------------------------------------------


def test_request_and_budget_committed_before_the_tool_runs(
    guard: tg.Guard, recorder: _Recorder
) -> None:
    _, kv_set = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42") as task:
        kv_set.invoke({"key": OUT_KEY, "value": "v"})

    (seen,) = recorder.seen
    assert seen["request"] == [("request", "kv_set", json.dumps([OUT_KEY]))]
    assert seen["calls"] == [(1.0,)]
    assert seen["credential"] == [(task.task_id, "kv_set", "write")]


def test_outcome_recorded_with_status_and_duration(guard: tg.Guard, recorder: _Recorder) -> None:
    kv_get, _ = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})

    events = guard.audit.events(task_id=task.task_id)
    assert [e.kind for e in events] == ["task_start", "request", "outcome", "task_end"]
    request, outcome = events[1], events[2]
    assert outcome.outcome == "ok"
    assert outcome.error is None
    assert outcome.duration_ms is not None and outcome.duration_ms >= 0
    assert (outcome.jti, outcome.correlation_id) == (request.jti, request.correlation_id)
    assert request.decision == "allow"
    assert request.operation == "read"
    assert request.args == json.dumps({"key": JOB_KEY}, separators=(",", ":"))
    assert request.args_sha256 is not None and request.args_sha256.startswith("hmac-sha256:")
    assert len(request.args_sha256) == len("hmac-sha256:") + 64


def test_tool_error_is_recorded_as_error_outcome(guard: tg.Guard) -> None:
    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        raise ConnectionError("kv service unreachable")

    guarded = tg.guard(kv_get, guard)
    with pytest.raises(ConnectionError), guard.task("process-job", job_id="42") as task:
        guarded.invoke({"key": JOB_KEY})

    (outcome,) = guard.audit.events(task_id=task.task_id, kind="outcome")
    assert (outcome.outcome, outcome.error) == (
        "error",
        "ConnectionError: kv service unreachable",
    )


def test_timeline_joins_requests_and_outcomes(guard: tg.Guard, recorder: _Recorder) -> None:
    kv_get, kv_set = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})
        kv_set.invoke({"key": "agents:jobs:43:result", "value": "v"})

    rows = guard.audit.timeline(task.task_id)
    assert [(r["kind"], r["tool"], r.get("result")) for r in rows] == [
        ("task_start", None, None),
        ("request", "kv_get", "ok"),
        ("denied", "kv_set", None),
        ("task_end", None, None),
    ]


def test_credential_is_an_eddsa_at_jwt_with_design_claims(
    guard: tg.Guard, recorder: _Recorder, clock: Clock
) -> None:
    kv_get, _ = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})
        (cred,) = recorder.credentials
        claims = guard.verifier(audience="kv-service").verify(cred.token)

    header = _header(cred.token)
    assert header["alg"] == "EdDSA"
    assert header["typ"] == "at+jwt"
    assert header["kid"] == guard.keys.active.kid
    assert set(claims) == {
        "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "task_id", "intent", "tool", "op", "res",
    }  # fmt: skip
    assert claims["iss"] == "toolguard-test"
    assert claims["aud"] == "kv-service"
    assert claims["iat"] == claims["nbf"] == int(clock.now)
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"] == cred.jti
    assert len(base64.urlsafe_b64decode(cred.jti + "==")) * 8 >= 128
    assert (claims["task_id"], claims["intent"], claims["sub"]) == (
        task.task_id,
        "process-job",
        "agent-runner",
    )
    assert (claims["tool"], claims["op"], claims["res"]) == ("kv_get", "read", [JOB_KEY])


def test_key_file_created_0600_on_first_use(tmp_path: Path, make_guard: Callable[..., Any]) -> None:
    key_file = tmp_path / "keys" / "signing-key.pem"
    assert not key_file.exists()
    guard = make_guard()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    kid = guard.keys.active.kid
    # A second guard on the same file loads the same key rather than creating one.
    assert make_guard().keys.active.kid == kid


def test_tool_audience_and_ttl_from_config(
    make_guard: Callable[..., tg.Guard], recorder: _Recorder, clock: Clock
) -> None:
    tools = {**BASE_CONFIG["tools"], "kv_get": {**BASE_CONFIG["tools"]["kv_get"]}}
    tools["kv_get"]["audience"] = "reports-service"
    guard = make_guard(
        clock=clock,
        tools=tools,
        issuer={**BASE_CONFIG["issuer"], "ttl": "1m", "key_file": str(recorder.db.parent / "k")},
    )
    kv_get, _ = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42"):
        kv_get.invoke({"key": JOB_KEY})
        (cred,) = recorder.credentials
        claims = guard.verifier(audience="reports-service").verify(cred.token)
        with pytest.raises(tg.CredentialInvalid, match="not for this audience"):
            guard.verifier(audience="kv-service").verify(cred.token)
    assert claims["exp"] - claims["iat"] == 60


_BUDGET = Budget(**BASE_CONFIG["intents"]["process-job"]["budget"])


# -- budgets -----------------------------------------------------------------------------------


def test_max_calls_budget_denies_with_fields(
    make_guard: Callable[..., tg.Guard], recorder: _Recorder, clock: Clock
) -> None:
    intents = {**BASE_CONFIG["intents"]}
    intents["process-job"] = {**intents["process-job"], "budget": {"max_calls": 2}}
    guard = make_guard(clock=clock, intents=intents)
    kv_get, _ = tg.guard(recorder.tools(), guard, on_deny="raise")

    with guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})
        kv_get.invoke({"key": JOB_KEY})
        with pytest.raises(
            tg.BudgetExceeded, match=r"budget '[\w.-]*max_calls' is exhausted"
        ) as info:
            kv_get.invoke({"key": JOB_KEY})

    error = info.value
    assert error.scope.endswith("max_calls")
    assert (error.limit, error.used, error.retry_after) == (2, 2.0, None)
    assert error.rule is not None and error.rule.endswith("max_calls")
    assert error.task_id == task.task_id
    assert recorder.ran == [JOB_KEY, JOB_KEY]
    (denied,) = guard.audit.events(task_id=task.task_id, kind="denied")
    assert denied.rule == error.rule
    assert denied.jti is None


def test_denials_do_not_spend_budget(
    make_guard: Callable[..., tg.Guard], recorder: _Recorder, clock: Clock
) -> None:
    intents = {**BASE_CONFIG["intents"]}
    intents["process-job"] = {**intents["process-job"], "budget": {"max_calls": 1}}
    guard = make_guard(clock=clock, intents=intents)
    _, kv_set = tg.guard(recorder.tools(), guard)

    with guard.task("process-job", job_id="42"):
        for _ in range(3):
            kv_set.invoke({"key": "agents:jobs:43:x", "value": "v"})
        assert kv_set.invoke({"key": OUT_KEY, "value": "v"}) == "stored"


def test_per_tool_budget(guard: tg.Guard, recorder: _Recorder) -> None:
    _, kv_set = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42"):
        results = [kv_set.invoke({"key": OUT_KEY, "value": str(i)}) for i in range(6)]
    assert results[:5] == ["stored"] * 5
    assert re.search(r"budget '[\w.-]*per_tool\.kv_set' is exhausted \(5 of 5 used\)", results[5])


# -- the guard's verifier ----------------------------------------------------------------------


def test_verifier_checks_operation_and_resource_scope(guard: tg.Guard, recorder: _Recorder) -> None:
    _, kv_set = tg.guard(recorder.tools(), guard)
    verifier = guard.verifier(audience="kv-service")
    with guard.task("process-job", job_id="42"):
        kv_set.invoke({"key": OUT_KEY, "value": "v"})
        token = recorder.credentials[0].token
        assert verifier.verify(token, operation="write", resource=OUT_KEY)["res"] == [OUT_KEY]
        with pytest.raises(tg.ScopeMismatch, match="for operation 'write', not 'delete'"):
            verifier.verify(token, operation="delete", resource=OUT_KEY)
        with pytest.raises(tg.ScopeMismatch, match="does not cover resource"):
            verifier.verify(token, operation="write", resource="agents:jobs:42:other")
        with pytest.raises(tg.CredentialInvalid, match="signature is not valid"):
            verifier.verify(token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB"))


def test_verifier_rejects_after_task_end(guard: tg.Guard, recorder: _Recorder) -> None:
    kv_get, _ = tg.guard(recorder.tools(), guard)
    verifier = guard.verifier(audience="kv-service")
    with guard.task("process-job", job_id="42"):
        kv_get.invoke({"key": JOB_KEY})
    with pytest.raises(tg.CredentialRevoked, match="credential was revoked: task revoked"):
        verifier.verify(recorder.credentials[0].token)


@pytest.mark.parametrize("scope", ["jti", "task", "identity"])
def test_verifier_honours_guard_revoke(
    guard: tg.Guard, recorder: _Recorder, clock: Clock, scope: str
) -> None:
    kv_get, _ = tg.guard(recorder.tools(), guard)
    verifier = guard.verifier(audience="kv-service")
    with guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})
        cred = recorder.credentials[0]
        clock.advance(1)
        target: dict[str, Any] = {
            "jti": {"jti": cred.jti},
            "task": {"task_id": task.task_id},
            "identity": {"identity": "agent-runner"},
        }[scope]
        guard.revoke(**target, reason="incident 17")
        with pytest.raises(tg.CredentialRevoked, match="incident 17"):
            verifier.verify(cred.token)


def test_verifier_in_another_process_view_of_the_store(
    guard: tg.Guard, recorder: _Recorder, make_guard: Callable[..., tg.Guard]
) -> None:
    """A service with its own Guard on the same files sees the task's revocation."""
    kv_get, _ = tg.guard(recorder.tools(), guard)
    service = make_guard(clock=guard.clock).verifier(audience="kv-service")
    with guard.task("process-job", job_id="42"):
        kv_get.invoke({"key": JOB_KEY})
        assert service.verify(recorder.credentials[0].token)["tool"] == "kv_get"
    with pytest.raises(tg.CredentialRevoked):
        service.verify(recorder.credentials[0].token)


# -- fail closed -------------------------------------------------------------------------------


@pytest.fixture
def locked_guard(make_guard: Callable[..., tg.Guard], clock: Clock) -> tg.Guard:
    return make_guard(clock=clock, busy_timeout=0.05)


@pytest.fixture
def blocker(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


@pytest.mark.slow
@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
@pytest.mark.parametrize("on_deny", ["message", "raise"])
def test_locked_database_fails_closed(
    locked_guard: tg.Guard,
    recorder: _Recorder,
    blocker: sqlite3.Connection,
    on_deny: str,
) -> None:
    kv_get, kv_set = tg.guard(recorder.tools(), locked_guard, on_deny=on_deny)  # type: ignore[call-overload]
    with locked_guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(tg.AuditError, match=r"database is locked; nothing ran"):
            kv_set.invoke({"key": OUT_KEY, "value": "v"})
        # Not turned into a ToolMessage either, even when invoked with a tool call.
        with pytest.raises(tg.AuditError):
            kv_set.invoke(_call("kv_set", {"key": OUT_KEY, "value": "v"}))
        # A denial cannot be audited either: AuditError, not a denial.
        with pytest.raises(tg.AuditError, match=r"\(denied\)"):
            kv_set.invoke({"key": "agents:jobs:43:x", "value": "v"})
        blocker.execute("ROLLBACK")
        # The guard recovers once the lock is gone.
        assert kv_set.invoke({"key": OUT_KEY, "value": "v"}) == "stored"

    assert recorder.ran == [JOB_KEY, OUT_KEY]
    kinds = [e.kind for e in locked_guard.audit.events(task_id=task.task_id)]
    assert kinds == ["task_start", "request", "outcome", "request", "outcome", "task_end"]
    (seen,) = recorder.seen
    assert seen["calls"] == [(2.0,)]  # the failed attempts spent nothing


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_locked_database_fails_task_start(
    locked_guard: tg.Guard, blocker: sqlite3.Connection
) -> None:
    locked_guard.store.open()
    blocker.execute("BEGIN EXCLUSIVE")
    body: list[str] = []
    task = locked_guard.task("process-job", job_id="42")
    with pytest.raises(tg.AuditError, match=r"\(task start\)"), task:
        body.append("ran")
    assert body == []


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_task_end_that_could_not_be_written_still_revokes(
    locked_guard: tg.Guard, recorder: _Recorder, blocker: sqlite3.Connection
) -> None:
    kv_get, _ = tg.guard(recorder.tools(), locked_guard)
    with pytest.raises(tg.AuditError), locked_guard.task("process-job", job_id="42"):
        kv_get.invoke({"key": JOB_KEY})
        blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("ROLLBACK")
    locked_guard.close()
    with pytest.raises(tg.CredentialRevoked):
        locked_guard.verifier(audience="kv-service").verify(recorder.credentials[0].token)


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """Run as an ordinary user: as root, file modes do not stop writes, so drop the effective
    uid to ``nobody`` for the block (process-wide) and take it back afterwards."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(65534)
    except PermissionError:  # pragma: no cover - a root without CAP_SETUID
        pytest.skip("running as root without the right to drop privileges")
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged uid can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="toolguard-ro-"))
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    for child in path.iterdir():
        child.chmod(0o644)
    shutil.rmtree(path)


def test_read_only_database_file_fails_closed(
    make_guard: Callable[..., tg.Guard], recorder: _Recorder, shared_dir: Path
) -> None:
    guard = make_guard(store=str(shared_dir / "audit.db"))
    kv_get, _ = tg.guard(recorder.tools(), guard)
    files = [shared_dir / n for n in ("audit.db", "audit.db-wal", "audit.db-shm")]
    with guard.task("process-job", job_id="42") as task:
        kv_get.invoke({"key": JOB_KEY})  # opens the database; the tool runs once

        def call_read_only() -> Any:
            with _unprivileged():
                return kv_get.invoke(_call("kv_get", {"key": JOB_KEY}))

        guard.store.close()  # the next write opens a new connection (as another process would)
        files = [path for path in files if path.exists()]  # closing removed the WAL
        for path in files:
            path.chmod(0o444)
        shared_dir.chmod(0o555)
        try:
            # The new connection, opened unprivileged, finds the file read-only.
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(task.carry(call_read_only))
                with pytest.raises(tg.AuditError, match="readonly database"):
                    future.result()
        finally:
            shared_dir.chmod(0o755)
            for path in files:
                path.chmod(0o644)
    assert recorder.ran == [JOB_KEY]
    assert [e.kind for e in guard.audit.events(task_id=task.task_id, kind="request")] == ["request"]


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_unwritable_database_fails_closed_in_a_new_connection(
    guard: tg.Guard, recorder: _Recorder, tmp_path: Path
) -> None:
    """The database path stops being a writable file (works as root too): a new connection
    cannot write the request, so the tool does not run."""
    kv_get, _ = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42") as task:
        guard.store.close()  # the next write opens a new connection (as another process would)
        (tmp_path / "audit.db").rename(tmp_path / "moved.db")
        (tmp_path / "audit.db").mkdir()
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(task.carry(kv_get.invoke), _call("kv_get", {"key": JOB_KEY}))
            with pytest.raises(tg.AuditError, match="cannot open the audit database"):
                future.result()
        (tmp_path / "audit.db").rmdir()  # put the database back so the task can end
        (tmp_path / "moved.db").rename(tmp_path / "audit.db")
    assert recorder.ran == []


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_database_that_is_a_directory_fails_at_task_start(
    make_guard: Callable[..., tg.Guard], tmp_path: Path
) -> None:
    (tmp_path / "audit.db").mkdir()
    guard = make_guard()
    body: list[str] = []
    task = guard.task("process-job", job_id="42")
    with pytest.raises(tg.AuditError, match="cannot open the audit database"), task:
        body.append("ran")
    assert body == []


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_wal_that_cannot_be_created_fails_at_task_start(
    make_guard: Callable[..., tg.Guard], tmp_path: Path
) -> None:
    make_guard().close()  # an existing, valid audit database
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    (tmp_path / "audit.db-wal").mkdir()
    (tmp_path / "audit.db-journal").mkdir()
    guard = make_guard()
    body: list[str] = []
    with pytest.raises(tg.AuditError), guard.task("process-job", job_id="42"):
        body.append("ran")
    assert body == []


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_broken_schema_fails_closed(guard: tg.Guard, recorder: _Recorder, tmp_path: Path) -> None:
    kv_get, _ = tg.guard(recorder.tools(), guard)
    with guard.task("process-job", job_id="42"):
        with sqlite3.connect(tmp_path / "audit.db") as other:
            other.execute("DROP TABLE credentials")
        with pytest.raises(tg.AuditError, match="no such table: credentials; nothing ran"):
            kv_get.invoke({"key": JOB_KEY})
    assert recorder.ran == []


@pytest.mark.sqlite_only  # a fault of the SQLite file (PostgreSQL's: test_store_postgres)
def test_not_a_database_fails_closed(make_guard: Callable[..., tg.Guard], tmp_path: Path) -> None:
    (tmp_path / "audit.db").write_bytes(os.urandom(4096))
    guard = make_guard()
    task = guard.task("process-job", job_id="42")
    with pytest.raises(tg.AuditError, match=r"audit database .* not a database"), task:
        pass


def test_audit_error_is_a_toolguard_error_not_a_denial() -> None:
    assert issubclass(tg.AuditError, tg.ToolGuardError)
    assert not issubclass(tg.AuditError, tg.PolicyDenied)


def test_no_active_task_denial_is_audited(guard: tg.Guard, recorder: _Recorder) -> None:
    kv_get, _ = tg.guard(recorder.tools(), guard)
    message = kv_get.invoke(_call("kv_get", {"key": JOB_KEY}))
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    (denied,) = guard.audit.events(kind="denied")
    assert (denied.tool, denied.rule, denied.task_id) == ("kv_get", "task.active", None)
    assert recorder.ran == []
