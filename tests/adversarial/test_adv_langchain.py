"""Hostile tool results and arguments on the LangChain paths (issue 10, items 11 and 14).

* No result a tool can return (any type, nested, encoded) carries the call's live token to the
  model, through ``guard()`` tools and through ``GuardMiddleware``.
* The guard checks what the tool will receive: the arguments after the tool's args schema
  validated them (a validator that rewrites a key, a ``pydantic.HttpUrl`` that resolves
  ``..``), and records those.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import posixpath
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from conftest import fake_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool, ToolException, tool
from langgraph.types import Command
from pydantic import BaseModel, HttpUrl, field_validator
from toolguard_langchain import GuardMiddleware

import toolguard as tg
from toolguard.scrub import scrub

fm: Any = fake_model()
call, turn, answer = fm.call, fm.turn, fm.answer
USER = {"messages": [{"role": "user", "content": "go"}]}
JOB: Any = {"configurable": {"job_id": "42"}}
KEY = "agents:jobs:42:state"
MARK = "\x00TOKEN\x00"  # where a generated result puts the live token


# -- the forms a token can take, and a leak detector -----------------------------------------


def _encodings(token: str) -> dict[str, str]:
    raw = token.encode()
    return {
        "exact": token,
        "percent": "".join(f"%{b:02X}" for b in raw),
        "percent-twice": quote("".join(f"%{b:02X}" for b in raw), safe=""),
        "base64": base64.b64encode(raw).decode(),
        "base64-shifted": base64.b64encode(b"xy" + raw + b"z").decode(),
        "base64url": base64.urlsafe_b64encode(b"q" + raw).decode(),
    }


def _visible(value: Any) -> str:
    """Everything the model (or anyone reading the message) could read from ``value``."""
    parts: list[str] = []

    def walk(v: Any, depth: int = 0) -> None:
        if depth > 40:
            return
        if isinstance(v, (bytes, bytearray, memoryview)):
            parts.append(bytes(v).decode("latin-1"))
        elif isinstance(v, str):
            parts.append(v)
        elif isinstance(v, dict):
            for k, item in v.items():
                walk(k, depth + 1)
                walk(item, depth + 1)
        elif isinstance(v, (list, tuple, set, frozenset)):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, BaseException):
            parts.append(str(v))
            parts.extend(getattr(v, "__notes__", []))
            for a in v.args:
                walk(a, depth + 1)
            for chained in (v.__cause__, v.__context__):
                if chained is not None:
                    walk(chained, depth + 1)
        else:
            parts.append(str(v))
            parts.append(repr(v))
        if not isinstance(v, (str, bytes, bytearray, memoryview)):
            parts.append(repr(v))

    walk(value)
    return "\n".join(parts)


def _leaks(text: str, token: str) -> list[str]:
    found = [name for name, form in _encodings(token).items() if form in text]
    # a base64 form at another alignment: 40 characters of it are enough to tell
    raw = token.encode()
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * pad + raw).decode()[4:44]
            if core in text:
                found.append(f"base64@{pad}")
    return found


# -- values a tool returns ------------------------------------------------------------------


@dataclasses.dataclass
class Record:
    name: str
    payload: Any


class Model(BaseModel):
    name: str
    payload: Any = None


class Shows:
    """An object that shows its secret in str()."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __str__(self) -> str:
        return f"Shows({self.secret})"


def _fill(value: Any, token: str, encoding: str) -> Any:
    """``value`` with every MARK replaced by the token in ``encoding``."""
    form = _encodings(token)[encoding]
    if isinstance(value, str):
        return value.replace(MARK, form)
    if isinstance(value, bytes):
        return value.replace(MARK.encode(), form.encode())
    if isinstance(value, dict):
        return {_fill(k, token, encoding): _fill(v, token, encoding) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, token, encoding) for v in value]
    if isinstance(value, tuple):
        return tuple(_fill(v, token, encoding) for v in value)
    if isinstance(value, Record):
        return Record(_fill(value.name, token, encoding), _fill(value.payload, token, encoding))
    if isinstance(value, Model):
        return Model(
            name=_fill(value.name, token, encoding), payload=_fill(value.payload, token, encoding)
        )
    if isinstance(value, Shows):
        return Shows(_fill(value.secret, token, encoding))
    return value


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_marked = st.builds(lambda a, b: a + MARK + b, _text, _text)
_leaf = st.one_of(
    _marked,
    _text,
    st.integers(),
    st.none(),
    _marked.map(lambda s: s.encode("utf-8")),
    _marked.map(Shows),
)
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(_text, _marked), inner, max_size=3),
        st.builds(Record, _marked, inner),
        st.builds(lambda n, p: Model(name=n, payload=p), _marked, inner),
        st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _marked}), max_size=3),
    ),
    max_leaves=10,
)
_forms = st.sampled_from(sorted(_encodings("x.y.z")))


