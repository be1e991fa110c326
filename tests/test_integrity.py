"""The trail is tamper-evident: verify names the first bad seq and the kind of damage for every
attack (modify, delete, reorder, truncate, rewrite, forge a checkpoint), passes a clean trail,
and stays correct across prunes and across processes sharing the database."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, make_config, raw_connection
from langchain_core.tools import tool

import toolguard as tg
from toolguard.chain import GENESIS, HASHED_FIELDS, Event, event_hash, row_values, values_hash
from toolguard.errors import AuditError
from toolguard.integrity import DAMAGE_KINDS, Integrity, VerifyReport, sign_checkpoint
from toolguard.keys import KeyRing, load_args_key
from toolguard.store import Store, open_store

TASKS = 5
EVENTS_PER_TASK = 8  # task_start, 3 x (request, outcome), task_end


def _fill(guard: tg.Guard, clock: Clock, *, tasks: int = TASKS) -> None:
    """``tasks`` tasks of three calls each; every task end writes a checkpoint."""

    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        return f"value of {key}"

    get = tg.guard(kv_get, guard)
    for t in range(tasks):
        with guard.task("process-job", job_id=str(t)):
            for i in range(3):
                clock.advance(1)
                get.invoke({"key": f"agents:jobs:{t}:item{i}"})


@pytest.fixture
def trail(guard: tg.Guard, clock: Clock) -> tg.Guard:
    """A guard whose trail holds 40 events, anchored by a checkpoint after each task."""
    _fill(guard, clock)
    return guard


def _db(guard: tg.Guard) -> Any:
    """The attacker's own connection to the database (SQLite or PostgreSQL)."""
    return raw_connection(guard)


