"""Human approval bound to the exact action (issue 14): approver, queue, CLI, digests."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, make_config, raw_sql, store_arg

import toolguard as tg
from toolguard.approval import action_digest, parse_decision
from toolguard.store.approvals import find_requests

APPROVE = {"delete": ["agents:jobs:{job_id}:*"], "write": ["agents:jobs:{job_id}:final"]}


def approval_config(
    tmp_path: Path, *, store_config: Mapping[str, str] | None = None, **intent: Any
) -> dict[str, Any]:
    config = make_config(tmp_path, **(store_config or {}))
    job = config["intents"]["process-job"]
    job["tools"] = ["kv_get", "kv_set", "kv_delete"]
    job["allow"]["delete"] = ["agents:jobs:{job_id}:*"]
    job["approve"] = copy.deepcopy(APPROVE)
    job["approval_ttl"] = "30m"
    job.update(intent)
    return config


@pytest.fixture
def make(
    tmp_path: Path, clock: Clock, store_config: dict[str, str]
) -> Iterator[Callable[..., tg.Guard]]:
    """Guards with approvals, on the test's backend (tests/conftest.py, BOTH_BACKENDS)."""
    guards: list[tg.Guard] = []

    def factory(
        approver: Any = None, *, clock: Callable[[], float] = clock, **intent: Any
    ) -> tg.Guard:
        config = approval_config(tmp_path, store_config=store_config, **intent)
        guard = tg.Guard(config, clock=clock, approver=approver)
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


def test_an_approved_call_runs_after_its_approval_with_a_credential(
    make: Callable[..., tg.Guard],
) -> None:
    seen: list[dict[str, Any]] = []

    def approver(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(request))
        return {"approved": True, "by": "alice", "note": "ok to delete"}

    guard = make(approver)
    with guard.task("process-job", job_id="42") as task:
        jti = run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="call-1")
        run(guard, "kv_get", {"key": "agents:jobs:42:tmp"})  # not held
    (request,) = seen
    assert {
        "request_id",
        "task_id",
        "tool",
        "operation",
        "resources",
        "args",
        "digest",
        "reason",
        "expires_at",
    } <= set(request)
    assert request["tool"] == "kv_delete" and request["resources"] == ["agents:jobs:42:tmp"]
    assert request["args"] == {"key": "agents:jobs:42:tmp"}
    assert request["task_id"] == task.task_id and len(request["digest"]) == 64
    assert "intents.process-job.approve.delete" in request["reason"]
    events = list(guard.audit.events(task_id=task.task_id))
    order = [e.kind for e in events]
    assert order[:5] == ["task_start", "approval_requested", "approved", "request", "outcome"]
    approved = events[2]
    assert (
        approved.correlation_id == "call-1" and approved.reason == "approved by alice: ok to delete"
    )
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
    assert kinds(guard, task.task_id)[:4] == [
        "task_start",
        "approval_requested",
        "rejected",
        "denied",
    ]
    rows = raw_sql(guard, "SELECT tool FROM credentials WHERE task_id = ?", (task.task_id,))
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
    with (
        guard.task("process-job", job_id="42") as task,
        pytest.raises(tg.ApprovalDenied, match="no valid decision"),
    ):
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
    assert "request" not in kinds(guard, task.task_id)


def test_an_approver_that_raises_denies_the_call(make: Callable[..., tg.Guard]) -> None:
    def approver(request: Any) -> bool:
        raise RuntimeError("pager down")

    guard = make(approver)
    with (
        guard.task("process-job", job_id="42"),
        pytest.raises(tg.ApprovalDenied, match="pager down"),
    ):
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
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied, match="outside"):
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
    base = dict(
        tool="kv_delete",
        operation="delete",
        resources=["a"],
        args={"key": "a"},
        task_id="t1",
        intent="process-job",
        config="c" * 64,
        args_key=b"k" * 32,
    )
    digest = action_digest(**base)  # type: ignore[arg-type]
    assert digest == action_digest(**{**base, "args": {"key": "a"}})  # type: ignore[arg-type]
    for change in (
        {"tool": "kv_set"},
        {"operation": "write"},
        {"resources": ["b"]},
        {"args": {"key": "a", "x": 1}},
        {"task_id": "t2"},
        {"intent": "other"},
        {"config": "d" * 64},
        {"args_key": b"j" * 32},
    ):
        assert action_digest(**{**base, **change}) != digest  # type: ignore[arg-type]


