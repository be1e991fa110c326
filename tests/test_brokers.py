"""Tests for toolguard.brokers: the RFC 8693 token-exchange broker and static secrets.

Every HTTP exchange is faked with respx (no network); retries never sleep (tenacity's ``sleep``
is a recorder). ``end_task`` is called the way the engine calls it: ``end_task(task_id, jtis)``
after the task ended.
"""

from __future__ import annotations

import base64
import copy
import logging
import sqlite3
import ssl
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from conftest import BASE_CONFIG, Clock
from langchain_core.tools import BaseTool, tool

import toolguard as tg
from toolguard.brokers import (
    GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
    BrokerCall,
    HttpTokenBroker,
    StaticSecretProvider,
)
from toolguard.chain import Event
from toolguard.credentials import CredentialProvider, Issuer, MintRequest, Verifier, as_provider
from toolguard.errors import ConfigError, CredentialError
from toolguard.httpauth import tls_context
from toolguard.keys import KeyRing

TOKEN_URL = "https://sts.example.test/oauth2/token"
REVOKE_URL = "https://sts.example.test/oauth2/revoke"
CLIENT_ID = "toolguard agent"  # a space: Basic auth must form-encode it (RFC 6749 §2.3.1)
CLIENT_SECRET = "s3cr3t:with/odd+chars"
ACCESS = "broker-access-token-0123456789"
NOW = 1_790_000_000.0
KEY = "agents:jobs:42:state"

CALL: dict[str, Any] = {
    "jti": "jti-1",
    "task_id": "task-1",
    "identity": "agent-runner",
    "intent": "process-job",
    "tool": "kv_set",
    "operation": "write",
    "resources": [KEY],
    "now": NOW,
    "deadline": NOW + 900,
    "audience": "kv-service",
}


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def issuer(keys: KeyRing) -> Issuer:
    return Issuer(name="toolguard-test", audience="kv-service", keys=keys)


