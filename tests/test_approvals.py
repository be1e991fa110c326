"""Human approval bound to the exact action (issue 14): approver, queue, CLI, digests."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, make_config

import toolguard as tg
from toolguard.approval import action_digest, parse_decision
from toolguard.store.approvals import find_requests

APPROVE = {"delete": ["agents:jobs:{job_id}:*"], "write": ["agents:jobs:{job_id}:final"]}


def approval_config(tmp_path: Path, **intent: Any) -> dict[str, Any]:
    config = make_config(tmp_path)
    job = config["intents"]["process-job"]
    job["tools"] = ["kv_get", "kv_set", "kv_delete"]
    job["allow"]["delete"] = ["agents:jobs:{job_id}:*"]
    job["approve"] = copy.deepcopy(APPROVE)
    job["approval_ttl"] = "30m"
    job.update(intent)
    return config


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., tg.Guard]]:
    guards: list[tg.Guard] = []

    def factory(approver: Any = None, **intent: Any) -> tg.Guard:
        guard = tg.Guard(approval_config(tmp_path, **intent), clock=clock, approver=approver)
        guards.append(guard)
        return guard

    yield factory
    for guard in guards:
        guard.close()


def run(guard: tg.Guard, tool: str, args: dict[str, Any], cid: str | None = None) -> str:
    """One guarded call: its credential id, or PolicyDenied."""
    permit = guard.authorize(tool, args, correlation_id=cid)
    guard.finish(permit)
    return permit.credential.jti


def kinds(guard: tg.Guard, task_id: str) -> list[str]:
    return [e.kind for e in guard.audit.events(task_id=task_id)]


# -- approver -----------------------------------------------------------------------------------


def test_an_approved_call_runs_after_its_approval_with_a_credential(make: Callable[..., tg.Guard]) -> None:
    seen: list[dict[str, Any]] = []

    def approver(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(request))
        return {"approved": True, "by": "alice", "note": "ok to delete"}

    guard = make(approver)
    with guard.task("process-job", job_id="42") as task:
        jti = run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="call-1")
        run(guard, "kv_get", {"key": "agents:jobs:42:tmp"})  # not held
    (request,) = seen
    assert {"request_id", "task_id", "tool", "operation", "resources", "args", "digest",
            "reason", "expires_at"} <= set(request)  # fmt: skip
    assert request["tool"] == "kv_delete" and request["resources"] == ["agents:jobs:42:tmp"]
    assert request["args"] == {"key": "agents:jobs:42:tmp"}
    assert request["task_id"] == task.task_id and len(request["digest"]) == 64
    assert "intents.process-job.approve.delete" in request["reason"]
    events = list(guard.audit.events(task_id=task.task_id))
    order = [e.kind for e in events]
    assert order[:5] == ["task_start", "approval_requested", "approved", "request", "outcome"]
    approved = events[2]
    assert approved.correlation_id == "call-1" and approved.reason == "approved by alice: ok to delete"
    request_event = events[3]
    assert request_event.jti == jti and request["request_id"] in (request_event.reason or "")
    assert events[1].jti is None and events[2].jti is None  # no credential before approval
    assert guard.audit.verify().ok


def test_a_rejected_call_is_denied_with_a_reason_the_model_reads_and_spends_nothing(
    make: Callable[..., tg.Guard],
) -> None:
    guard = make(lambda request: {"approved": False, "by": "bob", "note": "not today"})
    with guard.task("process-job", job_id="42") as task:
        with pytest.raises(tg.ApprovalDenied, match="rejected by bob: not today") as info:
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
        run(guard, "kv_get", {"key": "agents:jobs:42:x"})  # the task goes on
    assert info.value.request_id
    assert kinds(guard, task.task_id)[:4] == ["task_start", "approval_requested", "rejected", "denied"]
    with guard.store.conn as conn:
        rows = conn.execute("SELECT tool FROM credentials WHERE task_id = ?", (task.task_id,))
        assert [r[0] for r in rows] == ["kv_get"]  # the refused call has no credential
    assert guard.audit.verify().ok


@pytest.mark.parametrize(
    "decision",
    [
        None,
        "yes",
        1,
        {"approved": "true", "by": "x"},
        {"approved": True},
        {"approved": True, "by": ""},
        {"approved": True, "by": 7},
        {"approved": True, "by": "eve\u202e"},
        {"approved": True, "by": "x" * 5000},
        {"approved": True, "by": "alice", "note": "n" * 5000},
        {"approved": True, "by": "alice", "extra": 1},
        {"approved": True, "by": "alice", "request_id": "not-this-one"},
        {"approved": True, "by": "alice", "digest": "0" * 64},
    ],
)
def test_a_decision_that_is_not_one_is_a_denial_never_an_allow(
    make: Callable[..., tg.Guard], decision: Any
) -> None:
    guard = make(lambda request: decision)
    with guard.task("process-job", job_id="42") as task:
        with pytest.raises(tg.ApprovalDenied, match="no valid decision"):
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
    assert "request" not in kinds(guard, task.task_id)


def test_an_approver_that_raises_denies_the_call(make: Callable[..., tg.Guard]) -> None:
    def approver(request: Any) -> bool:
        raise RuntimeError("pager down")

    guard = make(approver)
    with guard.task("process-job", job_id="42"):
        with pytest.raises(tg.ApprovalDenied, match="pager down"):
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})


def test_an_async_approver_and_a_bare_bool(make: Callable[..., tg.Guard]) -> None:
    async def approver(request: Any) -> bool:
        return True

    guard = make(approver)
    with guard.task("process-job", job_id="42") as task:
        run(guard, "kv_set", {"key": "agents:jobs:42:final", "value": "done"})
    approved = [e for e in guard.audit.events(task_id=task.task_id) if e.kind == "approved"]
    assert approved[0].reason == "approved by approver"


def test_only_calls_matching_an_approve_rule_are_held(make: Callable[..., tg.Guard]) -> None:
    asked: list[str] = []
    guard = make(lambda r: asked.append(r["tool"]) or True)
    with guard.task("process-job", job_id="42"):
        run(guard, "kv_set", {"key": "agents:jobs:42:draft", "value": "x"})  # write, not final
        run(guard, "kv_get", {"key": "agents:jobs:42:final"})
        run(guard, "kv_set", {"key": "agents:jobs:42:final", "value": "x"})
    assert asked == ["kv_set"]


def test_a_denied_call_is_never_held_for_approval(make: Callable[..., tg.Guard]) -> None:
    asked: list[Any] = []
    guard = make(lambda r: asked.append(r) or True)
    with guard.task("process-job", job_id="42"):
        with pytest.raises(tg.PolicyDenied, match="outside"):
            run(guard, "kv_delete", {"key": "agents:jobs:43:tmp"})
    assert asked == []


def test_the_budget_is_spent_only_after_approval(make: Callable[..., tg.Guard]) -> None:
    guard = make(lambda r: False, budget={"max_calls": 1})
    with guard.task("process-job", job_id="42"):
        for _ in range(3):  # refused calls spend nothing: the one call left still runs
            with pytest.raises(tg.ApprovalDenied):
                run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
        run(guard, "kv_get", {"key": "agents:jobs:42:x"})


# -- digest binding -------------------------------------------------------------------------------


def test_the_digest_binds_every_part_of_the_action() -> None:
    base = dict(tool="kv_delete", operation="delete", resources=["a"], args={"key": "a"},
                task_id="t1", intent="process-job", config="c" * 64)  # fmt: skip
    digest = action_digest(**base)  # type: ignore[arg-type]
    assert digest == action_digest(**{**base, "args": {"key": "a"}})  # type: ignore[arg-type]
    for change in ({"tool": "kv_set"}, {"operation": "write"}, {"resources": ["b"]},
                   {"args": {"key": "a", "x": 1}}, {"task_id": "t2"}, {"intent": "other"},
                   {"config": "d" * 64}):  # fmt: skip
        assert action_digest(**{**base, **change}) != digest  # type: ignore[arg-type]


def test_a_call_whose_arguments_are_not_json_is_denied(make: Callable[..., tg.Guard]) -> None:
    guard = make(lambda r: True)
    with guard.task("process-job", job_id="42"):
        with pytest.raises(tg.ApprovalDenied, match="cannot be bound"):
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp", "n": float("nan")})


def test_parse_decision_accepts_the_contract_shapes() -> None:
    assert parse_decision(True, default_by="x").approved
    d = parse_decision({"approved": False, "by": "alice", "note": "no"}, default_by="x")
    assert (d.approved, d.by, d.note) == (False, "alice", "no")
