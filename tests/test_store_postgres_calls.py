"""A guarded call decided and written by the PostgreSQL server in one statement
(toolguard/store/postgres/calls.py): it admits exactly the calls the client's own decision
admits, writes byte for byte the same admission log, hands everything else to that decision,
and spends a task's counters only once the transaction has committed.

Each scenario runs twice on a real server, on two databases with the same clock: once as the
store runs (the server decides the common case), once with the server's statement switched off
(every call decided by the client, the SQLite store's code), and the two trails must agree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import make_config, pg_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard.store.postgres.connection import PgConnection, Rows

pytestmark = pytest.mark.postgres

OUT = "agents:jobs:42:out"
START = 1_767_225_540.0  # 2025-12-31 23:59:00 UTC: a minute before a new UTC day


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _guard(tmp_path: Path, url: str, name: str, clock: Clock, **identity: Any) -> tg.Guard:
    config = make_config(tmp_path / name, store=url, checkpoints=str(tmp_path / f"{name}.cp"))
    runner = config["identities"]["agent-runner"]
    runner["limits"] = identity.get("limits", runner["limits"])
    intent = config["intents"]["process-job"]
    intent["budget"]["per_tool"] = {"kv_set": 6}
    intent["ttl"] = identity.get("ttl", intent["ttl"])
    intent["tools"].append("send_email")  # costs 0.01
    intent["allow"]["write"].append("mailto:*")
    runner["allow"]["write"].append("mailto:*")
    return tg.Guard(config, clock=clock)


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


def _trail(url: str) -> list[tuple[Any, ...]]:
    """What must agree between the two runs (ids, tokens and hashes differ by nature)."""
    return _rows(url, "SELECT kind, tool, decision, reason, rule, ts FROM events ORDER BY seq")


def _log(url: str) -> list[tuple[Any, ...]]:
    return _rows(
        url,
        "SELECT identity, tally, jti IS NULL, issued_at FROM credentials"
        " WHERE tally LIKE 't%' ORDER BY identity, tally",
    )


@pytest.fixture
def second_url(pg_url: str) -> Iterator[str]:
    """Another new database on the same server."""
    name = f"{pg_url.rsplit('/', 1)[1]}_client"
    base = pg_url.rsplit("/", 1)[0]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    yield f"{base}/{name}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def _both(
    tmp_path: Path,
    pg_url: str,
    second_url: str,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[tg.Guard, Clock, str], list[Any]],
    **identity: Any,
) -> tuple[list[Any], list[Any], list[bool]]:
    """``scenario`` as the store runs it, then decided by the client alone: their results,
    and what the server's statement answered for each call of the first run."""
    out = []
    admitted: list[bool] = []  # what the server's statement answered, in the first run
    read_at_commit = PgConnection.read_at_commit

    def counted(self: PgConnection, sql: str, params: Any, then: Any) -> None:
        def seen(rows: Rows) -> None:
            row = rows.fetchone()
            admitted.append(bool(row and row[0]))
            then(Rows(None, [row] if row else []))

        read_at_commit(self, sql, params, seen)

    for url, server in ((pg_url, True), (second_url, False)):
        with monkeypatch.context() as patch:
            if server:
                patch.setattr(PgConnection, "read_at_commit", counted)
            else:
                patch.delattr(PgConnection, "read_at_commit")
            clock = Clock()
            guard = _guard(tmp_path, url, "server" if server else "client", clock, **identity)
            try:
                seen = scenario(guard, clock, url)
            finally:
                guard.close()
        out.append([seen, _trail(url), _log(url)])
    return out[0], out[1], admitted


def _call(guard: tg.Guard, tool: str, key: str = OUT, **extra: Any) -> str:
    try:
        guard.finish(guard.authorize(tool, {"key": key, "value": "v", **extra}))
    except tg.PolicyDenied as exc:
        return f"denied: {exc}"
    return "ran"