def test_the_digest_is_the_rfc_8785_form_of_the_action_with_keyed_arguments() -> None:
    """Anyone with the arguments key can recompute a digest from the trail; without it, a
    low-entropy argument (a PIN) cannot be guessed from the stored digest."""
    import hashlib
    import hmac

    key = bytes(range(32))
    args = {"pin": "1234", "key": "a"}
    keyed = hmac.new(key, b'{"key":"a","pin":"1234"}', hashlib.sha256).hexdigest()
    expected = hashlib.sha256(
        b'{"args":"hmac-sha256:' + keyed.encode() + b'","config_hash":"c","intent":"i",'
        b'"operation":"delete","resources":["a"],"task_id":"t","tool":"kv_delete"}'
    ).hexdigest()
    found = action_digest(
        tool="kv_delete",
        operation="delete",
        resources=["a"],
        args=args,
        task_id="t",
        intent="i",
        config="c",
        args_key=key,
    )
    assert found == expected


def test_a_call_whose_arguments_are_not_json_is_denied(make: Callable[..., tg.Guard]) -> None:
    guard = make(lambda r: True)
    with (
        guard.task("process-job", job_id="42"),
        pytest.raises(tg.ApprovalDenied, match="cannot be bound"),
    ):
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp", "n": float("nan")})


def test_parse_decision_accepts_the_contract_shapes() -> None:
    assert parse_decision(True, default_by="x").approved
    d = parse_decision({"approved": False, "by": "alice", "note": "no"}, default_by="x")
    assert (d.approved, d.by, d.note) == (False, "alice", "no")


# -- the store-backed queue and the CLI ---------------------------------------------------------


class Waiting:
    """A held call running in a thread (no approver): its credential id or its error."""

    def __init__(
        self, guard: tg.Guard, task: tg.TaskSession, tool: str, args: dict[str, Any], cid: str
    ) -> None:
        self.guard, self.cid = guard, cid
        self.result: str | None = None
        self.error: BaseException | None = None

        def call() -> None:
            try:
                self.result = task.carry(run)(guard, tool, args, cid)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=call)
        self.thread.start()
        self.task_id = task.task_id

    def request(self) -> Any:
        """The request once the waiting call has recorded it (polled, no sleeping)."""
        while True:
            found = find_requests(self.guard.store, task_id=self.task_id, correlation_id=self.cid)
            if found:
                return found[-1]
            assert self.thread.is_alive(), self.error

    def join(self) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1"},
    )


