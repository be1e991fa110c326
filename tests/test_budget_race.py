"""Budgets hold exactly under contention and across processes: 4 processes x 4 threads on one
store (``spawn``), a daily quota that survives a restart, and a bounded wait for the database
lock that fails closed with AuditError. On both backends (tests/conftest.py, BOTH_BACKENDS:
``store_config``), but the SQLite lock test (PostgreSQL's: tests/test_store_postgres.py).

The clock is frozen in every process, so a per-minute limit cannot free up during the race and
"exactly the limit" is the only right answer.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, raw_sql

import toolguard as tg
from toolguard.store.sqlite.budgets import usage

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` skips them

FROZEN = 1_790_000_000.0
KEY = {"key": "agents:jobs:42:state"}
PROCESSES = 4
THREADS = 4
TASK_MAX_CALLS = 100
MINUTE_LIMIT = 300
DAY_LIMIT = 250
_TIMEOUT = 120.0


def _frozen() -> float:
    return FROZEN


def _race_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    allow = {"read": ["agents:jobs:*"]}
    return make_config(
        tmp_path,
        identities={
            "solo": {"allow": allow},
            "racer-m": {"allow": allow, "limits": {"requests_per_minute": MINUTE_LIMIT}},
            "racer-d": {"allow": allow, "limits": {"requests_per_day": DAY_LIMIT}},
        },
        tools={"kv_get": {"operation": "read", "resource": "{key}"}},
        intents={
            name: {
                "identity": identity,
                "tools": ["kv_get"],
                "allow": {"read": ["agents:jobs:{job_id}:*"]},
                "budget": budget,
            }
            for name, identity, budget in (
                ("race-task", "solo", {"max_calls": TASK_MAX_CALLS}),
                ("race-minute", "racer-m", {}),
                ("race-day", "racer-d", {}),
            )
        },
        **overrides,
    )


def _hammer(guard: tg.Guard, task: tg.TaskSession, threads: int) -> dict[str, Any]:
    """``threads`` threads call in ``task`` until each is refused once."""
    lock = threading.Lock()
    totals: dict[str, Any] = {"allowed": 0, "refused": 0, "audit_errors": 0, "max_wait": 0.0}

    def worker() -> None:
        allowed = audit_errors = 0
        longest = 0.0
        while True:
            start = time.monotonic()
            try:
                permit = guard.authorize("kv_get", KEY)
            except tg.BudgetExceeded:
                break
            except tg.AuditError:
                audit_errors += 1
                continue
            finally:
                longest = max(longest, time.monotonic() - start)
            guard.finish(permit)
            allowed += 1
        with lock:
            totals["allowed"] += allowed
            totals["refused"] += 1
            totals["audit_errors"] += audit_errors
            totals["max_wait"] = max(totals["max_wait"], longest)

    pool = [threading.Thread(target=task.carry(worker)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return totals


def _race_child(config: dict[str, Any], barrier: Any, out: Any) -> None:
    """A process: three phases, all processes in step, each with its own task per phase."""
    guard = tg.Guard(config, clock=_frozen)
    guard.store.open()  # connect before the race (see test_race_...: first opens)
    results: dict[str, Any] = {}
    try:
        for intent in ("race-task", "race-minute", "race-day"):
            barrier.wait(_TIMEOUT)
            with guard.task(intent, job_id="42") as task:
                results[intent] = {"task_id": task.task_id, **_hammer(guard, task, THREADS)}
    finally:
        guard.close()
        out.put(results)


def _spend_child(config: dict[str, Any], most: int, out: Any) -> None:
    """A process that spends up to ``most`` calls of the daily quota, then exits."""
    guard = tg.Guard(config, clock=_frozen)
    allowed = 0
    try:
        with guard.task("race-day", job_id="42"):
            while allowed < most:
                try:
                    permit = guard.authorize("kv_get", KEY)
                except tg.BudgetExceeded:
                    break
                guard.finish(permit)
                allowed += 1
    finally:
        guard.close()
        out.put(allowed)


def _spawn(target: Callable[..., None], *args: Any) -> list[Any]:
    """Run ``target(*args, out)`` in PROCESSES or 1 spawned processes; their results."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    count = PROCESSES if target is _race_child else 1
    procs = [ctx.Process(target=target, args=(*args, out)) for _ in range(count)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=_TIMEOUT) for _ in procs]
    finally:
        for p in procs:
            p.join(_TIMEOUT)
    assert all(p.exitcode == 0 for p in procs)
    return results