def test_the_server_admits_and_logs_exactly_as_the_client_does(
    tmp_path: Path, pg_url: str, second_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolling windows, a new UTC day, a per-minute limit reached and freed, a clock that
    steps back behind the log, writes and reads, a task limit: the same decisions, reasons
    and log."""

    def scenario(guard: tg.Guard, clock: Clock, url: str) -> list[Any]:
        seen: list[Any] = []
        with guard.task("process-job", job_id="42"):
            for i in range(4):  # writes_per_minute: 3 (the fourth is refused)
                clock.now = START + i
                seen.append(_call(guard, "kv_set"))
            clock.now = START + 5
            seen.append(_call(guard, "kv_get", key="agents:jobs:42:in"))  # a read still fits
            clock.now = START + 3  # a clock behind the log's newest row
            seen.append(_call(guard, "kv_get", key="agents:jobs:42:in"))
            clock.now = START + 61.5  # the first two writes left the window; a new UTC day
            seen += (_call(guard, "kv_set"), _call(guard, "kv_set"))
            seen.append(_call(guard, "kv_set"))  # the third had not yet left: refused
            clock.now = START + 64
            seen.append(_call(guard, "kv_set"))
            clock.now = START + 130  # fits the window, not the task's per_tool.kv_set: 6
            seen.append(_call(guard, "kv_set"))
        return seen

    limits = {"writes_per_minute": 3, "requests_per_day": 1000, "cost_per_day": 5.0}
    server, client, admitted = _both(
        tmp_path, pg_url, second_url, monkeypatch, scenario, limits=limits
    )
    assert server == client
    # the log's first call opens it (the client's way); a refusal and the step back, too
    assert admitted.count(True) == 6
    seen, _, log = server
    assert seen[:3] == ["ran"] * 3 and seen[3].startswith("denied: ")
    assert "writes_per_minute" in seen[3] and seen[4:6] == ["ran", "ran"]
    assert seen[6:8] == ["ran", "ran"] and "writes_per_minute" in seen[8]
    assert seen[9] == "ran" and "per_tool.kv_set" in seen[10]
    assert len(log) == 1 + 8  # the anchor and one row per admitted call
    step_back = f"t{round((START + 5) * 1e6):017d}:0000000005:"  # written at the newest time
    assert log[5][1].startswith(step_back)


def test_a_cost_and_the_daily_limits_are_logged_alike(
    tmp_path: Path, pg_url: str, second_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scenario(guard: tg.Guard, clock: Clock, url: str) -> list[Any]:
        seen: list[Any] = []
        with guard.task("process-job", job_id="42"):
            for i in range(3):  # cost_per_day 0.025: the third email is refused
                clock.now = START + 60 + i
                seen.append(_call(guard, "send_email", to="ops@example.com"))
            for i in range(3):  # requests_per_day 4: the third read is refused
                clock.now = START + 70 + i
                seen.append(_call(guard, "kv_get", key="agents:jobs:42:in"))
        return seen

    limits = {"requests_per_day": 4, "requests_per_minute": 100, "cost_per_day": 0.025}
    server, client, admitted = _both(
        tmp_path, pg_url, second_url, monkeypatch, scenario, limits=limits
    )
    assert server == client
    assert admitted == [False, True, False, True, True, False]  # a new log, two refusals
    seen = server[0]
    assert seen[:2] == ["ran", "ran"] and "cost_per_day" in seen[2]
    assert seen[3:5] == ["ran", "ran"] and "requests_per_day" in seen[5]
    assert server[2][2][1].endswith(":0000000000020000")  # 0.02 in micro-units


def test_a_total_wider_than_its_field_is_written_by_the_client(
    tmp_path: Path, pg_url: str, second_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log whose row number reached 10 digits: the server's formatting would not fit (its
    statement admits nothing); the client writes the row as it always has."""

    def scenario(guard: tg.Guard, clock: Clock, url: str) -> list[Any]:
        with guard.task("process-job", job_id="42"):
            seen = [_call(guard, "kv_get", key="agents:jobs:42:in")]
            at = round((START + 1) * 1e6)
            with psycopg.connect(url) as conn:
                conn.execute(
                    "INSERT INTO credentials (identity, tally, issued_at, expires_at)"
                    " VALUES ('agent-runner', %s, 0, 0)",
                    (f"t{at:017d}:9999999999:0000000001:0000000000:0000000000:0000000000000000",),
                )
            clock.now = START + 2
            seen.append(_call(guard, "kv_get", key="agents:jobs:42:in"))
        return seen

    server, client, admitted = _both(tmp_path, pg_url, second_url, monkeypatch, scenario)
    assert server == client
    assert admitted == [False, False]  # a new log, then the total too wide for the server
    assert server[0] == ["ran", "ran"]
    assert server[2][-1][1].split(":")[1] == "10000000000"


_TABLES = ("events", "tasks", "credentials", "revocations", "identity_state", "budgets",
           "checkpoints", "prunes")  # fmt: skip
_STEP = st.sampled_from([0.0, 0.25, 1.0, 7.5, 59.999999, 60.0, 61.0, -3.0, 3600.0, 86_400.0])
_LIMIT = st.integers(min_value=1, max_value=4)


def _empty(*urls: str) -> None:
    """Every row of the store's tables gone (the schema stays): each example starts anew."""
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()
            if found and found[0]:
                conn.execute(f"TRUNCATE {', '.join(_TABLES)}")  # type: ignore[arg-type]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(["kv_set", "kv_get", "send_email"]), _STEP),
        min_size=1,
        max_size=16,
    ),
    limits=st.fixed_dictionaries(
        {},
        optional={
            "writes_per_minute": _LIMIT,
            "requests_per_minute": _LIMIT,
            "requests_per_day": st.integers(min_value=1, max_value=9),
            "cost_per_day": st.sampled_from([0.01, 0.025, 0.03, 5.0]),
        },
    ),
)
def test_any_run_is_admitted_and_logged_alike(
    tmp_path: Path,
    pg_url: str,
    second_url: str,
    monkeypatch: pytest.MonkeyPatch,
    calls: list[tuple[str, float]],
    limits: dict[str, Any],
) -> None:
    """Any sequence of reads, writes and costly calls, the clock moving by fractions of a
    second, whole windows, a step back, an hour, a day, against any identity limits: the
    server's statement and the client's decision agree on every call, reason and log row."""
    _empty(pg_url, second_url)
    where = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"

    def scenario(guard: tg.Guard, clock: Clock, url: str) -> list[Any]:
        seen: list[Any] = []
        with guard.task("process-job", job_id="42"):
            for tool, step in calls:
                clock.now += step
                extra = {"to": "ops@example.com"} if tool == "send_email" else {}
                key = "agents:jobs:42:in" if tool == "kv_get" else OUT
                seen.append(_call(guard, tool, key=key, **extra))
        return seen

    where.mkdir()
    server, client, admitted = _both(
        where, pg_url, second_url, monkeypatch, scenario, limits=limits, ttl="30d"
    )
    assert server == client
    ran = server[0].count("ran")
    assert admitted.count(True) <= ran  # every call the server admitted ran
    if not limits:  # no admission log to open: the server decided every call that ran
        assert admitted.count(True) == ran


