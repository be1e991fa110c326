"""Faults in the outcome/settlement queue: a queued item that cannot be written (a bad value that
got past the checks, a settlement the budget arithmetic or SQLite refuses) must never block the
task end, its revocation, or any later write of the process.

A bad item is written without what is wrong with it (its outcome with no settlement, the reason
in its ``error``, the task tainted, a warning logged); a transient fault of the database (disk
full, locked) still fails the whole transaction, and the items are retried with the next one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, make_config
from langchain_core.tools import BaseTool, tool

import toolguard as tg
from toolguard.budget import Settlement, Spend
from toolguard.chain import Event
from toolguard.store import PendingOutcome, Store


def _config(tmp_path: Path) -> dict[str, Any]:
    config = make_config(tmp_path)
    config["tools"]["meter"] = {"operation": "read", "resource": "{key}", "cost": 0.5}
    config["intents"]["process-job"]["tools"] += ["meter"]
    config["intents"]["process-job"]["budget"] = {"max_calls": 1000, "max_cost": 100.0}
    config["identities"]["agent-runner"]["limits"] = {"cost_per_day": 1000.0}
    return config


class _Tools:
    def __init__(self) -> None:
        self.reported: float | None = None
        self.tokens: list[str] = []

    def all(self) -> list[BaseTool]:
        @tool
        def meter(key: str) -> str:
            """A metered read that reports its actual cost."""
            self.tokens.append(tg.current_credential().token)
            if self.reported is not None:
                tg.report_cost(self.reported)
            return "metered"

        @tool
        def kv_get(key: str) -> str:
            """Read a key."""
            self.tokens.append(tg.current_credential().token)
            return "value"

        return [meter, kv_get]


@pytest.fixture
def tools() -> _Tools:
    return _Tools()


@pytest.fixture
def setup(
    tmp_path: Path, clock: Clock, tools: _Tools
) -> Iterator[tuple[tg.Guard, dict[str, tg.GuardedTool]]]:
    guard = tg.Guard(_config(tmp_path), clock=clock)
    guarded = tg.guard(tools.all(), guard, on_deny="message")
    yield guard, {t.name: t for t in guarded}
    guard.close()


def _task_row(guard: tg.Guard, task_id: str) -> sqlite3.Row:
    row = guard.store.task_row(task_id)
    assert row is not None
    return row


def _assert_ended_and_revoked(
    guard: tg.Guard, tmp_path: Path, clock: Clock, task: tg.TaskSession, token: str
) -> None:
    """The task end and its revocation are in the trail; the credential verifies nowhere."""
    assert not guard.store.pending_ends()
    row = _task_row(guard, task.task_id)
    assert row["status"] != "active" and row["ended_at"] is not None
    assert [e.kind for e in guard.audit.events(task_id=task.task_id)][-1] == "task_end"
    with pytest.raises(tg.CredentialError, match=r"revoked|ended"):
        guard.verifier(audience="kv-service").verify(token)
    fresh = tg.Guard(_config(tmp_path), clock=clock)  # another process's view: the trail only
    try:
        with pytest.raises(tg.CredentialError, match=r"revoked|ended"):
            fresh.verifier(audience="kv-service").verify(token)
    finally:
        fresh.close()


def _assert_a_new_task_runs(guard: tg.Guard, t: dict[str, tg.GuardedTool]) -> None:
    with guard.task("process-job", job_id="42") as task:
        assert t["kv_get"].invoke({"key": "agents:jobs:42:x"}) == "value"
    assert _task_row(guard, task.task_id)["status"] == "ok"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 10**400], ids=repr)
def test_a_permit_changed_by_hand_is_not_settled_and_taints_the_task(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tmp_path: Path,
    clock: Clock,
    bad: float,
) -> None:
    """Bypassing report_cost (``permit.actual_cost = nan``): finish() checks it again."""
    guard, _t = setup
    with guard.task("process-job", job_id="42") as task:
        permit = guard.authorize("meter", {"key": "agents:jobs:42:x"})
        permit.actual_cost = bad
        guard.finish(permit)
    outcome = guard.audit.events(task_id=task.task_id, kind="outcome")[0]
    assert outcome.cost == 0.5 and "reservation stands" in (outcome.error or "")
    assert _task_row(guard, task.task_id)["tainted"] == 1
    _assert_ended_and_revoked(guard, tmp_path, clock, task, permit.credential.token)


@pytest.mark.parametrize(
    "settle",
    [
        (("task", "", float("nan")),),
        (("task", "", float("inf")),),
        (("identity", "{day}", float("nan")),),
        (("identity", "{day}", 10**400),),
        (("task", "", "not a number"),),
    ],
    ids=["task-nan", "task-inf", "identity-nan", "identity-huge", "a-string"],
)
def test_a_poisoned_queued_settlement_is_dropped_and_the_task_end_is_written(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tmp_path: Path,
    clock: Clock,
    settle: tuple[tuple[str, str, Any], ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last line of defence: whatever reaches the outcome queue, a bad item does not fail
    every later transaction. Its outcome is written without the settlement (the reason in its
    ``error``), the task is tainted, a warning is logged, and the end follows."""
    guard, t = setup
    from toolguard.budget import day_key

    with guard.task("process-job", job_id="42") as task:
        permit = guard.authorize("meter", {"key": "agents:jobs:42:x"})
        good = guard.finish  # the real outcome first, then a poisoned copy of it
        good(permit)
        guard.store.flush()
        spends = {  # the task's max_cost counter (slot 1), the identity's cost per day
            "task": Spend(task.task_id, "max_cost", "total", 1.0, 0.5, slot="#", index=1),
            "identity": Spend("agent-runner", "cost_per_day", "day", 5.0, 0.5, slot="c"),
        }
        poisoned = tuple(
            Settlement(spends[s], d.format(day=day_key(clock())), v) for s, d, v in settle
        )
        guard.store.queue_outcome(
            PendingOutcome(
                Event(
                    ts=clock(),
                    task_id=task.task_id,
                    identity="agent-runner",
                    intent="process-job",
                    kind="outcome",
                    tool="meter",
                    jti=permit.credential.jti,
                    outcome="ok",
                    cost=1.0,
                ),
                poisoned,
            )
        )
    assert "could not be written" in caplog.text
    outcomes = guard.audit.events(task_id=task.task_id, kind="outcome")
    assert len(outcomes) == 2 and "settlement could not be written" in (outcomes[1].error or "")
    assert _task_row(guard, task.task_id)["tainted"] == 1
    _assert_ended_and_revoked(guard, tmp_path, clock, task, permit.credential.token)
    _assert_a_new_task_runs(guard, t)
    assert guard.audit.verify().ok


