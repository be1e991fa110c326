"""``Guard.resume``: a task started by one process (here: another guard on the same database)
continues in another, e.g. an agent run interrupted for approval and resumed by a second
worker. The refusals are audited; the budget continues from the trail; ending it revokes for
every process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Clock, make_config, raw_sql, store_arg
from langchain_core.tools import tool

import toolguard as tg
from toolguard.cli import CliContext, main
from toolguard.store.sqlite.budgets import usage

KEY = "agents:jobs:42:state"


@tool
def kv_set(key: str, value: str) -> str:
    """Write a key; returns the id of the task its credential is for."""
    return tg.current_credential().task_id


@pytest.fixture
def workers(make_guard: Callable[..., tg.Guard], clock: Clock) -> tuple[tg.Guard, tg.Guard]:
    """Two guards on one database, as two worker processes."""
    return make_guard(clock=clock), make_guard(clock=clock)


def _refusal(guard: tg.Guard, task_id: str) -> tg.AuditEvent:
    (denied,) = guard.audit.events(task_id=task_id, kind="denied")
    assert denied.rule == "task.resume"
    return denied


def test_resume_continues_the_task_with_its_budget_and_ends_it_for_everyone(
    workers: tuple[tg.Guard, tg.Guard],
) -> None:
    here, there = workers
    set_here, set_there = tg.guard(kv_set, here), tg.guard(kv_set, there, on_deny="raise")
    task = here.task("process-job", job_id="42").start()  # the first worker's, still running
    write_here = task.carry(lambda: set_here.invoke({"key": KEY, "value": "a"}))
    for _ in range(4):  # 4 of the intent's per_tool.kv_set 5
        assert write_here() == task.task_id

    with there.resume(task.task_id) as resumed:
        assert (resumed.task_id, resumed.intent, resumed.params) == (
            task.task_id,
            "process-job",
            {"job_id": "42"},
        )
        assert (resumed.started_at, resumed.deadline) == (task.started_at, task.deadline)
        assert set_there.invoke({"key": KEY, "value": "b"}) == task.task_id
        with pytest.raises(tg.BudgetExceeded) as info:  # counted from the trail: 5 of 5
            set_there.invoke({"key": KEY, "value": "c"})
        assert (info.value.scope, info.value.used) == ("task.per_tool.kv_set", 5)

    kinds = [e.kind for e in here.audit.events(task_id=task.task_id)]
    assert kinds[0] == "task_start" and "task_resume" in kinds and kinds[-1] == "task_end"
    assert here.store.task_row(task.task_id)["status"] == "ok"  # type: ignore[index]
    assert "the task was revoked (task ended (ok))" in write_here()  # the first worker stops too


def test_resume_refuses_an_unknown_task(workers: tuple[tg.Guard, tg.Guard]) -> None:
    _, there = workers
    with pytest.raises(tg.PolicyDenied, match="no such task") as info:
        there.resume("0" * 32)
    assert info.value.rule == "task.resume"
    _refusal(there, "0" * 32)


def test_resume_refuses_an_ended_task(workers: tuple[tg.Guard, tg.Guard]) -> None:
    here, there = workers
    with here.task("process-job", job_id="42") as task:
        pass
    with pytest.raises(tg.PolicyDenied, match=r"has ended \(ok\)"):
        there.resume(task.task_id)
    _refusal(there, task.task_id)


def test_resume_refuses_a_task_past_its_ttl(
    workers: tuple[tg.Guard, tg.Guard], clock: Clock
) -> None:
    here, there = workers
    task = here.task("process-job", job_id="42").start()
    clock.advance(15 * 60)
    with pytest.raises(tg.PolicyDenied, match="past its time limit"):
        there.resume(task.task_id)


def test_resume_refuses_a_revoked_task_and_a_disabled_identity(
    workers: tuple[tg.Guard, tg.Guard],
) -> None:
    here, there = workers
    revoked = here.task("process-job", job_id="42").start()
    other = here.task("process-job", job_id="43").start()
    # revoked outside the store's bookkeeping (as a hand-written row would be): still refused
    raw_sql(
        here,
        "INSERT INTO revocations (scope, value, reason, ts, by) VALUES ('task', ?, ?, ?, ?)",
        (revoked.task_id, "incident", here.clock(), "test"),
    )
    with pytest.raises(tg.PolicyDenied, match="was revoked"):
        there.resume(revoked.task_id)
    raw_sql(  # disabled by hand, task still active
        here,
        "INSERT INTO identity_state (identity, disabled, reason, ts) VALUES (?, 1, ?, ?)",
        ("agent-runner", "under review", here.clock()),
    )
    with pytest.raises(tg.PolicyDenied, match=r"identity 'agent-runner' is disabled"):
        there.resume(other.task_id)
    here.revoke(identity="agent-runner", reason="incident")
    with pytest.raises(tg.PolicyDenied, match=r"has ended \(revoked\)"):
        there.resume(other.task_id)


def test_resume_refuses_a_task_of_another_intent(workers: tuple[tg.Guard, tg.Guard]) -> None:
    here, there = workers
    task = here.task("process-job", job_id="42").start()
    with pytest.raises(tg.PolicyDenied, match="not a task of intent 'summarise-job'"):
        there.resume(task.task_id, intent="summarise-job")
    _refusal(there, task.task_id)
    assert there.resume(task.task_id, intent="process-job").status == "active"


def test_resume_of_a_delegated_task_keeps_its_chain_and_leaves_the_parent_running(
    workers: tuple[tg.Guard, tg.Guard],
) -> None:
    here, there = workers
    seen: list[tg.Credential] = []

    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        seen.append(tg.current_credential())
        return "v"

    get_there = tg.guard(kv_get, there, on_deny="raise")
    parent = here.task("process-job", job_id="42").start()
    child = parent.delegate("summarise-job", job_id="42").start()

    with there.resume(child.task_id) as resumed:
        assert resumed.chain == (child.task_id, parent.task_id)
        get_there.invoke({"key": "agents:jobs:42:in"})
        claims: dict[str, Any] = there.verifier(audience="kv-service").verify(
            seen[0].token, operation="read", resource="agents:jobs:42:in"
        )
    assert claims["act"] == {"sub": "agent-runner", "task_id": parent.task_id}
    assert here.store.task_row(parent.task_id)["status"] == "active"  # type: ignore[index]
    assert here.store.task_row(child.task_id)["status"] == "ok"  # type: ignore[index]
    used = usage(
        here.store.conn, now=here.clock(), task_id=parent.task_id, budget=parent.bound.budget
    )
    assert used["task.max_calls"] == 1  # the parent's budget counts its child's call
    parent.end()


def _first_worker(config: dict[str, Any], out: Any) -> None:
    """A spawned process: starts a task, writes 4 times, and exits without ending it (as a
    worker does when its run pauses for a human)."""
    guard = tg.Guard(config)
    task = guard.task("process-job", job_id="42").start()
    write = task.carry(lambda: tg.guard(kv_set, guard).invoke({"key": KEY, "value": "a"}))
    out.put([write() for _ in range(4)])
    guard.close()


@pytest.mark.slow
def test_resume_in_a_second_process_counts_what_the_first_spent(
    make_guard: Callable[..., tg.Guard], tmp_path: Path
) -> None:
    guard = make_guard()  # the real clock: the child process has its own
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    config = make_config(tmp_path, store=guard.config.store, checkpoints=guard.config.checkpoints)
    child = ctx.Process(target=_first_worker, args=(config, out))
    child.start()
    (task_id,) = set(out.get(timeout=60))
    child.join(60)
    assert child.exitcode == 0

    write = tg.guard(kv_set, guard, on_deny="raise")
    with guard.resume(task_id, intent="process-job"):
        assert write.invoke({"key": KEY, "value": "b"}) == task_id  # the 5th of 5
        with pytest.raises(tg.BudgetExceeded, match=r"per_tool\.kv_set"):
            write.invoke({"key": KEY, "value": "c"})
    assert guard.store.task_row(task_id)["status"] == "ok"  # type: ignore[index]


def test_the_viewer_shows_where_a_task_was_resumed(
    workers: tuple[tg.Guard, tg.Guard], clock: Clock
) -> None:
    here, there = workers
    task = here.task("process-job", job_id="42").start()
    with there.resume(task.task_id):
        pass
    context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
    db = store_arg(here)
    result = CliRunner().invoke(main, ["audit", "show", task.task_id, "--db", db], obj=context)
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.output.splitlines() if "task_resume" in ln]
    assert "resumed" in line
    html = CliRunner().invoke(
        main,
        ["audit", "export", "--task", task.task_id, "--format", "html", "--db", db],
        obj=context,
    )
    assert html.exit_code == 0, html.output
    assert "task_resume" in html.output and "resumed" in html.output
