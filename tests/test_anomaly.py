"""Tests for the ``on_anomaly`` rule: an identity whose attempted calls (admitted and refused)
within 60 seconds pass a multiple of a per-minute limit is revoked in the same transaction as
the call that crossed it; its tasks end, its outstanding credentials are rejected by verifiers,
and the trail says why."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock, raw_sql

import toolguard as tg

JOB = "agents:jobs:42:state"


def _guard(make_guard: Callable[..., tg.Guard], clock: Clock, limits: dict[str, Any]) -> tg.Guard:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["limits"] = limits
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["budget"] = {}  # only the identity's limits here
    return make_guard(clock=clock, identities=identities, intents=intents)


def _attempt(guard: tg.Guard, tool: str = "kv_get") -> tuple[str, Any]:
    """One call: ("ok", permit), ("budget", BudgetExceeded) or ("denied", PolicyDenied)."""
    try:
        permit = guard.authorize(tool, {"key": JOB, "value": "v"})
    except tg.BudgetExceeded as exc:
        return "budget", exc
    except tg.PolicyDenied as exc:
        return "denied", exc
    guard.finish(permit)
    return "ok", permit


RULE = {"requests_per_minute": 2, "on_anomaly": {"revoke_when_rate_exceeds": "3x"}}


def test_rate_past_the_multiple_revokes_the_identity_and_its_credentials(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, RULE)
    verifier = guard.verifier(audience="kv-service")
    with (
        guard.task("process-job", job_id="42") as task,
        guard.task("process-job", job_id="42") as other,
    ):
        kinds = []
        tokens = []
        for _ in range(6):  # 2 admitted + 4 refused = 6 attempts: at the threshold, not past
            kind, result = _attempt(guard)
            kinds.append(kind)
            if kind == "ok":
                tokens.append(result.credential.token)
        assert kinds == ["ok", "ok", "budget", "budget", "budget", "budget"]
        assert verifier.verify(tokens[0])["task_id"] == other.task_id
        clock.advance(1)
        kind, error = _attempt(guard)  # the 7th attempt within 60 s: past 3 x 2
        assert kind == "denied"
        assert error.rule == "identities.agent-runner.limits.on_anomaly"
        assert "identity 'agent-runner' was revoked" in error.reason
        assert "7 calls attempted within 60s, more than 6" in error.reason
        for token in tokens:
            with pytest.raises(tg.CredentialRevoked):
                verifier.verify(token)
        kind, error = _attempt(guard)
        assert (kind, error.rule) == ("denied", "revocation.task")
    # both active tasks of the identity ended as revoked, whatever ran them
    for t in (task, other):
        row = guard.store.task_row(t.task_id)
        assert row is not None and row["status"] == "revoked"
    (revoke,) = guard.audit.events(kind="revoke")
    assert revoke.identity == "agent-runner"
    assert revoke.rule == "identities.agent-runner.limits.on_anomaly"
    assert "on_anomaly: 7 calls attempted within 60s" in (revoke.reason or "")
    details = json.loads(revoke.args or "{}")
    assert details == {
        "attempts": 7,
        "scope": "identity.agent-runner.requests_per_minute",
        "threshold": 6.0,
        "trigger_task": other.task_id,
    }


def test_the_revocation_commits_with_the_denial_that_triggered_it(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, RULE)
    with guard.task("process-job", job_id="42") as task:
        for _ in range(7):
            _attempt(guard)
    events = guard.audit.events()
    denied = [e for e in events if e.rule == "identities.agent-runner.limits.on_anomaly"]
    assert [e.kind for e in denied] == ["denied", "revoke"]
    assert denied[1].seq == denied[0].seq + 1 and denied[1].ts == denied[0].ts
    rows = raw_sql(
        guard, "SELECT scope, value, by FROM revocations WHERE ts = ? ORDER BY id", (denied[0].ts,)
    )
    assert rows[0] == ("identity", "agent-runner", "anomaly")
    assert ("task", task.task_id, "anomaly") in rows


def test_attempts_below_the_threshold_and_old_attempts_do_not_revoke(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, RULE)
    with guard.task("process-job", job_id="42"):
        for _ in range(10):
            for _ in range(6):  # 6 attempts in a burst, then a quiet minute: never past 6
                kind, _ = _attempt(guard)
                assert kind in ("ok", "budget")
            clock.advance(60)
    assert guard.audit.events(kind="revoke") == []


def test_a_watch_counts_attempts_of_its_own_class(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    limits = {"writes_per_minute": 1, "on_anomaly": {"revoke_when_rate_exceeds": 2}}
    guard = _guard(make_guard, clock, limits)
    with guard.task("process-job", job_id="42"):
        assert [_attempt(guard, "kv_get")[0] for _ in range(20)] == ["ok"] * 20  # reads
        assert [_attempt(guard, "kv_set")[0] for _ in range(2)] == ["ok", "budget"]
        kind, error = _attempt(guard, "kv_set")  # the third write attempt: past 2 x 1
    assert kind == "denied" and error.rule == "identities.agent-runner.limits.on_anomaly"


def test_refusals_by_any_scope_count_as_attempts(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    limits = {
        "requests_per_minute": 10,
        "requests_per_day": 1,
        "on_anomaly": {"revoke_when_rate_exceeds": 1.5},
    }
    guard = _guard(make_guard, clock, limits)
    with guard.task("process-job", job_id="42"):
        kinds = [_attempt(guard)[0] for _ in range(16)]
    assert kinds == ["ok"] + ["budget"] * 14 + ["denied"]  # the 16th attempt: past 15


def test_a_task_started_after_the_revocation_runs(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    guard = _guard(make_guard, clock, RULE)
    with guard.task("process-job", job_id="42"):
        for _ in range(7):
            _attempt(guard)
    clock.advance(61)
    with guard.task("process-job", job_id="42"):
        kind, permit = _attempt(guard)
        assert kind == "ok"
        assert guard.verifier(audience="kv-service").verify(permit.credential.token)
