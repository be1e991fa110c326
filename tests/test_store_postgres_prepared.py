"""The PostgreSQL writer's hot path: prepared statements sent through libpq directly, events
appended (chain head read, hash computed) by the server, and no psycopg error (which keeps the
connection's parameters, its password among them) reachable from any error the store raises.
"""

from __future__ import annotations

import sqlite3
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner
from conftest import make_config, pg_writer
from pg_cluster import _free_port

import toolguard as tg
from toolguard.chain import GENESIS, HASHED_FIELDS, row_values, values_hash
from toolguard.cli import main
from toolguard.store.postgres.connection import PgConnection

pytestmark = pytest.mark.postgres

OUT = "agents:jobs:42:out"
PASSWORD = "Sup3r-Secret-PW"
TRICKY = 'é—中文 🙂 "quoted" \\ back/slash'


def _rows(url: str) -> list[dict[str, Any]]:
    columns = [*HASHED_FIELDS, "prev_hash", "hash"]
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM events ORDER BY seq").fetchall()  # type: ignore[arg-type]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _verify(url: str, checkpoints: Path) -> None:
    result = CliRunner().invoke(
        main, ["audit", "verify", "--db", url, "--checkpoints", str(checkpoints)]
    )
    assert result.exit_code == 0, result.output


def _with_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def test_events_the_server_hashes_are_byte_for_byte_what_verify_recomputes(
    pg_url: str, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "cp"
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(checkpoints)))
    try:
        with guard.task("process-job", job_id="42"):
            for value in (TRICKY, "", "x" * 2000, "plain"):
                guard.finish(guard.authorize("kv_get", {"key": f"agents:jobs:42:{value}"}))
            assert pg_writer(guard).server_hash
    finally:
        guard.close()
    rows = _rows(pg_url)
    assert len(rows) >= 10
    assert any("é—中文 🙂" in str(r["resources"]) for r in rows)  # non-ASCII text is hashed
    prev = GENESIS
    for seq, row in enumerate(rows, start=1):
        assert row["seq"] == seq
        assert row["prev_hash"] == prev
        assert row["hash"] == values_hash(prev, row_values(row))  # the client's own hash
        prev = row["hash"]
    _verify(pg_url, checkpoints)


def test_the_server_continues_the_chain_from_a_prune_cut(pg_url: str, tmp_path: Path) -> None:
    checkpoints = tmp_path / "cp"
    clock = [1_790_000_000.0]
    guard = tg.Guard(
        make_config(tmp_path, store=pg_url, checkpoints=str(checkpoints)), clock=lambda: clock[0]
    )
    try:
        with guard.task("process-job", job_id="1"):
            guard.finish(guard.authorize("kv_set", {"key": "agents:jobs:1:out", "value": "old"}))
        clock[0] += 86400.0
        result = guard.audit.prune(before=clock[0] - 1.0)  # every event so far
        assert result.removed > 0
        assert _rows(pg_url) == []
        with guard.task("process-job", job_id="2"):
            guard.finish(guard.authorize("kv_set", {"key": "agents:jobs:2:out", "value": "new"}))
    finally:
        guard.close()
    rows = _rows(pg_url)
    assert rows[0]["seq"] == result.before_seq
    assert rows[0]["prev_hash"] == result.head_hash
    assert rows[0]["hash"] == values_hash(result.head_hash, row_values(rows[0]))
    _verify(pg_url, checkpoints)


def test_statements_are_prepared_once_and_again_after_a_reconnect(
    pg_url: str, tmp_path: Path
) -> None:
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42"):
            for _ in range(3):
                guard.finish(guard.authorize("kv_get", {"key": OUT}))
            first = pg_writer(guard)
            names = set(first._prepared.values())
            assert names  # the hot path's statements are prepared...
            for _ in range(3):
                guard.finish(guard.authorize("kv_get", {"key": OUT}))
            assert set(first._prepared.values()) == names  # ...once
            on_server = first.raw.execute(
                "SELECT name FROM pg_prepared_statements WHERE name LIKE 'tg\\_%'"
            ).fetchall()
            assert {r[0].encode() for r in on_server} >= names
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            with pytest.raises(tg.AuditError, match="could not be written"):
                guard.authorize("kv_get", {"key": OUT})
            guard.finish(guard.authorize("kv_get", {"key": OUT}))  # reconnected
            second = pg_writer(guard)
            assert second is not first
            assert second._prepared  # prepared again on the new connection
    finally:
        guard.close()
    _verify(pg_url, tmp_path / "cp")


def test_values_only_psycopg_can_send_still_go_through_psycopg(pg_url: str) -> None:
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        sql = "SELECT ? AS a, ? AS b, ? AS c, CAST(? AS TEXT) AS d, ? + 0 AS e"
        fast = conn.execute(sql, (7, 1.5, "é 🙂", None, 2**40)).fetchall()
        assert fast == [(7, 1.5, "é 🙂", None, 2**40)]
        assert conn._prepared  # sent prepared, through libpq
        big = conn.execute(sql, (7, 1.5, "é 🙂", None, 2**70)).fetchall()
        assert big == [(7, 1.5, "é 🙂", None, 2**70)]  # numeric: psycopg's path
        special = conn.execute(
            "SELECT CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION), ? AS x",
            (float("inf"), -0.0, True),
        ).fetchall()
        assert special == [(float("inf"), -0.0, 1)]
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        found = todo.pop()
        if found is None or any(found is s for s in seen):
            continue
        seen.append(found)
        todo += [found.__cause__, found.__context__]
    return seen


