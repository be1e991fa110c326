"""The HTTP revocation feed (toolguard_starlette.feed): a remote verifier without store access.

Real parts only: the feed app runs under a real uvicorn server on 127.0.0.1 (started in a
thread on a free port, stopped at the end, or in the middle to take the feed down), over a real
guard with its SQLite store; tokens are real credentials; revocations go through
``guard.revoke`` and task ends. Hostile replies come from a real server too: an ASGI app in
front of the genuine feed that answers what the test sets. Waiting for a revocation to arrive
polls with a deadline (never a sleep for timing); the grace logic runs on an injected clock.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import uvicorn
from conftest import BASE_CONFIG, make_config, store_arg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from toolguard_starlette import (
    FeedError,
    RevocationFeed,
    ToolGuardAuth,
    revocation_app,
    revocation_app_from_config,
    verifier_from,
)
from toolguard_starlette.feed import FEED_MEDIA_TYPE, FEED_TYP, RevocationList, revocation_digest

import toolguard as tg
from toolguard.audit import revoke as record_revocation
from toolguard.credentials import Verifier, new_jti
from toolguard.errors import ConfigError, CredentialRevoked
from toolguard.httpauth import tls_context
from toolguard.keys import KeyRing, b64url_decode, b64url_encode

KEY = "agents:jobs:42:state"
ISS = "toolguard-test"
AUD = "kv-service"
BOUND = 1.0
"""The stated staleness bound: feed_interval (0.5 s) + the poll's timeout (0.5 s)."""
FAST = 0.1
"""The poll interval of ``remote`` (the defaults' bound is proven by ``remote_default``)."""
FAST_BOUND = 2 * FAST
"""``remote``'s staleness bound: its interval + its poll's timeout (the interval too)."""
SLACK = 1.0
"""Scheduling slack on a loaded 2-core test machine (the measured delay is printed)."""


# -- a real server on loopback -----------------------------------------------------------------


class Served:
    """An ASGI app under uvicorn on 127.0.0.1; ``stop()`` takes it down, ``start()`` brings it
    back on the same port."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=0.1,  # a hostile reply may still be streaming
        )
        server = self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert self.thread.is_alive(), "the uvicorn server stopped while starting"
            assert time.monotonic() < deadline, "the uvicorn server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(20)
            assert not self.thread.is_alive()
            self.server = self.thread = None


class Switch:
    """The app of the module's server: the current test's (set by ``serve``), else a 503."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if app is None:
            app = PlainTextResponse("no test is using this server", status_code=503)
        await app(scope, receive, send)


@pytest.fixture(scope="module")
def _module_server() -> Iterator[tuple[Served, Switch]]:
    """One uvicorn server for the module's tests (starting and stopping one per test cost
    0.1-0.2 s each): each test's app is switched in by ``serve``."""
    switch = Switch()
    served = Served(switch)
    served.start()
    yield served, switch
    served.stop()


@pytest.fixture
def serve(_module_server: tuple[Served, Switch]) -> Iterator[Callable[..., Served]]:
    """``serve(app)``: ``app`` behind the module's server, for this test only;
    ``serve(app, own=True)``: on a server of its own, for a test that takes it down."""
    shared, switch = _module_server
    running: list[Served] = []

    def start(app: ASGIApp, *, own: bool = False) -> Served:
        if own:
            served = Served(app)
            served.start()
            running.append(served)
            return served
        assert switch.app is None, "serve(app) once per test; own=True for a second server"
        switch.app = app
        return shared

    yield start
    switch.app = None
    for served in running:
        served.stop()
    assert shared.thread is not None and shared.thread.is_alive(), (
        "the module's server was stopped: a test that takes its server down needs own=True"
    )


class Hostile:
    """In front of the genuine feed: passes requests on, or answers ``reply`` when set."""

    def __init__(self, genuine: ASGIApp) -> None:
        self.genuine = genuine
        self.reply: ASGIApp | None = None
        self.conditional: list[bool] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {k.lower() for k, _ in scope["headers"]}
            self.conditional.append(b"if-none-match" in names)
        app = self.genuine if self.reply is None else self.reply
        await app(scope, receive, send)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def guard(make_guard: Callable[..., tg.Guard]) -> tg.Guard:
    """A guard on the real clock (the remote verifier uses the wall clock too)."""
    guard = make_guard()
    guard.store.open()
    return guard


def _feed_app(guard: tg.Guard, clock: Callable[[], float] = time.time) -> Starlette:
    """The feed as a remote host runs it: the store's path (read-only) and the issuer's keys."""
    return revocation_app(store=store_arg(guard), keys=guard.keys, issuer=ISS, clock=clock)


def _credential(guard: tg.Guard, tool: str = "kv_set") -> tg.Credential:
    """The credential of one allowed call in the current task (as a guarded tool gets it)."""
    args = {"key": KEY, "value": "v"} if tool == "kv_set" else {"key": KEY}
    permit = guard.authorize(tool, args)
    guard.finish(permit)
    return permit.credential


def _mint(
    guard: tg.Guard,
    *,
    task_id: str = "task-1",
    identity: str = "agent-runner",
    now: float | None = None,
    jti: str | None = None,
    act: dict[str, Any] | None = None,
) -> str:
    return guard.issuer.mint(
        jti=jti or new_jti(), task_id=task_id, identity=identity, intent="process-job",
        tool="kv_set", operation="write", resources=(KEY,),
        now=time.time() if now is None else now, act=act,
    ).token  # fmt: skip


def _accepts(verifier: Verifier, token: str) -> bool:
    try:
        verifier.verify(token, operation="write", resource=KEY)
    except tg.CredentialError:
        return False
    return True


