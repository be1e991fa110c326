"""The PostgreSQL store on a real server (tests/pg_cluster.py): several hosts on one database,
revocation seen at once, verify, and failing closed. The backend-independent tests run on
both stores through ``make_guard`` (tests/conftest.py, BOTH_BACKENDS)."""

from __future__ import annotations

import copy
import json
import multiprocessing
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import BASE_CONFIG, make_config, pg_writer
from pg_cluster import Cluster
from pg_proxy import Proxy
from toolguard_starlette import verifier_from

import toolguard as tg
from toolguard.cli import main
from toolguard.store import SCHEMA_VERSION
from toolguard.store.postgres.connection import WRITER_LOCK, PgConnection

pytestmark = pytest.mark.postgres

OUT = "agents:jobs:42:out"
JOB = "agents:jobs:42:in"


def _config(tmp_path: Path, url: str, host: str = "a", **overrides: Any) -> dict[str, Any]:
    """A guard of ``host`` on the database at ``url``: its own checkpoints file, one key."""
    identities = {
        **BASE_CONFIG["identities"],
        "agent-runner": {
            **BASE_CONFIG["identities"]["agent-runner"],
            "limits": {"writes_per_minute": 10, "requests_per_day": 100_000},
        },
        "summariser": {**BASE_CONFIG["identities"]["summariser"],
                       "limits": {"requests_per_day": 25}},
    }  # fmt: skip
    intents = {
        **BASE_CONFIG["intents"],
        "process-job": {**BASE_CONFIG["intents"]["process-job"], "budget": {}},
    }
    return make_config(
        tmp_path,
        store=url,
        checkpoints=str(tmp_path / f"host-{host}.checkpoints"),
        identities=identities,
        intents=intents,
        **overrides,
    )


def _events(url: str, where: str = "TRUE") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}").fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


def _host(config: dict[str, Any], out: Any) -> None:
    """One "host": its own guard, 4 threads, each a task of 3 writes and one of 4 reads."""
    guard = tg.Guard(config)
    counts = {"writes": 0, "reads": 0, "errors": []}
    lock = threading.Lock()

    def work() -> None:
        for intent, tool, n, key in (
            ("process-job", "kv_set", 3, "writes"),
            ("summarise-job", "kv_get", 4, "reads"),
        ):
            with guard.task(intent, job_id="42"):
                for _ in range(n):
                    try:
                        permit = guard.authorize(tool, {"key": OUT if key == "writes" else JOB,
                                                        "value": "v"})  # fmt: skip
                    except tg.BudgetExceeded:
                        continue
                    except tg.AuditError as exc:
                        with lock:
                            counts["errors"].append(str(exc))  # type: ignore[attr-defined]
                        continue
                    guard.finish(permit)
                    with lock:
                        counts[key] += 1  # type: ignore[operator]

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    guard.close()
    out.put(counts)


@pytest.mark.slow
def test_three_hosts_spend_exact_budgets_and_the_trail_verifies(
    pg_url: str, tmp_path: Path
) -> None:
    tg.Guard(_config(tmp_path, pg_url)).close()  # creates the schema and the key
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    hosts = [ctx.Process(target=_host, args=(_config(tmp_path, pg_url, h), out)) for h in "abc"]
    for p in hosts:
        p.start()
    results = [out.get(timeout=120) for _ in hosts]
    for p in hosts:
        p.join(60)
        assert p.exitcode == 0
    assert [r["errors"] for r in results] == [[], [], []]  # no AuditError under contention
    assert sum(r["writes"] for r in results) == 10  # writes_per_minute: 36 tried
    assert sum(r["reads"] for r in results) == 25  # requests_per_day: 48 tried
    assert _events(pg_url, "kind = 'request' AND tool = 'kv_set'") == 10
    assert _events(pg_url, "kind = 'request' AND tool = 'kv_get'") == 25

    def verify(*extra: str) -> Any:
        return CliRunner().invoke(main, ["audit", "verify", "--db", pg_url, *extra])

    one = verify("--checkpoints", str(tmp_path / "host-a.checkpoints"))
    assert one.exit_code == 0, one.output  # the other hosts' events: unanchored, a note
    files = [str(tmp_path / f"host-{h}.checkpoints") for h in "abc"]
    every = verify(*(a for f in files for a in ("--checkpoints", f)), "--json")
    assert every.exit_code == 0, every.output
    report = json.loads(every.output)
    written = sum(len(Path(f).read_text().splitlines()) for f in files)
    assert report["ok"] and report["checkpoints"] == written >= 3  # each host wrote some
    assert report["damage"] == []
    for command in (["tasks"], ["tail", "-n", "5"], ["denied"], ["summary"], ["export"]):
        viewed = CliRunner().invoke(main, ["audit", *command, "--db", pg_url, "--json"])
        assert viewed.exit_code == 0, (command, viewed.output)
        assert viewed.output.strip()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE events SET tool = 'kv_delete' WHERE seq = 5")
    bad = verify("--checkpoints", str(tmp_path / "host-a.checkpoints"))
    assert bad.exit_code == 1, bad.output
    assert "seq 5" in bad.output


