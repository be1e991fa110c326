"""An attacker's review of human approvals and shadow mode (issue 14): the holes found, fixed,
and the attacks that found none (docs/security.md, section 7)."""

from __future__ import annotations

import contextvars
import copy
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import Clock
from test_approvals import approval_config, kinds, run
from test_replay import _call, _replay, _write

import toolguard as tg
from toolguard.cli import CliContext, main


@pytest.fixture
def make(
    tmp_path: Path, clock: Clock, store_config: dict[str, str]
) -> Iterator[Callable[..., tg.Guard]]:
    guards: list[tg.Guard] = []

    def factory(approver: Any = None, **intent: Any) -> tg.Guard:
        config = approval_config(tmp_path, store_config=store_config, **intent)
        guard = tg.Guard(config, clock=clock, approver=approver)
        guards.append(guard)
        return guard

    yield factory
    for guard in guards:
        guard.close()


@pytest.fixture
def cli(clock: Clock) -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        from click.testing import CliRunner

        context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
        return CliRunner().invoke(main, list(args), obj=context)

    return invoke


def test_shadow_mode_holds_an_out_of_scope_call_of_an_operation_that_needs_approval(
    make: Callable[..., tg.Guard],
) -> None:
    """A would_deny delete on another job's data ran with no person asked (every delete needs
    one): shadow mode must not skip an approval the enforce mode never had to ask for."""
    answers = iter([False, True])
    asked: list[dict[str, Any]] = []

    def approver(request: dict[str, Any]) -> bool:
        asked.append(dict(request))
        return next(answers)

    guard = make(approver, mode="shadow")
    with guard.task("process-job", job_id="42") as task:
        with pytest.raises(tg.ApprovalDenied):
            run(guard, "kv_delete", {"key": "agents:jobs:7:data"}, cid="c1")
        run(guard, "kv_delete", {"key": "agents:jobs:7:data"}, cid="c2")  # approved: would_deny
    assert [r["resources"] for r in asked] == [["agents:jobs:7:data"]] * 2
    assert asked[0]["rule"] == "intents.process-job.approve.delete"
    assert "shadow mode" in asked[0]["reason"]
    events = guard.audit.events(task_id=task.task_id)
    assert [(e.kind, e.correlation_id) for e in events if e.kind != "outcome"][1:-1] == [
        ("approval_requested", "c1"), ("rejected", "c1"), ("denied", "c1"),
        ("approval_requested", "c2"), ("approved", "c2"), ("request", "c2"),
    ]  # fmt: skip
    (request,) = [e for e in events if e.kind == "request"]
    assert request.decision == "would_deny" and request.jti
    assert guard.audit.verify().ok


@pytest.mark.slow
def test_a_sync_approver_that_hangs_is_bounded_by_approval_ttl(
    make: Callable[..., tg.Guard],
) -> None:
    """approval_ttl bounds the waiting call's wait: a sync approver that never answers used to
    hold the call (and its thread) forever."""
    release = threading.Event()

    def approver(request: dict[str, Any]) -> bool:
        release.wait(30)
        return True  # too late: the request expired meanwhile

    guard = make(approver, approval_ttl="0.3s")
    try:
        with (
            guard.task("process-job", job_id="42") as task,
            pytest.raises(tg.ApprovalDenied, match="none came within approval_ttl"),
        ):
            run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
    finally:
        release.set()
    assert kinds(guard, task.task_id) == [
        "task_start", "approval_requested", "approval_expired", "denied", "task_end",
    ]  # fmt: skip
    assert guard.audit.verify().ok


def test_a_sync_approver_sees_the_callers_task(make: Callable[..., tg.Guard]) -> None:
    seen: list[str | None] = []

    def approver(request: dict[str, Any]) -> bool:
        current = tg.current_task()
        seen.append(current.task_id if current is not None else None)
        return True

    guard = make(approver)
    with guard.task("process-job", job_id="42") as task:
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
    assert seen == [task.task_id]


def test_replay_never_guesses_a_persons_answer(tmp_path: Path, clock: Clock, cli: Any) -> None:
    """A call a person rejected was reported as 'newly allowed' under the very config that held
    it, and a call a new approve rule would hold as 'unchanged'."""
    config = approval_config(tmp_path)
    answers = iter([False, True])
    with (
        tg.Guard(config, clock=clock, approver=lambda r: next(answers)) as guard,
        guard.task("process-job", job_id="42"),
    ):
        assert not _call(guard, "kv_delete", {"key": "agents:jobs:42:a"})  # rejected
        assert _call(guard, "kv_delete", {"key": "agents:jobs:42:a"})  # approved
        assert _call(guard, "kv_get", {"key": "agents:jobs:42:a"})  # not held
    db = Path(guard.store.path)
    before = db.read_bytes()

    code, out = _replay(cli, _write(tmp_path / "same.yaml", config), "--since", "3650d")
    assert code == 0 and out["newly_allowed"] == [] and out["unchanged"] == 1
    assert [(c["before"], c["after"]) for c in out["held"]] == [("deny", "held"), ("allow", "held")]
    assert "person's approval" in out["held"][0]["reason"]

    more = copy.deepcopy(config)
    more["intents"]["process-job"]["approve"]["read"] = ["agents:jobs:{job_id}:*"]
    code, out = _replay(cli, _write(tmp_path / "more.yaml", more), "--since", "3650d")
    assert [(c["tool"], c["before"]) for c in out["held"]] == [
        ("kv_delete", "deny"), ("kv_delete", "allow"), ("kv_get", "allow"),
    ]  # fmt: skip

    fewer = copy.deepcopy(config)
    del fewer["intents"]["process-job"]["approve"]
    code, out = _replay(cli, _write(tmp_path / "fewer.yaml", fewer), "--since", "3650d")
    assert out["held"] == [] and [c["before"] for c in out["newly_allowed"]] == ["deny"]

    text = cli("audit", "replay", "--config", str(tmp_path / "same.yaml"), "--since", "3650d")
    assert "held for a person's approval" in text.output
    assert db.read_bytes() == before  # replay writes nothing


