"""The PostgreSQL writer's round trips: a guarded call's transaction reaches the server in one
request (queued statements ride with the next read or the COMMIT, libpq's pipeline mode; the
call itself is one statement, tests/test_store_postgres_calls.py), and queueing keeps
every promise: an error of a queued statement fails the transaction (nothing of it stays), a
queued outcome the server refuses is still replaced alone, the writer lock still bounds waits.
Also: guards starting together on a new database all get its schema.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import make_config, pg_writer

import toolguard as tg
from toolguard.chain import Event
from toolguard.cli import main
from toolguard.store.postgres.connection import PgConnection
from toolguard.store.postgres.schema import create_schema
from toolguard.store.sqlite.core import PendingOutcome

pytestmark = pytest.mark.postgres

OUT = "agents:jobs:42:out"


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


def test_a_guarded_call_is_one_round_trip(pg_url: str, tmp_path: Path) -> None:
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            writer = pg_writer(guard)
            before = writer.round_trips
            for _ in range(4):  # each call also writes the previous call's outcome
                guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            per_call = (writer.round_trips - before) / 4
    finally:
        guard.close()
    # BEGIN + lock + the previous outcome (the server reads the chain head and hashes) + the
    # call's statement (revocation and budgets read, request event, credential) + COMMIT
    assert per_call == 1
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE kind = 'request'") == 5
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE kind = 'outcome'") == 5
    verified = CliRunner().invoke(
        main, ["audit", "verify", "--db", pg_url, "--checkpoints", str(tmp_path / "cp")]
    )
    assert verified.exit_code == 0, verified.output


def test_a_failed_queued_statement_fails_the_commit_and_keeps_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    tg.Guard(
        make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp"))
    ).close()  # the schema
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO meta (key, value) VALUES ('pipeline-test', '1')")
        conn.execute("INSERT INTO meta (key, value) VALUES ('pipeline-test', '2')")  # duplicate
        assert conn.round_trips == 0  # all queued
        with pytest.raises(sqlite3.IntegrityError, match="duplicate key"):
            conn.execute("COMMIT")
        conn.execute("ROLLBACK")
        assert conn.round_trips == 2
        # the connection is usable again, and the first INSERT did not stay
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'pipeline-test'").fetchone()
        conn.execute("COMMIT")
        assert row == (0,)
    finally:
        conn.close()


def test_a_rollback_before_anything_was_sent_sends_nothing(pg_url: str, tmp_path: Path) -> None:
    tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp"))).close()
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO meta (key, value) VALUES ('pipeline-test', '1')")
        conn.execute("ROLLBACK")
        assert conn.round_trips == 0
        assert conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'pipeline-test'").fetchone() == (
            0,
        )
    finally:
        conn.close()
    assert _count(pg_url, "SELECT COUNT(*) FROM meta WHERE key = 'pipeline-test'") == 0


@pytest.fixture
def unescaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events keep a NUL: PostgreSQL refuses it. The store escapes NUL before hashing
    (toolguard.text.storable), so no real event carries one; this stands for any value the
    server refuses that the normalization did not foresee."""
    monkeypatch.setattr("toolguard.chain.storable", lambda value: value)


