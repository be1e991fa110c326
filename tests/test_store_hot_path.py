"""The store's work per guarded call (issue 15): the statements it runs, and the fallback of the
savepoint-free write of queued outcomes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import toolguard as tg
from toolguard.chain import Event
from toolguard.store import PendingOutcome

JOB_KEY = "agents:jobs:42:state"


def _statements(guard: tg.Guard) -> list[str]:
    """Every SQL statement the process's writer runs from now on."""
    seen: list[str] = []
    writer = guard.store._writer
    assert writer is not None
    writer[1].set_trace_callback(seen.append)
    return seen


def _outcome(task: tg.TaskSession, permit: Any, **fields: Any) -> PendingOutcome:
    return PendingOutcome(
        Event(
            ts=1_790_000_000.0,
            task_id=task.task_id,
            identity=task.identity,
            intent=task.intent,
            kind="outcome",
            tool="kv_get",
            jti=permit.credential.jti,
            outcome="ok",
            **fields,
        )
    )


def test_a_call_writes_the_previous_outcome_without_a_savepoint(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", {"key": JOB_KEY}))
        seen = _statements(guard)
        guard.finish(guard.authorize("kv_get", {"key": JOB_KEY}))  # writes the first outcome
    call = seen[: seen.index("COMMIT") + 1]
    assert call[0] == "BEGIN IMMEDIATE"
    assert not [s for s in call if s.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))], call
    inserts = [s for s in call if s.startswith("INSERT INTO events")]
    assert len(inserts) == 2  # the previous call's outcome and this call's request
    assert guard.audit.verify().ok


def test_a_bad_queued_item_among_good_ones_falls_back_to_savepoints(
    guard: tg.Guard, caplog: pytest.LogCaptureFixture
) -> None:
    """Good, bad (a value SQLite refuses), good: the first attempt (no savepoints) fails, the
    transaction starts over with a savepoint per item; both good outcomes are written as they
    are, the bad one without its bad values (tainting its task), the call itself goes on."""
    with guard.task("process-job", job_id="42") as task:
        permits = [guard.authorize("kv_get", {"key": JOB_KEY}) for _ in range(3)]
        store = guard.store
        store.flush()
        store.queue_outcome(_outcome(task, permits[0], correlation_id="good-1"))
        store.queue_outcome(_outcome(task, permits[1], correlation_id="bad", cost=object()))
        store.queue_outcome(_outcome(task, permits[2], correlation_id="good-2"))
        seen = _statements(guard)
        with caplog.at_level(logging.WARNING, logger="toolguard"):
            guard.finish(guard.authorize("kv_get", {"key": JOB_KEY}))
    assert "could not be written" in caplog.text
    call = seen[: seen.index("COMMIT") + 1]
    assert call.count("BEGIN IMMEDIATE") == 2 and call.count("ROLLBACK") == 1
    assert call.count("SAVEPOINT pending") == 3
    outcomes = {e.correlation_id: e for e in guard.audit.events(kind="outcome")}
    assert {"good-1", "good-2", "bad"} <= set(outcomes)
    assert outcomes["good-1"].error is None and outcomes["good-2"].error is None
    assert "could not be written" in (outcomes["bad"].error or "")
    requests = guard.audit.events(task_id=task.task_id, kind="request")
    assert len(requests) == 4  # the call after the bad item was recorded and allowed
    row = guard.audit.tasks(task_id=task.task_id)[0]
    assert row["status"] == "ok"
    assert guard.audit.verify().ok