class _Sink:
    """An audit sink recording appended events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def append(self, event: Event) -> None:
        self.events.append(event._asdict())


@pytest.fixture
def sink() -> _Sink:
    return _Sink()


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def make_broker(
    issuer: Issuer, sink: _Sink, waits: list[float]
) -> Iterator[Callable[..., HttpTokenBroker]]:
    brokers: list[HttpTokenBroker] = []

    def factory(**overrides: Any) -> HttpTokenBroker:
        kwargs: dict[str, Any] = {
            "token_url": TOKEN_URL,
            "revocation_url": REVOKE_URL,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "subject": issuer,
            "store": sink,
            "clock": lambda: NOW,
            "sleep": waits.append,
        }
        kwargs.update(overrides)
        broker = HttpTokenBroker(**kwargs)
        brokers.append(broker)
        return broker

    yield factory
    for broker in brokers:
        broker.close()


def _ok(token: str = ACCESS, **extra: Any) -> httpx.Response:
    body = {
        "access_token": token,
        "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 120,
        **extra,
    }
    return httpx.Response(200, json=body)


def _form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode(), keep_blank_values=True, strict_parsing=True)


def _call(**overrides: Any) -> dict[str, Any]:
    return {**CALL, **overrides}


def _basic() -> str:
    pair = "toolguard+agent:s3cr3t%3Awith%2Fodd%2Bchars"
    return "Basic " + base64.b64encode(pair.encode()).decode()


# -- the exchange ------------------------------------------------------------------------------


def test_broker_exchange_sends_rfc8693_form(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], keys: KeyRing
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    broker = make_broker()

    credential = broker.mint(**_call())

    assert route.call_count == 1
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert request.headers["authorization"] == _basic()
    form = _form(request)
    assert set(form) == {
        "grant_type", "subject_token", "subject_token_type", "requested_token_type",
        "audience", "scope",
    }  # fmt: skip
    assert form["grant_type"] == [GRANT_TOKEN_EXCHANGE]
    assert form["subject_token_type"] == [TOKEN_TYPE_JWT]
    assert form["requested_token_type"] == [TOKEN_TYPE_ACCESS_TOKEN]
    assert form["audience"] == ["kv-service"]
    assert form["scope"] == [f"write:{KEY}"]
    # The subject token is a toolguard credential for this very call, for the broker's audience.
    verifier = Verifier(issuer="toolguard-test", audience=TOKEN_URL, keys=keys)
    claims = verifier.verify(form["subject_token"][0], operation="write", resource=KEY, now=NOW)
    assert (claims["jti"], claims["task_id"], claims["sub"]) == ("jti-1", "task-1", "agent-runner")
    assert credential.token == ACCESS
    assert credential.jit is True
    assert (credential.jti, credential.task_id, credential.tool) == ("jti-1", "task-1", "kv_set")
    assert credential.expires_at == NOW + 120
    assert credential.claims["scope"] == f"write:{KEY}"
    assert ACCESS not in repr(credential)


def test_broker_exchange_derives_one_scope_per_resource(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    make_broker().mint(**_call(operation="read", resources=["a:1", "b:2"], audience=None))

    form = _form(route.calls.last.request)
    assert form["scope"] == ["read:a:1 read:b:2"]
    assert "audience" not in form


def test_broker_exchange_uses_custom_scopes_audience_and_subject(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    seen: list[BrokerCall] = []

    def subject(call: BrokerCall) -> str:
        seen.append(call)
        return "workload-identity-token"

    broker = make_broker(
        subject=subject,
        subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        audience="crm-api",
        scopes=lambda call: [f"crm.{call.operation}"],
        extra_params={"resource": "https://crm.example.test/"},
    )
    broker.mint(**_call())

    form = _form(route.calls.last.request)
    assert form["subject_token"] == ["workload-identity-token"]
    assert form["subject_token_type"] == [TOKEN_TYPE_ACCESS_TOKEN]
    assert form["audience"] == ["crm-api"]
    assert form["scope"] == ["crm.write"]
    assert form["resource"] == ["https://crm.example.test/"]
    assert seen[0].tool == "kv_set" and seen[0].resources == (KEY,)


def test_broker_client_auth_post_sends_client_in_form(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    make_broker(client_auth="post").mint(**_call())

    request = route.calls.last.request
    assert "authorization" not in request.headers
    form = _form(request)
    assert form["client_id"] == [CLIENT_ID]
    assert form["client_secret"] == [CLIENT_SECRET]


def test_broker_public_client_sends_only_client_id(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    make_broker(client_secret=None).mint(**_call())

    request = route.calls.last.request
    assert "authorization" not in request.headers
    assert _form(request)["client_id"] == [CLIENT_ID]
    assert "client_secret" not in _form(request)


def test_broker_expiry_without_expires_in_is_the_task_deadline(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    respx_mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(200, json={"access_token": ACCESS, "token_type": "bearer"})
    )
    assert make_broker().mint(**_call()).expires_at == NOW + 900
    assert make_broker().mint(**_call(deadline=None)).expires_at == NOW + 300


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.Response(503), id="http-503"),
        pytest.param(httpx.Response(500, text="oops"), id="http-500"),
        pytest.param(httpx.ConnectTimeout("connect timed out"), id="connect-timeout"),
        pytest.param(httpx.ReadTimeout("read timed out"), id="read-timeout"),
        pytest.param(httpx.ConnectError("connection refused"), id="connect-error"),
    ],
)
def test_broker_retries_transient_failures_then_succeeds(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    waits: list[float],
    failure: Any,
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(side_effect=[failure, failure, _ok()])

    credential = make_broker(max_attempts=3, backoff=0.1, max_backoff=2.0).mint(**_call())

    assert credential.token == ACCESS
    assert route.call_count == 3
    assert len(waits) == 2
    assert all(0 <= w <= 2.0 for w in waits)


def test_broker_backoff_is_jittered_and_bounded(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], waits: list[float]
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=httpx.Response(503))
    broker = make_broker(max_attempts=6, backoff=0.5, max_backoff=1.5)
    for _ in range(10):
        with pytest.raises(CredentialError):
            broker.mint(**_call())

    assert len(waits) == 50
    assert all(0 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 40  # random: no two runs wait the same


def test_broker_gives_up_after_max_attempts_and_fails_closed(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], waits: list[float]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=httpx.Response(503))

    with pytest.raises(CredentialError, match=r"could not be reached: HTTP 503 after 4 attempt"):
        make_broker(max_attempts=4).mint(**_call())
    assert route.call_count == 4
    assert len(waits) == 3


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        pytest.param(400, {"error": "invalid_grant"}, ", error 'invalid_grant'", id="400"),
        pytest.param(400, {"error": "invalid_target"}, ", error 'invalid_target'", id="400-target"),
        pytest.param(401, {"error": "invalid_client"}, ", error 'invalid_client'", id="401"),
        pytest.param(403, {}, "", id="403"),
        pytest.param(429, {"error": "slow_down"}, ", error 'slow_down'", id="429"),
        pytest.param(400, {"error": 'bad"code'}, "", id="unsafe-error-code-left-out"),
    ],
)
def test_broker_never_retries_4xx(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    waits: list[float],
    status: int,
    body: dict[str, Any],
    shown: str,
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=httpx.Response(status, json=body))

    with pytest.raises(CredentialError, match=f"refused the token exchange \\(HTTP {status}") as e:
        make_broker().mint(**_call())
    assert f"(HTTP {status}{shown})" in str(e.value)
    assert route.call_count == 1
    assert waits == []
    assert e.value.tool == "kv_set" and e.value.task_id == "task-1"


@pytest.mark.parametrize(
    ("response", "match"),
    [
        pytest.param(httpx.Response(200, text="<html>"), "not a JSON object", id="not-json"),
        pytest.param(httpx.Response(200, json=[1]), "not a JSON object", id="json-list"),
        pytest.param(
            httpx.Response(200, json={"token_type": "Bearer"}), "no access_token", id="no-token"
        ),
        pytest.param(
            httpx.Response(302, headers={"location": "https://evil.test/"}),
            r"HTTP 302",
            id="redirect-not-followed",
        ),
    ],
)
def test_broker_rejects_unusable_answers(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    response: httpx.Response,
    match: str,
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=response)

    with pytest.raises(CredentialError, match=match):
        make_broker().mint(**_call())
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        pytest.param({"token_type": "DPoP"}, "not Bearer", id="dpop"),
        pytest.param({"expires_in": -5}, "expires_in", id="negative-expiry"),
        pytest.param({"scope": f"write:{KEY} admin"}, "not requested", id="wider-scope"),
    ],
)
def test_broker_revokes_a_refused_token_at_once(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    sink: _Sink,
    extra: dict[str, Any],
    match: str,
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=_ok(**extra))
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(200))
    broker = make_broker()

    with pytest.raises(CredentialError, match=match):
        broker.mint(**_call())
    assert revoke.call_count == 1
    assert _form(revoke.calls.last.request)["token"] == [ACCESS]
    assert sink.events == []
    assert broker.unrevoked == []


def test_broker_records_a_refused_token_it_could_not_revoke(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], sink: _Sink
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=_ok(scope="admin"))
    respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(400))
    broker = make_broker()

    with pytest.raises(CredentialError, match="not requested"):
        broker.mint(**_call())
    assert [(e["kind"], e["decision"], e["jti"]) for e in sink.events] == [
        ("revoke", "failed", "jti-1")
    ]
    assert broker.unrevoked == ["jti-1"]


def test_broker_denies_a_resource_that_is_no_scope_token_before_any_request(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())

    with pytest.raises(CredentialError, match="not a valid OAuth scope token"):
        make_broker().mint(**_call(resources=["has space"]))
    assert not route.called


def test_broker_without_subject_source_denies(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())

    with pytest.raises(CredentialError, match="no subject token source"):
        make_broker(subject=None).mint(**_call())
    assert not route.called


def test_broker_subject_source_failure_denies_without_details(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())

    def subject(call: BrokerCall) -> str:
        raise OSError("/var/run/secrets/token: secret-contents")

    with pytest.raises(CredentialError, match=r"subject token source failed \(OSError\)") as e:
        make_broker(subject=subject).mint(**_call())
    assert "secret-contents" not in str(e.value)
    assert e.value.__context__ is None and e.value.__cause__ is None
    assert not route.called


# -- secrets stay out of errors and logs ---------------------------------------------------------


def _exception_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(vars(error))


def test_broker_errors_and_logs_never_hold_secrets(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sent: list[str] = []

    def echo_secrets(request: httpx.Request) -> httpx.Response:
        subject = _form(request)["subject_token"][0]
        sent.append(subject)
        # A broken proxy that puts the request into its error message.
        raise httpx.ConnectError(f"failed for {subject} {CLIENT_SECRET}", request=request)

    respx_mock.post(TOKEN_URL).mock(side_effect=echo_secrets)
    broker = make_broker(max_attempts=2)

    with pytest.raises(CredentialError) as e:
        broker.mint(**_call())

    text = _exception_text(e.value) + caplog.text + repr(broker)
    assert sent and "[REDACTED]" in str(e.value)
    for secret in (*sent, CLIENT_SECRET, _basic().split()[1]):
        assert secret not in text
    assert e.value.__context__ is None and e.value.__cause__ is None
    assert "attempt 1 failed (ConnectError)" in caplog.text


def test_broker_revocation_logs_and_events_never_hold_tokens(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    sink: _Sink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    respx_mock.post(TOKEN_URL).mock(return_value=_ok(refresh_token="refresh-0123456789"))
    respx_mock.post(REVOKE_URL).mock(side_effect=httpx.ReadTimeout(f"timeout {ACCESS}"))
    broker = make_broker()
    broker.mint(**_call())

    broker.end_task("task-1", ["jti-1"])

    text = caplog.text + repr(sink.events) + repr(broker)
    assert "not revoked" in caplog.text
    assert ACCESS not in text and "refresh-0123456789" not in text and CLIENT_SECRET not in text


# -- revocation at task end ----------------------------------------------------------------------


def test_broker_end_task_revokes_every_token_of_the_task(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], sink: _Sink
) -> None:
    respx_mock.post(TOKEN_URL).mock(side_effect=[_ok("token-a1"), _ok("token-a2"), _ok("token-b1")])
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(200))
    broker = make_broker()
    broker.mint(**_call(jti="a1"))
    broker.mint(**_call(jti="a2"))
    broker.mint(**_call(jti="b1", task_id="task-2"))

    broker.end_task("task-1", ["a1", "a2", "not-from-this-broker"])

    assert revoke.call_count == 2
    forms = [_form(call.request) for call in revoke.calls]
    assert [f["token"] for f in forms] == [["token-a1"], ["token-a2"]]
    assert all(f["token_type_hint"] == ["access_token"] for f in forms)
    assert all(c.request.headers["authorization"] == _basic() for c in revoke.calls)
    assert [(e["kind"], e["decision"], e["task_id"]) for e in sink.events] == [
        ("revoke", "revoke", "task-1")
    ]
    assert "revoked 2 credential(s)" in sink.events[0]["reason"]
    broker.end_task("task-1", ["a1"])  # idempotent: nothing left to revoke
    assert revoke.call_count == 2
    broker.end_task("task-2", [])
    assert _form(revoke.calls.last.request)["token"] == ["token-b1"]


def test_broker_end_task_revokes_refresh_token_too(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker]
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=_ok(refresh_token="refresh-1"))
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(200))
    broker = make_broker()
    broker.mint(**_call())

    broker.end_task("task-1", ["jti-1"])

    forms = [_form(call.request) for call in revoke.calls]
    assert [(f["token"], f["token_type_hint"]) for f in forms] == [
        (["refresh-1"], ["refresh_token"]),
        ([ACCESS], ["access_token"]),
    ]


def test_broker_end_task_retries_then_records_what_it_could_not_revoke(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
    sink: _Sink,
    waits: list[float],
) -> None:
    respx_mock.post(TOKEN_URL).mock(side_effect=[_ok("token-1"), _ok("token-2")])
    revoke = respx_mock.post(REVOKE_URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(200)]  # token-1: fails once, then ok
        + [httpx.Response(503)] * 3  # token-2: never
    )
    broker = make_broker(max_attempts=3)
    broker.mint(**_call(jti="j1"))
    broker.mint(**_call(jti="j2", resources=["agents:jobs:42:other"]))

    broker.end_task("task-1", ["j1", "j2"])

    assert revoke.call_count == 5
    assert len(waits) == 3
    assert [(e["decision"], e.get("jti")) for e in sink.events] == [
        ("revoke", None),
        ("failed", "j2"),
    ]
    failed = sink.events[1]
    assert failed["kind"] == "revoke" and failed["rule"] == "broker.revoke"
    assert failed["tool"] == "kv_set" and failed["resources"] == '["agents:jobs:42:other"]'
    assert "HTTP 503 after 3 attempt(s)" in failed["reason"]
    assert "stays valid until" in failed["reason"]
    assert broker.unrevoked == ["j2"]

    revoke.mock(return_value=httpx.Response(200))
    assert broker.retry_revocations() == []
    assert _form(revoke.calls.last.request)["token"] == ["token-2"]
    assert (sink.events[-1]["decision"], sink.events[-1]["jti"]) == ("revoke", "j2")
    assert broker.unrevoked == []


def test_broker_end_task_does_not_retry_a_4xx_revocation(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], sink: _Sink
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    revoke = respx_mock.post(REVOKE_URL).mock(
        return_value=httpx.Response(400, json={"error": "unsupported_token_type"})
    )
    broker = make_broker()
    broker.mint(**_call())

    broker.end_task("task-1", ["jti-1"])

    assert revoke.call_count == 1
    assert "HTTP 400, error 'unsupported_token_type'" in sink.events[0]["reason"]


def test_broker_retry_revocations_drops_expired_tokens(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], clock: Clock
) -> None:
    clock.now = NOW
    respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(503))
    broker = make_broker(clock=clock, max_attempts=1)
    broker.mint(**_call())
    broker.end_task("task-1", [])
    assert broker.unrevoked == ["jti-1"]

    clock.advance(121)  # past expires_in
    assert broker.unrevoked == []
    assert broker.retry_revocations() == []
    assert revoke.call_count == 1


def test_broker_without_revocation_endpoint_records_unrevoked_tokens(
    respx_mock: respx.MockRouter, make_broker: Callable[..., HttpTokenBroker], sink: _Sink
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    broker = make_broker(revocation_url=None)
    broker.mint(**_call())

    broker.end_task("task-1", ["jti-1"])

    assert [(e["decision"], e["jti"]) for e in sink.events] == [("failed", "jti-1")]
    assert "no revocation endpoint" in sink.events[0]["reason"]


def test_broker_bind_takes_issuer_store_and_clock_from_the_guard(
    respx_mock: respx.MockRouter, make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=_ok())
    with HttpTokenBroker(token_url=TOKEN_URL, revocation_url=REVOKE_URL) as broker:
        guard = make_guard(clock=clock, providers={"kv_set": broker})
        broker.bind(guard)
        broker.mint(**_call(now=clock.now, deadline=clock.now + 60))

        subject = _form(route.calls.last.request)["subject_token"][0]
        verifier = guard.issuer.verifier(audience=TOKEN_URL)
        assert verifier.verify(subject, now=clock.now)["tool"] == "kv_set"


# -- through the guard: fail closed, audited -----------------------------------------------------


def _kv_tools(ran: list[str]) -> list[BaseTool]:
    @tool
    def kv_set(key: str, value: str) -> str:
        """Set a key."""
        ran.append(tg.current_credential().token)
        return "stored"

    @tool
    def kv_get(key: str) -> str:
        """Get a key."""
        ran.append(tg.current_credential().token)
        return "value"

    return [kv_set, kv_get]


def _jtis(guard: tg.Guard, task_id: str) -> list[str]:
    rows = guard.store.query("SELECT jti FROM credentials WHERE task_id = ?", (task_id,))
    return [r["jti"] for r in rows]


def test_broker_failure_denies_the_call_and_audits_the_reason(
    respx_mock: respx.MockRouter,
    make_guard: Callable[..., tg.Guard],
    clock: Clock,
    waits: list[float],
) -> None:
    route = respx_mock.post(TOKEN_URL).mock(return_value=httpx.Response(503))
    broker = HttpTokenBroker(
        token_url=TOKEN_URL, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, sleep=waits.append
    )
    guard = make_guard(clock=clock, providers={"kv_set": broker})
    broker.bind(guard)
    ran: list[str] = []
    kv_set, kv_get = tg.guard(_kv_tools(ran), guard)

    with guard.task("process-job", job_id="42") as task:
        answer = kv_set.invoke({"key": KEY, "value": "v"})
        kv_get.invoke({"key": KEY})  # other tools keep the built-in issuer

    assert answer.startswith("Denied by toolguard: no credential could be obtained")
    assert "HTTP 503 after 3 attempt(s)" in answer
    assert route.call_count == 3
    assert len(ran) == 1  # only kv_get ran
    denied = [e for e in guard.audit.events(task_id=task.task_id) if e.decision == "deny"]
    assert [(e.kind, e.tool, e.rule, e.outcome) for e in denied] == [
        ("outcome", "kv_set", "credentials.provider", "not-run")
    ]
    assert "HTTP 503" in (denied[0].reason or "")
    broker.close()


def test_broker_through_the_guard_tokens_reach_the_tool_and_are_revoked_at_task_end(
    respx_mock: respx.MockRouter, make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    respx_mock.post(TOKEN_URL).mock(side_effect=[_ok("broker-1"), _ok("broker-2")])
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(200))
    broker = HttpTokenBroker(token_url=TOKEN_URL, revocation_url=REVOKE_URL, client_id="tg")
    guard = make_guard(clock=clock, providers={"kv_set": broker})
    broker.bind(guard)
    ran: list[str] = []
    kv_set, _ = tg.guard(_kv_tools(ran), guard)

    with guard.task("process-job", job_id="42") as task:
        assert kv_set.invoke({"key": KEY, "value": "a"}) == "stored"
        assert kv_set.invoke({"key": "agents:jobs:42:other", "value": "b"}) == "stored"
    broker.end_task(task.task_id, _jtis(guard, task.task_id))  # as the engine does at task end

    assert ran == ["broker-1", "broker-2"]
    assert sorted(_form(c.request)["token"][0] for c in revoke.calls) == ["broker-1", "broker-2"]
    events = guard.audit.events(task_id=task.task_id)
    assert [(e.kind, e.decision) for e in events][-1] == ("revoke", "revoke")
    trail = repr(events)
    assert "broker-1" not in trail and "broker-2" not in trail
    broker.close()


def test_broker_revokes_at_once_when_the_identity_is_revoked(
    respx_mock: respx.MockRouter, make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    """An incident responder's ``guard.revoke(identity=...)`` reaches the broker now, not when
    the task's block exits; the task's own end later finds nothing left to revoke."""
    respx_mock.post(TOKEN_URL).mock(return_value=_ok("broker-1"))
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(200))
    broker = HttpTokenBroker(token_url=TOKEN_URL, revocation_url=REVOKE_URL, client_id="tg")
    guard = make_guard(clock=clock, providers={"kv_set": broker})
    broker.bind(guard)
    kv_set, _ = tg.guard(_kv_tools([]), guard)

    with guard.task("process-job", job_id="42") as task:
        assert kv_set.invoke({"key": KEY, "value": "a"}) == "stored"
        assert guard.revoke(identity="agent-runner", reason="incident") == [task.task_id]
        assert [_form(c.request)["token"][0] for c in revoke.calls] == ["broker-1"]
    assert len(revoke.calls) == 1
    broker.close()


def test_broker_revokes_at_once_when_the_anomaly_rule_revokes_the_identity(
    respx_mock: respx.MockRouter, make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    respx_mock.post(TOKEN_URL).mock(return_value=_ok("broker-1"))
    revoke = respx_mock.post(REVOKE_URL).mock(return_value=httpx.Response(200))
    broker = HttpTokenBroker(token_url=TOKEN_URL, revocation_url=REVOKE_URL, client_id="tg")
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["limits"] = {
        "writes_per_minute": 1,
        "on_anomaly": {"revoke_when_rate_exceeds": "2x"},
    }
    guard = make_guard(clock=clock, providers={"kv_set": broker}, identities=identities)
    broker.bind(guard)
    kv_set, _ = tg.guard(_kv_tools([]), guard)

    with guard.task("process-job", job_id="42"):
        assert kv_set.invoke({"key": KEY, "value": "a"}) == "stored"
        kv_set.invoke({"key": KEY, "value": "b"})  # refused: 2 attempts, not more than 2
        assert revoke.calls == []
        denial = kv_set.invoke({"key": KEY, "value": "c"})  # the third attempt revokes
        assert "was revoked (on_anomaly" in denial
        assert [_form(c.request)["token"][0] for c in revoke.calls] == ["broker-1"]
    broker.close()


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"token_url": "http://sts.example.test/token"}, "plain http", id="plain-http"),
        pytest.param({"token_url": "sts.example.test/token"}, "absolute https", id="relative"),
        pytest.param(
            {"token_url": "https://u:p@sts.example.test/"},
            "must not hold credentials",
            id="userinfo",
        ),
        pytest.param(
            {"revocation_url": "ftp://sts.example.test/"}, "absolute https", id="revocation-scheme"
        ),
        pytest.param({"client_id": None}, "needs a client_id", id="secret-without-id"),
        pytest.param({"max_attempts": 0}, "max_attempts", id="no-attempts"),
        pytest.param({"backoff": 0}, "backoff", id="zero-backoff"),
        pytest.param({"max_backoff": 0.01}, "max_backoff", id="max-below-backoff"),
        pytest.param({"extra_params": {"grant_type": "x"}}, "may not set", id="reserved-param"),
        pytest.param({"client_auth": "jwt"}, "client_auth", id="client-auth"),
    ],
)
def test_broker_config_errors(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {
        "token_url": TOKEN_URL,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    with pytest.raises(ConfigError, match=match):
        HttpTokenBroker(**{**base, **kwargs})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "http://localhost/token"])
def test_broker_accepts_plain_http_on_loopback(url: str) -> None:
    with HttpTokenBroker(token_url=url) as broker:
        assert broker.token_url == url


def test_broker_leaves_a_given_client_open() -> None:
    client = httpx.Client()
    HttpTokenBroker(token_url=TOKEN_URL, client=client).close()
    assert not client.is_closed
    client.close()


def _tls_of(client: httpx.Client) -> ssl.SSLContext:
    """The TLS settings an httpx client connects with (its transport's connection pool's)."""
    return client._transport._pool._ssl_context  # type: ignore[attr-defined,no-any-return]


def test_brokers_share_one_tls_context_that_verifies_certificates() -> None:
    """Each broker's client verified TLS with a context of its own, loading the whole CA bundle
    (~20 ms of CPU per broker); they share one now, with httpx's default settings."""
    first, second = (HttpTokenBroker(token_url=TOKEN_URL) for _ in range(2))
    try:
        context = _tls_of(first._client)
        assert context is _tls_of(second._client) is tls_context()
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded
    finally:
        first.close()
        second.close()