@pytest.mark.slow
def test_an_approval_from_another_process_lets_the_waiting_call_run(
    make: Callable[..., tg.Guard],
) -> None:
    guard = make(clock=time.time)  # the CLI in another process reads the system clock
    db = store_arg(guard)
    with guard.task("process-job", job_id="42") as task:
        waiting = Waiting(guard, task, "kv_delete", {"key": "agents:jobs:42:tmp"}, "call-7")
        request = waiting.request()
        listed = cli("approvals", "list", "--db", db, "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["request_id"] == request.request_id and row["state"] == "pending"
        assert row["tool"] == "kv_delete" and row["args"] == {"key": "agents:jobs:42:tmp"}
        done = cli(
            "approvals",
            "approve",
            request.request_id[:8],
            "--db",
            db,
            "--by",
            "alice",
            "--note",
            "checked",
        )
        assert done.returncode == 0, done.stderr
        assert "approved request" in done.stdout
        waiting.join()
        assert waiting.error is None and waiting.result
    order = kinds(guard, task.task_id)
    assert order[1:5] == ["approval_requested", "approved", "request", "outcome"]
    again = cli("approvals", "reject", request.request_id, "--db", db, "--by", "bob")
    assert again.returncode == 1 and "already approved by alice" in again.stdout
    assert kinds(guard, task.task_id) == order  # nothing changed
    verify = cli("audit", "verify", "--db", db)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_rejection_from_the_cli_denies_the_waiting_call(
    make: Callable[..., tg.Guard], clock: Clock
) -> None:
    from click.testing import CliRunner

    from toolguard.cli import CliContext, main

    guard = make()
    db = store_arg(guard)
    with guard.task("process-job", job_id="42") as task:
        waiting = Waiting(guard, task, "kv_delete", {"key": "agents:jobs:42:tmp"}, "call-8")
        request = waiting.request()
        clock.advance(90)
        shown = CliRunner().invoke(
            main, ["approvals", "list", "--db", db], obj=CliContext(clock=clock)
        )
        assert "awaiting approval" in shown.output and "1m30s" in shown.output, shown.output
        show = CliRunner().invoke(
            main, ["approvals", "show", request.request_id, "--db", db], obj=CliContext(clock=clock)
        )
        assert request.digest in show.output and "kv_delete" in show.output
        done = CliRunner().invoke(
            main,
            ["approvals", "reject", request.request_id[:6], "--db", db, "--note", "no"],
            obj=CliContext(clock=clock),
        )
        assert done.exit_code == 0, done.output
        waiting.join()
    assert isinstance(waiting.error, tg.ApprovalDenied)
    assert "rejected by cli: no" in str(waiting.error)
    assert kinds(guard, task.task_id)[1:4] == ["approval_requested", "rejected", "denied"]
    empty = CliRunner().invoke(main, ["approvals", "list", "--db", db], obj=CliContext(clock=clock))
    assert "no approval requests match" in empty.output
    everything = CliRunner().invoke(
        main, ["approvals", "list", "--all", "--db", db], obj=CliContext(clock=clock)
    )
    assert "rejected" in everything.output


def test_an_unanswered_request_expires_and_the_call_is_denied(
    make: Callable[..., tg.Guard], clock: Clock
) -> None:
    from click.testing import CliRunner

    from toolguard.cli import CliContext, main

    guard = make(approval_ttl="10m")
    db = store_arg(guard)
    with guard.task("process-job", job_id="42") as task:
        waiting = Waiting(guard, task, "kv_delete", {"key": "agents:jobs:42:tmp"}, "call-9")
        request = waiting.request()
        assert request.expires_at == request.requested_at + 600
        clock.advance(601)
        waiting.join()
        assert isinstance(waiting.error, tg.ApprovalDenied)
        assert "approval_ttl" in str(waiting.error)
        late = CliRunner().invoke(
            main,
            ["approvals", "approve", request.request_id, "--db", db, "--by", "alice"],
            obj=CliContext(clock=clock),
        )
        assert late.exit_code == 1 and "expired" in late.output
    order = kinds(guard, task.task_id)
    assert order[1:4] == ["approval_requested", "approval_expired", "denied"]
    assert "request" not in order


def test_the_cli_refuses_bad_ids_and_bad_names(make: Callable[..., tg.Guard]) -> None:
    from click.testing import CliRunner

    from toolguard.cli import main

    guard = make()
    with guard.task("process-job", job_id="42"):
        run(guard, "kv_get", {"key": "agents:jobs:42:x"})
    db = store_arg(guard)
    for args, message in (
        (["approvals", "approve", "zz\x1b[2J", "--db", db, "--by", "a"], "not an approval"),
        (["approvals", "approve", "abcdef", "--db", db, "--by", "a"], "no approval request"),
        (["approvals", "approve", "abcdef", "--db", db, "--by", "\u202eevil"], "invisible"),
        (["approvals", "approve", "abcdef", "--db", db, "--by", ""], "empty"),
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and message in result.output, result.output


# -- binding: edits, replays, single use -----------------------------------------------------------


class Replayer:
    """An approver (a relay) that answers every request with the first decision it saw, naming
    that first request: a replayed approval."""

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None
        self.asked = 0

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.asked += 1
        if self.first is None:
            self.first = dict(request)
        return {
            "approved": True,
            "by": "alice",
            "request_id": self.first["request_id"],
            "digest": self.first["digest"],
        }


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        pytest.param("kv_delete", {"key": "agents:jobs:42:other"}, id="another-argument"),
        pytest.param("kv_set", {"key": "agents:jobs:42:final", "value": "x"}, id="another-tool"),
    ],
)
def test_an_approval_does_not_cover_an_edited_action(
    make: Callable[..., tg.Guard], tool: str, args: dict[str, Any]
) -> None:
    replayer = Replayer()
    guard = make(replayer)
    with guard.task("process-job", job_id="42"):
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="c1")
        with pytest.raises(tg.ApprovalDenied, match="answers another request"):
            run(guard, tool, args, cid="c1")  # the same call id, another action
    assert replayer.asked == 2


def test_an_approval_cannot_be_replayed_in_another_task(make: Callable[..., tg.Guard]) -> None:
    replayer = Replayer()
    guard = make(replayer)
    with guard.task("process-job", job_id="42") as first:
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="c1")
    with (  # the same action, another task
        guard.task("process-job", job_id="42") as second,
        pytest.raises(tg.ApprovalDenied, match="answers another request"),
    ):
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="c1")
    (a,) = find_requests(guard.store, task_id=first.task_id)
    (b,) = find_requests(guard.store, task_id=second.task_id)
    assert a.digest != b.digest  # the task id is part of the digest


