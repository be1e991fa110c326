"""Tests for toolguard_starlette (integrations/starlette) and examples/kv_service.py.

Requests go through Starlette's TestClient; one test runs the example service with uvicorn on
loopback. Tokens are real credentials signed by a guard's key; revocations go through the
guard's store, which the verifier reads through its own read-only connection.
"""

from __future__ import annotations

import json
import sys
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from conftest import store_arg
from langchain_core.tools import InjectedToolArg, tool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect
from toolguard_starlette import (
    AuthFailure,
    CredentialMiddleware,
    PathRule,
    ToolGuardAuth,
    get_claims,
    verifier_from,
)

import toolguard as tg
from toolguard.audit import revoke as record_revocation
from toolguard.credentials import new_jti
from toolguard.errors import ConfigError, CredentialError
from toolguard.keys import b64url_decode, b64url_encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import kv_service

KEY = "agents:jobs:42:state"
ISS = "toolguard-test"
AUD = "kv-service"


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def guard(make_guard: Callable[..., tg.Guard]) -> tg.Guard:
    """A guard on the real clock (the service verifies with the wall clock)."""
    guard = make_guard()
    guard.store.open()
    return guard


@pytest.fixture
def auth(guard: tg.Guard) -> ToolGuardAuth:
    verifier = verifier_from(
        jwks=guard.keys.jwks(), store=store_arg(guard), issuer=ISS, audience=AUD
    )
    return ToolGuardAuth(verifier)


def _mint(
    guard: tg.Guard,
    *,
    operation: str = "write",
    resources: tuple[str, ...] = (KEY,),
    task_id: str = "task-1",
    identity: str = "agent-runner",
    tool: str = "kv_set",
    now: float | None = None,
    audience: str = AUD,
) -> str:
    return guard.issuer.mint(
        jti=new_jti(),
        task_id=task_id,
        identity=identity,
        intent="process-job",
        tool=tool,
        operation=operation,
        resources=resources,
        now=time.time() if now is None else now,
        audience=audience,
    ).token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _app(auth: ToolGuardAuth) -> Starlette:
    @auth.protect("write", "{key}")
    async def put(request: Request) -> Response:
        claims = get_claims(request)
        return JSONResponse({"task_id": claims["task_id"], "sub": claims["sub"]})

    @auth.protect("read", "ns:{ns}:{key}")
    def get_sync(request: Request) -> Response:
        return JSONResponse({"res": get_claims(request)["res"]})

    @auth.protect("write", resource=None, tool="kv_set")
    async def any_resource(request: Request) -> Response:
        return PlainTextResponse("ok")

    @auth.protect("write", "{missing}")
    async def misconfigured(request: Request) -> Response:
        return PlainTextResponse("never")

    require_read = auth.require("read", "{key}")

    async def with_dependency(request: Request) -> Response:
        claims = require_read(request)
        return JSONResponse({"task_id": claims["task_id"], "same": get_claims(request) is claims})

    async def unprotected(request: Request) -> Response:
        return JSONResponse(get_claims(request))

    return Starlette(
        routes=[
            Route("/kv/{key}", put, methods=["PUT"]),
            Route("/ns/{ns}/{key}", get_sync, methods=["GET"]),
            Route("/any/{key}", any_resource, methods=["POST"]),
            Route("/bad/{key}", misconfigured, methods=["PUT"]),
            Route("/dep/{key}", with_dependency, methods=["GET"]),
            Route("/open", unprotected, methods=["GET"]),
        ]
    )


@pytest.fixture
def client(auth: ToolGuardAuth) -> Iterator[TestClient]:
    with TestClient(_app(auth)) as client:
        yield client


def _challenge(response: httpx.Response) -> str:
    return response.headers["www-authenticate"]


# -- verifier_from -------------------------------------------------------------------------------


def test_verifier_from_reads_a_jwks_file_and_pins_its_algorithms(
    guard: tg.Guard, tmp_path: Path
) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(guard.keys.jwks()))
    verifier = verifier_from(jwks=jwks_file, store=store_arg(guard), issuer=ISS, audience=AUD)

    assert verifier.algorithms == frozenset({"EdDSA"})
    claims = verifier.verify(_mint(guard), operation="write", resource=KEY)
    assert claims["task_id"] == "task-1"