_SEEN: list[str] = []


def _seen(token: str) -> str:
    """Remember the token a tool read (the test looks for it in what the model gets)."""
    _SEEN.append(token)
    return token


def _returning(result: Any, fmt: str = "content") -> StructuredTool:
    def kv_get(key: str) -> Any:
        """Read a key."""
        token = _seen(tg.current_credential().token)
        value, encoding = result
        filled = _fill(value, token, encoding)
        return (filled, filled) if fmt == "content_and_artifact" else filled

    return StructuredTool.from_function(kv_get, response_format=fmt)  # type: ignore[arg-type]


def _model_view(message: ToolMessage) -> str:
    return _visible(message.content) + "\n" + _visible(message.artifact)


@pytest.fixture
def adv_guard(make_guard: Callable[..., tg.Guard]) -> tg.Guard:
    return make_guard()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow
@given(value=_values, encoding=_forms, fmt=st.sampled_from(["content", "content_and_artifact"]))
def test_adv_guarded_tool_never_shows_the_token_to_the_model(
    adv_guard: tg.Guard, value: Any, encoding: str, fmt: str
) -> None:
    _SEEN.clear()
    guarded = tg.guard(_returning((value, encoding), fmt), adv_guard)
    with adv_guard.task("process-job", job_id="42"):
        message = guarded.invoke(
            {"name": "kv_get", "args": {"key": KEY}, "id": "c1", "type": "tool_call"}
        )
    assert isinstance(message, ToolMessage)
    (token,) = _SEEN
    assert _leaks(_model_view(message), token) == []


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow
@given(value=_values, encoding=_forms, fmt=st.sampled_from(["content", "content_and_artifact"]))
def test_adv_middleware_never_shows_the_token_to_the_model(
    adv_guard: tg.Guard, value: Any, encoding: str, fmt: str
) -> None:
    _SEEN.clear()
    script = [turn(call("kv_get", "c1", key=KEY)), answer("done")]
    agent = create_agent(
        fm.ScriptedChatModel(script=script),
        [_returning((value, encoding), fmt)],
        middleware=[GuardMiddleware(adv_guard, intent="process-job")],
    )
    result = agent.invoke(USER, JOB)
    (token,) = _SEEN
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "success"
    assert _leaks(_model_view(message), token) == []


# -- every result type, by name ----------------------------------------------------------------


def _cases(token: str) -> dict[str, Any]:
    return {
        "bytes": token.encode(),
        "bytearray": bytearray(b"<" + token.encode() + b">"),
        "memoryview": memoryview(token.encode()),
        "tuple": ("a", token),
        "set": {token, "b"},
        "dict-key": {token: 1},
        "content-blocks": [{"type": "text", "text": f"here: {token}"}],
        "tool-message": ToolMessage(content=f"t={token}", tool_call_id="c1", artifact=[token]),
        "command": Command(
            update={"messages": [ToolMessage(content=token, tool_call_id="c1")], "note": token}
        ),
        "pydantic": Model(name=token, payload={"k": [token]}),
        "dataclass": Record(name="r", payload=(token,)),
        "object": Shows(token),
        "percent": "".join(f"%{b:02X}" for b in token.encode()),
        "base64": base64.b64encode(b"prefix:" + token.encode()).decode(),
        "url": f"https://api.example.com/cb?token={quote(token, safe='')}&x=1",
    }


@pytest.mark.parametrize("case", sorted(_cases("a.b.c")))
def test_adv_scrub_covers_every_result_type(case: str) -> None:
    token = "eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiJhYmMiLCJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLWJ5dGVz"
    value = _cases(token)[case]
    before = _visible(value)
    cleaned = scrub(value, [token])
    assert _leaks(_visible(cleaned), token) == [], case
    assert _visible(value) == before  # the original is not modified (copies are returned)
    if case == "command":
        assert isinstance(cleaned, Command) and cleaned.update["messages"][0].content
    if case == "tool-message":
        assert isinstance(cleaned, ToolMessage) and cleaned.tool_call_id == "c1"
    if case == "bytes":
        assert isinstance(cleaned, bytes)


def test_adv_scrub_leaves_clean_values_alone() -> None:
    value = {"a": [1, "two", (3.0, None)], "b": Model(name="x"), "c": b"bytes"}
    assert scrub(value, ["eyJsecret.token.value"]) is value


def test_adv_scrub_cuts_cycles() -> None:
    token = "eyJhbGciOi.eyJqdGkiOiJ.c2lnbmF0dXJl"
    loop: list[Any] = [token]
    loop.append(loop)
    cleaned = scrub(loop, [token])
    assert token not in repr(cleaned)


# -- exceptions ----------------------------------------------------------------------------