def _assert_clean(exc: BaseException) -> None:
    for found in _chain(exc):
        assert not isinstance(found, psycopg.Error), f"{type(found)} is chained to {exc!r}"
        assert PASSWORD not in str(found)
        assert PASSWORD not in repr(found)
    assert PASSWORD not in "".join(traceback.format_exception(exc))


def test_no_error_of_the_store_carries_the_password_or_a_psycopg_error(
    pg_url: str, tmp_path: Path
) -> None:
    # the server is unreachable
    parts = urlsplit(_with_password(pg_url))
    gone = urlunsplit(
        (parts.scheme, f"u:{PASSWORD}@127.0.0.1:{_free_port()}", "/db", "connect_timeout=1", "")
    )
    guard = tg.Guard(make_config(tmp_path, store=gone, checkpoints=str(tmp_path / "gone.cp")))
    with pytest.raises(tg.AuditError) as unreachable:
        guard.store.open()
    _assert_clean(unreachable.value)
    guard.close()

    url = _with_password(pg_url)  # the test server trusts any password
    guard = tg.Guard(make_config(tmp_path, store=url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_set", {"key": OUT, "value": "v"}))
            guard.store.flush()
            # a read the server refuses
            with pytest.raises(Exception) as refused:
                guard.store.conn.execute("SELECT * FROM no_such_table")
            _assert_clean(refused.value)
            # the connection dropped inside the writer's transaction
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            with pytest.raises(tg.AuditError) as dropped:
                guard.authorize("kv_set", {"key": OUT, "value": "v"})
            _assert_clean(dropped.value)
            # the writer lock held elsewhere: a timeout inside the pipeline
            guard.store.busy_timeout = 0.2
            writer = guard.store._writer_conn()
            writer.raw.execute("SET lock_timeout = 200")
            with psycopg.connect(pg_url, autocommit=True) as holder:
                holder.execute("BEGIN")
                holder.execute("SELECT pg_advisory_xact_lock(%s)", (0x746F6F6C67756172,))
                with pytest.raises(tg.AuditError, match="writer lock") as locked:
                    guard.authorize("kv_set", {"key": OUT, "value": "v"})
                holder.execute("ROLLBACK")
            _assert_clean(locked.value)
    finally:
        guard.close()


def test_past_the_prepared_statements_cap_statements_are_sent_unnamed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolguard.store.postgres import connection

    monkeypatch.setattr(connection, "_MAX_PREPARED", 1)
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    try:
        conn.execute("BEGIN IMMEDIATE")  # BEGIN takes the one name; the lock and the rest not
        for n in range(3):
            assert conn.execute("SELECT ? + 1, ?", (n, f"n{n}")).fetchall() == [(n + 1, f"n{n}")]
        assert len(conn._prepared) == 1
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_failed_pipeline_leaves_the_connection_usable_and_prepares_nothing_half(
    pg_url: str,
) -> None:
    conn = PgConnection(psycopg.connect(pg_url, autocommit=True), lock_timeout=5.0, pipelined=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            conn.execute("SELECT * FROM no_such_table WHERE x = ?", (1,))
        conn.execute("ROLLBACK")
        assert not conn.broken
        assert all(b"no_such_table" not in k[0].encode() for k in conn._prepared)
        conn.execute("BEGIN IMMEDIATE")
        assert conn.execute("SELECT ?", ("again",)).fetchall() == [("again",)]
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_prepared_statements_the_server_dropped_fail_one_call_closed_then_are_prepared_again(
    pg_url: str, tmp_path: Path
) -> None:
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_get", {"key": OUT}))
            guard.store.flush()
            writer = pg_writer(guard)
            dropped = set(writer._prepared.values())
            writer.raw.execute("DEALLOCATE ALL")  # as DISCARD ALL or a pooler would
            with pytest.raises(tg.AuditError, match="prepared statement"):
                guard.authorize("kv_get", {"key": OUT})
            assert not dropped & set(writer._prepared.values())  # forgotten
            guard.finish(guard.authorize("kv_get", {"key": OUT}))  # prepared anew, same writer
            assert pg_writer(guard) is writer
            assert writer._prepared
    finally:
        guard.close()
    _verify(pg_url, tmp_path / "cp")


def test_a_chain_appended_by_the_client_and_by_the_server_in_turn_verifies(
    pg_url: str, tmp_path: Path
) -> None:
    """A server without sha256() or UTF-8 (``server_hash`` False): the client reads the head
    and hashes, as on SQLite (the call decided by the client: two more round trips); both
    kinds of append make one chain."""
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="42"):
            guard.finish(guard.authorize("kv_get", {"key": OUT}))
            writer = pg_writer(guard)
            for server_hash, trips in ((False, 3), (True, 1), (False, 3)):
                writer.server_hash = server_hash
                before = writer.round_trips
                guard.finish(guard.authorize("kv_get", {"key": f"agents:jobs:42:{TRICKY}"}))
                assert writer.round_trips - before == trips
    finally:
        guard.close()
    rows = _rows(pg_url)
    prev = GENESIS
    for row in rows:
        assert row["prev_hash"] == prev
        assert row["hash"] == values_hash(prev, row_values(row))
        prev = row["hash"]
    _verify(pg_url, tmp_path / "cp")