def test_verifier_from_refuses_private_keys_and_empty_jwks(guard: tg.Guard) -> None:
    private = {"keys": [{**guard.keys.jwks()["keys"][0], "d": "AAAA"}]}
    with pytest.raises(CredentialError, match="private or symmetric key material"):
        verifier_from(jwks=private, store=store_arg(guard), issuer=ISS, audience=AUD)
    with pytest.raises(ConfigError, match="holds no keys"):
        verifier_from(jwks={"keys": []}, store=store_arg(guard), issuer=ISS, audience=AUD)


# -- protect: accepted -----------------------------------------------------------------------------


def test_protect_passes_a_valid_credential_and_exposes_its_claims(
    client: TestClient, guard: tg.Guard
) -> None:
    response = client.put(f"/kv/{KEY}", headers=_bearer(_mint(guard, task_id="t-7")))

    assert response.status_code == 200
    assert response.json() == {"task_id": "t-7", "sub": "agent-runner"}


def test_protect_builds_the_resource_from_several_path_params_in_a_sync_endpoint(
    client: TestClient, guard: tg.Guard
) -> None:
    token = _mint(guard, operation="read", resources=("ns:jobs:42",), tool="kv_get")

    response = client.get("/ns/jobs/42", headers=_bearer(token))

    assert response.status_code == 200
    assert response.json() == {"res": ["ns:jobs:42"]}


def test_protect_without_resource_checks_operation_and_tool_only(
    client: TestClient, guard: tg.Guard
) -> None:
    assert client.post("/any/x", headers=_bearer(_mint(guard))).status_code == 200
    other_tool = _mint(guard, tool="send_email")
    response = client.post("/any/x", headers=_bearer(other_tool))
    assert response.status_code == 403
    assert "not 'kv_set'" in response.json()["error_description"]


def test_bearer_scheme_is_case_insensitive(client: TestClient, guard: tg.Guard) -> None:
    response = client.put(f"/kv/{KEY}", headers={"Authorization": f"bearer {_mint(guard)}"})
    assert response.status_code == 200


# -- protect: refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic-scheme"),
    ],
)
def test_protect_without_bearer_answers_401_with_a_bare_challenge(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.put(f"/kv/{KEY}", headers=headers)

    assert response.status_code == 401
    assert _challenge(response) == 'Bearer realm="kv-service"'
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("make_token", "match"),
    [
        pytest.param(lambda g: "not-a-jwt", "compact JWS", id="garbage"),
        pytest.param(lambda g: "", "1 to", id="empty-token"),
        pytest.param(lambda g: _foreign(g), "unknown", id="foreign-key"),
        pytest.param(lambda g: _mint(g, now=time.time() - 3600), "expired", id="expired"),
        pytest.param(lambda g: _mint(g, audience="other-service"), "audience", id="wrong-aud"),
        pytest.param(lambda g: _tampered(_mint(g)), "signature", id="tampered"),
    ],
)
def test_protect_answers_401_invalid_token(
    client: TestClient, guard: tg.Guard, make_token: Callable[[tg.Guard], str], match: str
) -> None:
    token = make_token(guard)
    response = client.put(f"/kv/{KEY}", headers=_bearer(token))

    assert response.status_code == 401
    challenge = _challenge(response)
    assert challenge.startswith('Bearer realm="kv-service", error="invalid_token"')
    assert match in response.json()["error_description"]
    if len(token) > 20:
        assert token not in response.text and token not in challenge


def _foreign(guard: tg.Guard) -> str:
    issuer = tg.Issuer(name=ISS, audience=AUD, keys=tg.KeyRing.generate())
    return issuer.mint(
        jti=new_jti(), task_id="t", identity="agent-runner", intent="i",
        tool="kv_set", operation="write", resources=(KEY,), now=time.time(),
    ).token  # fmt: skip


def _tampered(token: str) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(b64url_decode(body))
    claims["op"] = "delete"
    forged = b64url_encode(json.dumps(claims).encode())
    return f"{head}.{forged}.{sig}"


