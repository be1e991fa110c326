"""Tests for retention (toolguard.store.sqlite.maintenance and AuditLog.prune): old events go, the
cut is signed and recorded, verify still passes, the chain continues from the cut, and what
must stay (active tasks, revocations, today's counters) stays."""

from __future__ import annotations

import pytest
from conftest import Clock, raw_sql
from langchain_core.tools import tool

import toolguard as tg
from toolguard.audit import revoke as record_revocation
from toolguard.errors import AuditError
from toolguard.store import prune

DAY = 86400.0


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return f"value of {key}"


def _days_of_tasks(guard: tg.Guard, clock: Clock, days: int) -> list[str]:
    """One task a day with two reads; returns the task ids, oldest first."""
    get = tg.guard(kv_get, guard)
    ids = []
    for day in range(days):
        with guard.task("process-job", job_id=str(day)) as task:
            get.invoke({"key": f"agents:jobs:{day}:input"})
            get.invoke({"key": f"agents:jobs:{day}:output"})
        ids.append(task.task_id)
        clock.advance(DAY)
    return ids


def _count(guard: tg.Guard, table: str) -> int:
    return int(raw_sql(guard, f"SELECT COUNT(*) FROM {table}")[0][0])


def test_prune_then_verify_passes(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 5)
    result = guard.audit.prune(before=clock.now - 2.5 * DAY)
    assert result.removed == 3 * 6  # three days of task_start, 2 x (request, outcome), task_end
    report = guard.audit.verify()
    assert report.ok, report.damage
    assert report.first_seq == result.before_seq
    assert any("pruned" in note for note in report.notes)


def test_prune_records_the_cut_and_the_head_hash(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 3)
    last_removed = guard.audit.events(until=clock.now - 1.5 * DAY)[-1]
    result = guard.audit.prune(before=clock.now - 1.5 * DAY)
    assert result.before_seq == last_removed.seq + 1
    assert result.head_hash == last_removed.hash
    prune_row = guard.store.last_prune()
    assert prune_row is not None
    assert (prune_row["before_seq"], prune_row["head_hash"], prune_row["removed"]) == (
        result.before_seq,
        result.head_hash,
        result.removed,
    )
    assert min(e.seq for e in guard.audit.events()) == result.before_seq


def test_prune_writes_a_signed_prune_record(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 3)
    result = guard.audit.prune(before=clock.now - 1.5 * DAY)
    records = [r for r in guard.audit.integrity.read_checkpoints() if r.get("type") == "prune"]
    assert [(r["before_seq"], r["head_hash"]) for r in records] == [
        (result.before_seq, result.head_hash)
    ]
    assert records[0]["sig"]


def test_prune_removes_ended_tasks_and_expired_credentials(guard: tg.Guard, clock: Clock) -> None:
    ids = _days_of_tasks(guard, clock, 4)  # days 0..3; now is day 4
    result = guard.audit.prune(before=clock.now - 2.5 * DAY)
    assert result.tasks == 2
    assert [guard.audit.task(t) is None for t in ids] == [True, True, False, False]
    # 4 credentials expired before the cut; the identity has limits, so its credentials rows
    # are its admission log and the newest row below the cut stays as the log's boundary
    assert result.credentials == 3
    assert _count(guard, "credentials") == 5


def test_prune_keeps_active_tasks_and_revocations(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="1") as long_task:
        get.invoke({"key": "agents:jobs:1:input"})
        record_revocation(guard.store, jti="some-jti", reason="leaked", now=clock.now)
        clock.advance(3 * DAY)
        revocations = _count(guard, "revocations")
        guard.audit.prune(before=clock.now - DAY)
        assert guard.audit.task(long_task.task_id) is not None
        assert _count(guard, "revocations") == revocations
    assert guard.audit.verify().ok


def test_prune_dry_run_changes_nothing(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 3)
    before = _count(guard, "events")
    result = guard.audit.prune(before=clock.now - 1.5 * DAY, dry_run=True)
    assert (result.dry_run, result.removed, result.tasks) == (True, 12, 2)
    assert _count(guard, "events") == before
    assert guard.store.last_prune() is None
    assert not any(r.get("type") == "prune" for r in guard.audit.integrity.read_checkpoints())


def test_prune_with_nothing_old_removes_nothing(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 2)
    result = guard.audit.prune(before=clock.now - 30 * DAY)
    assert (result.removed, result.before_seq) == (0, None)
    assert guard.store.last_prune() is None


def test_prune_of_empty_trail_removes_nothing(guard: tg.Guard, clock: Clock) -> None:
    assert guard.audit.prune(before=clock.now).removed == 0


def test_prune_everything_then_the_chain_continues(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 2)
    head = guard.audit.head_seq()
    result = guard.audit.prune(before=clock.now)
    assert result.before_seq == head + 1
    assert guard.audit.events() == []
    assert guard.audit.verify().ok
    _days_of_tasks(guard, clock, 1)
    events = guard.audit.events()
    assert events[0].seq == head + 1
    assert events[0].prev_hash == result.head_hash
    report = guard.audit.verify()
    assert report.ok, report.damage


def test_prune_twice_then_verify_passes(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 5)
    guard.audit.prune(before=clock.now - 3.5 * DAY)
    second = guard.audit.prune(before=clock.now - 1.5 * DAY)
    assert second.removed == 12
    report = guard.audit.verify()
    assert report.ok, report.damage
    assert report.first_seq == second.before_seq


def test_prune_without_signed_record_fails_verify(guard: tg.Guard, clock: Clock) -> None:
    """What an attacker with only the database does: delete old events, forge the prunes row."""
    _days_of_tasks(guard, clock, 3)
    prune(guard.store, before=clock.now - 1.5 * DAY, now=clock.now)  # no signed record
    report = guard.audit.verify()
    assert not report.ok
    assert report.damage[0].kind == "deleted"


def test_prune_refuses_when_the_cut_moved(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 3)
    events = _count(guard, "events")
    with pytest.raises(AuditError, match="the trail changed while pruning"):
        prune(guard.store, before=clock.now - 1.5 * DAY, now=clock.now, expect=(2, "0" * 64))
    assert _count(guard, "events") == events


def test_prune_needs_the_signing_key(guard: tg.Guard, clock: Clock) -> None:
    _days_of_tasks(guard, clock, 2)
    public_only = tg.AuditLog(guard.store, keys=tg.KeyRing.from_jwks(guard.keys.jwks()))
    with pytest.raises(AuditError, match="authorizing a prune needs the issuer's signing key"):
        public_only.prune(before=clock.now - DAY)
    assert guard.store.last_prune() is None
