"""Tests for toolguard.audit: event and task queries, timelines (request joined with outcome,
incomplete calls, revocations from outside the task), following new events, usage summaries
(rate peaks, quota use, spikes, idle identities), usage over time, and the shared revocation
helpers. Every trail is written by the real pipeline."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock
from langchain_core.tools import tool

import toolguard as tg
from toolguard import audit as audit_mod
from toolguard.config import IdentityLimits

JOB = "agents:jobs:42:input"
STATE = "agents:jobs:42:state"
OTHER = "agents:jobs:43:state"
TOOLS: dict[str, Any] = {
    **copy.deepcopy(BASE_CONFIG["tools"]),
    "kv_set": {"operation": "write", "resource": "{key}", "cost": 0.25},
}


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return f"value of {key}"


@tool
def kv_set(key: str, value: str) -> str:
    """Write a key; the value 'boom' makes the store fail."""
    if value == "boom":
        raise ValueError("the kv store is down")
    return "ok"


def build_trail(guard: tg.Guard, clock: Clock) -> dict[str, str]:
    """A small trail through the real pipeline; returns the task ids by name.

    ``job``: process-job 42 (agent-runner): an allowed read, a denied write outside the job,
    a write that fails (cost 0.25), an allowed write (cost 0.25), ends ok.
    ``summary``: summarise-job 7 (summariser) one minute later: one read, ends ok.
    """
    get, put = tg.guard([kv_get, kv_set], guard)
    ids: dict[str, str] = {}
    with guard.task("process-job", job_id="42") as job:
        get.invoke({"key": JOB})
        clock.advance(1)
        denied = put.invoke({"key": OTHER, "value": "x"})
        assert "Denied by toolguard" in denied
        clock.advance(1)
        with pytest.raises(ValueError, match="kv store is down"):
            put.invoke({"key": STATE, "value": "boom"})
        clock.advance(1)
        put.invoke({"key": STATE, "value": "done"})
        ids["job"] = job.task_id
    clock.advance(60)
    with guard.task("summarise-job", job_id="7") as summary:
        get.invoke({"key": "agents:jobs:7:input"})
        ids["summary"] = summary.task_id
    return ids


@pytest.fixture
def costly(make_guard: Callable[..., tg.Guard], clock: Clock) -> tg.Guard:
    """A guard whose kv_set costs 0.25 a call."""
    return make_guard(clock=clock, tools=TOOLS)


@pytest.fixture
def trail(costly: tg.Guard, clock: Clock) -> tuple[tg.Guard, dict[str, str]]:
    return costly, build_trail(costly, clock)


# -- events -------------------------------------------------------------------------------------


def test_events_filter_by_task_and_kind(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, ids = trail
    events = guard.audit.events(task_id=ids["job"], kind="request")
    assert [e.tool for e in events] == ["kv_get", "kv_set", "kv_set"]
    assert all(e.task_id == ids["job"] for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_events_newest_first_with_limit(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, _ = trail
    newest = guard.audit.events(limit=2, newest_first=True)
    head = guard.audit.head_seq()
    assert [e.seq for e in newest] == [head, head - 1]


def test_events_unknown_filter_is_type_error(guard: tg.Guard) -> None:
    with pytest.raises(TypeError, match="unknown filter 'colour'"):
        guard.audit.events(colour="red")


def test_latest_returns_newest_oldest_first(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, _ = trail
    latest = guard.audit.latest(3)
    head = guard.audit.head_seq()
    assert [e.seq for e in latest] == [head - 2, head - 1, head]


def test_iter_rows_keeps_columns_as_stored(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, ids = trail
    rows = list(guard.audit.iter_rows(task_id=ids["job"], kind="request"))
    assert json.loads(rows[0]["resources"]) == [JOB]
    assert isinstance(rows[0]["resources"], str)


def test_head_seq_of_empty_trail_is_zero(guard: tg.Guard) -> None:
    assert guard.audit.head_seq() == 0


# -- tasks --------------------------------------------------------------------------------------


def test_tasks_count_calls_denials_errors_and_cost(
    trail: tuple[tg.Guard, dict[str, str]],
) -> None:
    guard, ids = trail
    tasks = {t["task_id"]: t for t in guard.audit.tasks()}
    job = tasks[ids["job"]]
    assert (job["calls"], job["denied"], job["errors"]) == (3, 1, 1)
    assert job["cost"] == pytest.approx(0.5)
    assert job["status"] == "ok"
    summary = tasks[ids["summary"]]
    assert (summary["calls"], summary["denied"], summary["errors"]) == (1, 0, 0)


def test_tasks_are_newest_first(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, ids = trail
    assert [t["task_id"] for t in guard.audit.tasks()] == [ids["summary"], ids["job"]]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({"identity": "summariser"}, ["summary"], id="identity"),
        pytest.param({"tool": "kv_set"}, ["job"], id="tool"),
        pytest.param({"decision": "deny"}, ["job"], id="decision"),
        pytest.param({"intent": "process-job"}, ["job"], id="intent"),
        pytest.param({"status": "ok"}, ["summary", "job"], id="status"),
        pytest.param({"status": "error"}, [], id="status-none"),
    ],
)
def test_tasks_filters(
    trail: tuple[tg.Guard, dict[str, str]], filters: dict[str, Any], expected: list[str]
) -> None:
    guard, ids = trail
    assert [t["task_id"] for t in guard.audit.tasks(**filters)] == [ids[n] for n in expected]


def test_tasks_since_and_until_bound_the_start(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, ids = trail
    assert [t["task_id"] for t in guard.audit.tasks(since=clock.now - 10)] == [ids["summary"]]
    assert [t["task_id"] for t in guard.audit.tasks(until=clock.now - 10)] == [ids["job"]]


def test_tasks_limit(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, ids = trail
    assert [t["task_id"] for t in guard.audit.tasks(limit=1)] == [ids["summary"]]


def test_find_tasks_by_exact_id_and_prefix(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, ids = trail
    assert guard.audit.find_tasks(ids["job"]) == [ids["job"]]
    assert guard.audit.find_tasks(ids["job"][:10]) == [ids["job"]]
    assert guard.audit.find_tasks("zz-not-a-task") == []
    assert sorted(guard.audit.find_tasks("")) == []


# -- timeline -----------------------------------------------------------------------------------


def test_timeline_joins_each_request_with_its_outcome(
    trail: tuple[tg.Guard, dict[str, str]],
) -> None:
    guard, ids = trail
    rows = guard.audit.timeline(ids["job"])
    assert [r["kind"] for r in rows] == [
        "task_start",
        "request",
        "denied",
        "request",
        "request",
        "task_end",
    ]
    read, denied, failed, wrote = rows[1:5]
    assert (read["result"], read["duration_ms"] is not None) == ("ok", True)
    assert denied["reason"].startswith("write on 'agents:jobs:43:state' is outside")
    assert failed["result"] == "error"
    assert "kv store is down" in failed["error"]
    assert (wrote["result"], wrote["cost"]) == ("ok", 0.25)
    assert rows[-1]["outcome"] == "ok"


def test_timeline_call_without_outcome_is_incomplete(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task:
        guard.authorize("kv_get", {"key": JOB})  # the tool never finished
    rows = guard.audit.timeline(task.task_id)
    request = next(r for r in rows if r["kind"] == "request")
    assert request["result"] == "incomplete"
    assert request["duration_ms"] is None


def test_timeline_shows_identity_revocation_from_outside(guard: tg.Guard, clock: Clock) -> None:
    with guard.task("process-job", job_id="42") as task:
        clock.advance(1)
        guard.revoke(identity="agent-runner", reason="incident 17")
        clock.advance(1)
    rows = guard.audit.timeline(task.task_id)
    revokes = [r for r in rows if r["kind"] == "revoke"]
    assert len(revokes) == 1
    assert revokes[0]["reason"] == "incident 17"
    assert revokes[0]["rule"] == "revoke.identity"
    kinds = [r["kind"] for r in rows]
    assert kinds.index("revoke") < kinds.index("task_end")


def test_timeline_shows_direct_task_revocation_once(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task:
        guard.revoke(task_id=task.task_id, reason="stop it")
    revokes = [r for r in guard.audit.timeline(task.task_id) if r["kind"] == "revoke"]
    assert len(revokes) == 1
    assert revokes[0]["seq"] is not None  # the chained event, not the revocations row


def test_timeline_shows_revocation_of_one_credential(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task:
        permit = guard.authorize("kv_get", {"key": JOB})
        guard.finish(permit)
    guard.revoke(jti=permit.credential.jti, reason="leaked in a log")
    revokes = [r for r in guard.audit.timeline(task.task_id) if r["kind"] == "revoke"]
    assert [(r["jti"], r["reason"]) for r in revokes] == [
        (permit.credential.jti, "leaked in a log")
    ]


def test_timeline_of_unknown_task_is_empty(guard: tg.Guard) -> None:
    assert guard.audit.timeline("no-such-task") == []


# -- follow -------------------------------------------------------------------------------------


def test_follow_yields_events_written_between_polls(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    start = guard.audit.head_seq()
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # a writer in another process, between two polls
        polls.append(seconds)
        if len(polls) == 1:
            with guard.task("process-job", job_id="42"):
                get.invoke({"key": JOB})

    events = list(guard.audit.follow(after_seq=start, interval=0.25, sleep=sleep, max_polls=3))
    assert [e.kind for e in events] == ["task_start", "request", "outcome", "task_end"]
    assert polls == [0.25, 0.25]


def test_follow_with_filter_skips_other_events(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42"):
        get.invoke({"key": JOB})
    events = list(
        guard.audit.follow(after_seq=0, sleep=lambda s: None, max_polls=2, kind="request")
    )
    assert [e.kind for e in events] == ["request"]


# -- summary ------------------------------------------------------------------------------------


def test_summary_counts_per_identity_and_tool(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    summary = guard.audit.summary(since=clock.now - 3600, now=clock.now)
    by_identity = {r.key: r for r in summary.rows["identity"]}
    runner = by_identity["agent-runner"]
    assert (runner.calls, runner.denials, runner.errors) == (3, 1, 1)
    assert runner.cost == pytest.approx(0.5)
    assert by_identity["summariser"].calls == 1
    by_tool = {r.key: r for r in summary.rows["tool"]}
    assert (by_tool["kv_set"].calls, by_tool["kv_set"].denials) == (2, 1)
    assert by_tool["kv_get"].calls == 2


def test_summary_rate_peak_is_most_calls_in_any_60_seconds(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    start = clock.now
    with guard.task("process-job", job_id="42"):
        for offset in (0, 20, 50, 55, 70, 200):  # 55..70 straddles a clock minute
            clock.now = start + offset
            get.invoke({"key": JOB})
    summary = guard.audit.summary(by=("identity",), since=start - 1, now=clock.now)
    assert summary.rows["identity"][0].peak_per_minute == 4  # 20, 50, 55, 70


def test_summary_today_use_against_quota(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    limits = {"agent-runner": IdentityLimits(requests_per_day=4, cost_per_day=5.0)}
    summary = guard.audit.summary(
        by=("identity",), since=clock.now - 3600, now=clock.now, limits=limits
    )
    runner = next(r for r in summary.rows["identity"] if r.key == "agent-runner")
    assert runner.today_calls == 3
    assert dict(runner.quota["requests_per_day"]) == {"used": 3, "limit": 4}
    assert dict(runner.quota["cost_per_day"]) == {"used": 0.5, "limit": 5.0}
    summariser = next(r for r in summary.rows["identity"] if r.key == "summariser")
    assert summariser.quota == {}


def test_summary_today_starts_at_utc_midnight(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    tomorrow = clock.now + 86400
    summary = guard.audit.summary(by=("identity",), since=clock.now - 3600, now=tomorrow)
    assert all(r.today_calls == 0 for r in summary.rows["identity"])


def test_summary_reports_spike_against_usual_rate(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    for _day in range(3):  # the usual: 2 calls a day
        with guard.task("summarise-job", job_id="1"):
            get.invoke({"key": "agents:jobs:1:input"})
            get.invoke({"key": "agents:jobs:1:input"})
        clock.advance(86400)
    with guard.task("summarise-job", job_id="1"):  # then 12 calls in a few minutes
        for _ in range(12):
            clock.advance(10)
            get.invoke({"key": "agents:jobs:1:input"})
    summary = guard.audit.summary(since=clock.now - 86400, now=clock.now)
    spikes = {(s.by, s.key): s for s in summary.spikes}
    spike = spikes[("identity", "summariser")]
    assert spike.recent == 12
    assert spike.ratio > 3
    assert ("tool", "kv_get") in spikes


def test_summary_no_spike_without_history(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    with guard.task("summarise-job", job_id="1"):
        for _ in range(15):
            get.invoke({"key": "agents:jobs:1:input"})
    summary = guard.audit.summary(since=clock.now - 3600, now=clock.now)
    assert summary.spikes == ()


def test_summary_idle_identities(trail: tuple[tg.Guard, dict[str, str]], clock: Clock) -> None:
    guard, ids = trail
    later = clock.now + 10 * 86400
    summary = guard.audit.summary(
        since=later - 86400, now=later, identities=["agent-runner", "reporter"], idle_days=7
    )
    idle = {i.identity: i.last_task for i in summary.idle}
    assert set(idle) == {"agent-runner", "summariser", "reporter"}
    assert idle["reporter"] is None
    assert idle["summariser"] == guard.audit.task(ids["summary"])["started_at"]  # type: ignore[index]
    fresh = guard.audit.summary(since=clock.now - 3600, now=clock.now, idle_days=7)
    assert fresh.idle == ()


def test_summary_rejects_unknown_grouping(guard: tg.Guard, clock: Clock) -> None:
    with pytest.raises(ValueError, match="cannot summarise by 'colour'"):
        guard.audit.summary(by=("colour",), since=0, now=clock.now)


def test_summary_to_dict_is_json(trail: tuple[tg.Guard, dict[str, str]], clock: Clock) -> None:
    guard, _ = trail
    doc = guard.audit.summary(since=clock.now - 3600, now=clock.now).to_dict()
    assert json.loads(json.dumps(doc))["by_identity"][0]["key"] == "agent-runner"


# -- usage over time ----------------------------------------------------------------------------


def test_usage_buckets_calls_per_identity(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    since = clock.now - 3600
    usage = guard.audit.usage(since=since, until=clock.now + 1)
    assert usage.bucket == 60.0
    assert sum(usage.series["agent-runner"]) == 3
    assert sum(usage.series["summariser"]) == 1
    assert sum(usage.denials) == 1
    assert usage.buckets == len(usage.series["agent-runner"])


def test_usage_by_tool_with_fixed_bucket(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    usage = guard.audit.usage(by="tool", since=clock.now - 7200, until=clock.now + 1, bucket=3600)
    assert usage.buckets == 3
    assert sum(usage.series["kv_set"]) == 2


# -- revocation helpers -------------------------------------------------------------------------


def test_revoke_helper_writes_the_same_event_as_guard_revoke(guard: tg.Guard, clock: Clock) -> None:
    with guard.task("process-job", job_id="42") as task:
        pass
    guard.revoke(task_id=task.task_id, reason="r", by="api")
    audit_mod.revoke(guard.store, task_id=task.task_id, reason="r", by="cli", now=clock.now)
    first, second = guard.audit.events(kind="revoke")
    drop = {"seq", "prev_hash", "hash"}
    assert {k: v for k, v in first.to_dict().items() if k not in drop} == {
        k: v for k, v in second.to_dict().items() if k not in drop
    }


def test_revoke_helper_identity_disable_and_enable(guard: tg.Guard, clock: Clock) -> None:
    audit_mod.revoke(
        guard.store, identity="agent-runner", reason="incident", disable=True, now=clock.now
    )
    refused = guard.task("process-job", job_id="42")
    with pytest.raises(tg.PolicyDenied, match="identity 'agent-runner' is disabled"):
        refused.start()
    audit_mod.enable(guard.store, "agent-runner", reason="reviewed", now=clock.now)
    with guard.task("process-job", job_id="42") as task:
        assert task.status == "active"
    kinds = [e.kind for e in guard.audit.events(identity="agent-runner")]
    assert "revoke" in kinds and "enable" in kinds


@pytest.mark.parametrize(
    "target",
    [
        pytest.param({}, id="none"),
        pytest.param({"task_id": "a", "jti": "b"}, id="two"),
    ],
)
def test_revoke_helper_needs_exactly_one_target(
    guard: tg.Guard, clock: Clock, target: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="revoke exactly one"):
        audit_mod.revoke(guard.store, now=clock.now, **target)


def test_revoke_helper_disable_needs_identity(guard: tg.Guard, clock: Clock) -> None:
    with pytest.raises(ValueError, match="disable=True goes with identity="):
        audit_mod.revoke(guard.store, task_id="t", disable=True, now=clock.now)


# -- query plans --------------------------------------------------------------------------------


def _plans(guard: tg.Guard, fn: Callable[[], object]) -> list[str]:
    """The query plans of every SELECT that ``fn`` runs on the store's connection."""
    conn = guard.store.conn
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        fn()
    finally:
        conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "WITH")):
            plans += [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    assert plans
    return plans


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the trace callback passes bound values from Python 3.11"
)
@pytest.mark.parametrize(
    ("query", "index"),
    [
        pytest.param(
            lambda a, ids, now: a.timeline(ids["job"]), "idx_events_task_id_seq", id="show"
        ),
        pytest.param(
            lambda a, ids, now: a.tasks(since=now - 3600, limit=50),
            "idx_tasks_started_at (started_at>?)",
            id="tasks-since",
        ),
        pytest.param(lambda a, ids, now: a.tasks(limit=50), "idx_tasks_started_at", id="tasks"),
        pytest.param(
            lambda a, ids, now: a.latest(50, kind="denied"), "idx_events_denied", id="denied"
        ),
        pytest.param(
            lambda a, ids, now: a.find_tasks(ids["job"][:6]),
            "sqlite_autoindex_tasks_1 (task_id>? AND task_id<?)",
            id="task-prefix",
        ),
    ],
)
@pytest.mark.sqlite_only  # SQLite's query plans
def test_viewer_queries_use_indexes(
    trail: tuple[tg.Guard, dict[str, str]],
    clock: Clock,
    query: Callable[..., object],
    index: str,
) -> None:
    guard, ids = trail
    plans = _plans(guard, lambda: query(guard.audit, ids, clock.now))
    assert any(index in p for p in plans), plans
    assert not [p for p in plans if p.startswith("SCAN events") and "INDEX" not in p], plans