def test_an_approval_is_used_once(make: Callable[..., tg.Guard], clock: Clock) -> None:
    asked: list[str] = []
    guard = make(lambda r: asked.append(r["request_id"]) or True)
    with guard.task("process-job", job_id="42") as task:
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="c1")
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="c1")  # asks again
        assert len(set(asked)) == 2
        used = find_requests(guard.store, task_id=task.task_id)[0]
        # the request transaction refuses an approval that was used already
        check = guard.approvals.precheck(used, "kv_delete")
        refusal = check(clock())
        assert refusal is not None and "used already" in refusal.reason
        clock.advance(3600)
        assert "expired" in check(clock()).reason  # type: ignore[union-attr]


def test_two_deciders_cannot_both_win(make: Callable[..., tg.Guard], clock: Clock) -> None:
    from toolguard.store.approvals import decide

    guard = make()
    db = store_arg(guard)
    with guard.task("process-job", job_id="42") as task:
        waiting = Waiting(guard, task, "kv_delete", {"key": "agents:jobs:42:tmp"}, "c1")
        request = waiting.request()
        first = decide(
            guard.store, request, "rejected", by="bob", note=None, reason="r", now=clock()
        )
        second = decide(
            guard.store, request, "approved", by="eve", note=None, reason="a", now=clock()
        )
        waiting.join()
    assert first.recorded and not second.recorded and second.record.by == "bob"
    assert isinstance(waiting.error, tg.ApprovalDenied)
    assert kinds(guard, task.task_id).count("approved") == 0
    del db


def test_from_config_takes_every_keyword_of_guard(tmp_path: Path, clock: Clock) -> None:
    import inspect

    from toolguard.engine import Guard

    guard_kw = set(inspect.signature(Guard.__init__).parameters) - {"self", "config"}
    from_kw = set(inspect.signature(Guard.from_config).parameters) - {"source"}
    assert guard_kw == from_kw == {"clock", "providers", "approver"}
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(approval_config(tmp_path)))
    with tg.Guard.from_config(path, clock=clock, approver=lambda r: False) as guard:
        assert guard.clock() == clock()
        with guard.task("process-job", job_id="42"), pytest.raises(tg.ApprovalDenied):
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})


def test_an_identity_can_add_approvals_to_every_intent(tmp_path: Path, clock: Clock) -> None:
    config = approval_config(tmp_path)
    del config["intents"]["process-job"]["approve"]
    config["identities"]["agent-runner"]["approve"] = {"write": ["agents:jobs:*:final"]}
    asked: list[str] = []
    guard = tg.Guard(config, clock=clock, approver=lambda r: asked.append(r["rule"]) or True)
    with guard, guard.task("process-job", job_id="42"):
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})  # the intent holds nothing
        run(guard, "kv_set", {"key": "agents:jobs:42:final", "value": "v"})
    assert asked == ["identities.agent-runner.approve.write"]


@pytest.mark.parametrize(
    ("where", "rule", "message"),
    [
        ("intents", {"delete": ["agents:other:*"]}, "outside what the intent allows"),
        ("intents", {"write": ["agents:jobs:{job_id}:x"]}, "outside what the intent allows"),
        ("identities", {"write": ["elsewhere:*"]}, "outside what the identity's ceiling allows"),
        ("intents", {"Bad Op": ["x"]}, "must be a lowercase word"),
    ],
)
def test_an_approval_rule_outside_what_is_allowed_is_a_config_error(
    tmp_path: Path, where: str, rule: dict[str, Any], message: str
) -> None:
    import yaml
    from click.testing import CliRunner

    from toolguard.cli import main

    config = approval_config(tmp_path)
    if where == "intents":
        config["intents"]["summarise-job"]["approve"] = rule
    else:
        config["identities"]["agent-runner"]["approve"] = rule
    path = tmp_path / "toolguard.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(tg.ConfigError, match=message) as info:
        tg.Guard(path)
    assert f"{path}:" in str(info.value)  # with file:line:col
    checked = CliRunner().invoke(main, ["check", str(path)])
    assert checked.exit_code == 1 and message in checked.output, checked.output