@pytest.mark.parametrize(
    ("path", "token_kwargs", "scope"),
    [
        pytest.param(f"/kv/{KEY}", {"operation": "read"}, f"write:{KEY}", id="operation"),
        pytest.param("/kv/agents:jobs:43:state", {}, "write:agents:jobs:43:state", id="resource"),
    ],
)
def test_protect_answers_403_insufficient_scope(
    client: TestClient, guard: tg.Guard, path: str, token_kwargs: dict[str, Any], scope: str
) -> None:
    response = client.put(path, headers=_bearer(_mint(guard, **token_kwargs)))

    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert _challenge(response).startswith('Bearer realm="kv-service", error="insufficient_scope"')
    assert _challenge(response).endswith(f'scope="{scope}"')


def test_protect_sanitizes_path_values_in_headers(client: TestClient, guard: tg.Guard) -> None:
    response = client.put("/kv/x%0d%0aX-Injected:%20yes%22", headers=_bearer(_mint(guard)))

    assert response.status_code == 403
    assert "x-injected" not in response.headers
    challenge = _challenge(response)
    assert "\r" not in challenge and "\n" not in challenge
    assert challenge.count('"') == 8  # realm, error, error_description, scope: nothing leaks out


def test_protect_rejects_two_authorization_headers(client: TestClient, guard: tg.Guard) -> None:
    token = _mint(guard)
    request = client.build_request("PUT", f"/kv/{KEY}")
    request.headers = httpx.Headers(
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    )
    response = client.send(request)

    assert response.status_code == 400
    assert 'error="invalid_request"' in _challenge(response)


def test_protect_rejects_a_revoked_task_at_once(client: TestClient, guard: tg.Guard) -> None:
    token = _mint(guard, task_id="task-9")
    assert client.put(f"/kv/{KEY}", headers=_bearer(token)).status_code == 200

    # minted outside the store (no task row): recorded with the raw writer, which does not
    # resolve its target as guard.revoke does
    record_revocation(guard.store, task_id="task-9", reason="incident 17", now=time.time())
    response = client.put(f"/kv/{KEY}", headers=_bearer(token))

    assert response.status_code == 401
    assert "revoked" in response.json()["error_description"]
    assert "incident 17" in response.json()["error_description"]


def test_protect_rejects_a_revoked_identity_and_jti(client: TestClient, guard: tg.Guard) -> None:
    by_identity = _mint(guard, identity="summariser", task_id="t-a")
    guard.revoke(identity="summariser")
    assert client.put(f"/kv/{KEY}", headers=_bearer(by_identity)).status_code == 401

    token = guard.issuer.mint(
        jti="jti-x", task_id="t-b", identity="agent-runner", intent="i", tool="kv_set",
        operation="write", resources=(KEY,), now=time.time(),
    ).token  # fmt: skip
    assert client.put(f"/kv/{KEY}", headers=_bearer(token)).status_code == 200
    record_revocation(guard.store, jti="jti-x", now=time.time())
    assert client.put(f"/kv/{KEY}", headers=_bearer(token)).status_code == 401


def test_protect_fails_closed_with_503_when_the_store_cannot_be_read(
    guard: tg.Guard, tmp_path: Path
) -> None:
    verifier = verifier_from(
        jwks=guard.keys.jwks(), store=tmp_path / "missing.db", issuer=ISS, audience=AUD
    )
    with TestClient(_app(ToolGuardAuth(verifier))) as client:
        response = client.put(f"/kv/{KEY}", headers=_bearer(_mint(guard)))

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "temporarily_unavailable"


def test_protect_with_a_template_naming_no_path_param_is_a_server_error(
    client: TestClient, guard: tg.Guard
) -> None:
    with pytest.raises(ConfigError, match="no path parameter 'missing'"):
        client.put("/bad/x", headers=_bearer(_mint(guard)))


@pytest.mark.parametrize("template", ["{key", "key}", "{ key }", "{0}"])
def test_resource_templates_with_stray_braces_are_config_errors(
    auth: ToolGuardAuth, template: str
) -> None:
    with pytest.raises(ConfigError, match="stray brace"):
        auth.protect("read", template)


