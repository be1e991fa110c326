"""Red team against ``verify``: any value SQLite can hold, in any column of any event, and any
line in the checkpoint file, gives a classified finding with its seq (or a note), never an
exception. Real trails (a real guard, real keys, real SQLite), mutated behind toolguard's back."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, make_config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from langchain_core.tools import tool

import toolguard as tg
from toolguard.chain import DAMAGE_KINDS, HASHED_FIELDS
from toolguard.integrity import Integrity, VerifyReport
from toolguard.keys import KeyRing
from toolguard.store import Store

TASKS = 3
EVENTS = TASKS * 8
COLUMNS = [c for c in HASHED_FIELDS if c != "seq"] + ["prev_hash", "hash"]


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return f"value of {key}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed, clean trail of 24 events with a checkpoint after each task."""
    where = tmp_path_factory.mktemp("trail")
    clock = Clock()
    with tg.Guard(make_config(where), clock=clock) as guard:
        get = tg.guard(kv_get, guard)
        for t in range(TASKS):
            with guard.task("process-job", job_id=str(t)):
                for i in range(3):
                    clock.advance(1)
                    get.invoke({"key": f"agents:jobs:{t}:item{i}"})
        assert guard.audit.verify().ok
    return where


@pytest.fixture
def trail(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template trail (database, checkpoints, key)."""
    shutil.copytree(template, tmp_path / "t")
    return tmp_path / "t"


def _copy(template: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as where:
        target = Path(where) / "t"
        shutil.copytree(template, target)
        yield target


def _verify(where: Path) -> VerifyReport:
    store = Store(where / "audit.db")
    try:
        keys = KeyRing.load(where / "keys" / "signing-key.pem", create=False)
        report = Integrity(store, keys=keys).verify()
    finally:
        store.close()
    assert all(d.kind in DAMAGE_KINDS for d in report.damage)
    report.summary()  # renders
    json.dumps(report.to_dict())  # serializes
    return report


def _covers(report: VerifyReport, *seqs: int) -> bool:
    return any(
        d.seq <= s <= (d.last_seq if d.last_seq is not None else d.seq)
        for d in report.damage
        for s in seqs
    )


def _cell(conn: sqlite3.Connection, column: str, seq: int) -> tuple[Any, ...]:
    row = conn.execute(f"SELECT typeof({column}), hex({column}) FROM events WHERE seq = ?", (seq,))
    return tuple(row.fetchone())


# -- the class of "verify aborts": text that is not UTF-8 -------------------------------------


@pytest.mark.parametrize("column", ["reason", "hash", "prev_hash", "task_id", "args"])
def test_text_that_is_not_utf8_is_reported_modified_at_its_seq(trail: Path, column: str) -> None:
    with sqlite3.connect(trail / "audit.db") as conn:
        conn.execute(f"UPDATE events SET {column} = CAST(x'fffe41c3' AS TEXT) WHERE seq = 5")
    report = _verify(trail)
    assert not report.ok
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("modified", 5)
    assert report.checked == EVENTS  # it went on after the bad row


def test_several_rows_that_are_not_utf8_are_each_reported(trail: Path) -> None:
    with sqlite3.connect(trail / "audit.db") as conn:
        for seq in (3, 11, EVENTS):
            conn.execute("UPDATE events SET reason = CAST(x'c3' AS TEXT) WHERE seq = ?", (seq,))
    report = _verify(trail)
    assert report.checked == EVENTS
    assert all(_covers(report, seq) for seq in (3, 11, EVENTS))
    assert {d.kind for d in report.damage} <= {"modified", "rewritten"}


def test_an_unreadable_prunes_row_is_damage_not_an_exception(trail: Path) -> None:
    with sqlite3.connect(trail / "audit.db") as conn:
        conn.execute(
            "INSERT INTO prunes (before_seq, head_hash, ts) VALUES ('x', CAST(x'ff' AS TEXT), 1)"
        )
    report = _verify(trail)
    assert not report.ok
    assert report.damage[0].kind == "deleted"
    assert "prunes" in report.damage[0].detail


# -- hypothesis: any single-row mutation -------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10).map(lambda t: f"a\x00{t}"),
    st.binary(max_size=40).map(lambda b: ("blob", b)),
    st.binary(min_size=1, max_size=40).map(lambda b: ("bad-text", b)),
    st.just("x" * 300_000),
    st.just("0" * 64),
)


def _set(conn: sqlite3.Connection, column: str, seq: int, value: Any) -> None:
    if isinstance(value, tuple) and value[0] == "bad-text":
        sql, param = f"UPDATE events SET {column} = CAST(? AS TEXT) WHERE seq = ?", value[1]
    elif isinstance(value, tuple):
        sql, param = f"UPDATE events SET {column} = ? WHERE seq = ?", value[1]
    else:
        sql, param = f"UPDATE events SET {column} = ? WHERE seq = ?", value
    conn.execute(sql, (param, seq))


@pytest.mark.slow
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seq=st.integers(min_value=1, max_value=EVENTS),
    column=st.sampled_from(COLUMNS),
    value=_VALUES,
)
def test_any_value_in_any_column_is_reported_at_its_seq(
    template: Path, seq: int, column: str, value: Any
) -> None:
    for where in _copy(template):
        with sqlite3.connect(where / "audit.db") as conn:
            before = _cell(conn, column, seq)
            _set(conn, column, seq, value)
            assume(_cell(conn, column, seq) != before)
        report = _verify(where)
        assert not report.ok
        assert _covers(report, seq), report.damage


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seq=st.integers(min_value=1, max_value=EVENTS))
def test_a_deleted_row_is_reported_at_its_seq(template: Path, seq: int) -> None:
    for where in _copy(template):
        with sqlite3.connect(where / "audit.db") as conn:
            conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        report = _verify(where)
        assert _covers(report, seq), report.damage
        assert report.damage[0].kind in ("deleted", "truncated")


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    a=st.integers(min_value=1, max_value=EVENTS),
    b=st.integers(min_value=1, max_value=EVENTS),
)
def test_swapped_rows_are_reported(template: Path, a: int, b: int) -> None:
    assume(a != b)
    for where in _copy(template):
        with sqlite3.connect(where / "audit.db") as conn:
            conn.execute("UPDATE events SET seq = -1 WHERE seq = ?", (a,))
            conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
            conn.execute("UPDATE events SET seq = ? WHERE seq = -1", (b,))
        report = _verify(where)
        assert _covers(report, a, b), report.damage
        assert "reordered" in {d.kind for d in report.damage}


# -- the checkpoint file: garbage, torn, duplicated, hostile lines -----------------------------

_LINES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.just(b"[" * 100_000 + b"]" * 100_000),  # deeper than the JSON decoder's recursion
    st.just(b'{"v": 1, "type": "checkpoint", "seq": 1e400, "hash": 5, "sig": []}'),
    st.just(b'{"v": 1, "type": "gap", "seq": 3, "hash": "a", "sig": "x", "trail_end": "z"}'),
    st.just(b'{"v": 1, "type": "checkpoint", "seq": ' + b"9" * 5000 + b', "hash": "a"}'),
    st.just(b'{"v": 1, "type": "prune", "before_seq": -5, "head_hash": "", "sig": "!"}'),
    st.just(b"\xff\xfe\x00}"),
)


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.lists(_LINES, min_size=1, max_size=4),
    cut=st.integers(min_value=1, max_value=200),
    duplicate=st.booleans(),
)
def test_any_checkpoint_file_content_is_classified_never_raised(
    template: Path, extra: list[bytes], cut: int, duplicate: bool
) -> None:
    for where in _copy(template):
        path = where / "audit.db.checkpoints"
        lines = path.read_bytes().splitlines()
        body = b"\n".join(lines) + b"\n"
        if duplicate:
            body += lines[0] + b"\n" + lines[-1] + b"\n"
        body += b"\n".join(extra) + b"\n" + lines[-1][:cut]  # ends with a torn line
        path.write_bytes(body)
        report = _verify(where)
        assert {d.kind for d in report.damage} <= {"bad-signature"}
        assert all(d.seq == 0 or d.kind == "bad-signature" for d in report.damage)
        # and a guard starting on it either starts (the file still ends in a valid anchor
        # before the torn line) or refuses with an AuditError, never anything else
        config = make_config(where)
        try:
            tg.Guard(config).close()
        except tg.AuditError:
            pass


def test_duplicated_and_torn_lines_alone_are_not_damage(trail: Path) -> None:
    path = trail / "audit.db.checkpoints"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines + lines[:2]) + b"\n" + lines[-1][:30])
    report = _verify(trail)
    assert report.ok, report.damage
    assert any("incomplete" in n for n in report.notes)


def test_a_garbage_line_is_bad_signature_at_seq_0(trail: Path) -> None:
    with open(trail / "audit.db.checkpoints", "ab") as f:
        f.write(b"\xff not a record }\n")
    report = _verify(trail)
    assert [(d.kind, d.seq) for d in report.damage] == [("bad-signature", 0)]


def test_a_deeply_nested_line_is_an_unreadable_record(trail: Path) -> None:
    with open(trail / "audit.db.checkpoints", "ab") as f:
        f.write(b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n")
    report = _verify(trail)
    assert [(d.kind, d.seq) for d in report.damage] == [("bad-signature", 0)]


_FIELD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    record=st.fixed_dictionaries(
        {"v": st.just(1), "type": st.sampled_from(["checkpoint", "prune", "gap", "other"])},
        optional={
            "seq": st.one_of(st.integers(), _FIELD),
            "hash": _FIELD,
            "before_seq": st.one_of(st.integers(), _FIELD),
            "head_hash": _FIELD,
            "sig": st.one_of(st.text(max_size=90), _FIELD),
            "kid": _FIELD,
            "alg": st.one_of(st.just("EdDSA"), _FIELD),
            "trail_end": _FIELD,
            "acknowledged": st.one_of(st.just(["truncated"]), _FIELD),
            "ts": _FIELD,
        },
    )
)
@pytest.mark.slow
def test_a_hostile_newest_record_stops_a_guard_with_an_audit_error_or_nothing(
    template: Path, record: dict[str, Any]
) -> None:
    """Whatever shape the newest line has (seq beyond SQLite's range, wrong types, a
    signature that is not base64), a starting guard either starts or raises AuditError."""
    for where in _copy(template):
        with open(where / "audit.db.checkpoints", "a") as f:
            f.write(json.dumps(record) + "\n")
        try:
            tg.Guard(make_config(where)).close()
        except tg.AuditError:
            pass
        report = _verify(where)
        assert {d.kind for d in report.damage} <= {"bad-signature", "truncated", "rewritten"}


def test_a_checkpoint_beyond_sqlite_integers_is_an_unreadable_line(trail: Path) -> None:
    keys = KeyRing.load(trail / "keys" / "signing-key.pem", create=False)
    from toolguard.integrity import sign_checkpoint

    with open(trail / "audit.db.checkpoints", "a") as f:
        f.write(json.dumps(sign_checkpoint(keys, 2**70, "0" * 64, 1.0)) + "\n")
    tg.Guard(make_config(trail)).close()  # the newest readable record is the last real one
    report = _verify(trail)
    assert [(d.kind, d.seq) for d in report.damage] == [("bad-signature", 0)]