def test_the_summary_the_report_and_audit_denied_show_approvals(
    make: Callable[..., tg.Guard], clock: Clock, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from toolguard.cli import CliContext, main

    guard = make(approval_ttl="1h")
    db = store_arg(guard)
    obj = CliContext(clock=clock)
    with guard.task("process-job", job_id="42") as task:
        rejected = Waiting(guard, task, "kv_delete", {"key": "agents:jobs:42:old"}, "c1")
        CliRunner().invoke(
            main,
            [
                "approvals",
                "reject",
                rejected.request().request_id,
                "--db",
                db,
                "--by",
                "bob",
                "--note",
                "keep",
            ],
            obj=obj,
        )
        rejected.join()
        waiting = Waiting(guard, task, "kv_delete", {"key": "agents:jobs:42:tmp"}, "c2")
        request = waiting.request()
        clock.advance(125)
        summary = CliRunner().invoke(main, ["audit", "summary", "--db", db], obj=obj)
        assert "awaiting approval (1)" in summary.output and "2m05s" in summary.output
        as_json = CliRunner().invoke(main, ["audit", "summary", "--db", db, "--json"], obj=obj)
        (pending,) = json.loads(as_json.output)["awaiting_approval"]
        assert pending["request_id"] == request.request_id and pending["age_s"] == 125
        page = tmp_path / "report.html"
        report = CliRunner().invoke(
            main,
            ["audit", "export", "--format", "html", "--db", db, "--output", str(page)],
            obj=obj,
        )
        assert report.exit_code == 0, report.output
        html = page.read_text()
        assert "Awaiting approval (1)" in html and request.request_id[:12] in html
        assert "REJECTED" in html and "rejected by bob: keep" in html  # in the task's timeline
        denied = CliRunner().invoke(main, ["audit", "denied", "--db", db], obj=obj)
        assert "rejected by bob: keep" in denied.output
        shown = CliRunner().invoke(main, ["audit", "show", task.task_id, "--db", db], obj=obj)
        assert "AWAITING APPROVAL" in shown.output and "REJECTED" in shown.output
        CliRunner().invoke(
            main, ["approvals", "approve", request.request_id, "--db", db, "--by", "alice"], obj=obj
        )
        waiting.join()
        assert waiting.error is None


def test_a_delegated_task_needs_the_approvals_its_parent_needs(
    make: Callable[..., tg.Guard],
) -> None:
    asked: list[tuple[str, str]] = []
    guard = make(
        lambda r: asked.append((r["task_id"], r["rule"])) or False,
        approve={"read": ["agents:jobs:{job_id}:secret"]},
    )
    with (
        guard.task("process-job", job_id="42") as parent,
        parent.delegate("summarise-job", job_id="42") as child,
    ):
        with pytest.raises(tg.ApprovalDenied):
            run(guard, "kv_get", {"key": "agents:jobs:42:secret"})
        run(guard, "kv_get", {"key": "agents:jobs:42:summary"})  # not held
    assert asked == [(child.task_id, "intents.process-job.approve.read")]


# -- approvals and shadow mode (docs/shadow.md) -------------------------------------------------


def test_shadow_mode_never_skips_an_approval_and_a_rejection_stays_a_denial(
    make: Callable[..., tg.Guard],
) -> None:
    answers = iter([False, True, True])
    asked: list[str] = []

    def approver(request: dict[str, Any]) -> bool:
        asked.append(request["tool"])
        return next(answers)

    guard = make(approver, mode="shadow")
    with guard.task("process-job", job_id="42") as task:
        with pytest.raises(tg.PolicyDenied):  # a person said no: shadow mode does not run it
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})  # approved: runs
        # a would_deny write: writes have an approve rule, so even outside the intent it is held
        run(guard, "kv_set", {"key": "agents:jobs:7:x", "value": "1"})
        run(guard, "kv_get", {"key": "agents:jobs:7:x"})  # a would_deny read: no rule, not held
    assert asked == ["kv_delete", "kv_delete", "kv_set"]
    events = guard.audit.events(task_id=task.task_id)
    requests = [(e.tool, e.decision) for e in events if e.kind == "request"]
    assert requests == [("kv_delete", "allow"), ("kv_set", "would_deny"), ("kv_get", "would_deny")]
    assert [e.kind for e in events].count("rejected") == 1


def test_an_approver_that_is_not_callable_is_a_config_error_before_any_file_is_made(
    tmp_path: Path,
) -> None:
    config = approval_config(tmp_path)
    with pytest.raises(tg.ConfigError, match="approver must be a callable"):
        tg.Guard(config, approver="alice")  # type: ignore[arg-type]
    assert not (tmp_path / "audit.db").exists()
    assert not list(tmp_path.rglob("*.key")) and not list(tmp_path.rglob("*.pem"))