def test_get_claims_outside_a_protected_route_raises(client: TestClient) -> None:
    with pytest.raises(LookupError, match="no verified toolguard credential"):
        client.get("/open")


def test_realm_can_be_set(guard: tg.Guard, auth: ToolGuardAuth) -> None:
    custom = ToolGuardAuth(auth.verifier, realm='kv "prod"')
    with TestClient(_app(custom)) as client:
        response = client.put(f"/kv/{KEY}")
    assert _challenge(response) == 'Bearer realm="kv ?prod?"'


# -- require: a dependency (FastAPI's Depends, or called in an endpoint) -----------------------


def test_require_returns_claims_and_sets_request_state(client: TestClient, guard: tg.Guard) -> None:
    token = _mint(guard, operation="read", tool="kv_get", task_id="t-dep")

    response = client.get(f"/dep/{KEY}", headers=_bearer(token))

    assert response.json() == {"task_id": "t-dep", "same": True}


def test_require_raises_http_exception_with_challenge(client: TestClient, guard: tg.Guard) -> None:
    response = client.get(f"/dep/{KEY}", headers=_bearer(_mint(guard)))  # a write token

    assert response.status_code == 403
    assert 'error="insufficient_scope"' in _challenge(response)
    assert "not 'read'" in response.text


def test_require_dependency_annotations_resolve_for_fastapi(auth: ToolGuardAuth) -> None:
    dependency = auth.require("read")
    # FastAPI resolves a dependency's annotations from its globals: they must name Request.
    hints = typing.get_type_hints(dependency)
    assert hints["request"] is Request
    assert hints["return"] == dict[str, Any]


def test_auth_failure_response_and_exception_agree() -> None:
    failure = AuthFailure(401, "invalid_token", "bad", {"WWW-Authenticate": "Bearer"})
    assert failure.response().status_code == failure.http_exception().status_code == 401
    assert failure.http_exception().headers == {"WWW-Authenticate": "Bearer"}


# -- CredentialMiddleware --------------------------------------------------------------------------


def _middleware_app(auth: ToolGuardAuth, unmatched: str = "deny") -> Starlette:
    async def show(request: Request) -> Response:
        return JSONResponse({"op": get_claims(request)["op"], "key": request.path_params["key"]})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    rules = [
        PathRule("/kv/{key}", operation="read", methods=("GET",)),
        PathRule("/kv/{key}", operation="write", methods=("PUT", "POST")),
        PathRule("/jobs/{job}/files/{name:path}", operation="read", resource="job:{job}:{name}"),
    ]
    return Starlette(
        routes=[
            Route("/kv/{key}", show, methods=["GET", "PUT", "POST", "DELETE"]),
            Route("/jobs/{job}/files/{name:path}", show_path, methods=["GET"]),
            Route("/healthz", health),
            WebSocketRoute("/ws", ws),
        ],
        middleware=[Middleware(CredentialMiddleware, auth=auth, rules=rules, unmatched=unmatched)],
    )


async def show_path(request: Request) -> Response:
    return JSONResponse({"res": get_claims(request)["res"]})


def test_middleware_checks_each_method_against_its_rule(
    auth: ToolGuardAuth, guard: tg.Guard
) -> None:
    read = _bearer(_mint(guard, operation="read", tool="kv_get"))
    write = _bearer(_mint(guard))
    with TestClient(_middleware_app(auth)) as client:
        assert client.get(f"/kv/{KEY}", headers=read).json() == {"op": "read", "key": KEY}
        assert client.head(f"/kv/{KEY}", headers=read).status_code == 200
        assert client.put(f"/kv/{KEY}", headers=write).json()["op"] == "write"
        assert client.get(f"/kv/{KEY}", headers=write).status_code == 403
        assert client.put(f"/kv/{KEY}", headers=read).status_code == 403
        assert client.get(f"/kv/{KEY}").status_code == 401
        # DELETE has no rule: refused even with a valid credential (deny by default).
        denied = client.delete(f"/kv/{KEY}", headers=write)
        assert denied.status_code == 403
        assert "no credential rule" in denied.json()["error_description"]
        assert client.get("/healthz").status_code == 403