def test_a_revoke_on_one_host_is_seen_at_once_by_a_verifier_on_another(
    pg_url: str, tmp_path: Path
) -> None:
    host_a = tg.Guard(_config(tmp_path, pg_url, "a"))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(host_a.keys.jwks()))
    service = verifier_from(
        jwks=jwks, store=pg_url, issuer="toolguard-test", audience="kv-service"
    )  # host B: a service with read access to the database only
    try:
        with host_a.task("process-job", job_id="42") as task:
            permit = host_a.authorize("kv_set", {"key": OUT, "value": "v"})
            token = permit.credential.token
            host_a.finish(permit)
            assert service.verify(token)["tool"] == "kv_set"
            host_a.revoke(task_id=task.task_id, reason="incident 7")
            with pytest.raises(tg.CredentialRevoked, match="incident 7"):
                service.verify(token)
        assert _events(pg_url, "kind = 'revoke'") == 1
        # the command line, from a third "host": revoke and re-enable an identity
        with host_a.task("process-job", job_id="43"):
            permit = host_a.authorize("kv_set", {"key": "agents:jobs:43:out", "value": "v"})
            host_a.finish(permit)
            revoke = CliRunner().invoke(
                main,
                ["revoke", "--identity", "agent-runner", "--disable", "--reason", "incident 8",
                 "--db", pg_url],
            )  # fmt: skip
            assert revoke.exit_code == 0, revoke.output
            with pytest.raises(tg.CredentialRevoked, match="incident 8"):
                service.verify(permit.credential.token)
        with pytest.raises(tg.PolicyDenied, match="disabled"):
            host_a.task("process-job", job_id="44").start()
        enable = CliRunner().invoke(
            main, ["enable", "agent-runner", "--reason", "reviewed", "--db", pg_url]
        )
        assert enable.exit_code == 0, enable.output
        with host_a.task("process-job", job_id="45"):
            pass
    finally:
        host_a.close()


# -- failing closed ------------------------------------------------------------------------------


