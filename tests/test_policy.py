"""Tests for toolguard.policy: ``derive_call`` and the pure ``decide``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from conftest import BASE_CONFIG

from toolguard.config import load_config
from toolguard.intent import BoundTask, Call, Policy
from toolguard.policy import ALLOW, Decision, decide, derive_call

NOW = 1_790_000_000.0
DEADLINE = NOW + 900.0


def _policy(mutate: Any = None) -> Policy:
    data = copy.deepcopy(BASE_CONFIG)
    if mutate is not None:
        mutate(data)
    return Policy(load_config(data))


POLICY = _policy()
TASK = POLICY.bind("process-job", {"job_id": "42"})


def _call(tool: str, policy: Policy = POLICY, **args: Any) -> Call:
    derived = derive_call(policy.tools, tool, args, "cid-1")
    assert isinstance(derived, Call), derived
    return derived


def _decide(
    call: Call,
    task: BoundTask = TASK,
    *,
    ended: str | None = None,
    now: float = NOW,
    deadline: float = DEADLINE,
) -> Decision:
    return decide(task, call, ended=ended, now=now, deadline=deadline)


# -- derive_call -------------------------------------------------------------------------------


def test_derive_call_maps_operation_resources_and_cost() -> None:
    call = _call("send_email", to="ops@example.com", body="hi")
    assert call.tool == "send_email"
    assert call.operation == "write"
    assert call.resources == ("mailto:ops@example.com",)
    assert call.cost == 0.01
    assert call.correlation_id == "cid-1"
    assert call.args == {"to": "ops@example.com", "body": "hi"}


def test_derive_call_without_rule_is_denial() -> None:
    decision = derive_call(POLICY.tools, "kv_scan", {"prefix": "a"}, "cid")
    assert decision == Decision(
        False, "tool 'kv_scan' has no rule in tools:, so it is denied by default", "tools.kv_scan"
    )


def test_derive_call_missing_template_argument_is_denial() -> None:
    decision = derive_call(POLICY.tools, "kv_set", {"value": "x"}, "cid")
    assert isinstance(decision, Decision)
    assert not decision.allowed
    assert decision.reason == "tool 'kv_set' needs the argument 'key' to name its resource"
    assert decision.rule == "tools.kv_set.resource"


def test_derive_call_control_characters_is_denial() -> None:
    decision = derive_call(POLICY.tools, "kv_get", {"key": "agents:jobs:42:a\nb"}, "cid")
    assert isinstance(decision, Decision)
    assert decision.reason == (
        "the resource 'agents:jobs:42:a\\x0ab' contains control characters (\\x0a)"
    )


def test_derive_call_bad_cost_argument_is_denial() -> None:
    def mutate(c: dict[str, Any]) -> None:
        c["tools"]["charge"] = {"operation": "write", "resource": "{account}", "cost_arg": "amt"}

    decision = derive_call(_policy(mutate).tools, "charge", {"account": "a", "amt": "ten"}, "c")
    assert isinstance(decision, Decision)
    assert decision.rule == "tools.charge.cost_arg"


# -- decide ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        pytest.param("kv_get", {"key": "agents:context:style"}, id="read-context"),
        pytest.param("kv_get", {"key": "agents:jobs:42:input"}, id="read-job"),
        pytest.param("kv_set", {"key": "agents:jobs:42:result", "value": "v"}, id="write-job"),
    ],
)
def test_decide_allows_declared_calls(tool: str, args: dict[str, Any]) -> None:
    assert _decide(_call(tool, **args)) is ALLOW
    assert ALLOW.allowed and ALLOW.rule == "allow"


def test_decide_denies_write_outside_namespace_with_readable_reason() -> None:
    decision = _decide(_call("kv_set", key="agents:jobs:43:result", value="v"))
    assert decision == Decision(
        False,
        "write on 'agents:jobs:43:result' is outside what this task may do "
        "(intent 'process-job' allows write only on 'agents:jobs:42:*')",
        "intents.process-job.allow.write",
    )


def test_decide_denies_by_identity_ceiling() -> None:
    def mutate(c: dict[str, Any]) -> None:
        c["intents"]["process-job"]["allow"]["read"].append("billing:*")

    policy = _policy(mutate)
    task = policy.bind("process-job", {"job_id": "42"})

    decision = _decide(_call("kv_get", policy, key="billing:q3"), task)

    assert not decision.allowed
    assert decision.rule == "identities.agent-runner.allow.read"
    assert decision.reason == (
        "read on 'billing:q3' is outside what this task may do (identity 'agent-runner' allows "
        "read only on 'agents:context:*', 'agents:jobs:*')"
    )


def test_decide_denies_tool_not_in_intent() -> None:
    decision = _decide(_call("kv_delete", key="agents:jobs:42:x"))
    assert decision == Decision(
        False,
        "tool 'kv_delete' is not among the tools of intent 'process-job'",
        "intents.process-job.tools",
    )


def test_decide_denies_operation_the_intent_never_allows() -> None:
    def mutate(c: dict[str, Any]) -> None:
        c["intents"]["process-job"]["tools"].append("kv_delete")

    policy = _policy(mutate)
    task = policy.bind("process-job", {"job_id": "42"})

    decision = _decide(_call("kv_delete", policy, key="agents:jobs:42:x"), task)

    assert decision.rule == "intents.process-job.allow.delete"
    assert decision.reason.endswith("allows delete only on nothing)")


def test_decide_needs_every_resource_allowed() -> None:
    def mutate(c: dict[str, Any]) -> None:
        c["tools"]["kv_copy"] = {"operation": "write", "resource": ["{src}", "{dst}"]}
        c["intents"]["process-job"]["tools"].append("kv_copy")

    policy = _policy(mutate)
    task = policy.bind("process-job", {"job_id": "42"})

    ok = _call("kv_copy", policy, src="agents:jobs:42:a", dst="agents:jobs:42:b")
    bad = _call("kv_copy", policy, src="agents:jobs:42:a", dst="agents:jobs:43:b")

    assert _decide(ok, task).allowed
    denied = _decide(bad, task)
    assert not denied.allowed
    assert "'agents:jobs:43:b'" in denied.reason


def test_decide_denies_ended_task() -> None:
    decision = _decide(_call("kv_get", key="agents:jobs:42:input"), ended="revoked")
    assert decision == Decision(
        False, "the task has ended (revoked); no further calls are allowed", "task.active"
    )


@pytest.mark.parametrize("now", [DEADLINE, DEADLINE + 1])
def test_decide_denies_past_ttl(now: float) -> None:
    decision = _decide(_call("kv_get", key="agents:jobs:42:input"), now=now)
    assert decision.rule == "task.ttl"
    assert "past its time limit" in decision.reason


def test_decide_allows_just_before_ttl() -> None:
    assert _decide(_call("kv_get", key="agents:jobs:42:input"), now=DEADLINE - 0.001).allowed


def test_decide_is_pure() -> None:
    call = _call("kv_set", key="agents:jobs:42:result", value="v")
    first = [_decide(call) for _ in range(3)]
    assert first == [ALLOW, ALLOW, ALLOW]
    assert TASK.params == {"job_id": "42"}