def test_middleware_fills_templates_from_path_convertors(
    auth: ToolGuardAuth, guard: tg.Guard
) -> None:
    token = _mint(guard, operation="read", resources=("job:42:out/a.txt",), tool="kv_get")
    with TestClient(_middleware_app(auth)) as client:
        response = client.get("/jobs/42/files/out/a.txt", headers=_bearer(token))
        other = client.get("/jobs/42/files/out/b.txt", headers=_bearer(token))

    assert response.json() == {"res": ["job:42:out/a.txt"]}
    assert other.status_code == 403


def test_middleware_unmatched_allow_passes_other_paths_and_websockets(
    auth: ToolGuardAuth,
) -> None:
    with TestClient(_middleware_app(auth, unmatched="allow")) as client:
        assert client.get("/healthz").text == "ok"
        assert client.get(f"/kv/{KEY}").status_code == 401  # matched rules still apply
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hi"


def test_middleware_closes_websockets_by_default(auth: ToolGuardAuth) -> None:
    client = TestClient(_middleware_app(auth))
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws"):
        pass
    assert closed.value.code == 1008


def test_middleware_honours_root_path(auth: ToolGuardAuth, guard: tg.Guard) -> None:
    token = _mint(guard, operation="read", tool="kv_get")
    with TestClient(_middleware_app(auth), root_path="/api") as client:
        assert client.get(f"/kv/{KEY}", headers=_bearer(token)).status_code == 200