def test_the_shared_tls_context_reads_the_environment_as_httpx_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_context.cache_clear()
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    try:
        assert tls_context(trust_env=False).cert_store_stats()["x509_ca"] > 0  # certifi's
        with pytest.raises(OSError):  # trust_env: the bundle the environment names
            tls_context()
    finally:
        tls_context.cache_clear()


def test_broker_is_a_credential_provider(make_broker: Callable[..., HttpTokenBroker]) -> None:
    from toolguard.engine import CredentialProvider

    assert isinstance(make_broker(), CredentialProvider)
    assert HttpTokenBroker.jit is True and StaticSecretProvider.jit is False


# -- static secrets ------------------------------------------------------------------------------

SECRET_ENV = "LEGACY_CRM_API_KEY"
SECRET = "legacy-api-key-0123456789"


def test_static_secret_mints_jit_false_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    provider = StaticSecretProvider(env=SECRET_ENV, ttl=60)

    credential = provider.mint(**_call())

    assert credential.token == SECRET
    assert credential.jit is False
    assert credential.expires_at == NOW + 60
    assert dict(credential.claims) | {"res": list(credential.claims["res"])} == {
        "sub": "agent-runner", "task_id": "task-1", "intent": "process-job", "tool": "kv_set",
        "op": "write", "res": [KEY], "jti": "jti-1", "jit": False, "aud": "kv-service",
    }  # fmt: skip
    assert SECRET not in repr(credential) and SECRET not in repr(provider)
    assert provider.mint(**_call(deadline=NOW + 10)).expires_at == NOW + 10