class Custom(Exception):
    def __init__(self, secret: str) -> None:
        super().__init__("custom failure")
        self.secret = secret

    def __str__(self) -> str:
        return f"failed with {self.secret}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["args", "notes", "cause", "context", "custom-str", "group"])
@pytest.mark.parametrize("path", ["guard", "middleware"])
def test_adv_exceptions_never_carry_the_token(adv_guard: tg.Guard, kind: str, path: str) -> None:
    def kv_get(key: str) -> str:
        """Read a key."""
        token = _seen(tg.current_credential().token)
        if kind == "args":
            raise ToolException(f"bad token {token}", {"t": token})
        if kind == "notes":
            exc = ToolException("failed")
            exc.__notes__ = [f"token was {token}"]  # what add_note() does (Python 3.11+)
            raise exc
        if kind == "cause":
            raise ToolException("failed") from ValueError(token)
        if kind == "context":
            try:
                raise KeyError(base64.b64encode(token.encode()).decode())
            except KeyError:
                raise ToolException("failed") from None
        if kind == "custom-str":
            raise Custom(token)
        group: Any = getattr(builtins, "ExceptionGroup", None)
        if group is None:  # Python 3.10
            raise ToolException("failed") from ValueError(token)
        raise group("several", [ValueError(token), ToolException("x")])

    inner = StructuredTool.from_function(kv_get)
    _SEEN.clear()
    if path == "guard":
        guarded = tg.guard(inner, adv_guard)
        with adv_guard.task("process-job", job_id="42"), pytest.raises(BaseException) as raised:
            guarded.invoke({"key": KEY})
    else:
        agent = create_agent(
            fm.ScriptedChatModel(script=[turn(call("kv_get", "c1", key=KEY)), answer("x")]),
            [inner],
            middleware=[GuardMiddleware(adv_guard, intent="process-job")],
        )
        with pytest.raises(BaseException) as raised:
            agent.invoke(USER, JOB)
    (token,) = _SEEN
    assert _leaks(_visible(raised.value), token) == []
    (outcome,) = adv_guard.audit.events(kind="outcome")
    assert token not in (outcome.error or "")


def test_adv_handled_tool_error_shown_to_the_model_has_no_token(adv_guard: tg.Guard) -> None:
    def kv_get(key: str) -> str:
        """Read a key."""
        token = _seen(tg.current_credential().token)
        raise ToolException(f"upstream said: Bearer {token} expired")

    inner = StructuredTool.from_function(kv_get, handle_tool_error=True)
    _SEEN.clear()
    agent = create_agent(
        fm.ScriptedChatModel(script=[turn(call("kv_get", "c1", key=KEY)), answer("x")]),
        [inner],
        middleware=[GuardMiddleware(adv_guard, intent="process-job")],
    )
    result = agent.invoke(USER, JOB)
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "error"
    assert "expired" in str(message.content)
    (token,) = _SEEN
    assert _leaks(_model_view(message), token) == []


# -- item 14: the guard checks what the tool will receive --------------------------------------


def _normalised(key: str) -> str:
    """A validator a service might well have: keys are resolved like paths."""
    return posixpath.normpath(key.replace(":", "/")).replace("/", ":")


class KeyArgs(BaseModel):
    key: str

    @field_validator("key")
    @classmethod
    def _resolve(cls, value: str) -> str:
        return _normalised(value)


def _key_tool(received: list[Any]) -> StructuredTool:
    def kv_get(key: str) -> str:
        """Read a key."""
        received.append(key)
        return "value"

    return StructuredTool.from_function(kv_get, args_schema=KeyArgs)


SMUGGLED = "agents:jobs:42:x/../../43:secret"


