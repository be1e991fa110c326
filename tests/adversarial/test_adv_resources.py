"""Red team: resource values the model writes (issue 10, items 12 and 13).

``kind: url`` resources refuse every spelling of a dot segment (``..``, ``%2e%2E``, ``.%2e``,
double encoding, ``;``-parameters, ``%2F``, backslashes) the way ``kind: path`` refuses
``..``; a property test checks that no URL accepted under ``https://kv/jobs/42/*`` resolves
outside ``/jobs/42/`` on a server that decodes, splits on ``\\`` or ``;``, and removes dot
segments (RFC 3986 §5.2.4).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from conftest import BASE_CONFIG
from hypothesis import given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard.config import GuardConfig, ToolRule
from toolguard.errors import ConfigError
from toolguard.intent import CompiledTool, Policy, ResourceError, bind_pattern

URL_TOOL = CompiledTool.compile(
    "http_get", ToolRule(operation="read", resource="{url}", kind="url")
)
JOBS_42 = re.compile(bind_pattern("https://kv/jobs/42/*", {}) + r"\Z", re.DOTALL)


def _url(value: str) -> str:
    return URL_TOOL.resources({"url": value})[0]


@pytest.mark.parametrize(
    "value",
    [
        "https://kv/jobs/42/../43/secret",
        "https://kv/jobs/42/%2e%2e/43/secret",
        "https://kv/jobs/42/%2E%2E/43/secret",
        "https://kv/jobs/42/.%2e/43/secret",
        "https://kv/jobs/42/%2e./43/secret",
        "https://kv/jobs/42/./../../admin",
        "https://kv/jobs/42/..",
        "https://kv/jobs/42/.",
        "https://kv/jobs/42/%252e%252e/43",
        "https://kv/jobs/42/..%2f43/secret",
        "https://kv/jobs/42/..%2F43/secret",
        "https://kv/jobs/42/..;/43/secret",
        "https://kv/jobs/42/..;jsessionid=x/43",
        "https://kv/jobs/42/..\\43\\secret",
        "https://kv/jobs/42/%5c..%5c43",
        "https://kv/jobs/42/a/../../43",
        "https://kv/jobs/42/%2e%2e%2f%2e%2e%2fadmin",
        "https://kv\\evil.example/jobs/42/x",
        "https://kv/jobs/42/x?next=a\\b",
    ],
)
def test_url_dot_segments_are_refused(value: str) -> None:
    with pytest.raises(ResourceError) as info:
        _url(value)
    assert info.value.rule == "tools.http_get.resource"


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("HTTPS://KV:443/jobs/42/a", "https://kv/jobs/42/a"),
        ("https://kv/jobs/%34%32/a", "https://kv/jobs/42/a"),  # unreserved: decoded
        ("https://kv/jobs/42/100%25", "https://kv/jobs/42/100%25"),  # a percent sign stays
        ("https://kv/jobs/42/a%20b?x=../y", "https://kv/jobs/42/a%20b?x=../y"),  # query: data
        ("https://kv/jobs/42/...", "https://kv/jobs/42/..."),  # not a dot segment
        ("https://kv/jobs/42/.hidden", "https://kv/jobs/42/.hidden"),
        ("https://kv/jobs/42/a;v=1", "https://kv/jobs/42/a;v=1"),
    ],
)
def test_url_normal_form(value: str, normal: str) -> None:
    assert _url(value) == normal


def _server_path(normal: str) -> str:
    """What a lenient server resolves: decode until stable, ``\\`` as ``/``, ``;``-params
    dropped from each segment, dot segments removed."""
    path = urlsplit(normal).path
    for _ in range(5):
        path = unquote(path)
    path = path.replace("\\", "/")
    path = "/".join(seg.split(";", 1)[0] for seg in path.split("/"))
    resolved = posixpath.normpath(path)
    return resolved + ("/" if path.endswith("/") and resolved != "/" else "")


SEGMENT_PARTS = [
    ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2e.", "%252e", "%25", "%2f", "%2F",
    "%5c", "\\", ";", ";x", "a", "43", "secret", "", "%41", "...",
]  # fmt: skip
segments = st.lists(st.sampled_from(SEGMENT_PARTS), max_size=8).map("".join)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(segments, min_size=1, max_size=5))
def test_no_accepted_url_under_jobs_42_resolves_outside(parts: list[str]) -> None:
    value = "https://kv/jobs/42/" + "/".join(parts)
    try:
        normal = _url(value)
    except ResourceError:
        return
    if JOBS_42.match(normal):
        assert _server_path(normal).startswith("/jobs/42/"), (value, normal)


def test_url_escape_is_denied_through_the_guard(make_guard: Any) -> None:
    guard = make_guard(
        tools={"http_get": {"operation": "read", "resource": "{url}", "kind": "url"}},
        identities={"agent-runner": {"allow": {"read": ["https://kv/jobs/*"]}}},
        intents={
            "fetch": {
                "identity": "agent-runner",
                "tools": ["http_get"],
                "allow": {"read": ["https://kv/jobs/{job_id}/*"]},
            }
        },
    )
    with guard.task("fetch", job_id="42"):
        guard.finish(guard.authorize("http_get", {"url": "https://kv/jobs/42/in"}))
        for url in ("https://kv/jobs/42/%2e%2e/43/secret", "https://kv/jobs/42/..;/43"):
            with pytest.raises(tg.PolicyDenied, match=r"'\.' or '\.\.' segment"):
                guard.authorize("http_get", {"url": url})


# -- characters and size -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "path", "url"])
@pytest.mark.parametrize("char", ["\x85", "\x9b", "\u202e", "\u2066", "\u200b", "\ud800"])
def test_c1_bidi_invisible_and_surrogates_are_refused_in_every_kind(kind: str, char: str) -> None:
    tool = CompiledTool.compile("t", ToolRule(operation="read", resource="{v}", kind=kind))
    value = f"https://kv/jobs/42/a{char}" if kind == "url" else f"jobs/42/a{char}"
    with pytest.raises(ResourceError, match="contains"):
        tool.resources({"v": value})


@pytest.mark.parametrize("kind", ["plain", "path", "url"])
def test_over_long_resource_is_refused_with_a_short_quote(kind: str) -> None:
    tool = CompiledTool.compile("t", ToolRule(operation="read", resource="{v}", kind=kind))
    value = ("https://kv/" if kind == "url" else "") + "a" * 100_000
    with pytest.raises(ResourceError, match=r"is 1000\d\d characters long \(at most 2048\)") as e:
        tool.resources({"v": value})
    assert len(e.value.reason) < 300
    tool.resources({"v": value[:2048]})  # the bound itself is accepted


@pytest.mark.parametrize("char", ["\x85", "\u202e", "\ud800", "\n"])
def test_task_parameters_refuse_the_same_characters(char: str, tmp_path: Path) -> None:
    policy = Policy(GuardConfig.model_validate(BASE_CONFIG))
    with pytest.raises(ConfigError, match="task parameter 'job_id' contains"):
        policy.bind("process-job", {"job_id": f"4{char}2"})


def test_task_parameters_are_bounded(tmp_path: Path) -> None:
    policy = Policy(GuardConfig.model_validate(BASE_CONFIG))
    policy.bind("process-job", {"job_id": "4" * 2048})
    with pytest.raises(ConfigError, match=r"is 2049 characters long \(at most 2048\)"):
        policy.bind("process-job", {"job_id": "4" * 2049})