def _until(condition: Callable[[], bool], limit: float = 10.0) -> float:
    """Seconds until ``condition()`` holds, polled without sleeping for timing; fails the
    test after ``limit`` seconds."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, "the condition did not hold in time"
        time.sleep(0.005)
    return time.monotonic() - start


def _remote(guard: tg.Guard, serve: Callable[..., Served], **bounds: float) -> Iterator[Verifier]:
    """A verifier with only the JWKS and the feed's URL, polling the feed."""
    served = serve(_feed_app(guard))
    verifier = verifier_from(
        jwks=guard.keys.jwks(), feed=f"{served.url}/revocations", issuer=ISS, audience=AUD,
        **bounds,
    )  # fmt: skip
    assert isinstance(verifier.revocations, RevocationFeed)
    _until(lambda: verifier.revocations.current is not None)  # type: ignore[union-attr]
    yield verifier
    verifier.revocations.close()  # type: ignore[union-attr]


@pytest.fixture
def remote_default(guard: tg.Guard, serve: Callable[..., Served]) -> Iterator[Verifier]:
    """A remote verifier on the default bounds (a poll every 0.5 s, within :data:`BOUND`)."""
    yield from _remote(guard, serve)


@pytest.fixture
def remote(guard: tg.Guard, serve: Callable[..., Served]) -> Iterator[Verifier]:
    """A remote verifier polling every :data:`FAST` seconds (within :data:`FAST_BOUND`): the
    same poller as the defaults', without waiting half a second per revocation."""
    yield from _remote(guard, serve, feed_interval=FAST)


# -- revocations reach the remote verifier within the bound ------------------------------------


@pytest.mark.slow  # the default bound's wall time (a poll every 0.5 s); remote's is 0.1 s
def test_feed_task_revocation_reaches_a_remote_verifier_within_the_bound(
    guard: tg.Guard, remote_default: Verifier
) -> None:
    with guard.task("process-job", job_id="42") as task:
        token = _credential(guard).token
        assert _accepts(remote_default, token)
        guard.revoke(task_id=task.task_id, reason="incident 17")
        took = _until(lambda: not _accepts(remote_default, token))

    print(f"task revocation reached the remote verifier in {took:.3f}s")
    assert took <= BOUND + SLACK
    with pytest.raises(CredentialRevoked, match="task revoked"):
        remote_default.verify(token)


def test_feed_jti_revocation_rejects_that_credential_only(
    guard: tg.Guard, remote: Verifier
) -> None:
    with guard.task("process-job", job_id="42"):
        first, second = _credential(guard), _credential(guard)
        guard.revoke(jti=first.jti)
        took = _until(lambda: not _accepts(remote, first.token))
        assert _accepts(remote, second.token)

    assert took <= FAST_BOUND + SLACK
    with pytest.raises(CredentialRevoked, match="jti revoked"):
        remote.verify(first.token)


def test_feed_identity_revocation_covers_credentials_issued_before_it(
    guard: tg.Guard, remote: Verifier
) -> None:
    before = _mint(guard, identity="summariser", task_id="t-a", now=time.time() - 5)
    assert _accepts(remote, before)
    guard.revoke(identity="summariser")
    took = _until(lambda: not _accepts(remote, before))
    after = _mint(guard, identity="summariser", task_id="t-b", now=time.time() + 2)

    assert took <= FAST_BOUND + SLACK
    with pytest.raises(CredentialRevoked, match="identity revoked"):
        remote.verify(before)
    assert _accepts(remote, after)  # issued after the revocation: the store's cut-off too
    assert _accepts(remote, _mint(guard, identity="agent-runner", task_id="t-c"))


@pytest.mark.slow
def test_feed_task_end_and_delegating_parent_reach_the_remote_verifier(
    guard: tg.Guard, remote: Verifier
) -> None:
    with guard.task("process-job", job_id="42"):
        token = _credential(guard).token
        assert _accepts(remote, token)
    assert _until(lambda: not _accepts(remote, token)) <= FAST_BOUND + SLACK

    # a credential of a delegated task: its parent's revocation (the parent's row alone,
    # as the store's raw writer records it) rejects it through the act chain
    child = _mint(guard, task_id="child-1", act={"sub": "agent-runner", "task_id": "parent-1"})
    assert _accepts(remote, child)
    record_revocation(guard.store, task_id="parent-1", now=time.time())
    assert _until(lambda: not _accepts(remote, child)) <= FAST_BOUND + SLACK