@pytest.mark.parametrize(
    "fault", [OverflowError("int too large"), ValueError("bad"), sqlite3.IntegrityError("x")]
)
def test_a_settlement_that_raises_does_not_block_the_task_end(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tools: _Tools,
    tmp_path: Path,
    clock: Clock,
    fault: Exception,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settlement code itself fails on an item (injected): the outcome is written without
    it, the end and revocation follow in the same transaction."""
    guard, t = setup
    tools.reported = 0.25
    import toolguard.store.sqlite.core as core

    def broken(*args: Any, **kwargs: Any) -> None:
        raise fault

    monkeypatch.setattr(core, "settle", broken)
    with guard.task("process-job", job_id="42") as task:
        t["meter"].invoke({"key": "agents:jobs:42:x"})
    monkeypatch.undo()
    outcome = guard.audit.events(task_id=task.task_id, kind="outcome")[0]
    assert outcome.outcome == "ok" and "settlement could not be written" in (outcome.error or "")
    assert _task_row(guard, task.task_id)["tainted"] == 1
    _assert_ended_and_revoked(guard, tmp_path, clock, task, tools.tokens[0])
    _assert_a_new_task_runs(guard, t)
    assert guard.audit.verify().ok


@pytest.mark.parametrize("rolled_back", [False, True], ids=["statement", "transaction"])
def test_a_transient_database_fault_keeps_the_items_and_retries_them(
    setup: tuple[tg.Guard, dict[str, tg.GuardedTool]],
    tools: _Tools,
    monkeypatch: pytest.MonkeyPatch,
    rolled_back: bool,
) -> None:
    """A disk-full error while writing the queue is not the item's fault: the transaction
    fails closed (AuditError), nothing is dropped, and the next write commits the items.
    SQLite may have rolled the whole transaction back itself (its savepoint gone with it):
    the error reported is still the disk's, never "no such savepoint"."""
    guard, t = setup
    tools.reported = 0.25
    with guard.task("process-job", job_id="42") as task:
        t["meter"].invoke({"key": "agents:jobs:42:x"})
        real = Store._write_outcome
        calls = {"n": 0}

        def full(self: Store, conn: sqlite3.Connection, item: PendingOutcome) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                if rolled_back:  # what SQLite does by itself on SQLITE_FULL or an I/O error
                    conn.execute("ROLLBACK")
                raise sqlite3.OperationalError("database or disk is full")
            real(self, conn, item)

        monkeypatch.setattr(Store, "_write_outcome", full)
        with pytest.raises(tg.AuditError, match="disk is full"):
            guard.store.flush()
        assert len(guard.store._pending) == 1  # kept, not dropped
        guard.store.flush()
        monkeypatch.undo()
    outcome = guard.audit.events(task_id=task.task_id, kind="outcome")[0]
    assert (outcome.outcome, outcome.cost, outcome.error) == ("ok", 0.25, None)
    assert _task_row(guard, task.task_id)["tainted"] == 0