def test_a_call_the_server_admits_takes_one_round_trip_and_a_refused_one_more(
    tmp_path: Path, pg_url: str
) -> None:
    clock = Clock()
    guard = _guard(tmp_path, pg_url, "g", clock, limits={"writes_per_minute": 2})
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            writer = pg_writer(guard)
            before = writer.round_trips
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            assert writer.round_trips - before == 1
            before = writer.round_trips
            with pytest.raises(tg.PolicyDenied, match="writes_per_minute"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            # the server's statement (nothing written), then the client's transaction: its
            # read, the window's rows (when a slot frees), the denial with the COMMIT
            assert writer.round_trips - before == 1 + 3
    finally:
        guard.close()
    kinds = [k for k, *_ in _trail(pg_url)]
    assert kinds.count("request") == 2 and kinds.count("denied") == 1


def test_a_commit_that_fails_spends_no_task_counter(tmp_path: Path, pg_url: str) -> None:
    """The server admits the call, the ``COMMIT`` then fails (a deferred check refuses it):
    nothing is written, the tool does not run, and the task's counters (in the guard's
    memory) are not spent, so the task's ``per_tool.kv_set: 6`` still allows six calls."""
    clock = Clock()
    guard = _guard(tmp_path, pg_url, "g", clock, limits={})
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:42:in"}))  # the schema
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(  # type: ignore[call-overload]
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$;"
                    " CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON credentials"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
                    " WHEN (NEW.tool = 'kv_set') EXECUTE FUNCTION refuse()"
                )
            ran = []
            for _ in range(3):
                with pytest.raises(tg.AuditError, match="refused at commit"):
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
                    ran.append(True)
            assert ran == []
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("DROP TRIGGER at_commit ON credentials")
            for _ in range(6):
                guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            with pytest.raises(tg.PolicyDenied, match=r"per_tool\.kv_set"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
    finally:
        guard.close()
    requests = _rows(pg_url, "SELECT COUNT(*) FROM events WHERE kind = 'request'")
    assert requests == [(1 + 6,)]


def test_a_revoked_task_is_refused_and_explained(tmp_path: Path, pg_url: str) -> None:
    """Revoked from another guard (another host): the server's statement sees the revocation
    and admits nothing; the client's decision explains it."""
    clock = Clock()
    guard = _guard(tmp_path, pg_url, "g", clock)
    other = _guard(tmp_path, pg_url, "other", clock)
    try:
        with guard.task("process-job", job_id="42") as task:
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            other.revoke(task_id=task.task_id, reason="incident 7")
            with pytest.raises(tg.PolicyDenied, match="incident 7"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
    finally:
        guard.close()
        other.close()
    kinds = [k for k, *_ in _trail(pg_url)]
    assert kinds.count("request") == 1 and kinds.count("denied") == 1


@pytest.mark.parametrize("through", ["libpq", "psycopg"])
def test_a_read_at_commit_gets_its_rows_once_committed_and_none_when_it_fails(
    pg_url: str, tmp_path: Path, through: str
) -> None:
    """``PgConnection.read_at_commit``: the statement runs last, in the ``COMMIT``'s round
    trip, and its rows reach the callback only once the transaction committed; through libpq's
    pipeline, or through psycopg when a value must be sent by psycopg (here an integer beyond
    64 bits, sent as numeric)."""
    tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp"))).close()
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    big = 2**70 if through == "psycopg" else 7
    seen: list[Any] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO meta (key, value) VALUES ('at-commit', ?)", (str(big),))
        conn.read_at_commit(
            "SELECT value, CAST(? AS NUMERIC) FROM meta WHERE key = 'at-commit'",
            (big,),
            lambda rows: seen.extend(rows.fetchall()),
        )
        assert conn.round_trips == 0 and seen == []
        conn.execute("COMMIT")
        assert seen == [(str(big), big)]
        assert conn.round_trips == 1  # BEGIN, lock, INSERT, the read and COMMIT: one pipeline

        conn.execute("BEGIN IMMEDIATE")  # a failing statement: no rows, nothing committed
        conn.execute("INSERT INTO meta (key, value) VALUES ('at-commit-2', 'x')")
        conn.read_at_commit("SELECT CAST(value AS BIGINT) FROM meta", (), seen.append)
        with pytest.raises(sqlite3.DataError):
            conn.execute("COMMIT")
        conn.execute("ROLLBACK")
        assert len(seen) == 1
        assert conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'at-commit-2'").fetchone() == (
            0,
        )
    finally:
        conn.close()