def test_race_across_processes_and_threads_spends_exactly_the_limits(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    config = _race_config(tmp_path, **store_config)
    # Schema and signing key before the race; the parent's connection stays open meanwhile:
    # several processes opening a WAL database nobody holds open can get "database is locked"
    # from PRAGMA journal_mode=WAL (Store._connect does not retry it).
    holder = tg.Guard(config, clock=_frozen).store.open()
    barrier = multiprocessing.get_context("spawn").Barrier(PROCESSES)
    try:
        results = _spawn(_race_child, config, barrier)
    finally:
        holder.close()

    # every process's task got exactly its max_calls, from 4 threads at once
    assert [r["race-task"]["allowed"] for r in results] == [TASK_MAX_CALLS] * PROCESSES
    # the identity limits, shared by 4 processes x 4 threads, admitted exactly their limit
    assert sum(r["race-minute"]["allowed"] for r in results) == MINUTE_LIMIT
    assert sum(r["race-day"]["allowed"] for r in results) == DAY_LIMIT
    # fair and bounded: no call waited past busy_timeout, none failed for lack of the lock
    phases = [p for r in results for p in r.values()]
    assert sum(p["audit_errors"] for p in phases) == 0
    assert max(p["max_wait"] for p in phases) < 5.0

    guard = tg.Guard(config, clock=_frozen)
    try:
        for intent, limit in (
            ("race-task", TASK_MAX_CALLS * PROCESSES),
            ("race-minute", MINUTE_LIMIT),
            ("race-day", DAY_LIMIT),
        ):
            requests = guard.audit.events(intent=intent, kind="request")
            assert len(requests) == limit  # the trail holds exactly the allowed calls
            assert len(guard.audit.events(intent=intent, kind="outcome")) == limit
            assert len(guard.audit.events(intent=intent, kind="denied")) == PROCESSES * THREADS
        conn = guard.store.conn
        for r in results:
            task_id = r["race-task"]["task_id"]
            bound = guard.policy.bind("race-task", {"job_id": "42"})
            used = usage(conn, now=FROZEN, task_id=task_id, budget=bound.budget)
            assert used == {"task.max_calls": TASK_MAX_CALLS}
        assert (
            usage(conn, now=FROZEN, identity="racer-m")["identity.racer-m.requests_per_minute"]
            == MINUTE_LIMIT
        )
        assert (
            usage(conn, now=FROZEN, identity="racer-d")["identity.racer-d.requests_per_day"]
            == DAY_LIMIT
        )
        report = guard.audit.verify()
        assert report.ok, report
    finally:
        guard.close()


def test_a_daily_quota_spent_by_one_process_stays_spent_for_the_next(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    config = _race_config(tmp_path, **store_config)
    guard = tg.Guard(config, clock=_frozen)
    guard.close()
    assert _spawn(_spend_child, config, 30) == [30]
    assert _spawn(_spend_child, config, 1000) == [DAY_LIMIT - 30]
    ((requests,),) = raw_sql(
        guard, "SELECT COUNT(*) FROM events WHERE kind = 'request' AND identity = 'racer-d'"
    )
    assert requests == DAY_LIMIT


@pytest.mark.sqlite_only  # SQLite's file lock (PostgreSQL's writer lock: test_store_postgres)
def test_the_wait_for_the_lock_is_bounded_and_fails_closed(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    config = _race_config(tmp_path, busy_timeout=0.3)
    guard = tg.Guard(config, clock=_frozen)
    blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    try:
        with guard.task("race-day", job_id="42"):
            permit = guard.authorize("kv_get", KEY)
            guard.finish(permit)
            blocker.execute("BEGIN EXCLUSIVE")
            start = time.monotonic()
            with pytest.raises(tg.AuditError, match=r"within busy_timeout \(0.3s.*nothing ran"):
                guard.authorize("kv_get", KEY)
            waited = time.monotonic() - start
            blocker.execute("ROLLBACK")
            assert 0.3 <= waited < 3.0
            assert usage(guard.store.conn, now=FROZEN, identity="racer-d") == {
                "identity.racer-d.requests_per_minute": 1,
                "identity.racer-d.writes_per_minute": 0,
                "identity.racer-d.deletes_per_minute": 0,
                "identity.racer-d.requests_per_day": 1,
                "identity.racer-d.cost_per_day": 0.0,
            }
            guard.finish(guard.authorize("kv_get", KEY))  # the lock is free again
        assert len(guard.audit.events(kind="request")) == 2
    finally:
        blocker.close()
        guard.close()


def test_threads_of_one_process_wait_their_turn_without_errors(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    config = _race_config(tmp_path, busy_timeout=2.0, **store_config)
    guard = tg.Guard(config, clock=_frozen)
    try:
        with guard.task("race-task", job_id="42") as task:
            totals = _hammer(guard, task, 8)
        assert (totals["allowed"], totals["audit_errors"]) == (TASK_MAX_CALLS, 0)
    finally:
        guard.close()


def _forked_spender(guard: tg.Guard, task: tg.TaskSession, go: Any, out: Any) -> None:
    """A forked child: once the parent has spent more, spend the task until refused."""
    go.wait(_TIMEOUT)
    allowed = 0
    with contextlib.suppress(tg.BudgetExceeded):
        while True:
            permit = task.carry(guard.authorize)("kv_get", KEY)
            guard.finish(permit)
            allowed += 1
    guard.store.flush()
    out.put(allowed)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_counts_its_task_from_the_trail_not_from_a_stale_copy(
    tmp_path: Path, store_config: dict[str, str]
) -> None:
    """Counters copied into a forked child are dropped: the child counts the task from the
    trail, which holds the calls the parent made after the fork."""
    guard = tg.Guard(_race_config(tmp_path, **store_config), clock=_frozen)
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    try:
        with guard.task("race-task", job_id="42") as task:
            for _ in range(TASK_MAX_CALLS - 10):
                guard.finish(guard.authorize("kv_get", KEY))
            guard.store.flush()
            child = ctx.Process(target=_forked_spender, args=(guard, task, go, out))
            child.start()
            for _ in range(6):  # after the fork: the child's copy does not know these
                guard.finish(guard.authorize("kv_get", KEY))
            guard.store.flush()
            go.set()
            assert out.get(timeout=_TIMEOUT) == 4
            child.join(_TIMEOUT)
            assert child.exitcode == 0
    finally:
        guard.close()
    assert len(guard.audit.events(intent="race-task", kind="request")) == TASK_MAX_CALLS