def test_middleware_accepts_a_verifier_and_checks_rules_at_start(
    auth: ToolGuardAuth,
) -> None:
    app = Starlette()
    assert isinstance(CredentialMiddleware(app, auth=auth.verifier, rules=[]).auth, ToolGuardAuth)
    with pytest.raises(ConfigError, match=r"names \['key'\], which are not path parameters"):
        CredentialMiddleware(app, auth=auth, rules=[PathRule("/kv", operation="read")])
    with pytest.raises(ConfigError, match="unmatched"):
        CredentialMiddleware(app, auth=auth, rules=[], unmatched="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["protect", "middleware"])
def test_a_slow_revocation_store_never_holds_the_event_loop(
    auth: ToolGuardAuth, guard: tg.Guard, where: str
) -> None:
    """The store read of an async check runs on a worker thread: while it waits (a slow or
    unreachable PostgreSQL server waits up to busy_timeout), the loop answers other requests."""
    import threading

    import anyio

    source = auth.verifier.revocations
    assert source is not None
    release, reading = threading.Event(), threading.Event()
    readers: list[int] = []
    original = source.revoked_reason

    def slow(**kwargs: Any) -> str | None:
        readers.append(threading.get_ident())
        reading.set()
        assert release.wait(10), "the other request was never answered"
        return original(**kwargs)

    source.revoked_reason = slow  # type: ignore[method-assign]
    loop_thread: list[int] = []
    if where == "protect":
        app, path, method = _app(auth), f"/kv/{KEY}", "PUT"
        token = _mint(guard)
    else:
        app, path, method = _middleware_app(auth), f"/kv/{KEY}", "GET"
        token = _mint(guard, operation="read", tool="kv_get")

    async def run() -> tuple[int, int]:
        loop_thread.append(threading.get_ident())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            checked: list[int] = []

            async def guarded() -> None:
                response = await client.request(method, path, headers=_bearer(token))
                checked.append(response.status_code)

            async with anyio.create_task_group() as group:
                group.start_soon(guarded)
                with anyio.fail_after(10):
                    while not reading.is_set():  # the store read has started, and waits
                        await anyio.sleep(0.001)
                # served while the read waits (on the loop the read would block this request)
                other = await client.get("/open" if where == "protect" else "/healthz")
                release.set()
            return checked[0], other.status_code

    status, other = anyio.run(run)
    assert status == 200
    assert other >= 200  # answered at all (its status is not the point): the loop was free
    assert readers and readers[0] != loop_thread[0]


# -- the example key-value service -----------------------------------------------------------------


@pytest.fixture
def kv_client(guard: tg.Guard) -> Iterator[TestClient]:
    verifier = verifier_from(
        jwks=guard.keys.jwks(), store=store_arg(guard), issuer=ISS, audience=AUD
    )
    with TestClient(kv_service.create_app(verifier)) as client:
        yield client


def test_kv_service_routes_need_their_operation(kv_client: TestClient, guard: tg.Guard) -> None:
    write = _bearer(_mint(guard, task_id="t-kv"))
    read = _bearer(_mint(guard, operation="read", tool="kv_get"))
    delete = _bearer(_mint(guard, operation="delete", tool="kv_delete"))
    url = f"/kv/{KEY}"

    assert kv_client.get(url, headers=read).status_code == 404
    written = kv_client.put(url, json={"value": {"n": 1}}, headers=write)
    assert written.json() == {
        "key": KEY,
        "value": {"n": 1},
        "task_id": "t-kv",
        "by": "agent-runner",
    }
    assert kv_client.get(url, headers=read).json() == {"key": KEY, "value": {"n": 1}}
    assert kv_client.put(url, json={"value": 2}, headers=read).status_code == 403
    assert kv_client.delete(url, headers=write).status_code == 403
    assert kv_client.delete(url, headers=delete).status_code == 204
    assert kv_client.delete(url, headers=delete).status_code == 404
    assert kv_client.get("/healthz").json() == {"ok": True}


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"v": 1}', b'{"value": "' + b"x" * 70000])
def test_kv_service_put_needs_a_value(kv_client: TestClient, guard: tg.Guard, body: bytes) -> None:
    response = kv_client.put(f"/kv/{KEY}", content=body, headers=_bearer(_mint(guard)))
    assert response.status_code == 400


def test_kv_service_checks_the_credential_before_reading_the_body(
    kv_client: TestClient,
) -> None:
    response = kv_client.put(f"/kv/{KEY}", content=b"not json")
    assert response.status_code == 401
    assert kv_client.app.state.kv == {}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_kv_service_serve_end_to_end_with_a_guarded_tool(guard: tg.Guard) -> None:
    """The quickstart's path: a guarded LangChain tool calls the real service over HTTP."""
    tokens: list[str] = []

    with kv_service.serve(
        jwks=guard.keys.jwks(), store_path=store_arg(guard), issuer=ISS
    ) as base_url:
        assert base_url.startswith("http://127.0.0.1:")

        @tool
        def kv_set(
            key: str, value: str, credential: Annotated[tg.Credential, InjectedToolArg]
        ) -> str:
            """Store a value."""
            tokens.append(credential.token)
            with httpx.Client(base_url=base_url, auth=tg.CredentialAuth()) as http:
                return http.put(f"/kv/{key}", json={"value": value}).text

        @tool
        def kv_get(key: str) -> str:
            """Read a value."""
            with httpx.Client(base_url=base_url, auth=tg.CredentialAuth()) as http:
                return http.get(f"/kv/{key}").text

        guarded_set, guarded_get = tg.guard([kv_set, kv_get], guard)
        with guard.task("process-job", job_id="42") as task:
            stored = json.loads(guarded_set.invoke({"key": KEY, "value": "done"}))
            read = json.loads(guarded_get.invoke({"key": KEY}))
            # The write credential works until the task ends ...
            assert httpx.put(f"{base_url}/kv/{KEY}", json={"value": 1},
                             headers=_bearer(tokens[0])).status_code == 200  # fmt: skip
        # ... and not a moment after.
        after = httpx.put(f"{base_url}/kv/{KEY}", json={"value": 2}, headers=_bearer(tokens[0]))

    assert stored == {"key": KEY, "value": "done", "task_id": task.task_id, "by": "agent-runner"}
    assert read == {"key": KEY, "value": "done"}
    assert after.status_code == 401
    assert "revoked" in after.json()["error_description"]
    with pytest.raises(httpx.ConnectError):  # stopped cleanly: nothing listens any more
        httpx.get(f"{base_url}/healthz", timeout=2)