@pytest.mark.slow  # a CLI subprocess
def test_feed_carries_a_cli_revocation_to_the_remote_verifier(
    guard: tg.Guard, remote: Verifier
) -> None:
    with guard.task("process-job", job_id="42") as task:
        token = _credential(guard).token
        assert _accepts(remote, token)
        done = subprocess.run(
            [sys.executable, "-m", "toolguard", "revoke", "--task", task.task_id,
             "--reason", "incident 18", "--db", store_arg(guard)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        took = _until(lambda: not _accepts(remote, token))
    assert took <= FAST_BOUND + SLACK


@pytest.mark.slow
@pytest.mark.sqlite_only  # blocks the SQLite file
def test_feed_publishes_the_task_ends_its_guard_could_not_write_yet(
    make_guard: Callable[..., tg.Guard], serve: Callable[..., Served]
) -> None:
    guard = make_guard(busy_timeout="100ms")
    guard.store.open()
    served = serve(revocation_app(store=guard.store, keys=guard.keys, issuer=ISS))
    url = f"{served.url}/revocations"
    blocker = sqlite3.connect(guard.config.store_path, isolation_level=None)
    with RevocationFeed(url, keys=guard.keys, issuer=ISS, start=False) as feed:
        with pytest.raises(tg.AuditError), guard.task("process-job", job_id="42") as task:
            token = _credential(guard).token
            blocker.execute("BEGIN EXCLUSIVE")  # the task end cannot be written
        assert task.task_id in guard.store.pending_ends()
        assert feed.refresh(), feed.last_error
        held = feed.current
        assert held is not None and revocation_digest("task", task.task_id) in held.task
        verifier = Verifier.from_jwks(guard.keys.jwks(), issuer=ISS, audience=AUD, revocations=feed)
        assert not _accepts(verifier, token)
        blocker.execute("ROLLBACK")
        guard.close()  # writes the pending end
        assert feed.refresh() and feed.current is not None
        assert feed.current.version > held.version
        assert not _accepts(verifier, token)
    blocker.close()


def test_feed_list_is_versioned_by_revocation_count_with_etag_and_no_cache(
    guard: tg.Guard,
) -> None:
    with TestClient(_feed_app(guard)) as client:
        first = client.get("/revocations")
        assert first.status_code == 200
        assert first.headers["content-type"] == FEED_MEDIA_TYPE
        assert first.headers["cache-control"] == "no-cache"
        etag = first.headers["etag"]
        unchanged = client.get("/revocations", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b""
        assert unchanged.headers["etag"] == etag

        record_revocation(guard.store, task_id="t-x", now=time.time())
        changed = client.get("/revocations", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        header, claims = (_segment(p) for p in changed.text.split(".")[:2])
        jwks = client.get("/jwks.json").json()

    assert header == {"alg": "EdDSA", "typ": FEED_TYP, "kid": guard.keys.active.kid}
    assert claims["version"] == _segment(first.text.split(".")[1])["version"] + 1
    assert revocation_digest("task", "t-x") in claims["task"]
    assert "t-x" not in changed.text  # values are digests, not spelled out
    assert jwks == guard.keys.jwks()


def test_feed_answers_503_when_the_store_cannot_be_read(guard: tg.Guard, tmp_path: Path) -> None:
    app = revocation_app(store=tmp_path / "missing.db", keys=guard.keys, issuer=ISS)
    with TestClient(app) as client:
        response = client.get("/revocations")
    assert response.status_code == 503
    assert response.headers["cache-control"] == "no-store"


def test_feed_with_a_secret_answers_only_clients_that_send_it(
    guard: tg.Guard, serve: Callable[..., Served]
) -> None:
    secret = "s3cret-s3cret-s3cret"
    app = revocation_app(store=store_arg(guard), keys=guard.keys, issuer=ISS, secret=secret)
    served = serve(app)
    url = f"{served.url}/revocations"
    for wrong in (None, "wrong-wrong-wrong-wrong"):
        with RevocationFeed(url, keys=guard.keys, issuer=ISS, secret=wrong, start=False) as feed:
            assert not feed.refresh()
            assert feed.last_error == "the feed answered HTTP 401"
    verifier = verifier_from(
        jwks=guard.keys.jwks(), feed=url, feed_secret=secret, issuer=ISS, audience=AUD
    )
    _until(lambda: _accepts(verifier, _mint(guard)))
    verifier.revocations.close()  # type: ignore[union-attr]
    assert secret not in repr(verifier.revocations)
    with pytest.raises(ConfigError, match="at least 16"):
        revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, secret="short")
    with pytest.raises(ConfigError, match="feed_secret goes with feed=URL"):
        verifier_from(
            jwks=guard.keys.jwks(), store=store_arg(guard), feed_secret=secret,
            issuer=ISS, audience=AUD,
        )  # fmt: skip


# -- feed down: grace period, then fail closed, then back ---------------------------------------


@pytest.mark.slow
def test_feed_down_keeps_the_last_list_for_the_grace_period_then_fails_closed(
    guard: tg.Guard, serve: Callable[..., Served], clock: Any
) -> None:
    clock.now = time.time()
    served = serve(_feed_app(guard, clock), own=True)
    feed = RevocationFeed(
        f"{served.url}/revocations", keys=guard.keys, issuer=ISS, grace=10, clock=clock,
        start=False,
    )  # fmt: skip
    verifier = Verifier.from_jwks(
        guard.keys.jwks(), issuer=ISS, audience=AUD, revocations=feed, clock=clock
    )
    auth = ToolGuardAuth(verifier)
    good, revoked = _mint(guard, now=clock.now), _mint(guard, task_id="t-r", now=clock.now)
    record_revocation(guard.store, task_id="t-r", now=clock.now)

    with pytest.raises(CredentialRevoked, match="fail closed") as first:  # no list yet
        verifier.verify(good)
    assert isinstance(first.value.__cause__, FeedError)
    assert "no revocation list" in str(first.value.__cause__)
    assert feed.refresh()
    assert _accepts(verifier, good) and not _accepts(verifier, revoked)

    served.stop()
    clock.advance(9)
    assert not feed.refresh() and "cannot be reached" in (feed.last_error or "")
    assert _accepts(verifier, good) and not _accepts(verifier, revoked)  # within the grace

    clock.advance(2)  # 11 s since the last successful poll
    with pytest.raises(CredentialRevoked, match="fail closed") as closed:
        verifier.verify(good)
    assert closed.value.rule == "credential.revocation"
    assert "has not answered for 11.0s (grace 10s)" in str(closed.value.__cause__)
    with TestClient(_protected(auth)) as client:
        response = client.put(f"/kv/{KEY}", headers={"Authorization": f"Bearer {good}"})
    assert response.status_code == 503
    assert "feed" in response.json()["error_description"]

    served.start()
    assert feed.refresh(), feed.last_error
    assert feed.last_error is None
    assert _accepts(verifier, good) and not _accepts(verifier, revoked)
    feed.close()


@pytest.mark.slow
def test_feed_background_thread_recovers_after_the_feed_comes_back(
    guard: tg.Guard, serve: Callable[..., Served]
) -> None:
    served = serve(_feed_app(guard), own=True)
    verifier = verifier_from(
        jwks=guard.keys.jwks(), feed=f"{served.url}/revocations", issuer=ISS, audience=AUD,
        feed_interval=0.1, feed_grace=0.25,
    )  # fmt: skip
    feed = verifier.revocations
    assert isinstance(feed, RevocationFeed)
    token = _mint(guard)
    _until(lambda: _accepts(verifier, token))
    served.stop()
    _until(lambda: not _accepts(verifier, token))  # grace over: fail closed
    served.start()
    _until(lambda: _accepts(verifier, token))
    feed.close()


def test_feed_in_a_forked_worker_polls_with_a_thread_of_its_own(
    guard: tg.Guard, remote: Verifier
) -> None:
    """A pre-forking server builds the verifier, then forks workers: each child starts a poller
    of its own at the fork, so revocations keep reaching it."""
    token = _mint(guard, task_id="t-fork")
    assert _accepts(remote, token)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            feed = remote.revocations
            assert isinstance(feed, RevocationFeed)
            assert feed._thread is not None and feed._thread.is_alive()  # the child's own
            assert _accepts(remote, token)  # the inherited list, within its grace period
            os.write(write, b"r")  # ready: the parent revokes now
            _until(lambda: not _accepts(remote, token))
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"r"
    record_revocation(guard.store, task_id="t-fork", now=time.time())
    _, status = os.waitpid(pid, 0)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0


# -- hostile feed replies ------------------------------------------------------------------------


@pytest.fixture
def hostile(
    guard: tg.Guard, serve: Callable[..., Served]
) -> Iterator[tuple[Hostile, RevocationFeed, Verifier]]:
    """A feed client (polled by hand) behind a server whose replies the test can replace; it
    holds a good list in which task ``t-r`` is revoked."""
    record_revocation(guard.store, task_id="t-r", now=time.time())
    front = Hostile(_feed_app(guard))
    served = serve(front)
    feed = RevocationFeed(
        f"{served.url}/revocations", keys=guard.keys, issuer=ISS, max_bytes=64 * 1024,
        start=False,
    )  # fmt: skip
    assert feed.refresh(), feed.last_error
    verifier = Verifier.from_jwks(guard.keys.jwks(), issuer=ISS, audience=AUD, revocations=feed)
    yield front, feed, verifier
    feed.close()


def _genuine(guard: tg.Guard, clock: Callable[[], float] = time.time) -> str:
    """A list signed by the genuine feed now."""
    with TestClient(_feed_app(guard, clock)) as client:
        return client.get("/revocations").text


def _segment(part: str) -> Any:
    return json.loads(b64url_decode(part))


def _resign(claims: dict[str, Any], keys: KeyRing, typ: str = FEED_TYP) -> str:
    header = {"alg": keys.active.algorithm, "typ": typ, "kid": keys.active.kid}
    signing_input = (
        b64url_encode(json.dumps(header).encode())
        + "."
        + b64url_encode(json.dumps(claims).encode())
    )
    return f"{signing_input}.{b64url_encode(keys.active.sign(signing_input.encode()))}"


def _list_reply(body: str | bytes, **headers: str) -> Response:
    return Response(body, media_type=FEED_MEDIA_TYPE, headers=headers)


def _assert_rejected_and_kept(
    setup: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard, why: str
) -> None:
    _, feed, verifier = setup
    version = feed.current.version if feed.current else None
    assert not feed.refresh()
    assert why in (feed.last_error or ""), feed.last_error
    assert feed.current is not None and feed.current.version == version  # the good list kept
    assert _accepts(verifier, _mint(guard))
    assert not _accepts(verifier, _mint(guard, task_id="t-r"))


def test_feed_rejects_a_tampered_list(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    head, body, sig = _genuine(guard).split(".")
    claims = _segment(body)
    claims["task"] = []  # drop every task revocation, keep the signature
    hostile[0].reply = _list_reply(f"{head}.{b64url_encode(json.dumps(claims).encode())}.{sig}")
    _assert_rejected_and_kept(hostile, guard, "signature is not valid")


def test_feed_rejects_a_list_signed_with_another_key(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    claims = _segment(_genuine(guard).split(".")[1])
    claims["task"] = []
    hostile[0].reply = _list_reply(_resign(claims, KeyRing.generate()))
    _assert_rejected_and_kept(hostile, guard, "key not in the issuer's JWKS")


def test_feed_rejects_a_rolled_back_list(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    old = _genuine(guard)  # genuinely signed, before the next revocation
    record_revocation(guard.store, task_id="t-s", now=time.time())
    assert hostile[1].refresh()
    hostile[0].reply = _list_reply(old)
    _assert_rejected_and_kept(hostile, guard, "rollback")
    assert not _accepts(hostile[2], _mint(guard, task_id="t-s"))


def test_feed_rejects_a_replayed_older_list_of_the_same_version(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    older = _genuine(guard, lambda: time.time() - 3)
    hostile[0].reply = _list_reply(older)
    _assert_rejected_and_kept(hostile, guard, "replay")


def test_feed_rejects_a_stale_list_and_one_from_the_future(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    hostile[0].reply = _list_reply(_genuine(guard, lambda: time.time() - 60))
    _assert_rejected_and_kept(hostile, guard, "too long ago")
    hostile[0].reply = _list_reply(_genuine(guard, lambda: time.time() + 60))
    _assert_rejected_and_kept(hostile, guard, "in the future")


@pytest.mark.slow
def test_feed_rejects_a_credential_presented_as_a_list_and_wrong_claims(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    hostile[0].reply = _list_reply(_mint(guard))  # a genuine at+jwt credential
    _assert_rejected_and_kept(hostile, guard, "not a revocation list")
    claims = _segment(_genuine(guard).split(".")[1])
    hostile[0].reply = _list_reply(_resign({**claims, "extra": 1}, guard.keys))
    _assert_rejected_and_kept(hostile, guard, "exactly the claims")
    hostile[0].reply = _list_reply(_resign({**claims, "iss": "someone-else"}, guard.keys))
    _assert_rejected_and_kept(hostile, guard, "expected issuer")
    hostile[0].reply = _list_reply(_resign({**claims, "version": -1}, guard.keys))
    _assert_rejected_and_kept(hostile, guard, "non-negative integer")
    hostile[0].reply = _list_reply(_resign({**claims, "task": ["t-r"]}, guard.keys))
    _assert_rejected_and_kept(hostile, guard, "list of digests")


@pytest.mark.slow
def test_feed_rejects_non_jws_bodies_and_other_content_types(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    hostile[0].reply = _list_reply("<html>maintenance</html>")
    _assert_rejected_and_kept(hostile, guard, "not a compact JWS")
    hostile[0].reply = _list_reply(b"\xff\xfe.\x00.x")
    _assert_rejected_and_kept(hostile, guard, "not a compact JWS")
    hostile[0].reply = _list_reply("e30.bm90IGpzb24.AAAA")  # {} . "not json" . junk
    _assert_rejected_and_kept(hostile, guard, "not a revocation list")
    hostile[0].reply = Response(_genuine(guard), media_type="text/html")
    _assert_rejected_and_kept(hostile, guard, "not application/toolguard-revocations+jwt")
    hostile[0].reply = PlainTextResponse("oops", status_code=500)
    _assert_rejected_and_kept(hostile, guard, "HTTP 500")


def test_feed_rejects_a_huge_body_without_reading_it_all(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    sent: list[int] = []
    enough, stopped = threading.Event(), threading.Event()

    async def endless() -> Any:
        try:
            for _ in range(100_000):  # 6.5 GB if it were all read
                if enough.is_set():
                    return
                sent.append(1)
                yield b"A" * 65536
        finally:
            stopped.set()

    hostile[0].reply = StreamingResponse(endless(), media_type=FEED_MEDIA_TYPE)
    _assert_rejected_and_kept(hostile, guard, "larger than max_bytes")
    assert len(sent) < 100_000  # the client hung up long before the end
    # uvicorn drops what is sent after a hang-up: end the reply (the module's server goes on
    # to the next test)
    enough.set()
    _until(stopped.is_set)
    # a declared length over the bound is refused before any body is read; no real server
    # sends a Content-Length its body does not have, so this reply is simulated (respx)
    with respx.mock:
        respx.get(hostile[1].url).mock(
            return_value=httpx.Response(
                200,
                headers={"Content-Type": FEED_MEDIA_TYPE, "Content-Length": str(10**9)},
                stream=httpx.ByteStream(b"x"),
            )
        )
        _assert_rejected_and_kept(hostile, guard, "larger than max_bytes")


def test_feed_abandons_a_reply_that_drips_past_the_timeout(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    async def drip() -> Any:
        for _ in range(1000):  # each piece well within httpx's per-read timeout
            yield b"A"
            await asyncio.sleep(0.01)

    front, _, verifier = hostile
    with RevocationFeed(
        hostile[1].url, keys=guard.keys, issuer=ISS, interval=0.1, start=False
    ) as feed:
        front.reply = StreamingResponse(drip(), media_type=FEED_MEDIA_TYPE)
        started = time.monotonic()
        assert not feed.refresh()
        took = time.monotonic() - started
    assert "took longer than the timeout (0.1s)" in (feed.last_error or "")
    assert took < 2.0  # not the 10 s the whole reply would take
    assert _accepts(verifier, _mint(guard))  # the other client's list is unaffected


def test_feed_does_not_follow_redirects(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    for target in ("http://attacker.example/revocations", "/revocations?again"):
        hostile[0].reply = Response(status_code=302, headers={"Location": target})
        _assert_rejected_and_kept(hostile, guard, "redirects are refused")


def test_feed_refuses_a_304_it_did_not_ask_for_and_revalidates_old_lists(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard, clock: Any
) -> None:
    front, _, _ = hostile
    clock.now = time.time()
    feed = RevocationFeed(
        hostile[1].url, keys=guard.keys, issuer=ISS, grace=10, clock=clock, start=False
    )
    assert feed.refresh()  # unconditional: no list yet
    assert front.conditional[-1] is False
    front.reply = Response(status_code=304)  # forged "not modified"
    clock.advance(4)
    assert feed.refresh()  # the held list was signed < grace/2 ago: a conditional request
    assert front.conditional[-1] is True
    clock.advance(2)  # signed 6 s ago > grace/2: ask for a freshly signed list
    assert not feed.refresh()
    assert front.conditional[-1] is False
    assert "not conditional" in (feed.last_error or "")
    feed.close()


# -- configuration ---------------------------------------------------------------------------------


def test_verifier_from_needs_exactly_one_revocation_source(guard: tg.Guard) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        verifier_from(jwks=guard.keys.jwks(), issuer=ISS, audience=AUD)
    with pytest.raises(ConfigError, match="exactly one"):
        verifier_from(
            jwks=guard.keys.jwks(), store=store_arg(guard), feed="http://127.0.0.1:1/r",
            issuer=ISS, audience=AUD,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "kwargs", "message"),
    [
        ("file:///etc/passwd", {}, "http:// or https://"),
        ("https:///revocations", {}, "with a host"),
        ("https://user:pw@feed.internal/revocations", {}, "must not carry credentials"),
        ("https://feed.internal/r", {"interval": 0}, "interval"),
        ("https://feed.internal/r", {"grace": float("nan")}, "grace"),
        ("https://feed.internal/r", {"interval": 5, "grace": 1}, "at least the poll interval"),
        ("https://feed.internal/r", {"max_bytes": 10}, "max_bytes"),
        ("https://feed.internal/r", {"algorithms": ["HS256"]}, "algorithms"),
    ],
)
def test_revocation_feed_refuses_bad_settings(
    guard: tg.Guard, url: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RevocationFeed(url, keys=guard.keys, issuer=ISS, start=False, **kwargs)


def test_feed_clients_share_the_tls_context_without_the_environments_settings(
    guard: tg.Guard,
) -> None:
    """A feed client ignores the environment's proxy and CA settings (trust_env=False) and
    shares one TLS context (certifi's bundle loaded once, not per client and per watchdog)."""
    feeds = [
        RevocationFeed("https://feed.internal/r", keys=guard.keys, issuer=ISS, start=False)
        for _ in range(2)
    ]
    contexts = [feed._client._transport._pool._ssl_context for feed in feeds]  # type: ignore[attr-defined]
    assert contexts[0] is contexts[1] is tls_context(trust_env=False)
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname
    assert all(not feed._client._trust_env for feed in feeds)
    for feed in feeds:
        feed.close()


def test_revocation_app_refuses_public_keys_only(guard: tg.Guard) -> None:
    with pytest.raises(ConfigError, match="KeyRing"):
        revocation_app(store=guard.store, keys=guard.keys.from_jwks(guard.keys.jwks()), issuer=ISS)  # type: ignore[arg-type]


def test_feed_client_error_messages_never_carry_tokens(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    token = _mint(guard)
    hostile[0].reply = _list_reply(token)
    assert not hostile[1].refresh()
    assert token not in (hostile[1].last_error or "")
    with (
        RevocationFeed(hostile[1].url, keys=guard.keys, issuer=ISS, start=False) as fresh,
        pytest.raises(FeedError, match="no revocation list"),
    ):
        fresh.revoked_reason(jti="j", task_id="t", identity="i", chain=(), issued_at=0)


def _protected(auth: ToolGuardAuth) -> Starlette:
    @auth.protect("write", "{key}")
    async def put(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/kv/{key}", put, methods=["PUT"])])


def test_revocation_app_from_config_serves_the_guards_store_with_its_key(
    guard: tg.Guard, tmp_path: Path
) -> None:
    config = make_config(tmp_path, store=guard.config.store)  # the guard's, either backend
    config_file = tmp_path / "toolguard.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    record_revocation(guard.store, task_id="t-cfg", now=time.time())
    with TestClient(revocation_app_from_config(config_file)) as client:
        signed = client.get("/revocations").text
    feed = RevocationFeed("http://127.0.0.1:1/r", keys=guard.keys, issuer=ISS, start=False)
    with feed:
        listed = feed._parse(signed.encode(), time.time())
    assert revocation_digest("task", "t-cfg") in listed.task

    with pytest.raises(tg.CredentialError, match="does not exist"):  # never creates a key
        revocation_app_from_config({**config, "issuer": {**config["issuer"], "key_file": "nope"}})


# -- an attacker's review (issue 11): replays, compression, the server's surface ------------------


def test_feed_a_replayed_list_never_outlives_grace_plus_leeway_from_its_signing(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard, clock: Any
) -> None:
    """A man in the middle keeps a genuine list and serves it just before it would be refused
    as stale: the verifier must fail closed grace + leeway after the list was signed, not a
    whole grace after the replay arrived (which was up to 2 * grace + leeway)."""
    front, _, _ = hostile
    signed_at = time.time()
    captured = _genuine(guard, lambda: signed_at)
    front.reply = _list_reply(captured)
    feed = RevocationFeed(
        hostile[1].url, keys=guard.keys, issuer=ISS, grace=10, leeway=5, clock=clock,
        start=False,
    )  # fmt: skip
    clock.now = signed_at + 14.5  # just within grace + leeway: still accepted
    assert feed.refresh(), feed.last_error
    check = {"jti": "j", "task_id": "t", "identity": "i", "chain": (), "issued_at": signed_at}
    clock.now = signed_at + 14.9
    assert feed.revoked_reason(**check) is None  # still within its life
    clock.now = signed_at + 15.5  # grace + leeway after signing: fail closed
    with pytest.raises(FeedError, match="has not answered"):
        feed.revoked_reason(**check)
    assert not feed.refresh()  # and the replay is refused from now on
    assert "too long ago" in (feed.last_error or "")
    feed.close()


def test_feed_an_honest_list_keeps_the_full_grace_after_the_last_poll(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard, clock: Any
) -> None:
    clock.now = time.time()
    feed = RevocationFeed(
        hostile[1].url, keys=guard.keys, issuer=ISS, grace=10, clock=clock, start=False
    )
    assert feed.refresh()
    check = {"jti": "j", "task_id": "t", "identity": "i", "chain": (), "issued_at": clock.now}
    clock.advance(9.5)
    assert feed.revoked_reason(**check) is None
    clock.advance(1)
    with pytest.raises(FeedError):
        feed.revoked_reason(**check)
    feed.close()


def test_feed_asks_for_no_compression_and_refuses_a_gzip_bomb_reading_max_bytes_at_most(
    hostile: tuple[Hostile, RevocationFeed, Verifier], guard: tg.Guard
) -> None:
    import gzip

    seen: list[bytes] = []
    # 64 MiB in ~64 KiB: 8 gzip members of 8 MiB (one stream to a gzip reader), built without
    # compressing 64 MiB; within the client's max_bytes, so all of it is read (raw)
    member = gzip.compress(b"A" * (8 * 1024 * 1024), compresslevel=9)
    bomb = member * 8
    assert len(bomb) <= 64 * 1024

    async def reply(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["headers"]).get(b"accept-encoding", b""))
        await Response(bomb, media_type=FEED_MEDIA_TYPE, headers={"Content-Encoding": "gzip"})(
            scope, receive, send
        )

    hostile[0].reply = reply
    # read raw (never inflated to 64 MiB): refused as what it is, compressed bytes
    _assert_rejected_and_kept(hostile, guard, "not a compact JWS")
    assert seen == [b"identity"]
    small = gzip.compress(_genuine(guard).encode())  # a compressing proxy: refused, not inflated
    hostile[0].reply = Response(
        small, media_type=FEED_MEDIA_TYPE, headers={"Content-Encoding": "gzip"}
    )
    _assert_rejected_and_kept(hostile, guard, "not a compact JWS")


def test_feed_server_other_methods_and_the_jwks_never_carry_a_private_key(
    guard: tg.Guard,
) -> None:
    secret = "s" * 24
    app = revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, secret=secret)
    with TestClient(app) as client:
        assert client.head("/revocations").status_code == 401  # HEAD is GET: same secret
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            assert client.request(method, "/revocations").status_code == 405
            assert client.request(method, "/jwks.json").status_code == 405
        for wrong in ("", "Bearer", f"Bearer {secret[:-1]}", f"Basic {secret}", secret):
            assert client.get("/revocations", headers={"Authorization": wrong}).status_code == 401
        good = {"Authorization": f"Bearer {secret}"}
        assert client.head("/revocations", headers=good).status_code == 200
        jwks = client.get("/jwks.json").json()
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
    assert jwks["keys"] and all(not private & set(key) for key in jwks["keys"])


def test_feed_horizon_bounds_the_list_so_it_never_outgrows_max_bytes(guard: tg.Guard) -> None:
    """Every task end is a revocation the store keeps forever: unbounded, the list would
    outgrow the clients' max_bytes (~500,000 task ends) and every verifier fail closed for
    good. By default, a revocation leaves the list max_ttl + leeway after it (no credential
    recorded in the store outlives it); with a longer max_ttl they stay, and a horizon cuts
    task and jti revocations older than it anyway; version still counts them all."""
    now = time.time()
    for number in range(200):
        record_revocation(guard.store, task_id=f"old-{number}", now=now - 1000)
    record_revocation(guard.store, jti="old-jti", now=now - 1000)
    record_revocation(guard.store, identity="old-identity", now=now - 1000)
    record_revocation(guard.store, task_id="new", now=now)

    def claims(app: Starlette) -> dict[str, Any]:
        with TestClient(app) as client:
            return dict(_segment(client.get("/revocations").text.split(".")[1]))

    default = claims(revocation_app(store=guard.store, keys=guard.keys, issuer=ISS))
    full = claims(revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, max_ttl=2000))
    bounded = claims(
        revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, max_ttl=2000, horizon=600)
    )
    new = [revocation_digest("task", "new")]
    assert default["task"] == new and default["jti"] == [] and default["identity"] == {}
    assert len(full["task"]) == 201 and len(full["jti"]) == 1 and len(full["identity"]) == 1
    assert bounded["task"] == new and bounded["jti"] == []
    assert bounded["version"] == full["version"] == default["version"] == 203  # rollback check
    assert bounded["identity"] == full["identity"]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="horizon"):
            revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, horizon=bad)
        with pytest.raises(ConfigError, match="max_ttl"):
            revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, max_ttl=bad)
    for bad in (-1, 3601, float("nan")):
        with pytest.raises(ConfigError, match="leeway"):
            revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, leeway=bad)


@pytest.mark.slow
def test_feed_abandons_a_reply_that_drips_its_headers_and_polls_again(guard: tg.Guard) -> None:
    """A slow-loris in the status line and headers: each byte comes within httpx's per-read
    timeout, so without a watchdog one poll hung for the whole drip (10 s here) and no list
    could arrive meanwhile. Now it is abandoned after 2 x timeout, and the next poll runs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def drip(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(500):
                if stop.is_set():
                    return
                conn.sendall(b"X")
                stop.wait(0.02)
        except OSError:
            pass
        finally:
            conn.close()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/revocations"
    feed = RevocationFeed(url, keys=guard.keys, issuer=ISS, interval=0.1, start=False)
    try:
        for _ in range(2):  # the second poll runs on a fresh client, abandoned the same way
            started = time.monotonic()
            assert not feed.refresh()
            assert time.monotonic() - started < 3.0  # not the 10 s of the drip
            assert "longer than twice the timeout" in (feed.last_error or ""), feed.last_error
        assert len(accepted) == 2
        with pytest.raises(FeedError):  # no list ever: fail closed
            feed.revoked_reason(jti="j", task_id="t", identity="i", chain=(), issued_at=0.0)
    finally:
        stop.set()
        feed.close()
        listener.close()


# -- the list holds what can still reject a credential, and no more ----------------------------


def _published(app: Starlette) -> dict[str, Any]:
    with TestClient(app) as client:
        return dict(_segment(client.get("/revocations").text.split(".")[1]))


def _as_list(claims: dict[str, Any]) -> RevocationList:
    return RevocationList(
        claims["version"], claims["iat"], frozenset(claims["jti"]), frozenset(claims["task"]),
        dict(claims["identity"]),
    )  # fmt: skip


def test_feed_revocation_leaves_the_list_exactly_when_its_last_credential_expires(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    """A task revocation written by a host whose clock is 200 s behind: by its own time it
    could leave at ts + max_ttl + leeway, but the store knows a credential it rejects lives
    longer; it stays until that credential's exp + leeway. A verifier fed the list rejects
    the credential as revoked until then, and as expired from then on."""
    guard = make_guard(clock=clock)
    leeway = 5.0
    app = revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, clock=clock,
                         leeway=leeway)  # fmt: skip
    with guard.task("process-job", job_id="42") as task:
        credential = _credential(guard)
        task_id = task.task_id
        revoked_at = clock.now - 200  # the revoking host's clock is slow
        record_revocation(guard.store, task_id=task_id, now=revoked_at)
    digest = revocation_digest("task", task_id)
    exp = credential.expires_at
    assert exp > revoked_at + 300  # the credential outlives the revocation's own bound

    def verify(claims: dict[str, Any]) -> None:
        Verifier.from_jwks(
            guard.keys.jwks(), issuer=ISS, audience=AUD, leeway=leeway, clock=clock,
            revocations=_as_list(claims),
        ).verify(credential.token)  # fmt: skip

    clock.now = exp + leeway - 0.5  # still valid for a verifier: it must still be rejected
    claims = _published(app)
    assert digest in claims["task"]
    with pytest.raises(CredentialRevoked, match="task revoked"):
        verify(claims)
    clock.now = exp + leeway  # no verifier accepts it any more: it leaves
    claims = _published(app)
    assert digest not in claims["task"] and claims["version"] == 2  # revoke + task end
    with pytest.raises(tg.CredentialError, match="expired"):
        verify(claims)


def test_feed_revocation_without_credentials_leaves_max_ttl_plus_leeway_after_it(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    """A credential the store never recorded (minted directly) and issued before the
    revocation lives at most max_ttl: the row stays max_ttl + leeway, to the second."""
    guard = make_guard(clock=clock)
    app = revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, clock=clock,
                         max_ttl=300, leeway=5)  # fmt: skip
    token = _mint(guard, task_id="t-direct", now=clock.now)
    revoked_at = clock.now
    record_revocation(guard.store, task_id="t-direct", now=revoked_at)
    record_revocation(guard.store, jti="some-jti", now=revoked_at)
    clock.now = revoked_at + 304.9
    claims = _published(app)
    assert claims["task"] == [revocation_digest("task", "t-direct")]
    assert claims["jti"] == [revocation_digest("jti", "some-jti")]
    verifier = Verifier.from_jwks(
        guard.keys.jwks(), issuer=ISS, audience=AUD, clock=clock, revocations=_as_list(claims)
    )
    with pytest.raises(CredentialRevoked):
        verifier.verify(token)
    clock.now = revoked_at + 305
    claims = _published(app)
    assert claims["task"] == [] and claims["jti"] == []


def test_feed_identity_revocation_stays_while_the_identity_is_disabled(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    guard = make_guard(clock=clock)
    app = revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, clock=clock, leeway=5)
    guard.revoke(identity="summariser")  # revoked, not disabled
    guard.revoke(identity="agent-runner", disable=True)
    runner, summariser = (revocation_digest("identity", i) for i in ("agent-runner", "summariser"))
    assert set(_published(app)["identity"]) == {runner, summariser}
    clock.advance(305)  # max_ttl + leeway: the enabled identity's revocation can no longer matter
    assert set(_published(app)["identity"]) == {runner}
    clock.advance(100_000)
    assert set(_published(app)["identity"]) == {runner}  # disabled: it stays
    guard.enable("agent-runner")
    clock.advance(60)  # enabling writes no revocation: the list is looked at again each minute
    assert _published(app)["identity"] == {}


@pytest.mark.slow
def test_feed_list_stays_bounded_under_churn(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    """Task after task ends (each end is a revocation the store keeps): the list holds only
    those of the last max_ttl + leeway seconds, however many ended before."""
    guard = make_guard(clock=clock)
    app = revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, clock=clock, leeway=5)
    sizes = []
    for _ in range(80):
        with guard.task("process-job", job_id="42") as task:
            credential = _credential(guard, "kv_get")
            last = task.task_id
        clock.advance(20)
        claims = _published(app)
        sizes.append(len(claims["task"]))
        assert revocation_digest("task", last) in claims["task"]
    assert claims["version"] == 80
    assert max(sizes) == sizes[-1] == (300 + 5) // 20  # a window of 15 task ends, never more
    assert credential.expires_at + 5 > clock.now  # the newest still matters, and is listed


def test_verifier_names_the_feed_it_cannot_read_without_its_secrets(
    guard: tg.Guard, tmp_path: Path
) -> None:
    feed = RevocationFeed(
        "http://127.0.0.1:9/revocations?token=s3cret-in-the-query#frag", keys=guard.keys,
        issuer=ISS, start=False,
    )  # fmt: skip
    verifier = Verifier.from_jwks(guard.keys.jwks(), issuer=ISS, audience=AUD, revocations=feed)
    token = _mint(guard)
    with pytest.raises(CredentialRevoked) as raised:
        verifier.verify(token)
    message = str(raised.value)
    assert "the revocation feed http://127.0.0.1:9/revocations unavailable" in message
    assert "s3cret" not in message and "frag" not in message and "store" not in message
    with TestClient(_protected(ToolGuardAuth(verifier))) as client:
        response = client.put(f"/kv/{KEY}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert "revocation feed cannot be read" in response.json()["error_description"]
    feed.close()

    missing = tmp_path / "elsewhere" / "audit.db"
    on_store = verifier_from(jwks=guard.keys.jwks(), store=str(missing), issuer=ISS, audience=AUD)
    with pytest.raises(CredentialRevoked) as raised:
        on_store.verify(token)
    assert f"the revocation store {missing} unavailable" in str(raised.value)
    with TestClient(_protected(ToolGuardAuth(on_store))) as client:
        response = client.put(f"/kv/{KEY}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert "revocation store cannot be read" in response.json()["error_description"]


@pytest.mark.slow
def test_feed_a_parent_task_revocation_stays_while_a_delegated_credential_lives(
    make_guard: Callable[..., tg.Guard], clock: Any
) -> None:
    """A delegated task's credential carries its parent in ``act``: the parent's revocation
    rejects it, so it stays listed until that credential has expired (here the revoking
    host's clock is slow, so its own bound would have dropped it 200 s too early)."""
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["allow"]["delegate"] = ["agents:jobs:*"]
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["allow"]["delegate"] = ["agents:jobs:{job_id}:*"]
    guard = make_guard(clock=clock, identities=identities, intents=intents)
    app = revocation_app(store=guard.store, keys=guard.keys, issuer=ISS, clock=clock, leeway=5)
    with guard.task("process-job", job_id="42") as parent:
        with parent.delegate("summarise-job", job_id="42"):
            permit = guard.authorize("kv_get", {"key": "agents:jobs:42:input"})
            guard.finish(permit)
        record_revocation(guard.store, task_id=parent.task_id, now=clock.now - 200)
    digest = revocation_digest("task", parent.task_id)
    exp = permit.credential.expires_at
    clock.now = exp + 5 - 0.5
    claims = _published(app)
    assert digest in claims["task"]
    verifier = Verifier.from_jwks(
        guard.keys.jwks(), issuer=ISS, audience=AUD, leeway=5, clock=clock,
        revocations=_as_list(claims),
    )  # fmt: skip
    with pytest.raises(CredentialRevoked):
        verifier.verify(permit.credential.token)
    clock.now = exp + 5
    assert digest not in _published(app)["task"]
