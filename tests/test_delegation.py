"""Delegation to sub-agents: attenuation only, the ``act`` chain in child credentials, audit
links, parents that end or are revoked, and the same through GuardMiddleware."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock, fake_model
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from toolguard_langchain import GuardMiddleware

import toolguard as tg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer


def _intents() -> dict[str, Any]:
    intents: dict[str, Any] = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["tools"] = ["kv_get", "kv_set", "summarise"]
    intents["process-job"]["allow"]["delegate"] = ["agents:jobs:{job_id}:*"]
    intents["read-all-jobs"] = {
        "identity": "summariser",
        "tools": ["kv_get"],
        "allow": {"read": ["agents:jobs:*"]},
    }
    intents["cleanup-job"] = {
        "identity": "agent-runner",
        "tools": ["kv_get", "kv_delete"],
        "allow": {"read": ["agents:jobs:{job_id}:*"], "delete": ["agents:jobs:{job_id}:*"]},
    }
    intents["write-job"] = {
        "identity": "agent-runner",
        "tools": ["kv_set"],
        "allow": {"write": ["agents:jobs:{job_id}:*"]},
    }
    intents["loose-parent"] = {
        "identity": "summariser",
        "tools": ["kv_get"],
        "allow": {"read": ["agents:*"]},  # wider than its identity's ceiling
    }
    intents["peek-context"] = {
        "identity": "agent-runner",
        "tools": ["kv_get"],
        "allow": {"read": ["agents:context:*"]},
    }
    return intents


@pytest.fixture
def dguard(make_guard: Callable[..., tg.Guard], clock: Clock) -> tg.Guard:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["allow"]["delegate"] = ["agents:jobs:*"]
    tools = {
        **BASE_CONFIG["tools"],
        "summarise": {"operation": "delegate", "resource": "agents:jobs:{job_id}:summary"},
    }
    return make_guard(clock=clock, intents=_intents(), identities=identities, tools=tools)


class _Kv:
    def __init__(self) -> None:
        self.credentials: list[tg.Credential] = []

        @tool
        def kv_get(key: str) -> str:
            """Read a key."""
            self.credentials.append(tg.current_credential())
            return f"value of {key}"

        self.kv_get = kv_get


def _read(guard: tg.Guard, task: tg.TaskSession, kv: _Kv, key: str) -> tg.Credential:
    guarded = tg.guard(kv.kv_get, guard, on_deny="raise")
    task.carry(guarded.invoke)({"key": key})
    return kv.credentials[-1]


def _task_row(guard: tg.Guard, task_id: str) -> dict[str, Any]:
    row = guard.store.task_row(task_id)
    assert row is not None
    return dict(row)


# -- attenuation ------------------------------------------------------------------------------


def test_delegation_narrower_child_is_allowed_and_carries_act(dguard: tg.Guard) -> None:
    kv = _Kv()
    with (
        dguard.task("process-job", job_id="42") as parent,
        parent.delegate("summarise-job", job_id="42") as child,
    ):
        credential = _read(dguard, child, kv, "agents:jobs:42:state")
        claims = dguard.verifier().verify(credential.token, operation="read")

    assert child.identity == "summariser"
    assert claims["sub"] == "summariser"
    assert claims["task_id"] == child.task_id
    assert claims["act"] == {"sub": "agent-runner", "task_id": parent.task_id}


def test_delegation_deeper_chains_nest_act(dguard: tg.Guard) -> None:
    kv = _Kv()
    with (
        dguard.task("process-job", job_id="42") as parent,
        parent.delegate("summarise-job", job_id="42") as child,
        child.delegate("summarise-job", job_id="42") as grandchild,
    ):
        credential = _read(dguard, grandchild, kv, "agents:jobs:42:state")
        claims = dguard.verifier().verify(credential.token)

    assert claims["act"] == {
        "sub": "summariser",
        "task_id": child.task_id,
        "act": {"sub": "agent-runner", "task_id": parent.task_id},
    }
    assert grandchild.chain == (grandchild.task_id, child.task_id, parent.task_id)


@pytest.mark.parametrize(
    ("intent", "params", "match"),
    [
        pytest.param("cleanup-job", {"job_id": "42"}, r"tools \['kv_delete'\]", id="more-tools"),
        pytest.param(
            "read-all-jobs",
            {},
            r"read on 'agents:jobs:\*' is wider than the parent's intent 'process-job'",
            id="wider-pattern",
        ),
        pytest.param(
            "summarise-job",
            {"job_id": "7"},
            r"read on 'agents:jobs:7:\*' is wider than the parent's intent",
            id="other-job",
        ),
        pytest.param(
            "summarise-job",
            {"job_id": "*"},
            r"read on 'agents:jobs:\*:\*' is wider",
            id="wildcard-param-is-literal-yet-wider",
        ),
    ],
)
def test_delegation_wider_child_is_refused_at_start(
    dguard: tg.Guard, intent: str, params: dict[str, str], match: str
) -> None:
    with dguard.task("process-job", job_id="42") as parent:
        with pytest.raises(tg.PolicyDenied, match=match) as refused:
            parent.delegate(intent, **params)
        assert parent.children == []

    assert refused.value.rule == f"intents.{intent}.delegation"
    assert refused.value.task_id == parent.task_id
    (denied,) = dguard.audit.events(kind="denied")
    assert (denied.task_id, denied.rule) == (parent.task_id, f"intents.{intent}.delegation")
    assert [e.kind for e in dguard.audit.events(kind="task_start")] == ["task_start"]


def test_delegation_beyond_the_parents_identity_ceiling_is_refused(dguard: tg.Guard) -> None:
    with (
        dguard.task("loose-parent") as parent,
        pytest.raises(tg.PolicyDenied, match="wider than the parent's identity 'summariser'"),
    ):
        parent.delegate("peek-context")


def test_delegation_unknown_intent_or_missing_parameter_is_a_config_error(
    dguard: tg.Guard,
) -> None:
    with dguard.task("process-job", job_id="42") as parent:
        with pytest.raises(tg.ConfigError, match="'nope' is not defined"):
            parent.delegate("nope")
        with pytest.raises(tg.ConfigError, match="job_id"):
            parent.delegate("summarise-job")


def test_delegation_from_an_ended_parent_is_refused(dguard: tg.Guard) -> None:
    with dguard.task("process-job", job_id="42") as parent:
        pass
    with pytest.raises(tg.PolicyDenied, match="is not active"):
        parent.delegate("summarise-job", job_id="42")


def test_delegation_child_calls_are_checked_against_the_child_intent(dguard: tg.Guard) -> None:
    kv = _Kv()
    with (
        dguard.task("process-job", job_id="42") as parent,
        parent.delegate("summarise-job", job_id="42") as child,
    ):
        guarded = tg.guard(kv.kv_get, dguard, on_deny="raise")
        with pytest.raises(tg.PolicyDenied, match="intent 'summarise-job'"):
            child.carry(guarded.invoke)({"key": "agents:context:rules"})
        # The parent may read the context; its own call is not affected by the child.
        parent.carry(guarded.invoke)({"key": "agents:context:rules"})


# -- lifecycle and audit ----------------------------------------------------------------------


def test_delegation_audit_links_child_to_parent(dguard: tg.Guard) -> None:
    with (
        dguard.task("process-job", job_id="42") as parent,
        parent.delegate("summarise-job", job_id="42") as child,
    ):
        pass

    assert _task_row(dguard, child.task_id)["parent_id"] == parent.task_id
    assert _task_row(dguard, parent.task_id)["parent_id"] is None
    (start,) = dguard.audit.events(task_id=child.task_id, kind="task_start")
    assert start.correlation_id == parent.task_id
    assert start.identity == "summariser"


def test_delegation_child_deadline_is_capped_by_the_parent(dguard: tg.Guard, clock: Clock) -> None:
    with dguard.task("process-job", job_id="42") as parent:  # ttl 15m
        clock.advance(12 * 60)
        with parent.delegate("summarise-job", job_id="42") as child:  # ttl 5m
            assert child.deadline == parent.deadline
            kv = _Kv()
            credential = _read(dguard, child, kv, "agents:jobs:42:state")
            assert credential.expires_at <= parent.deadline


def test_delegation_ending_the_parent_ends_and_revokes_children(dguard: tg.Guard) -> None:
    kv = _Kv()
    parent = dguard.task("process-job", job_id="42").start()
    child = parent.delegate("summarise-job", job_id="42").start()
    grandchild = child.delegate("summarise-job", job_id="42").start()
    child_credential = _read(dguard, child, kv, "agents:jobs:42:a")
    grandchild_credential = _read(dguard, grandchild, kv, "agents:jobs:42:b")
    verifier = dguard.verifier()
    verifier.verify(child_credential.token)

    parent.end()

    assert (parent.status, child.status, grandchild.status) == (
        "ok",
        "parent-ended",
        "parent-ended",
    )
    for credential in (child_credential, grandchild_credential):
        with pytest.raises(tg.CredentialRevoked):
            verifier.verify(credential.token)
    assert _task_row(dguard, grandchild.task_id)["status"] == "parent-ended"
    guarded = tg.guard(kv.kv_get, dguard, on_deny="raise")
    with pytest.raises(tg.PolicyDenied, match="has ended"):
        child.carry(guarded.invoke)({"key": "agents:jobs:42:c"})


def test_delegation_from_an_expired_parent_is_refused(dguard: tg.Guard) -> None:
    clock = dguard.clock
    assert hasattr(clock, "advance")
    with dguard.task("process-job", job_id="42") as parent:
        clock.advance(16 * 60)  # past the intent's 15 min ttl
        with pytest.raises(tg.PolicyDenied, match="past its time limit"):
            parent.delegate("summarise-job", job_id="42")


def test_delegation_revoking_the_parent_revokes_children(dguard: tg.Guard) -> None:
    kv = _Kv()
    with dguard.task("process-job", job_id="42") as parent:
        child = parent.delegate("summarise-job", job_id="42").start()
        grandchild = child.delegate("summarise-job", job_id="42").start()
        credential = _read(dguard, grandchild, kv, "agents:jobs:42:a")

        ended = dguard.revoke(task_id=parent.task_id, reason="incident 17")

        assert set(ended) == {parent.task_id, child.task_id, grandchild.task_id}
        with pytest.raises(tg.CredentialRevoked):
            dguard.verifier().verify(credential.token)
        guarded = tg.guard(kv.kv_get, dguard, on_deny="raise")
        for task in (child, grandchild):
            with pytest.raises(tg.PolicyDenied, match="revoked"):
                task.carry(guarded.invoke)({"key": "agents:jobs:42:b"})
        # A revoked parent cannot delegate any more: refused at start.
        with pytest.raises(tg.PolicyDenied, match="parent task was revoked"):
            parent.delegate("summarise-job", job_id="42")
    assert _task_row(dguard, child.task_id)["status"] == "revoked"


# -- through the middleware -------------------------------------------------------------------


def _pipeline(
    guard: tg.Guard, child_intent: str, **child_kwargs: Any
) -> tuple[GuardMiddleware, Any, _Kv, list[Any]]:
    kv = _Kv()
    sub_messages: list[Any] = []
    sub_agent = create_agent(
        fm.ScriptedChatModel(
            script=[
                turn(
                    call("kv_get", "s1", key="agents:jobs:42:state"),
                    call("kv_get", "s2", key="agents:context:rules"),
                ),
                answer("summary of job 42"),
            ]
        ),
        [kv.kv_get],
        middleware=[GuardMiddleware(guard, intent=child_intent, **child_kwargs)],
    )

    @tool
    def summarise(job_id: str) -> str:
        """Summarise a job with the sub-agent."""
        result = sub_agent.invoke({"messages": [{"role": "user", "content": "summarise"}]})
        sub_messages.extend(result["messages"])
        return str(result["messages"][-1].content)

    middleware = GuardMiddleware(guard, intent="process-job")
    parent_agent = create_agent(
        fm.ScriptedChatModel(script=[turn(call("summarise", "p1", job_id="42")), answer("done")]),
        [summarise],
        middleware=[middleware],
    )
    return middleware, parent_agent, kv, sub_messages


def test_delegation_middleware_sub_agent_runs_as_a_child_task(dguard: tg.Guard) -> None:
    middleware, agent, kv, sub_messages = _pipeline(dguard, "summarise-job")

    result = middleware.run(
        agent, {"messages": [{"role": "user", "content": "go"}]}, {"configurable": {"job_id": "42"}}
    )

    assert result["messages"][-1].content == "done"
    statuses = {m.tool_call_id: m.status for m in sub_messages if isinstance(m, ToolMessage)}
    assert statuses == {"s1": "success", "s2": "error"}  # the child may not read the context
    (credential,) = kv.credentials
    (parent_start,) = dguard.audit.events(kind="task_start", intent="process-job")
    (child_start,) = dguard.audit.events(kind="task_start", intent="summarise-job")
    assert child_start.correlation_id == parent_start.task_id
    assert credential.task_id == child_start.task_id
    assert credential.claims["act"] == {"sub": "agent-runner", "task_id": parent_start.task_id}
    assert _task_row(dguard, credential.task_id)["status"] == "ok"
    assert _task_row(dguard, parent_start.task_id or "")["status"] == "ok"


def test_delegation_middleware_wider_sub_agent_is_refused_at_start(dguard: tg.Guard) -> None:
    middleware, agent, kv, _ = _pipeline(dguard, "read-all-jobs")

    with pytest.raises(tg.PolicyDenied, match="delegation to intent 'read-all-jobs' refused"):
        middleware.run(
            agent,
            {"messages": [{"role": "user", "content": "go"}]},
            {"configurable": {"job_id": "42"}},
        )

    assert kv.credentials == []
    assert dguard.audit.events(kind="task_start", intent="read-all-jobs") == []
    (parent_start,) = dguard.audit.events(kind="task_start", intent="process-job")
    assert _task_row(dguard, parent_start.task_id or "")["status"] == "error"


def test_delegation_middleware_delegate_false_starts_a_root_task(dguard: tg.Guard) -> None:
    middleware, agent, kv, _ = _pipeline(dguard, "read-all-jobs", delegate=False)

    middleware.run(
        agent, {"messages": [{"role": "user", "content": "go"}]}, {"configurable": {"job_id": "42"}}
    )

    (child_start,) = dguard.audit.events(kind="task_start", intent="read-all-jobs")
    assert child_start.correlation_id is None
    assert "act" not in kv.credentials[0].claims


@pytest.mark.slow
def test_delegation_example_runs_offline(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "delegation.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in [
        "  s1 kv_get: [success] processed",
        "  w2 summarise_job: [success] Job 42 is processed.",
        "  tasks: worker ok, summariser ok",
        "  the summariser's task is a child of the worker's: True",
        "  summariser credential: sub=summariser, act.sub=agent-runner, act.task_id is the "
        "worker's task: True",
        "  refused at start: delegation to intent 'audit-all-jobs' refused: read on "
        "'agents:jobs:*' is wider than the parent's intent 'process-job' allows",
        "  child status after the parent ended: parent-ended",
        "  the child's credential is rejected: revoked with its parent",
    ]:
        assert expected in lines
    assert lines[2].startswith("  s2 kv_get: [error] Denied by toolguard: read on")


def test_delegation_child_calls_spend_the_parent_budget_too(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    """Budgets attenuate too: delegating cannot multiply a parent's max_calls."""
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["budget"] = {"max_calls": 3}
    guard = make_guard(clock=clock, intents=intents)
    kv = _Kv()
    get = tg.guard(kv.kv_get, guard, on_deny="raise")
    with guard.task("process-job", job_id="42") as parent:
        get.invoke({"key": "agents:jobs:42:a"})
        with parent.delegate("summarise-job", job_id="42"):  # no budget of its own
            get.invoke({"key": "agents:jobs:42:b"})
            get.invoke({"key": "agents:jobs:42:c"})
            with pytest.raises(tg.BudgetExceeded, match="3 of 3 used") as info:
                get.invoke({"key": "agents:jobs:42:d"})
            assert info.value.rule == "intents.process-job.budget.max_calls"
        with pytest.raises(tg.BudgetExceeded):
            get.invoke({"key": "agents:jobs:42:e"})


def test_delegation_child_with_its_own_budget_spends_both(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    """Each task counts what it may: the child's own, the parent's for both. A refusal by the
    parent's budget undoes the child's own spend of that call too."""
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["budget"] = {"max_calls": 3}
    intents["summarise-job"]["budget"] = {"max_calls": 3}
    guard = make_guard(clock=clock, intents=intents)
    kv = _Kv()
    get = tg.guard(kv.kv_get, guard, on_deny="raise")
    with guard.task("process-job", job_id="42") as parent:
        get.invoke({"key": "agents:jobs:42:a"})
        with parent.delegate("summarise-job", job_id="42"):
            get.invoke({"key": "agents:jobs:42:b"})
            get.invoke({"key": "agents:jobs:42:c"})
            for key in ("d", "e"):  # the child's third fits its own 3, never the parent's
                with pytest.raises(tg.BudgetExceeded) as info:
                    get.invoke({"key": f"agents:jobs:42:{key}"})
                assert info.value.rule == "intents.process-job.budget.max_calls"
    requests = [e for e in guard.audit.events(kind="request")]
    assert len(requests) == 3  # the refused call spent nothing, in neither task