def _rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM events ORDER BY seq")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _rehash(conn: sqlite3.Connection, *, renumber: bool = False) -> None:
    """What an attacker with the database but not the key does: recompute every hash from
    genesis so that the chain is internally consistent again."""
    rows = _rows(conn)
    conn.execute("BEGIN")
    conn.execute("DELETE FROM events")
    prev = GENESIS
    for n, row in enumerate(rows, 1):
        if renumber:
            row["seq"] = n
        row["prev_hash"] = prev
        row["hash"] = prev = event_hash(prev, row)
        conn.execute(
            f"INSERT INTO events ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    conn.execute("COMMIT")


def _kinds(report: VerifyReport) -> list[tuple[int, str]]:
    return [(d.seq, d.kind) for d in report.damage]


# -- a clean trail ---------------------------------------------------------------------------


def test_verify_clean_trail_passes(trail: tg.Guard) -> None:
    report = trail.audit.verify()

    assert report.ok and report.exit_code == 0 and report.damage == []
    assert report.checked == report.head_seq == TASKS * EVENTS_PER_TASK
    assert report.first_seq == 1
    assert report.checkpoints == TASKS
    assert report.anchored_seq == report.head_seq and report.unanchored == 0
    assert report.signatures_checked and report.signatures_verified == 1
    assert report.notes == []
    assert report.summary().startswith(f"checked {report.checked} events (seq 1..40)")
    assert report.summary().endswith("OK")


def test_verify_empty_trail_passes(guard: tg.Guard) -> None:
    report = guard.audit.verify()

    assert report.ok and report.checked == 0 and report.head_seq == 0 and report.unanchored == 0


def test_verify_counts_read_as_words(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42"):
        pass
    guard.audit.checkpoint()
    guard.store.append(Event(ts=1.0, kind="enable", identity="x", reason="t"))
    report = guard.audit.verify()

    assert report.summary().startswith("checked 3 events")
    assert "1 event after seq 2 is not anchored" in " ".join(report.notes)


def test_verify_report_to_dict_is_json(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("UPDATE events SET tool = 'kv_set' WHERE seq = 3")

    data = json.loads(json.dumps(trail.audit.verify().to_dict()))

    assert data["ok"] is False and data["checked"] == 40
    assert data["damage"] == [
        {
            "seq": 3,
            "last_seq": None,
            "kind": "modified",
            "detail": "event 3 does not match its hash",
        }
    ]


# -- attacks inside the chain ---------------------------------------------------------------


@pytest.mark.parametrize(
    "column, value",
    [
        pytest.param("args", '{"key":"agents:jobs:1:other"}', id="args"),
        pytest.param("ts", 1.0, id="ts"),
        pytest.param("decision", "deny", id="decision"),
        pytest.param("hash", "f" * 64, id="hash-column"),
        pytest.param("prev_hash", "e" * 64, id="prev-hash-column"),
        pytest.param("args", b"\x00binary", id="foreign-blob"),
        pytest.param("prev_hash", None, id="null-prev-hash"),
    ],
)
def test_verify_modified_event_is_caught(trail: tg.Guard, column: str, value: Any) -> None:
    with _db(trail) as conn:
        conn.execute(f"UPDATE events SET {column} = ? WHERE seq = 13", (value,))

    report = trail.audit.verify()

    assert not report.ok and report.exit_code == 1
    assert _kinds(report) == [(13, "modified")]
    assert report.checked == 40


def test_verify_modified_and_rehashed_event_is_caught_at_that_event(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        row = _rows(conn)[12]
        row["args"] = '{"key":"agents:jobs:1:forged"}'
        conn.execute(
            "UPDATE events SET args = ?, hash = ? WHERE seq = 13",
            (row["args"], event_hash(row["prev_hash"], row)),
        )

    report = trail.audit.verify()

    assert report.damage[0].seq == 13 and report.damage[0].kind == "modified"
    assert "hash recomputed" in report.damage[0].detail


def test_verify_modified_range_is_one_finding(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("UPDATE events SET reason = 'x' WHERE seq BETWEEN 10 AND 12")

    report = trail.audit.verify()

    assert _kinds(report) == [(10, "modified")]
    assert report.damage[0].last_seq == 12


@pytest.mark.parametrize(
    "first, last", [pytest.param(13, 13, id="one"), pytest.param(13, 15, id="range")]
)
def test_verify_deleted_events_are_caught(trail: tg.Guard, first: int, last: int) -> None:
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (first, last))

    report = trail.audit.verify()

    assert _kinds(report) == [(first, "deleted")]
    assert report.damage[0].last_seq == last
    assert report.checked == 40 - (last - first + 1)


def test_verify_deleted_first_events_are_caught(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq <= 2")

    assert _kinds(trail.audit.verify()) == [(1, "deleted")]


def test_verify_deleted_event_with_relinked_successor_is_caught(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        rows = _rows(conn)
        conn.execute("DELETE FROM events WHERE seq = 13")
        successor = rows[13]
        successor["prev_hash"] = rows[11]["hash"]
        conn.execute(
            "UPDATE events SET prev_hash = ?, hash = ? WHERE seq = 14",
            (successor["prev_hash"], event_hash(successor["prev_hash"], successor)),
        )

    report = trail.audit.verify()

    assert report.damage[0].seq == 13 and report.damage[0].kind == "deleted"


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    conn.execute("BEGIN")
    conn.execute("UPDATE events SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE events SET seq = ? WHERE seq = -1", (b,))
    conn.execute("COMMIT")


def test_verify_swapped_events_are_caught_as_reordered(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        _swap(conn, 13, 14)

    report = trail.audit.verify()

    assert _kinds(report) == [(13, "reordered")]
    assert report.damage[0].last_seq == 14


def test_verify_swapped_contents_are_caught_as_reordered(trail: tg.Guard) -> None:
    """The attacker keeps the seq column and swaps everything else."""
    columns = [c for c in (*HASHED_FIELDS, "prev_hash", "hash") if c != "seq"]
    with _db(trail) as conn:
        rows = {r["seq"]: r for r in _rows(conn)}
        for seq, other in ((20, 22), (22, 20)):
            conn.execute(
                f"UPDATE events SET {', '.join(f'{c} = ?' for c in columns)} WHERE seq = ?",
                (*(rows[other][c] for c in columns), seq),
            )

    report = trail.audit.verify()

    assert report.damage[0].seq == 20 and report.damage[0].kind == "reordered"
    assert {d.kind for d in report.damage} == {"reordered"}


def test_verify_event_moved_later_is_caught_as_reordered(trail: tg.Guard) -> None:
    with _db(trail) as conn:  # event 5 now comes after event 7
        conn.execute("BEGIN")
        conn.execute("UPDATE events SET seq = -5 WHERE seq = 5")
        conn.execute("UPDATE events SET seq = 5 WHERE seq = 6")
        conn.execute("UPDATE events SET seq = 6 WHERE seq = 7")
        conn.execute("UPDATE events SET seq = 7 WHERE seq = -5")
        conn.execute("COMMIT")

    report = trail.audit.verify()

    assert _kinds(report) == [(5, "reordered")]
    assert report.damage[0].last_seq == 7


def test_verify_event_moved_to_the_end_is_caught_as_reordered(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("UPDATE events SET seq = 1000 WHERE seq = 5")

    report = trail.audit.verify()

    assert _kinds(report) == [(5, "reordered")]
    assert "moved to seq 1000" in report.damage[0].detail


# -- attacks only the checkpoints catch -------------------------------------------------------


def test_verify_truncated_tail_is_caught(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq > 36")

    report = trail.audit.verify()

    assert _kinds(report) == [(37, "truncated")]
    assert report.damage[0].last_seq == 40
    assert report.anchored_seq == 32 and report.head_seq == 36


def test_verify_emptied_trail_is_caught_as_truncated(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("DELETE FROM events")

    report = trail.audit.verify()

    assert _kinds(report) == [(1, "truncated")] and report.checked == 0


def test_verify_rewritten_chain_is_caught_by_checkpoints(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute('UPDATE events SET args = \'{"key":"forged"}\' WHERE seq = 13')
        _rehash(conn)
    report = trail.audit.verify()

    # The chain alone is consistent again: only the signed checkpoints catch it.
    assert _kinds(report) == [(9, "rewritten")]
    assert report.damage[0].last_seq == 16
    assert "checkpoint at seq 16" in report.damage[0].detail
    assert report.anchored_seq == 8 and report.unanchored == 32


def test_verify_rewritten_chain_without_checkpoints_passes_unanchored(trail: tg.Guard) -> None:
    """Without its checkpoint file a rewrite cannot be detected: verify says so."""
    with _db(trail) as conn:
        conn.execute('UPDATE events SET args = \'{"key":"forged"}\' WHERE seq = 13')
        _rehash(conn)
    trail.config.checkpoints_path.unlink()

    report = trail.audit.verify()

    assert report.ok and report.anchored_seq == 0 and report.unanchored == 40
    assert any("does not exist" in n and "not anchored (40 events)" in n for n in report.notes)


def test_verify_rewrite_that_drops_an_event_is_caught(trail: tg.Guard) -> None:
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq = 21")
        _rehash(conn, renumber=True)

    report = trail.audit.verify()

    assert _kinds(report) == [(17, "rewritten"), (40, "truncated")]


def test_verify_truncated_trail_and_checkpoint_file_is_noted(trail: tg.Guard) -> None:
    """The attacker cuts both the trail and the checkpoint file: nothing contradicts the
    database, but the task ends after the last checkpoint give it away."""
    path = trail.config.checkpoints_path
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq > 36")

    report = trail.audit.verify()

    assert report.ok and report.anchored_seq == 24 and report.unanchored == 12
    assert any("1 tasks ended after it" in n for n in report.notes)


# -- forged or damaged checkpoints -----------------------------------------------------------


def test_verify_altered_checkpoint_signature_is_caught(trail: tg.Guard) -> None:
    path = trail.config.checkpoints_path
    lines = path.read_text().splitlines()
    record = json.loads(lines[-1])
    record["ts"] += 1  # any change to a signed member
    lines[-1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")

    report = trail.audit.verify()

    assert _kinds(report) == [(40, "bad-signature")]
    assert report.anchored_seq == 32  # the next matching checkpoint anchors instead


def test_verify_checkpoint_forged_with_another_key_is_caught(trail: tg.Guard) -> None:
    """An attacker rewrites the chain and signs its own checkpoint under the issuer's kid."""
    with _db(trail) as conn:
        conn.execute("UPDATE events SET args = '{}' WHERE seq = 3")
        _rehash(conn)
        head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    forged = sign_checkpoint(KeyRing.generate(), head[0], head[1], 0.0)
    forged["kid"] = trail.keys.active.kid
    with trail.config.checkpoints_path.open("a") as f:
        f.write(json.dumps(forged) + "\n")

    report = trail.audit.verify()

    assert _kinds(report) == [(1, "rewritten"), (40, "bad-signature")]


def test_verify_checkpoint_of_unknown_key_is_ignored_with_a_note(trail: tg.Guard) -> None:
    stranger = KeyRing.generate()
    with trail.config.checkpoints_path.open("a") as f:
        f.write(json.dumps(sign_checkpoint(stranger, 99, "0" * 64, 0.0)) + "\n")

    report = trail.audit.verify()

    assert report.ok
    assert any(stranger.active.kid in n for n in report.notes)


def test_verify_unreadable_checkpoint_line_is_caught(trail: tg.Guard) -> None:
    path = trail.config.checkpoints_path
    lines = path.read_text().splitlines()
    lines.insert(2, '{"seq": 12, "hash": "00", sig}')
    path.write_text("\n".join(lines) + "\n")

    report = trail.audit.verify()

    assert _kinds(report) == [(0, "bad-signature")]
    assert "line 3" in report.damage[0].detail


def test_verify_torn_last_checkpoint_line_is_a_note_and_next_checkpoint_recovers(
    trail: tg.Guard, clock: Clock
) -> None:
    path = trail.config.checkpoints_path
    with path.open("a") as f:
        f.write('{"alg": "EdDSA", "hash": "ab')  # a crash in the middle of a write

    report = trail.audit.verify()
    assert report.ok and any("incomplete" in n for n in report.notes)

    _fill(trail, clock, tasks=1)
    report = trail.audit.verify()
    assert report.ok and report.anchored_seq == 48
    assert any(f"line 6 of {path}" in n and "incomplete" in n for n in report.notes)


def test_verify_a_file_that_is_not_a_checkpoint_file_is_damage_listed_briefly(
    trail: tg.Guard,
) -> None:
    """The database itself (or any other file) given as the checkpoint file: its lines do
    not start with '{', so they are not records torn by a crash (a note, exit 0) but damage;
    and a huge file is not listed line by line."""
    path = trail.config.checkpoints_path
    path.write_bytes(b"".join(b"SQLite format 3 garbage line %d\n" % i for i in range(5000)))
    report = trail.audit.verify()
    assert not report.ok
    listed = [d for d in report.damage if "not a readable checkpoint record" in d.detail]
    assert len(listed) == 10 and f"line 1 of {path}" in listed[0].detail
    assert any("4990 further unreadable checkpoint lines" in n for n in report.notes)
    path.write_text("".join('{"alg": "EdDSA", "ha\n' for _ in range(500)))  # 500 torn
    report = trail.audit.verify()
    note = next(n for n in report.notes if "incomplete" in n)
    assert "(and 490 more)" in note and len(note) < 2000


def test_verify_without_keys_compares_but_says_signatures_were_not_checked(
    trail: tg.Guard,
) -> None:
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq > 36")
    integrity = Integrity(trail.store, checkpoints=trail.config.checkpoints_path)

    report = integrity.verify()

    assert _kinds(report) == [(37, "truncated")]
    assert not report.signatures_checked and report.signatures_verified == 0
    assert any("not checked" in n for n in report.notes)


def test_verify_with_published_jwks_only(trail: tg.Guard) -> None:
    public = KeyRing.from_jwks(trail.keys.jwks())
    readonly = open_store(trail.config.store_location, readonly=True)
    try:
        report = Integrity(
            readonly, keys=public, checkpoints=trail.config.checkpoints_path
        ).verify()
    finally:
        readonly.close()

    assert report.ok and report.signatures_checked and report.anchored_seq == 40


def test_verify_reports_every_kind_it_documents() -> None:
    assert DAMAGE_KINDS == (
        "modified",
        "deleted",
        "reordered",
        "truncated",
        "rewritten",
        "bad-signature",
    )


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_is_signed_and_verifiable_by_hand(trail: tg.Guard) -> None:
    from toolguard.integrity import checkpoint_payload
    from toolguard.keys import b64url_decode, verify_signature

    record = json.loads(trail.config.checkpoints_path.read_text().splitlines()[-1])

    assert record["type"] == "checkpoint" and record["v"] == 1 and record["seq"] == 40
    body = {k: v for k, v in record.items() if k != "sig"}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert payload == checkpoint_payload(record)
    key = trail.keys.active
    assert verify_signature(key.algorithm, key.public_key, b64url_decode(record["sig"]), payload)


def test_checkpoint_of_unchanged_head_writes_nothing(trail: tg.Guard) -> None:
    path = trail.config.checkpoints_path
    trail.revoke(identity="agent-runner", reason="one more event")
    lines = path.read_bytes().count(b"\n")

    first = trail.audit.checkpoint()
    second = trail.audit.checkpoint()

    assert first is not None and first == second and first["seq"] == 41
    assert path.read_bytes().count(b"\n") == lines + 1


def test_checkpoint_on_empty_trail_is_none(guard: tg.Guard) -> None:
    assert guard.audit.checkpoint() is None
    assert not guard.config.checkpoints_path.exists()


def test_checkpoint_needs_the_signing_key(trail: tg.Guard) -> None:
    integrity = Integrity(trail.store, keys=KeyRing.from_jwks(trail.keys.jwks()))

    with pytest.raises(AuditError, match="needs the issuer's signing key"):
        integrity.checkpoint()


def test_checkpoint_unwritable_file_is_audit_error(trail: tg.Guard, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    integrity = Integrity(trail.store, keys=trail.keys, checkpoints=blocker / "cp")

    with pytest.raises(AuditError, match="cannot write the checkpoint file"):
        integrity.checkpoint()


# -- prunes ------------------------------------------------------------------------------------


def _prune(guard: tg.Guard, before_seq: int, *, signed: bool) -> None:
    with _db(guard) as conn:
        head = conn.execute("SELECT hash FROM events WHERE seq = ?", (before_seq - 1,)).fetchone()
        if signed:
            guard.audit.integrity.anchor_prune(before_seq, head[0])
        conn.execute("BEGIN")
        conn.execute("DELETE FROM events WHERE seq < ?", (before_seq,))
        conn.execute(
            "INSERT INTO prunes (ts, before_seq, head_hash, removed) VALUES (0, ?, ?, ?)",
            (before_seq, head[0], before_seq - 1),
        )
        conn.execute("COMMIT")


def test_verify_after_signed_prune_passes(trail: tg.Guard) -> None:
    _prune(trail, 17, signed=True)

    report = trail.audit.verify()

    assert report.ok and report.first_seq == 17 and report.checked == 24
    assert report.anchored_seq == 40 and report.unanchored == 0
    assert any("pruned" in n for n in report.notes)


def test_verify_after_prune_still_catches_damage(trail: tg.Guard) -> None:
    _prune(trail, 17, signed=True)
    with _db(trail) as conn:
        conn.execute("DELETE FROM events WHERE seq = 17")

    assert _kinds(trail.audit.verify()) == [(17, "deleted")]


def test_verify_unsigned_prune_is_caught_as_deleted(trail: tg.Guard) -> None:
    _prune(trail, 17, signed=False)

    report = trail.audit.verify()

    assert _kinds(report) == [(1, "deleted")]
    assert report.damage[0].last_seq == 16


def test_append_after_prune_of_everything_continues_the_chain(
    trail: tg.Guard, clock: Clock
) -> None:
    _prune(trail, 41, signed=True)
    _fill(trail, clock, tasks=1)

    report = trail.audit.verify()

    assert report.ok and report.first_seq == 41 and report.head_seq == 48


# -- many processes, one chain -------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import json, sys
    from langchain_core.tools import tool
    import toolguard as tg

    config = json.loads(sys.argv[1])
    guard = tg.Guard(config)

    @tool
    def kv_get(key: str) -> str:
        \"\"\"Read a key.\"\"\"
        return key

    get = tg.guard(kv_get, guard)
    for t in range(int(sys.argv[2])):
        with guard.task("process-job", job_id=sys.argv[3]):
            for i in range(3):
                get.invoke({"key": f"agents:jobs:{sys.argv[3]}:{i}"})
    guard.close()
    """
)


@pytest.mark.slow
def test_verify_two_processes_appending_make_one_valid_chain(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config["busy_timeout"] = 30
    tasks = 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, json.dumps(config), str(tasks), job],
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in ("1", "2")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    guard = tg.Guard(config)
    try:
        report = guard.audit.verify()
        writers = {
            e.task_id for e in guard.audit.events(kind="task_start") if e.task_id is not None
        }
    finally:
        guard.close()

    assert report.ok, report.damage
    assert report.checked == report.head_seq == 2 * tasks * EVENTS_PER_TASK
    assert report.anchored_seq == report.head_seq
    assert len(writers) == 2 * tasks


# -- the chain's canonical form ---------------------------------------------------------------


def _roundtrip(event: dict[str, Any]) -> tuple[Any, ...]:
    """Write an event as the store does and read its hashed columns back."""
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, ts FLOAT, task_id TEXT, identity TEXT,"
        " intent TEXT, kind TEXT, tool TEXT, operation TEXT, resources TEXT, decision TEXT,"
        " reason TEXT, rule TEXT, jti TEXT, correlation_id TEXT, args TEXT, args_sha256 TEXT,"
        " outcome TEXT, error TEXT, duration_ms FLOAT, cost FLOAT)"
    )
    conn.execute(
        f"INSERT INTO events ({', '.join(HASHED_FIELDS)}) VALUES ({', '.join('?' * 20)})",
        tuple(event.get(k) for k in HASHED_FIELDS),
    )
    return tuple(conn.execute(f"SELECT {', '.join(HASHED_FIELDS)} FROM events").fetchone())


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"ts": 1_790_000_000}, id="int-in-real"),
        pytest.param({"ts": 5.0, "cost": -0.0}, id="negative-zero"),
        pytest.param({"ts": 5.0, "duration_ms": math.nan}, id="nan"),
        pytest.param({"ts": 5.0, "cost": True}, id="bool-in-real"),
        pytest.param({"ts": 5.0, "reason": 7, "outcome": False}, id="int-in-text"),
        pytest.param({"ts": 5.0, "args": 'é"\\\n\u2028', "cost": math.inf}, id="unicode-inf"),
    ],
)
def test_chain_hash_on_write_equals_hash_after_sqlite(fields: dict[str, Any]) -> None:
    event = {"seq": 1, "kind": "request", **fields}

    stored = _roundtrip(event)

    assert row_values(event) == stored
    assert event_hash(GENESIS, event) == values_hash(GENESIS, stored)


def test_chain_canonical_form_is_a_json_array_in_column_order() -> None:
    import hashlib

    event = {"seq": 3, "ts": 1.5, "kind": "request", "tool": "kv_get", "args": '{"a":"é"}'}
    values = [event.get(c) for c in HASHED_FIELDS]
    text = json.dumps(values, separators=(",", ":"), ensure_ascii=False)

    assert event_hash("a" * 64, event) == hashlib.sha256(("a" * 64 + text).encode()).hexdigest()


@pytest.mark.parametrize(
    "fields, match",
    [
        pytest.param({"ts": "now"}, "'ts' must be a number", id="text-in-real"),
        pytest.param({"ts": 1.0, "args": {"a": 1}}, "'args' must be text", id="dict-in-text"),
        pytest.param({"ts": 1.0, "seq": "1"}, "'seq' must be an int", id="text-seq"),
    ],
)
def test_chain_rejects_values_sqlite_would_store_differently(
    fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        row_values({"seq": 1, **fields})


@pytest.mark.slow
def test_verify_checks_many_events_fast(tmp_path: Path) -> None:
    """A smoke check of the fast path: 20,000 events in well under a second."""
    store = Store(tmp_path / "big.db").open()
    try:
        prev = GENESIS
        rows = []
        for seq in range(1, 20_001):
            event = {"seq": seq, "ts": 1.0 + seq, "kind": "request", "tool": "kv_get"}
            values = row_values(event)
            digest = values_hash(prev, values)
            rows.append((*values, prev, digest))
            prev = digest
        with sqlite3.connect(store.path) as conn:
            conn.executemany(
                f"INSERT INTO events VALUES ({', '.join('?' * (len(HASHED_FIELDS) + 2))})", rows
            )
        report = Integrity(store).verify()
    finally:
        store.close()

    assert report.ok and report.checked == 20_000
    assert report.seconds < 2.0


# -- the documented recipe ------------------------------------------------------------------------


def _doc_code() -> dict[str, Any]:
    """Every ``python`` block of docs/audit.md, run in one namespace."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "audit.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, "docs/audit.md", "exec"), namespace)
    return namespace


@pytest.mark.sqlite_only  # the recipe of docs/audit.md reads the SQLite file
def test_docs_hand_verification_recipe_matches_toolguard(trail: tg.Guard) -> None:
    doc = _doc_code()
    db, checkpoints = trail.config.store_path, trail.config.checkpoints_path

    hashes = doc["recheck_chain"](db)
    assert len(hashes) == 40
    assert doc["check_checkpoints"](checkpoints, trail.keys.jwks(), hashes) == 40

    with _db(trail) as conn:
        conn.execute("UPDATE events SET args = '{}' WHERE seq = 3")
        _rehash(conn)
    hashes = doc["recheck_chain"](db)  # the rewritten chain is consistent on its own...
    with pytest.raises(ValueError, match="rewritten: the chain differs from the checkpoint at 8"):
        doc["check_checkpoints"](checkpoints, trail.keys.jwks(), hashes)  # ...but not signed
    with _db(trail) as conn:
        conn.execute("UPDATE events SET tool = 'x' WHERE seq = 5")
    with pytest.raises(ValueError, match="breaks at seq 5"):
        doc["recheck_chain"](db)


def test_docs_args_digest_recipe_matches_the_trail(trail: tg.Guard) -> None:
    doc = _doc_code()
    request = trail.audit.events(kind="request")[0]

    key = load_args_key(trail.config.args_key_path, create=False)
    args = json.loads(request.args or "")
    assert doc["args_digest"](args, key) == request.args_sha256
    assert doc["args_match"](args, key, request.args_sha256 or "")
    assert not doc["args_match"]({**args, "key": "other"}, key, request.args_sha256 or "")
