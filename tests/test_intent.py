"""Tests for toolguard.intent: patterns, binding, pattern injection, resource templates, the
path and URL kinds, and ``pattern_covers``."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from conftest import BASE_CONFIG
from hypothesis import given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard.config import ToolRule, load_config
from toolguard.intent import (
    BoundTask,
    CompiledTool,
    Policy,
    ResourceError,
    bind_pattern,
    pattern_covers,
)


def _policy(**changes: Any) -> Policy:
    data = copy.deepcopy(BASE_CONFIG)
    data.update(changes)
    return Policy(load_config(data))


def _bound(job_id: Any = "42", intent: str = "process-job") -> BoundTask:
    return _policy().bind(intent, {"job_id": job_id})


def _matches(pattern: str, value: str, **params: str) -> bool:
    return re.fullmatch(bind_pattern(pattern, params), value, re.DOTALL) is not None


def _tool(resource: str | list[str], kind: str = "plain", **extra: Any) -> CompiledTool:
    return CompiledTool.compile(
        "t", ToolRule(operation="read", resource=resource, kind=kind, **extra)
    )


# -- patterns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        pytest.param("agents:jobs:42:*", "agents:jobs:42:input", True, id="star-suffix"),
        pytest.param("agents:jobs:42:*", "agents:jobs:42:", True, id="star-matches-empty"),
        pytest.param("agents:jobs:42:*", "agents:jobs:42:a:b:c", True, id="star-crosses-colons"),
        pytest.param("agents:jobs:42:*", "agents:jobs:42", False, id="needs-separator"),
        pytest.param("agents:jobs:42:*", "agents:jobs:420:x", False, id="no-prefix-bleed"),
        pytest.param("agents:jobs:42:*", "xagents:jobs:42:a", False, id="anchored-start"),
        pytest.param("agents:jobs", "agents:jobs:42", False, id="anchored-end"),
        pytest.param("agents:jobs:*", "AGENTS:jobs:1", False, id="case-sensitive"),
        pytest.param("a.b", "axb", False, id="dot-is-literal"),
        pytest.param("a+b(c)", "a+b(c)", True, id="regex-chars-literal"),
        pytest.param("[ab]", "a", False, id="class-is-literal"),
        pytest.param("*:42:*", "jobs:42:x", True, id="two-stars"),
        pytest.param("*", "anything at all", True, id="only-star"),
        pytest.param("?", "x", False, id="question-mark-literal"),
    ],
)
def test_pattern_matching(pattern: str, value: str, expected: bool) -> None:
    assert _matches(pattern, value) is expected


def test_bind_pattern_binds_placeholders_literally() -> None:
    assert _matches("agents:jobs:{job_id}:*", "agents:jobs:42:x", job_id="42")
    assert not _matches("agents:jobs:{job_id}:*", "agents:jobs:43:x", job_id="42")


def test_bind_pattern_missing_parameter_is_config_error() -> None:
    with pytest.raises(tg.ConfigError, match=r"needs the task parameter 'job_id'") as info:
        bind_pattern("agents:jobs:{job_id}:*", {}, where="intents.p.allow.write[0]")
    assert info.value.problems == [("intents.p.allow.write[0]", "missing task parameter 'job_id'")]


# -- binding tasks -----------------------------------------------------------------------------


def test_bind_task_carries_intent_identity_and_params() -> None:
    bound = _bound(42)
    assert bound.intent == "process-job"
    assert bound.identity == "agent-runner"
    assert bound.params == {"job_id": "42"}
    assert bound.tools == frozenset({"kv_get", "kv_set"})
    assert bound.purpose == "Process job 42"
    assert bound.ttl == 900.0
    assert bound.budget.max_calls == 20


def test_bind_task_allows_inside_intent_and_ceiling() -> None:
    bound = _bound()
    assert bound.allows("read", "agents:context:style") is None
    assert bound.allows("read", "agents:jobs:42:input") is None
    assert bound.allows("write", "agents:jobs:42:result") is None


@pytest.mark.parametrize(
    ("operation", "resource", "rule"),
    [
        pytest.param(
            "write", "agents:jobs:43:result", "intents.process-job.allow.write", id="other-job"
        ),
        pytest.param(
            "write", "agents:context:style", "intents.process-job.allow.write", id="context-write"
        ),
        pytest.param(
            "delete", "agents:jobs:42:x", "intents.process-job.allow.delete", id="op-not-listed"
        ),
        pytest.param("read", "agents:secrets:x", "intents.process-job.allow.read", id="namespace"),
    ],
)
def test_bind_task_denies_outside_intent(operation: str, resource: str, rule: str) -> None:
    assert _bound().allows(operation, resource) == rule


def test_identity_ceiling_intersects_intent_allow() -> None:
    data = copy.deepcopy(BASE_CONFIG)
    # The intent asks for more than its identity's ceiling: the ceiling still applies.
    data["intents"]["process-job"]["allow"]["read"].append("billing:*")
    data["intents"]["process-job"]["allow"]["delete"] = ["agents:jobs:{job_id}:*", "tmp:*"]
    bound = Policy(load_config(data)).bind("process-job", {"job_id": "42"})

    assert bound.allows("read", "billing:invoices") == "identities.agent-runner.allow.read"
    assert bound.allows("delete", "tmp:x") == "identities.agent-runner.allow.delete"
    assert bound.allows("delete", "agents:jobs:42:x") is None


def test_bind_task_missing_parameter_is_config_error() -> None:
    with pytest.raises(tg.ConfigError, match=r"needs the task parameter 'job_id'") as info:
        _policy().bind("process-job", {})
    assert info.value.problems[0][0] == "intents.process-job.allow.read[1]"


def test_bind_unknown_intent_lists_known_ones() -> None:
    with pytest.raises(
        tg.ConfigError,
        match=r"intent 'nope' is not defined \(defined: process-job, summarise-job\)",
    ):
        _policy().bind("nope", {"job_id": "1"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(4.2, "must be a string or an integer, got float", id="float"),
        pytest.param(True, "must be a string or an integer, got bool", id="bool"),
        pytest.param(["42"], "must be a string or an integer, got list", id="list"),
        pytest.param("42\n", "contains control characters", id="newline"),
        pytest.param("4\x002", "contains control characters", id="nul"),
    ],
)
def test_bind_task_rejects_bad_parameter(value: Any, message: str) -> None:
    with pytest.raises(tg.ConfigError, match=message):
        _policy().bind("process-job", {"job_id": value})


# -- pattern injection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        pytest.param("*", id="star"),
        pytest.param("42:*", id="star-suffix"),
        pytest.param(".*", id="regex-dot-star"),
        pytest.param("42|.*", id="regex-alternation"),
        pytest.param("{job_id}", id="placeholder"),
        pytest.param("4[0-9]", id="regex-class"),
    ],
)
def test_bound_value_is_literal_and_never_widens(job_id: str) -> None:
    bound = _bound(job_id)

    for other in ("agents:jobs:42:result", "agents:jobs:43:result", "agents:jobs:x:y"):
        assert bound.allows("write", other) == "intents.process-job.allow.write"
    # Only the literal value itself is inside the namespace.
    assert bound.allows("write", f"agents:jobs:{job_id}:result") is None


def test_star_job_id_does_not_cover_another_job_for_delegation() -> None:
    parent = _bound("*")
    child = _policy().bind("summarise-job", {"job_id": "42"})
    assert child.covered_by(parent) is not None
    same = _policy().bind("summarise-job", {"job_id": "*"})
    assert same.covered_by(parent) is None


def test_resource_value_with_star_is_literal() -> None:
    # A call naming "agents:jobs:42:*" is a resource with a literal star, inside job 42 only.
    bound = _bound()
    assert bound.allows("write", "agents:jobs:42:*") is None
    assert bound.allows("write", "agents:jobs:*") == "intents.process-job.allow.write"


# -- resource templates ----------------------------------------------------------------------


def test_resource_template_takes_call_argument() -> None:
    tool = _tool("mailto:{to}")
    assert tool.resources({"to": "ops@example.com", "body": "x"}) == ("mailto:ops@example.com",)
    assert tool.resources({"to": 7}) == ("mailto:7",)


def test_resource_template_missing_argument_is_denial() -> None:
    with pytest.raises(ResourceError, match="needs the argument 'to' to name its resource") as info:
        _tool("mailto:{to}").resources({"body": "x"})
    assert info.value.rule == "tools.t.resource"


def test_resource_template_none_argument_is_denial() -> None:
    with pytest.raises(ResourceError, match="needs the argument 'key'"):
        _tool("{key}").resources({"key": None})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(["a"], id="list"),
        pytest.param({"a": 1}, id="dict"),
        pytest.param(True, id="bool"),
    ],
)
def test_resource_template_non_string_argument_is_denial(value: Any) -> None:
    with pytest.raises(ResourceError, match="must be a string to name a resource"):
        _tool("{key}").resources({"key": value})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("agents:jobs:42:x\n", id="newline"),
        pytest.param("agents:jobs:42:\x00", id="nul"),
        pytest.param("agents:jobs:42:\x7f", id="del"),
        pytest.param("agents:jobs:42:\r", id="cr"),
    ],
)
def test_resource_with_control_characters_is_denial(value: str) -> None:
    with pytest.raises(ResourceError, match="control characters"):
        _tool("{key}").resources({"key": value})


def test_resource_template_with_several_resources() -> None:
    tool = _tool(["{src}", "{dst}"])
    assert tool.resources({"src": "a", "dst": "b"}) == ("a", "b")


def test_resource_template_argument_is_not_reinterpreted() -> None:
    tool = _tool("{bucket}/{key}")
    # The tool will read bucket "{key}"; the policy must check exactly that.
    assert tool.resources({"bucket": "{key}", "key": "public"}) == ("{key}/public",)


def test_cost_from_argument_adds_fixed_cost() -> None:
    tool = _tool("{key}", cost=0.5, cost_arg="amount")
    assert tool.cost({"key": "k", "amount": 2}) == 2.5
    with pytest.raises(ResourceError, match="must be a non-negative number"):
        tool.cost({"key": "k", "amount": -1})
    with pytest.raises(ResourceError, match="must be a non-negative number"):
        tool.cost({"key": "k"})


# -- kind: path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        pytest.param("/data/./a//b/", "/data/a/b", id="dots-and-slashes"),
        pytest.param("/data/x/../y", "/data/y", id="inner-dotdot"),
        pytest.param("data/a", "data/a", id="relative"),
        pytest.param("//data/a", "/data/a", id="double-leading-slash"),
    ],
)
def test_path_kind_normalizes(value: str, normalized: str) -> None:
    assert _tool("{path}", kind="path").resources({"path": value}) == (normalized,)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("..", id="parent"),
        pytest.param("../etc/passwd", id="leading"),
        pytest.param("data/../../etc", id="climbs-out"),
    ],
)
def test_path_kind_dotdot_escape_is_denial(value: str) -> None:
    with pytest.raises(ResourceError, match="escapes its root"):
        _tool("{path}", kind="path").resources({"path": value})


def test_path_kind_backslash_is_denial() -> None:
    with pytest.raises(ResourceError, match="backslash"):
        _tool("{path}", kind="path").resources({"path": "data\\..\\x"})


def test_path_kind_checks_the_normalized_path() -> None:
    data = copy.deepcopy(BASE_CONFIG)
    data["tools"]["read_file"] = {"operation": "read", "resource": "{path}", "kind": "path"}
    data["identities"]["agent-runner"]["allow"]["read"].append("/data/*")
    data["intents"]["process-job"]["tools"].append("read_file")
    data["intents"]["process-job"]["allow"]["read"].append("/data/{job_id}/*")
    policy = Policy(load_config(data))
    bound = policy.bind("process-job", {"job_id": "42"})
    tool = policy.tools["read_file"]

    (inside,) = tool.resources({"path": "/data/42/./in.csv"})
    (outside,) = tool.resources({"path": "/data/42/../43/in.csv"})

    assert bound.allows("read", inside) is None
    assert outside == "/data/43/in.csv"
    assert bound.allows("read", outside) is not None


# -- kind: url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        pytest.param("HTTPS://Api.Example.COM/v1/x", "https://api.example.com/v1/x", id="case"),
        pytest.param("https://api.example.com:443/v1", "https://api.example.com/v1", id="port"),
        pytest.param("http://api.example.com:80", "http://api.example.com/", id="http-port"),
        pytest.param("https://api.example.com:8443/", "https://api.example.com:8443/", id="other"),
        pytest.param("https://api.example.com./a", "https://api.example.com/a", id="trailing-dot"),
        pytest.param("https://api.example.com/a?q=1#frag", "https://api.example.com/a?q=1", id="q"),
    ],
)
def test_url_kind_normalizes(value: str, normalized: str) -> None:
    assert _tool("{url}", kind="url").resources({"url": value}) == (normalized,)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("https://user:pw@api.example.com/", "user information", id="userinfo"),
        pytest.param("https://api.example.com@evil.com/", "user information", id="at-trick"),
        pytest.param("api.example.com/x", "needs a scheme and a host", id="no-scheme"),
        pytest.param("https:///x", "needs a scheme and a host", id="no-host"),
        pytest.param("https://api.example.com:99999/", "malformed", id="bad-port"),
    ],
)
def test_url_kind_rejects(value: str, message: str) -> None:
    with pytest.raises(ResourceError, match=message):
        _tool("{url}", kind="url").resources({"url": value})


def test_url_kind_keeps_ipv6_brackets() -> None:
    assert _tool("{url}", kind="url").resources({"url": "http://[::1]:8080/x"}) == (
        "http://[::1]:8080/x",
    )


# -- pattern_covers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        pytest.param("agents:jobs:*", "agents:jobs:42:*", True, id="narrower"),
        pytest.param("agents:jobs:42:*", "agents:jobs:*", False, id="wider"),
        pytest.param("*", "anything:*", True, id="star-covers-all"),
        pytest.param("a:*", "a:*", True, id="equal"),
        pytest.param("a:b", "a:b", True, id="equal-literal"),
        pytest.param("a:b", "a:*", False, id="literal-vs-star"),
        pytest.param("*:42:*", "jobs:42:input", True, id="inner-literal"),
        pytest.param("*a*", "*a*a*", True, id="repeated"),
        pytest.param("a*", "b*", False, id="disjoint"),
        pytest.param("a:*", "", False, id="empty-inner"),
    ],
)
def test_pattern_covers_examples(outer: str, inner: str, expected: bool) -> None:
    assert pattern_covers(outer, inner) is expected


def test_pattern_covers_treats_bound_star_as_literal() -> None:
    # Substituted patterns mark bound values with \x00 ... \x01: a bound "*" is a literal star.
    outer_bound = "agents:jobs:\x00*\x01:*"
    assert not pattern_covers(outer_bound, "agents:jobs:\x0042\x01:*")
    assert pattern_covers(outer_bound, "agents:jobs:\x00*\x01:*")
    assert pattern_covers("agents:jobs:*", "agents:jobs:\x00*\x01:*")


_ALPHABET = "ab:"
_patterns = st.text(alphabet=_ALPHABET + "*", max_size=6)


@st.composite
def _instance(draw: st.DrawFn, pattern: str) -> str:
    """A random string matched by ``pattern``: each ``*`` replaced by a random run."""
    parts = pattern.split("*")
    fills = [draw(st.text(alphabet=_ALPHABET + "*", max_size=4)) for _ in parts[1:]]
    out = parts[0]
    for fill, part in zip(fills, parts[1:]):
        out += fill + part
    return out


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(data=st.data(), outer=_patterns, inner=_patterns)
def test_pattern_covers_is_sound(data: st.DataObject, outer: str, inner: str) -> None:
    """If covers(outer, inner), every string inner matches is matched by outer."""
    if not pattern_covers(outer, inner):
        return
    for _ in range(10):
        value = data.draw(_instance(inner))
        assert _matches(inner, value)
        assert _matches(outer, value), (outer, inner, value)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(outer=_patterns, value=st.text(alphabet=_ALPHABET, max_size=6))
def test_pattern_covers_literal_inner_agrees_with_matching(outer: str, value: str) -> None:
    """For a star-free inner pattern, covering is exactly matching."""
    assert pattern_covers(outer, value) is _matches(outer, value)


@settings(max_examples=200, deadline=None)
@given(pattern=_patterns)
def test_pattern_covers_is_reflexive(pattern: str) -> None:
    assert pattern_covers(pattern, pattern)


def test_template_parameters_are_read_from_patterns_and_purpose() -> None:
    from toolguard.intent import template_parameters

    config = load_config(copy.deepcopy(BASE_CONFIG))
    required, optional = template_parameters(config, "process-job", where="X")
    assert "job_id" in required and not set(optional) & set(required)
    with pytest.raises(tg.ConfigError, match=r"not defined .*pass another intent to X"):
        template_parameters(config, "nope", where="X")