@pytest.mark.parametrize("path", ["guard", "middleware"])
def test_adv_validator_rewriting_a_key_is_checked_after_validation(
    adv_guard: tg.Guard, path: str
) -> None:
    assert _normalised(SMUGGLED) == "agents:jobs:43:secret"
    received: list[Any] = []
    inner = _key_tool(received)
    if path == "guard":
        with adv_guard.task("process-job", job_id="42"):
            out = tg.guard(inner, adv_guard).invoke(
                {"name": "kv_get", "args": {"key": SMUGGLED}, "id": "c1", "type": "tool_call"}
            )
        content = str(out.content)
    else:
        agent = create_agent(
            fm.ScriptedChatModel(script=[turn(call("kv_get", "c1", key=SMUGGLED)), answer("x")]),
            [inner],
            middleware=[GuardMiddleware(adv_guard, intent="process-job")],
        )
        result = agent.invoke(USER, JOB)
        (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
        assert message.status == "error"
        content = str(message.content)
    assert received == []  # the tool never ran
    assert content.startswith("Denied by toolguard") and "agents:jobs:43:secret" in content
    (denied,) = adv_guard.audit.events(kind="denied")
    assert denied.resources == ("agents:jobs:43:secret",)
    assert denied.args is not None and "43:secret" in denied.args


def test_adv_middleware_tool_receives_exactly_what_was_authorized(adv_guard: tg.Guard) -> None:
    received: list[Any] = []
    agent = create_agent(
        fm.ScriptedChatModel(
            script=[turn(call("kv_get", "c1", key="agents:jobs:42:a/../b")), answer("x")]
        ),
        [_key_tool(received)],
        middleware=[GuardMiddleware(adv_guard, intent="process-job")],
    )
    agent.invoke(USER, JOB)
    assert received == ["agents:jobs:42:b"]
    (request,) = adv_guard.audit.events(kind="request")
    assert request.resources == ("agents:jobs:42:b",)
    assert request.args == '{"key":"agents:jobs:42:b"}'


def test_adv_middleware_invalid_arguments_never_reach_the_tool(adv_guard: tg.Guard) -> None:
    received: list[Any] = []
    agent = create_agent(
        fm.ScriptedChatModel(
            script=[turn(call("kv_get", "c1", key=["not", "a", "str"])), answer("x")]
        ),
        [_key_tool(received)],
        middleware=[GuardMiddleware(adv_guard, intent="process-job")],
    )
    result = agent.invoke(USER, JOB)
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "error"  # LangChain's own validation error, for the model
    assert received == []
    assert adv_guard.audit.events(kind="request") == []


@pytest.fixture
def url_guard(make_guard: Callable[..., tg.Guard]) -> tg.Guard:
    return make_guard(
        tools={"fetch": {"operation": "read", "resource": "{url}", "kind": "url"}},
        intents={
            "process-job": {
                "identity": "agent-runner",
                "tools": ["fetch"],
                "allow": {"read": ["https://api.example.com/jobs/{job_id}/*"]},
            }
        },
        identities={"agent-runner": {"allow": {"read": ["https://api.example.com/*"]}}},
    )


@pytest.mark.parametrize("path", ["guard", "middleware"])
def test_adv_httpurl_argument_is_checked_as_the_tool_receives_it(
    url_guard: tg.Guard, path: str
) -> None:
    received: list[str] = []

    @tool
    def fetch(url: HttpUrl) -> str:
        """Fetch a URL."""
        received.append(str(url))
        return "body"

    escape = "https://api.example.com/jobs/42/../43/secret"
    assert str(HttpUrl(escape)) == "https://api.example.com/jobs/43/secret"
    if path == "guard":
        with url_guard.task("process-job", job_id="42"):
            guarded = tg.guard(fetch, url_guard)
            guarded.invoke({"url": escape})
            guarded.invoke({"url": "https://api.example.com/jobs/42/a"})
    else:
        script = [
            turn(call("fetch", "c1", url=escape)),
            turn(call("fetch", "c2", url="https://api.example.com/jobs/42/a")),
            answer("x"),
        ]
        agent = create_agent(
            fm.ScriptedChatModel(script=script),
            [fetch],
            middleware=[GuardMiddleware(url_guard, intent="process-job")],
        )
        agent.invoke(USER, JOB)
    assert received == ["https://api.example.com/jobs/42/a"]
    (denied,) = url_guard.audit.events(kind="denied")
    assert denied.resources == ("https://api.example.com/jobs/43/secret",)
    (allowed,) = url_guard.audit.events(kind="request")
    assert allowed.resources == ("https://api.example.com/jobs/42/a",)


def test_adv_tool_exception_with_a_leaking_str_stays_a_tool_error(adv_guard: tg.Guard) -> None:
    class Leaky(ToolException):
        def __str__(self) -> str:  # shows a token held outside the exception
            return f"upstream rejected {_SEEN[-1]}"

    def kv_get(key: str) -> str:
        """Read a key."""
        _seen(tg.current_credential().token)
        raise Leaky("rejected")

    _SEEN.clear()
    inner = StructuredTool.from_function(kv_get, handle_tool_error=True)
    with adv_guard.task("process-job", job_id="42"):
        message = tg.guard(inner, adv_guard).invoke(
            {"name": "kv_get", "args": {"key": KEY}, "id": "c1", "type": "tool_call"}
        )
    assert isinstance(message, ToolMessage) and message.status == "error"
    (token,) = _SEEN
    assert "upstream rejected" in str(message.content)
    assert _leaks(_model_view(message), token) == []


def test_adv_scrub_keeps_cancellation_a_cancellation() -> None:
    import asyncio

    token = "eyJhbGciOi.eyJqdGkiOiJ.c2lnbmF0dXJl"
    cancelled = asyncio.CancelledError(f"cancelled while holding {token}")
    assert scrub(cancelled, [token]) is cancelled
    assert token not in str(cancelled)