def test_static_secret_missing_at_start_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"environment variable {SECRET_ENV} is not set"):
        StaticSecretProvider(env=SECRET_ENV)


def test_static_secret_rotation_and_removal_are_picked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    provider = StaticSecretProvider(env=SECRET_ENV)
    monkeypatch.setenv(SECRET_ENV, "rotated-secret")
    assert provider.mint(**_call()).token == "rotated-secret"

    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(CredentialError, match="is not set; no secret for 'kv_set'") as e:
        provider.mint(**_call())
    assert "rotated-secret" not in _exception_text(e.value)


def test_static_secret_through_the_guard_is_audited_as_not_jit(
    monkeypatch: pytest.MonkeyPatch, make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    provider = StaticSecretProvider(env=SECRET_ENV)
    guard = make_guard(clock=clock, providers={"kv_set": provider})
    ran: list[str] = []
    kv_set, kv_get = tg.guard(_kv_tools(ran), guard)

    with guard.task("process-job", job_id="42") as task:
        kv_set.invoke({"key": KEY, "value": "a"})
        kv_set.invoke({"key": KEY, "value": "b"})
        kv_get.invoke({"key": KEY})
    # the guard bound the provider and called its end_task when the task ended

    assert ran[:2] == [SECRET, SECRET] and ran[2] != SECRET
    with sqlite3.connect(guard.config.store_path) as conn:
        jit = dict(conn.execute("SELECT tool, jit FROM credentials WHERE jti IS NOT NULL"))
    assert jit == {"kv_set": 0, "kv_get": 1}  # the weaker path stays visible
    note = guard.audit.events(task_id=task.task_id)[-1]
    assert (note.kind, note.decision, note.rule, note.tool) == (
        "revoke", "not-revocable", "credentials.static", "kv_set",
    )  # fmt: skip
    assert note.reason is not None
    assert "2 call(s) used the static secret from $LEGACY_CRM_API_KEY (jit: false)" in note.reason
    assert SECRET not in repr(guard.audit.events())
    provider.end_task(task.task_id, [])  # nothing more to note
    assert guard.audit.events(task_id=task.task_id)[-1].seq == note.seq


def test_static_secret_removed_mid_run_denies_the_call(
    monkeypatch: pytest.MonkeyPatch, make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    provider = StaticSecretProvider(env=SECRET_ENV)
    guard = make_guard(clock=clock, providers={"kv_set": provider})
    ran: list[str] = []
    kv_set, _ = tg.guard(_kv_tools(ran), guard)
    monkeypatch.delenv(SECRET_ENV)

    with guard.task("process-job", job_id="42"):
        answer = kv_set.invoke({"key": KEY, "value": "a"})

    assert "environment variable LEGACY_CRM_API_KEY is not set" in answer
    assert ran == []


def test_broker_errors_redact_every_secret_format_not_only_known_values(
    respx_mock: respx.MockRouter,
    make_broker: Callable[..., HttpTokenBroker],
) -> None:
    # A proxy's error quoting another credential (a JWT, a bearer value, a URL password) the
    # broker never saw: scrubbed by the same rules as every error (redaction.scrub_text).
    other_jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJvdGhlciJ9.c2lnbmF0dXJlLXZhbHVl"
    leaked = f"upstream said {other_jwt}; Bearer abcdefgh12345678; https://u:hunter22@proxy"

    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(leaked, request=request)

    respx_mock.post(TOKEN_URL).mock(side_effect=fail)
    broker = make_broker(max_attempts=1)

    with pytest.raises(CredentialError) as e:
        broker.mint(**_call())

    text = _exception_text(e.value)
    for secret in (other_jwt, "abcdefgh12345678", "hunter22"):
        assert secret not in text
    assert "upstream said [REDACTED]" in text


# -- the provider interface ----------------------------------------------------------------------


class _RecordingProvider:
    """A provider of the current interface: ``mint(request)``, ``bind``, ``end_task``, ``jit``."""

    jit = False

    def __init__(self) -> None:
        self.bound: list[tg.Guard] = []
        self.requests: list[MintRequest] = []
        self.ended: list[tuple[str, tuple[str, ...]]] = []

    def bind(self, guard: tg.Guard) -> None:
        self.bound.append(guard)

    def mint(self, request: MintRequest, /) -> tg.Credential:
        self.requests.append(request)
        return tg.Credential.from_token(
            "opaque-token", jti=request.jti, task_id=request.task_id, identity=request.identity,
            intent=request.intent, tool=request.tool, operation=request.operation,
            resources=request.resources, issued_at=request.now, expires_at=request.now + 60,
        )  # fmt: skip

    def end_task(self, task_id: str, jtis: Sequence[str]) -> None:
        self.ended.append((task_id, tuple(jtis)))


class _KeywordProvider:
    """A provider written for the earlier interface: keyword ``mint``, no ``bind``/``end_task``."""

    jit = False

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def mint(
        self, *, jti: str, task_id: str, identity: str, intent: str, tool: str, operation: str,
        resources: Sequence[str], now: float, deadline: float | None = None,
        audience: str | None = None, act: Any = None,
    ) -> tg.Credential:  # fmt: skip
        self.calls.append({"jti": jti, "tool": tool, "deadline": deadline, "act": act})
        return tg.Credential.from_token(
            "legacy-token", jti=jti, task_id=task_id, identity=identity, intent=intent,
            tool=tool, operation=operation, resources=resources, issued_at=now,
            expires_at=now + 60,
        )  # fmt: skip


def test_a_provider_gets_one_mint_request_and_declared_hooks(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    provider = _RecordingProvider()
    assert isinstance(provider, CredentialProvider) and as_provider(provider) is provider
    guard = make_guard(clock=clock, providers={"kv_set": provider, "kv_get": provider})
    assert provider.bound == [guard]  # once per provider, however many tools it serves
    ran: list[str] = []
    kv_set, _ = tg.guard(_kv_tools(ran), guard)

    with guard.task("process-job", job_id="42") as task:
        kv_set.invoke({"key": KEY, "value": "a"})

    assert ran == ["opaque-token"]
    (request,) = provider.requests
    assert (request.task_id, request.identity, request.intent, request.tool) == (
        task.task_id, "agent-runner", "process-job", "kv_set",
    )  # fmt: skip
    assert (request.operation, request.resources) == ("write", (KEY,))
    assert request.deadline == task.deadline and request.now == clock()
    assert provider.ended == [(task.task_id, (request.jti,))]
    with sqlite3.connect(guard.config.store_path) as conn:
        rows = conn.execute("SELECT jti, jit FROM credentials WHERE jti IS NOT NULL").fetchall()
    assert rows == [(request.jti, 0)]


def test_a_provider_of_the_earlier_keyword_interface_still_works(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    provider = _KeywordProvider()
    adapted = as_provider(provider)
    assert adapted is not provider and adapted.jit is False
    guard = make_guard(clock=clock, providers={"kv_set": provider})
    ran: list[str] = []
    kv_set, _ = tg.guard(_kv_tools(ran), guard)

    with guard.task("process-job", job_id="42") as task:
        kv_set.invoke({"key": KEY, "value": "a"})

    assert ran == ["legacy-token"]
    assert provider.calls[0]["tool"] == "kv_set" and provider.calls[0]["deadline"] == task.deadline
    with sqlite3.connect(guard.config.store_path) as conn:
        assert conn.execute("SELECT jit FROM credentials WHERE jti IS NOT NULL").fetchall() == [
            (0,)
        ]


def test_a_provider_without_mint_is_refused_at_start(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    with pytest.raises(ConfigError, match="must have a mint"):
        make_guard(clock=clock, providers={"kv_set": object()})


def test_built_in_providers_implement_the_interface(
    issuer: Issuer, make_broker: Callable[..., HttpTokenBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    for provider in (issuer, make_broker(), StaticSecretProvider(env=SECRET_ENV)):
        assert isinstance(provider, CredentialProvider)
        assert as_provider(provider) is provider


def test_mint_takes_a_request_or_its_fields_as_keywords(issuer: Issuer) -> None:
    by_request = issuer.mint(MintRequest(**CALL))
    by_keywords = issuer.mint(**CALL)
    assert by_request.claims == by_keywords.claims
    with pytest.raises(TypeError, match="not both"):
        issuer.mint(MintRequest(**CALL), jti="other")
    assert MintRequest(**{**CALL, "resources": [KEY]}).resources == (KEY,)
    assert BrokerCall is MintRequest