@pytest.mark.usefixtures("unescaped")
def test_a_queued_outcome_the_server_refuses_is_dropped_alone_and_the_call_runs(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42") as task:
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            guard.store.flush()
            # PostgreSQL text cannot hold NUL: unescaped, this outcome can never be written
            guard.store.queue_outcome(
                PendingOutcome(
                    event=Event(
                        ts=1.0,
                        kind="outcome",
                        task_id=task.task_id,
                        outcome="error",
                        error="bad\x00value",
                    )
                )
            )
            with caplog.at_level(logging.WARNING, logger="toolguard"):
                guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
                guard.store.flush()
    finally:
        guard.close()
    assert "could not be written" in caplog.text
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE kind = 'request'") == 2
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE error LIKE 'bad%'") == 0


@pytest.mark.usefixtures("unescaped")
def test_a_screened_outcome_the_server_still_refuses_fails_one_call_closed_then_is_dropped(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """The worst case of sending a queued outcome with the next read: the server refuses it
    there, so the whole transaction fails (AuditError, the tool does not run, nothing written);
    the next transaction sends each item at once, and the bad one is dropped as on SQLite."""
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42") as task:
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            guard.store.flush()
            before = _count(pg_url, "SELECT COUNT(*) FROM events")
            monkeypatch.setattr(PgConnection, "screened", lambda self: True)  # screening misses
            guard.store.queue_outcome(
                PendingOutcome(
                    event=Event(
                        ts=1.0,
                        kind="outcome",
                        task_id=task.task_id,
                        outcome="error",
                        error="bad\x00value",
                    )
                )
            )
            with pytest.raises(tg.AuditError, match="could not be written"):
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            assert _count(pg_url, "SELECT COUNT(*) FROM events") == before
            with caplog.at_level(logging.WARNING, logger="toolguard"):
                guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
                guard.store.flush()
            assert "could not be written" in caplog.text
            writer = pg_writer(guard)
            trips = writer.round_trips
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            assert writer.round_trips - trips == 1  # back to queueing after a commit
    finally:
        guard.close()
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE kind = 'request'") == 3
    assert _count(pg_url, "SELECT COUNT(*) FROM events WHERE error LIKE 'bad%'") == 0


@pytest.mark.parametrize(
    ("value", "screened"),
    [
        ("plain text", True),
        ("é ünïcode", "if UTF8"),
        ("nul\x00inside", False),
        ("lone \ud800 surrogate", False),
        (2**63 - 1, True),
        (2**63, False),
        (1.5e308, True),
        (None, True),
        (b"bytes", False),
    ],
)
def test_screening_sends_at_once_what_postgresql_might_refuse(
    pg_url: str, value: Any, screened: bool | str
) -> None:
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    if screened == "if UTF8":  # a SQL_ASCII or LATIN1 database may refuse it
        screened = conn.raw.info.parameter_status("server_encoding") == "UTF8"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        assert conn.screened() is screened
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_a_savepoint_released_before_anything_was_sent_is_never_sent(
    pg_url: str, tmp_path: Path
) -> None:
    tg.Guard(make_config(tmp_path, store=pg_url)).close()
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT pending")
        conn.execute("INSERT INTO meta (key, value) VALUES ('pipeline-a', '1')")
        conn.execute("RELEASE pending")
        assert [text.split()[0] for text, _ in conn._queue] == ["BEGIN", "SELECT", "INSERT"]
        conn.execute("SAVEPOINT pending")
        conn.sync()  # sent: its RELEASE must be sent too
        conn.execute("INSERT INTO meta (key, value) VALUES ('pipeline-b', '1')")
        conn.execute("RELEASE pending")
        assert [text.split()[0] for text, _ in conn._queue] == ["INSERT", "RELEASE"]
        conn.execute("COMMIT")
        assert conn.round_trips == 2
    finally:
        conn.close()
    assert _count(pg_url, "SELECT COUNT(*) FROM meta WHERE key LIKE 'pipeline-%'") == 2


def test_guards_starting_together_on_a_new_database_all_get_the_schema(pg_url: str) -> None:
    """Each waits for the writer lock; those that waited resolve ``meta`` from a catalog cache
    of before the wait and try to create it again: they must see the schema, not fail."""
    conns = [psycopg.connect(pg_url, autocommit=True) for _ in range(6)]
    barrier = threading.Barrier(len(conns))
    results: list[object] = []

    def start(conn: psycopg.Connection[Any]) -> None:
        barrier.wait()
        try:
            results.append(create_schema(conn, "test"))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=start, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in conns:
        c.close()
    assert sorted(map(repr, results)) == ["False"] * 5 + ["True"], results
    assert _count(pg_url, "SELECT COUNT(*) FROM meta WHERE key = 'schema_version'") == 1
