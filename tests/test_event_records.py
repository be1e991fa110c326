"""Events are typed records (``toolguard.chain.Event``) and the store is a typed interface
(``toolguard.store.protocol``): a misspelt column fails loudly, never as a NULL in the hash, and
a trail written while events were dicts still verifies and hashes the same.

``tests/fixtures/trail_before_typed_events.jsonl`` holds the ``events`` rows of a trail written
by the code before events were typed (commit 1a406bf): tasks, a delegation, allowed calls, an
error outcome, policy and budget denials, a shadow-mode ``would_deny``, an identity revoked with
``disable`` and enabled again, and two events appended with values SQLite normalizes (an int in
a TEXT column, ``-0.0``, NaN, non-ASCII text).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from toolguard.chain import EVENT_FIELDS, GENESIS, HASHED_FIELDS, Event, event_values, values_hash
from toolguard.integrity import Integrity
from toolguard.store import RevocationChecks, Store, StoreProtocol, StoreReader, StoreRevocations
from toolguard.store.protocol import TrailReads
from toolguard.store.sqlite.trail import TrailReader

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "trail_before_typed_events.jsonl"


def _legacy_rows() -> list[dict[str, Any]]:
    text = FIXTURE.read_text(encoding="utf-8")  # not splitlines(): U+2028 is in a value
    rows = [json.loads(line) for line in text.split("\n") if line]
    assert [r["seq"] for r in rows] == list(range(1, 21))
    return rows


def test_event_holds_exactly_the_hashed_columns_but_seq() -> None:
    assert set(Event._fields) == set(HASHED_FIELDS) - {"seq"}
    assert len(Event._fields) == len(HASHED_FIELDS) - 1
    reals = ("ts", "duration_ms", "cost")
    value = {n: float(i) if n in reals else f"v-{n}" for i, n in enumerate(HASHED_FIELDS)}
    every = Event(**{name: value[name] for name in Event._fields})
    assert event_values(0, every) == (0, *(value[name] for name in HASHED_FIELDS[1:]))


def test_a_misspelt_or_missing_column_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="taskid"):
        Event(ts=1.0, kind="denied", taskid="t-1")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="kind"):
        Event(ts=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="must be an Event, not dict"):
        event_values(1, {"ts": 1.0, "kind": "denied", "taskid": "t-1"})  # type: ignore[arg-type]


def test_a_fixed_event_hashes_to_the_digest_the_dict_code_gave() -> None:
    """Digests computed by ``chain.event_hash`` on dicts before events were typed."""
    event = Event(
        ts=1790000000.25, kind="request", task_id="t-1", identity="agent-runner",
        intent="process-job", tool="kv_get", operation="read",
        resources='["agents:jobs:7:in"]', decision="allow", reason='é "q" \\ \u2028',
        rule="allow", jti="j-1", correlation_id="c1", args='{"key":"agents:jobs:7:in"}',
        args_sha256="hmac-sha256:00", cost=0.01,
    )  # fmt: skip
    expected = "daff2dd6e85e9122fc0e5530b405de0e60189c7aa5917bf68be55509b6f9cb5b"
    assert values_hash(GENESIS, event_values(7, event)) == expected
    odd = Event(ts=5, kind="note", identity=42, cost=-0.0, duration_ms=float("nan"))  # type: ignore[arg-type]
    assert event_values(8, odd)[:4] == (8, 5.0, None, "42")  # stored as SQLite stores them
    expected = "b90a596f4f893d37593038dc5ec531573a1805398991fc0ba15349cdfc7fa9e1"
    assert values_hash("ab" * 32, event_values(8, odd)) == expected


def test_a_trail_written_before_typed_events_still_verifies(tmp_path: Path) -> None:
    rows = _legacy_rows()
    store = Store(tmp_path / "audit.db").open()
    try:
        with sqlite3.connect(tmp_path / "audit.db") as conn:
            conn.executemany(
                f"INSERT INTO events ({', '.join(EVENT_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(EVENT_FIELDS))})",
                [tuple(r[c] for c in EVENT_FIELDS) for r in rows],
            )
        report = Integrity(store, checkpoints=tmp_path / "none.checkpoints").verify()
        assert report.ok and report.damage == [] and report.checked == 20
        # and the new code appends after it: the chain continues from the old head
        store.append(Event(ts=1790000200.0, kind="note", reason="after the upgrade"))
        report = Integrity(store, checkpoints=tmp_path / "none.checkpoints").verify()
        assert report.ok and report.checked == 21
        # a changed old row is still found
        with sqlite3.connect(tmp_path / "audit.db") as conn:
            conn.execute("UPDATE events SET reason = 'edited' WHERE seq = 4")
        report = Integrity(store, checkpoints=tmp_path / "none.checkpoints").verify()
        assert not report.ok and [(d.seq, d.kind) for d in report.damage] == [(4, "modified")]
    finally:
        store.close()


def test_the_same_events_appended_as_records_hash_and_store_byte_for_byte_alike(
    tmp_path: Path,
) -> None:
    rows = _legacy_rows()
    store = Store(tmp_path / "audit.db")
    try:
        for row in rows:
            store.append(Event(**{name: row[name] for name in Event._fields}))
        written = store.event_rows({})
    finally:
        store.close()
    assert written == rows  # every column, prev_hash and hash included


def test_the_store_refuses_a_dict_event_and_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "audit.db")
    try:
        store.append(Event(ts=1.0, kind="note"))
        with pytest.raises(TypeError, match="must be an Event"):
            store.append({"ts": 2.0, "kind": "note", "reson": "misspelt"})  # type: ignore[arg-type]
        assert store.head() is not None and store.head()[0] == 1  # type: ignore[index]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_both_backends_have_every_member_of_the_interface(backend: str) -> None:
    """mypy --strict proves it (toolguard/store/protocol.py); this checks the names at run
    time too, and that nothing outside the protocol is needed by the revocation source."""
    if backend == "postgres":
        pytest.importorskip("psycopg")
        from toolguard.store.postgres import PostgresStore

        cls: type = PostgresStore
    else:
        cls = Store
    for protocol in (RevocationChecks, StoreReader, StoreProtocol):
        members = {n for n in vars(protocol) if not n.startswith("_")}
        members |= {n for base in protocol.__mro__ for n in vars(base) if not n.startswith("_")}
        missing = sorted(m for m in members if m != "register" and not hasattr(cls, m))
        missing = [m for m in missing if m not in ("path", "clock", "durability")]
        assert not missing, (protocol.__name__, missing)
    trail_members = {n for n in vars(TrailReads) if not n.startswith("_")}
    assert trail_members <= set(dir(TrailReader))
    assert StoreRevocations(Store(Path("/nonexistent/x.db"))).store is not None


def test_the_revocation_feed_takes_any_store_of_the_interface_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    from toolguard_starlette.feed import revocation_app

    from toolguard.errors import ConfigError
    from toolguard.keys import KeyRing

    store = Store(tmp_path / "audit.db").open()
    try:
        assert revocation_app(store=store, keys=KeyRing.generate(), issuer="x") is not None
    finally:
        store.close()
    with pytest.raises(ConfigError, match="a store is a path or a URL, not int"):
        revocation_app(store=5, keys=KeyRing.generate(), issuer="x")  # type: ignore[arg-type]