def test_two_threads_presenting_one_approval_run_it_once(make: Callable[..., tg.Guard]) -> None:
    """The same call (same tool call id, same arguments) waits in two threads on one request;
    one approval: exactly one of them runs."""
    both = threading.Barrier(2, timeout=10)
    entered = threading.Event()
    request_ids: list[str] = []

    def approver(request: dict[str, Any]) -> bool:
        request_ids.append(request["request_id"])
        entered.set()
        both.wait()
        return True

    guard = make(approver)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"}, cid="same"))
        except tg.PolicyDenied as exc:
            results.append(exc)

    with guard.task("process-job", job_id="42") as task:
        first = threading.Thread(target=contextvars.copy_context().run, args=(call,))
        first.start()
        assert entered.wait(10)
        second = threading.Thread(target=contextvars.copy_context().run, args=(call,))
        second.start()
        first.join(20)
        second.join(20)
    assert len(set(request_ids)) == 1 and len(request_ids) == 2  # one request, asked twice
    ran = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, tg.ApprovalDenied)]
    assert len(ran) == 1 and len(refused) == 1
    assert "used already" in refused[0].reason
    events = guard.audit.events(task_id=task.task_id)
    assert [e.kind for e in events].count("request") == 1
    assert [e.kind for e in events].count("approved") == 1
    assert guard.audit.verify().ok


@pytest.mark.parametrize("what", ["task", "identity"])
def test_a_revocation_while_a_call_waits_denies_it_after_its_approval(
    make: Callable[..., tg.Guard], what: str
) -> None:
    box: dict[str, tg.Guard] = {}

    def approver(request: dict[str, Any]) -> bool:
        if what == "task":
            box["guard"].revoke(task_id=request["task_id"], reason="stop")
        else:
            box["guard"].revoke(identity=request["identity"], reason="stop", disable=True)
        return True

    guard = box["guard"] = make(approver)
    with (
        pytest.raises(tg.PolicyDenied, match=r"revoked|disabled"),
        guard.task("process-job", job_id="42") as task,
    ):
        run(guard, "kv_delete", {"key": "agents:jobs:42:tmp"})
    events = guard.audit.events(task_id=task.task_id)
    assert "approved" in [e.kind for e in events]
    assert [e for e in events if e.kind == "request"] == []  # no credential, nothing spent
    assert guard.audit.verify().ok


def test_an_approval_request_shows_hostile_arguments_escaped(
    make: Callable[..., tg.Guard], cli: Any
) -> None:
    guard = make(lambda r: {"approved": False, "by": "bob", "note": "no"})
    with guard.task("process-job", job_id="42"), pytest.raises(tg.ApprovalDenied):
        run(guard, "kv_set", {"key": "agents:jobs:42:final", "value": "\x1b[2J\u202eevil"})
    db = str(guard.store.path)
    listed = cli("approvals", "list", "--all", "--json", "--db", db)
    (record,) = [json.loads(line) for line in listed.stdout.splitlines()]
    for args in (["approvals", "list", "--all"], ["approvals", "show", record["request_id"]]):
        out = cli(*args, "--db", db).output
        assert "\x1b" not in out and "\u202e" not in out
    assert "\\u001b[2J\\u202eevil" in out  # show: the arguments, escaped


def test_arguments_changed_while_the_call_waits_are_not_covered_by_its_approval(
    make: Callable[..., tg.Guard],
) -> None:
    """Whoever else holds the arguments (another thread, a parallel tool sharing the model's
    message) changes them while a person looks at the request: the approval answered the
    digest of the old ones, so the call does not run."""
    args: dict[str, Any] = {"key": "agents:jobs:42:final", "value": "1", "extra": ["a"]}
    changes = iter(
        [lambda: args.update(value="2"), lambda: args["extra"].append("b"), lambda: None]
    )

    def approver(request: dict[str, Any]) -> bool:
        next(changes)()
        return True

    guard = make(approver)
    with guard.task("process-job", job_id="42") as task:
        for _ in range(2):
            with pytest.raises(tg.ApprovalDenied, match="changed while it waited"):
                guard.authorize("kv_set", args)
        permit = guard.authorize("kv_set", {"key": "agents:jobs:42:final", "value": "3"})
        guard.finish(permit)
    events = guard.audit.events(task_id=task.task_id)
    assert [e.kind for e in events if e.kind in ("request", "denied", "approved")] == [
        "approved", "denied", "approved", "denied", "approved", "request",
    ]  # fmt: skip
    assert guard.audit.verify().ok