def _admin(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def test_a_killed_connection_fails_the_call_closed_and_the_next_one_reconnects(
    pg_url: str, tmp_path: Path
) -> None:
    guard = tg.Guard(_config(tmp_path, pg_url))
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            guard.store.flush()
            before = _events(pg_url)
            _admin(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            with pytest.raises(tg.AuditError, match="could not be written"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            assert _events(pg_url) == before  # nothing half-written, the tool did not run
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
    finally:
        guard.close()
    assert _events(pg_url, "kind = 'request'") == 2


def test_a_connection_killed_inside_its_transaction_writes_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    guard = tg.Guard(_config(tmp_path, pg_url))
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
        guard.store.flush()
        before = _events(pg_url)
        failures: list[BaseException] = []
        with psycopg.connect(pg_url, autocommit=True) as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))

            def call() -> None:
                try:
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
                except BaseException as exc:
                    failures.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            deadline = time.monotonic() + 5
            killed = 0
            while not killed and time.monotonic() < deadline:  # the call waits on the lock
                row = holder.execute(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " AND pid <> pg_backend_pid()"
                ).fetchone()
                killed = int(row[0]) if row else 0
            caller.join(10)
            holder.execute("ROLLBACK")
        assert killed == 1
        assert len(failures) == 1 and isinstance(failures[0], tg.AuditError), failures
        assert _events(pg_url) == before
    guard.close()


def test_a_held_writer_lock_fails_the_call_within_busy_timeout(pg_url: str, tmp_path: Path) -> None:
    guard = tg.Guard(_config(tmp_path, pg_url, busy_timeout="0.3s"))
    try:
        with guard.task("process-job", job_id="42"):
            guard.store.flush()
            before = _events(pg_url)
            with psycopg.connect(pg_url, autocommit=True) as holder:
                holder.execute("BEGIN")
                holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
                started = time.monotonic()
                with pytest.raises(tg.AuditError, match="lock"):
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
                assert time.monotonic() - started < 0.3 + 1.0
                holder.execute("ROLLBACK")
            assert _events(pg_url) == before
    finally:
        guard.close()


def test_a_statement_timeout_fails_closed(pg_url: str, tmp_path: Path) -> None:
    guard = tg.Guard(_config(tmp_path, pg_url, busy_timeout="0.3s"))
    try:
        with guard.task("process-job", job_id="42"):
            guard.store.flush()
            before = _events(pg_url)
            with psycopg.connect(pg_url, autocommit=True) as holder:
                holder.execute("BEGIN")
                holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # blocks inserts
                with pytest.raises(tg.AuditError, match="could not be written"):
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
                holder.execute("ROLLBACK")
            assert _events(pg_url) == before
    finally:
        guard.close()


def test_a_read_only_role_cannot_run_a_tool(pg_url: str, tmp_path: Path) -> None:
    tg.Guard(_config(tmp_path, pg_url)).close()
    _admin(pg_url, "DROP ROLE IF EXISTS tg_reader")
    _admin(pg_url, "CREATE ROLE tg_reader LOGIN")
    _admin(pg_url, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO tg_reader")
    reader_url = pg_url.replace("postgres@", "tg_reader@")
    guard = tg.Guard(_config(tmp_path, reader_url))
    try:
        with pytest.raises(tg.AuditError, match="permission denied"):
            guard.task("process-job", job_id="42").start()
    finally:
        guard.close()
        _admin(pg_url, "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM tg_reader")
        _admin(pg_url, "DROP ROLE tg_reader")
    assert _events(pg_url) == 0


@pytest.mark.slow
def test_a_stopped_server_fails_calls_closed_and_the_trail_stays_whole(
    pg_url: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    if pg_cluster.data is None:
        pytest.skip("the server of $TOOLGUARD_TEST_PG is not ours to stop")
    guard = tg.Guard(_config(tmp_path, pg_url, busy_timeout="0.5s"))
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
        guard.store.flush()
        pg_cluster.stop()
        try:
            started = time.monotonic()
            with pytest.raises(tg.AuditError):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            assert time.monotonic() - started < 0.5 + 2.5  # libpq waits 2 s at least
        finally:
            pg_cluster.start()
        guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
    guard.close()
    # the task end after the restart wrote its checkpoint: the pool's idle connections the
    # restart dropped were discarded, not tried one by one until the read gave up
    assert (tmp_path / "host-a.checkpoints").read_text().strip()
    assert _events(pg_url, "kind = 'request'") == 2
    result = CliRunner().invoke(
        main,
        ["audit", "verify", "--db", pg_url, "--checkpoints", str(tmp_path / "host-a.checkpoints")],
    )
    assert result.exit_code == 0, result.output


def test_db_migrate_creates_the_schema_for_operators(pg_url: str) -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--db", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["schema_version"] == SCHEMA_VERSION
    assert _events(pg_url) == 0  # the tables exist, empty
    again = CliRunner().invoke(main, ["db", "migrate", "--db", pg_url])
    assert again.exit_code == 0 and f"schema version {SCHEMA_VERSION}" in again.output


def test_audit_replay_reads_a_postgresql_trail_given_by_url(pg_url: str, tmp_path: Path) -> None:
    # --db takes a URL as every command does (a path type would fold its "//")
    with tg.Guard(_config(tmp_path, pg_url)) as guard, guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
    stricter = copy.deepcopy(_config(tmp_path, "unused.db"))  # _config shares BASE_CONFIG's
    stricter["intents"]["process-job"]["allow"]["write"] = ["agents:jobs:{job_id}:final"]
    new = tmp_path / "new.json"
    new.write_text(json.dumps(stricter))
    result = CliRunner().invoke(
        main, ["audit", "replay", "--config", str(new), "--db", pg_url, "--json"]
    )
    assert result.exit_code == 1, result.output  # the write would now be denied
    assert [c["tool"] for c in json.loads(result.stdout)["newly_denied"]] == ["kv_set"]


@pytest.fixture
def proxy(pg_url: str) -> Iterator[Proxy]:
    """The test's database through a proxy that can lose the reply to a ``COMMIT``."""
    made = Proxy(pg_url)
    yield made
    made.close()


def _writer_port(guard: tg.Guard) -> int:
    """The client port of the guard's writer connection (the proxy's faults are armed for it
    alone, so a read on another connection never takes them)."""
    with socket.fromfd(pg_writer(guard).raw.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as s:
        return int(s.getsockname()[1])


def _calls(url: str) -> list[tuple[Any, ...]]:
    """``(kind, outcome)`` of every ``request`` and ``outcome`` row, in the trail's order."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT kind, outcome FROM events WHERE kind IN ('request', 'outcome') ORDER BY seq"
        ).fetchall()


def _count(url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


def test_a_commit_whose_reply_is_lost_is_checked_never_written_twice(
    pg_url: str, tmp_path: Path, proxy: Proxy
) -> None:
    """The server commits and the connection drops before its reply arrives: the guard cannot
    know whether the queued outcomes and the task end in that transaction were written. The
    call fails closed (its tool does not run); the next transaction, holding the writer lock
    (so the lost one has ended either way), writes only what the server does not have: no
    outcome twice, no task end twice, and the trail still verifies."""
    guard = tg.Guard(_config(tmp_path, proxy.url()))
    try:
        task = guard.task("process-job", job_id="42")
        with (
            pytest.raises(tg.AuditError, match=r"end of task \w+ could not be recorded"),
            task,
        ):
            first = guard.authorize("kv_set", {"key": OUT, "value": "v"})
            guard.finish(first)  # its outcome rides with the next call's transaction
            proxy.lose_next_commit(on=_writer_port(guard))
            with pytest.raises(tg.AuditError, match="server may have written it") as lost:
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            assert "could not be written, or not confirmed" in str(lost.value)
            assert proxy.lost == 1
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            guard.store.flush()
            proxy.lose_next_commit(on=_writer_port(guard))
        # the task end's reply was lost: it is kept and written with the next transaction
        assert proxy.lost == 2
        guard.store.flush()
    finally:
        guard.close()
    outcomes = "SELECT COUNT(*) FROM events WHERE kind = 'outcome' AND jti = %s"
    assert _count(pg_url, outcomes, first.credential.jti) == 1
    # the call whose reply was lost did commit its request: its outcome says it did not run
    with psycopg.connect(pg_url) as conn:
        calls = conn.execute(
            "SELECT r.jti, o.outcome, o.rule FROM events r LEFT JOIN events o"
            " ON o.kind = 'outcome' AND o.jti = r.jti WHERE r.kind = 'request' ORDER BY r.seq"
        ).fetchall()
        live = conn.execute("SELECT jti FROM credentials WHERE jti IS NOT NULL").fetchall()
    assert [c[1:] for c in calls] == [("ok", None), ("not-run", "store.commit"), ("ok", None)]
    assert (calls[1][0],) not in live  # its credential row is gone, as for any call not run
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE kind = 'task_end'") == 1
    assert (
        _count(
            pg_url,
            "SELECT COUNT(*) FROM revocations WHERE scope = 'task' AND value = %s",
            task.task_id,
        )
        == 1
    )
    result = CliRunner().invoke(main, ["audit", "verify", "--db", pg_url])
    assert result.exit_code == 0, result.output


def test_a_transaction_that_never_reached_the_server_leaves_no_outcome_of_its_own(
    pg_url: str, tmp_path: Path, proxy: Proxy
) -> None:
    """The other side of a lost reply: the request with its ``COMMIT`` never arrived, so
    nothing of it was written. The lookup finds the call's request missing and writes no
    ``not-run`` outcome for it (an outcome without its request would break the trail's
    pairs); the earlier call's queued outcome it carried is written once."""
    guard = tg.Guard(_config(tmp_path, proxy.url()))
    try:
        with guard.task("process-job", job_id="42"):
            first = guard.authorize("kv_set", {"key": OUT, "value": "v"})
            guard.finish(first)
            proxy.drop_next_request(on=_writer_port(guard))
            with pytest.raises(tg.AuditError, match="could not be written"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            assert proxy.lost == 1
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
    finally:
        guard.close()
    assert _calls(pg_url) == [("request", None), ("outcome", "ok")] * 2
    result = CliRunner().invoke(main, ["audit", "verify", "--db", pg_url])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("fault", ["reply lost", "request lost"])
def test_a_task_start_whose_commit_is_unconfirmed_never_stays_active(
    pg_url: str, tmp_path: Path, proxy: Proxy, fault: str
) -> None:
    """A task start whose ``COMMIT`` got no reply: the caller gets ``AuditError`` and never
    runs the task. If the server had recorded it, the next transaction ends it (``error``,
    rule ``store.commit``, its revocation written), so it never shows as active; if not,
    nothing is written for it."""
    guard = tg.Guard(_config(tmp_path, proxy.url()))
    try:
        with guard.task("process-job", job_id="7"):  # the schema and the writer
            guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:7:in"}))
        lost = guard.task("process-job", job_id="42")
        if fault == "reply lost":
            proxy.lose_next_commit(on=_writer_port(guard))
        else:  # the second request: the first reads whether the identity is disabled
            proxy.drop_next_request(on=_writer_port(guard), after=1)
        with pytest.raises(tg.AuditError, match="could not be written"), lost:
            pass
        assert proxy.lost == 1
        with guard.task("process-job", job_id="8"):
            guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:8:in"}))
    finally:
        guard.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT status FROM tasks WHERE task_id = %s", (lost.task_id,)
        ).fetchall()
        ends = conn.execute(
            "SELECT outcome, rule FROM events WHERE kind = 'task_end' AND task_id = %s",
            (lost.task_id,),
        ).fetchall()
        revoked = conn.execute(
            "SELECT COUNT(*) FROM revocations WHERE scope = 'task' AND value = %s",
            (lost.task_id,),
        ).fetchone()
    if fault == "reply lost":
        assert rows == [("error",)] and ends == [("error", "store.commit")]
        assert revoked == (1,)
    else:
        assert rows == [] and ends == [] and revoked == (0,)
    assert _count(pg_url, "SELECT COUNT(*) FROM tasks WHERE status = 'active'") == 0
    result = CliRunner().invoke(main, ["audit", "verify", "--db", pg_url])
    assert result.exit_code == 0, result.output


class _ThenLock:
    """The store's queue lock, running ``first`` once before ``end_task`` takes it to put its
    failed end back (another thread's write, between the failure and the put-back)."""

    def __init__(self, real: Any, first: Callable[[], None]) -> None:
        self.real = real
        self.first: Callable[[], None] | None = first
        self.fired = False

    def __enter__(self) -> Any:
        if self.first is not None and sys._getframe(1).f_code.co_name == "end_task":
            first, self.first = self.first, None
            first()
            self.fired = True
        return self.real.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.real.__exit__(*exc)


def test_a_task_end_put_back_after_another_threads_write_is_still_looked_up(
    pg_url: str, tmp_path: Path, proxy: Proxy
) -> None:
    """The task end's reply is lost; before it is put back in the queue, another thread
    writes (and replaces the broken connection). The end itself carries the doubt, so the
    next transaction still looks it up: one ``task_end``, one revocation."""
    guard = tg.Guard(_config(tmp_path, proxy.url()))
    try:
        with guard.task("process-job", job_id="8"):
            late = guard.authorize("kv_get", {"key": "agents:jobs:8:in"})
        task = guard.task("process-job", job_id="42")

        def another_thread_writes() -> None:
            guard.finish(late)
            writer = threading.Thread(target=guard.store.flush)
            writer.start()
            writer.join()

        store: Any = guard.store
        store._pending_lock = hook = _ThenLock(store._pending_lock, another_thread_writes)
        with pytest.raises(tg.AuditError, match="could not be recorded"), task:
            guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:42:in"}))
            guard.store.flush()
            proxy.lose_next_commit(on=_writer_port(guard))
        assert proxy.lost == 1 and hook.fired
        guard.store.flush()
    finally:
        guard.close()
    for sql in (
        "SELECT COUNT(*) FROM events WHERE kind = 'task_end' AND task_id = %s",
        "SELECT COUNT(*) FROM revocations WHERE scope = 'task' AND value = %s",
    ):
        assert _count(pg_url, sql, task.task_id) == 1, sql


def test_a_settlement_the_lost_commit_wrote_still_counts_toward_the_task(
    pg_url: str, tmp_path: Path, proxy: Proxy
) -> None:
    """A call reported a cost above its estimate (its outcome settles +0.8 of a ``max_cost``
    of 1.0) and the transaction carrying that outcome lost its reply after committing. The
    outcome is not written again, and the task's counters (rolled back in memory with the
    lost transaction) are counted again from the trail: the next call is the last one that
    fits, and the task never spends past its ``max_cost``."""
    config = _config(tmp_path, proxy.url())
    config["intents"]["process-job"]["budget"] = {"max_cost": 1.0}
    config["tools"]["kv_set"]["cost"] = 0.1
    guard = tg.Guard(config)
    ran = 0
    try:
        with guard.task("process-job", job_id="42"):
            first = guard.authorize("kv_set", {"key": OUT, "value": "v"})
            first.actual_cost = 0.9
            guard.finish(first)
            proxy.lose_next_commit(on=_writer_port(guard))
            with pytest.raises(tg.AuditError, match="server may have written it"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            for _ in range(12):
                try:
                    guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
                except tg.PolicyDenied as denied:
                    assert "max_cost" in str(denied)
                    break
                ran += 1
    finally:
        guard.close()
    assert ran == 1  # 0.9 + 0.1: the budget is full
    with psycopg.connect(pg_url) as conn:
        spent = conn.execute(
            "SELECT SUM(COALESCE(o.cost, r.cost)) FROM events r JOIN events o"
            " ON o.kind = 'outcome' AND o.jti = r.jti"
            " WHERE r.kind = 'request' AND o.outcome <> 'not-run'"
        ).fetchone()
    assert spent is not None and spent[0] == pytest.approx(1.0)


def test_an_interrupted_commit_is_in_doubt_for_that_transaction_only(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``KeyboardInterrupt`` while the call's ``COMMIT`` is on its way (here before anything
    reached the server): what it carried is looked up before being written (an earlier call's
    outcome, written once) and the call's own ``not-run`` outcome is not written (its request
    is not there). The next transaction starts without the doubt: when it fails before its
    ``COMMIT`` (the writer lock held elsewhere), its error is a plain one."""
    guard = tg.Guard(_config(tmp_path, pg_url, busy_timeout=0.3))
    send = PgConnection._send
    interrupted: list[bool] = []

    def interrupt(self: PgConnection, sql: Any, params: Any, *, commit: str = "") -> Any:
        if commit and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return send(self, sql, params, commit=commit)

    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            with monkeypatch.context() as patch:
                patch.setattr(PgConnection, "_send", interrupt)
                with pytest.raises(KeyboardInterrupt):
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
            assert interrupted == [True]
            with psycopg.connect(pg_url, autocommit=True) as holder:
                holder.execute("BEGIN")
                holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
                with pytest.raises(tg.AuditError) as failed:
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
                holder.execute("ROLLBACK")
            assert "writer lock was not granted" in str(failed.value)
            assert "may have written" not in str(failed.value)
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
    finally:
        guard.close()
    assert _calls(pg_url) == [("request", None), ("outcome", "ok")] * 2
