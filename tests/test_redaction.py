"""Redaction: no secret argument value and no issued token is ever written to the audit
database, its WAL, the checkpoint file or the logs; what is kept is still useful (the
non-secret arguments, ``args_sha256`` of the original, values cut to a configured size)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import Clock
from langchain_core.tools import InjectedToolArg, tool
from pydantic import BaseModel

import toolguard as tg
from toolguard.brokers import StaticSecretProvider
from toolguard.keys import load_args_key
from toolguard.redaction import (
    REDACTED,
    Redactor,
    args_digest,
    compile_patterns,
    scrub_text,
)

KEY = "agents:jobs:42:state"


def _redact(args: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    text, _ = Redactor(**kwargs)(args)
    decoded: dict[str, Any] = json.loads(text)
    return decoded


def _sha(args: Any) -> str:
    """The investigator's recipe for ``args_sha256`` (docs/audit.md)."""
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "passwd",
        "db_pwd",
        "token",
        "accessToken",
        "refresh_token",
        "client_secret",
        "Authorization",
        "X-Api-Key",
        "api_key",
        "apikey",
        "aws_secret_access_key",
        "private_key",
        "cookie",
        "Set-Cookie",
        "session_id",
        "credentials",
        "auth",
        "x-auth-header",
        "jwt",
    ],
)
def test_redactor_secret_key_values_are_redacted(key: str) -> None:
    assert _redact({key: "hunter2", "key": KEY}) == {key: REDACTED, "key": KEY}


@pytest.mark.parametrize("key", ["key", "value", "author", "authority", "passage", "tokenizer_x"])
def test_redactor_ordinary_keys_are_kept(key: str) -> None:
    expected = {key: "plain"} if "token" not in key else {key: REDACTED}
    assert _redact({key: "plain"}) == expected


def test_redactor_nested_secrets_are_redacted_at_every_level() -> None:
    args = {
        "request": {
            "url": "https://api.example/v1",
            "headers": [{"Authorization": "Bearer abc.def.ghi"}, {"Accept": "json"}],
            "db": {"user": "bob", "password": "s3cret"},
        },
        "credentials": {"user": "bob", "pin": "1234"},  # the whole object goes
    }

    assert _redact(args) == {
        "request": {
            "url": "https://api.example/v1",
            "headers": [{"Authorization": REDACTED}, {"Accept": "json"}],
            "db": {"user": "bob", "password": REDACTED},
        },
        "credentials": REDACTED,
    }


def test_redactor_null_secret_stays_null() -> None:
    assert _redact({"password": None, "token": ""}) == {"password": None, "token": REDACTED}


def test_redactor_extra_keys_are_exact_case_insensitive_with_wildcards() -> None:
    redactor = Redactor(extra_keys=["ssn", "*_pin"])

    text, _ = redactor({"SSN": "078-05-1120", "lessons": "x", "card_pin": "1", "pin": "2"})

    assert json.loads(text) == {"SSN": REDACTED, "lessons": "x", "card_pin": REDACTED, "pin": "2"}


def test_redactor_with_keys_adds_a_tools_own_rules() -> None:
    base = Redactor(extra_keys=["ssn"])
    tool_redactor = base.with_keys(["value"], patterns=[r"\d{4}-\d{4}"])

    text, _ = tool_redactor({"ssn": "1", "value": "v", "note": "card 1234-5678 ok"})

    assert json.loads(text) == {"ssn": REDACTED, "value": REDACTED, "note": f"card {REDACTED} ok"}
    assert base.with_keys([]) is base
    assert json.loads(base({"value": "v"})[0]) == {"value": "v"}


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", REDACTED, id="jwt"),
        pytest.param(
            "see eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln end", f"see {REDACTED} end", id="jwt-in"
        ),
        pytest.param(
            "Authorization: Bearer abcdefgh12345678",
            f"Authorization: Bearer {REDACTED}",
            id="bearer",
        ),
        pytest.param("Basic dXNlcjpwYXNzd29yZA==", f"Basic {REDACTED}", id="basic"),
        pytest.param("basic information about it", "basic information about it", id="basic-prose"),
        pytest.param(
            "postgres://bob:s3cr3t@db:5432/x", f"postgres://bob:{REDACTED}@db:5432/x", id="url"
        ),
        pytest.param("http://host:8080/a@b", "http://host:8080/a@b", id="url-port-not-password"),
        pytest.param(
            "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----", REDACTED, id="pem"
        ),
        pytest.param("key AKIAIOSFODNN7EXAMPLE used", f"key {REDACTED} used", id="aws"),
        pytest.param("ghp_" + "a" * 36, REDACTED, id="github"),
        pytest.param("sk-" + "A1b2" * 8, REDACTED, id="openai-style"),
        pytest.param("a task-list of things", "a task-list of things", id="not-a-key"),
    ],
)
def test_redactor_secret_values_are_redacted_under_any_key(value: str, expected: str) -> None:
    assert _redact({"note": value}) == {"note": expected}


def test_redactor_extra_value_patterns_are_redacted() -> None:
    text, _ = Redactor(patterns=[r"\b\d{3}-\d{2}-\d{4}\b"])({"note": "ssn 078-05-1120 on file"})

    assert json.loads(text) == {"note": f"ssn {REDACTED} on file"}


def test_redactor_bad_value_pattern_is_an_error() -> None:
    with pytest.raises(re.error):
        compile_patterns(["(unclosed"])


def test_redactor_long_values_are_cut_after_redaction() -> None:
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0." + "s" * 40
    args = {"blob": "a" * 100, "mixed": "x" * 20 + token}

    redacted = _redact(args, max_chars=32)

    assert redacted["blob"] == "a" * 32 + "…[68 more chars]"
    assert redacted["mixed"] == "x" * 20 + REDACTED  # redacted first, then short enough


def test_redactor_containers_are_capped() -> None:
    deep: dict[str, Any] = {"v": 1}
    for _ in range(12):
        deep = {"d": deep}

    redacted = _redact({"items": list(range(150)), "deep": deep})

    assert redacted["items"][:100] == list(range(100)) and redacted["items"][100] == (
        "[50 more items]"
    )
    assert "[too deep]" in json.dumps(redacted["deep"])


# -- args_sha256 ---------------------------------------------------------------------------------


def test_redactor_sha256_is_of_the_original_arguments() -> None:
    args = {"key": KEY, "password": "hunter2", "note": "é", "n": [1, 2.5, None, True]}

    text, digest = Redactor()(args)

    assert digest == _sha(args)  # an investigator holding "hunter2" can match it
    assert "hunter2" not in text
    assert digest != _sha({**args, "password": "hunter3"})


def test_redactor_unchanged_arguments_are_their_canonical_json() -> None:
    args = {"value": "v", "key": KEY, "n": 3}

    text, digest = Redactor()(args)

    assert text == '{"key":"agents:jobs:42:state","n":3,"value":"v"}'
    assert digest == hashlib.sha256(text.encode()).hexdigest()


class _Login(BaseModel):
    user: str
    password: str


@dataclasses.dataclass
class _Target:
    host: str
    api_key: str


def test_redactor_models_dataclasses_and_bytes() -> None:
    args = {"login": _Login(user="bob", password="pw"), "target": _Target("h", "k"), "raw": b"ab"}

    text, digest = Redactor()(args)

    assert json.loads(text) == {
        "login": {"user": "bob", "password": REDACTED},
        "target": {"host": "h", "api_key": REDACTED},
        "raw": "<bytes: 2>",
    }
    plain = {
        "login": {"user": "bob", "password": "pw"},
        "target": {"host": "h", "api_key": "k"},
        "raw": base64.b64encode(b"ab").decode(),
    }
    assert digest == _sha(plain)


def test_redactor_lone_surrogate_is_stored_escaped() -> None:
    text, digest = Redactor()({"value": "a\ud800b"})

    text.encode("utf-8")  # storable
    assert json.loads(text) == {"value": "a\ud800b"}
    assert len(digest) == 64


def test_redactor_non_text_keys_are_hashed_as_text() -> None:
    text, digest = Redactor()({1: "one", "b": "two"})  # type: ignore[dict-item]

    assert json.loads(text) == {"1": "one", "b": "two"}
    assert digest == _sha({"1": "one", "b": "two"})


def test_scrub_text_removes_exact_secrets_and_known_formats() -> None:
    text = "failed with opaque-secret-123 and eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"

    assert scrub_text(text, ["opaque-secret-123"]) == f"failed with {REDACTED} and {REDACTED}"
    assert Redactor(patterns=["failed"]).scrub("failed x") == f"{REDACTED} x"


# -- end to end: nothing secret on disk or in the logs ---------------------------------------------

SECRET_VALUES = ("hunter2-db-password", "sk_live_51Hsecretvalue", "per-tool-secret-value")


def _run_workload(guard: tg.Guard, clock: Clock, issued: list[str]) -> None:
    @tool
    def kv_set(
        key: str,
        value: str,
        options: dict[str, Any],
        credential: Annotated[tg.Credential, InjectedToolArg],
    ) -> str:
        """Store a value."""
        issued.append(credential.token)
        if value == "fail":
            # A careless tool puts its own credential into its error message.
            raise ConnectionError(f"upstream rejected Authorization: Bearer {credential.token}")
        return "stored"

    @tool
    def kv_get(key: str) -> str:
        """Read a key; echoes its token (never do this) so the model sees it."""
        token = tg.current_credential().token
        issued.append(token)
        return f"value; debug token={token}"

    put, get = tg.guard([kv_set, kv_get], guard)
    with guard.task("process-job", job_id="42"):
        clock.advance(1)
        put.invoke(
            {
                "key": KEY,
                "value": "v1",
                "options": {"db": {"password": SECRET_VALUES[0]}, "api_key": SECRET_VALUES[1]},
            }
        )
        echoed = get.invoke({"key": KEY})
        leaked = echoed.rsplit("=", 1)[1]
        # The model passes the token it saw back as an argument, in several shapes.
        put.invoke({"key": KEY, "value": leaked, "options": {"note": f"Bearer {leaked}"}})
        put.invoke({"key": KEY, "value": "v", "options": {"ssn": SECRET_VALUES[2]}})
        with pytest.raises(ConnectionError):
            put.invoke({"key": KEY, "value": "fail", "options": {}})
        # A denied call's arguments are redacted too.
        put.invoke({"key": "agents:jobs:43:x", "value": "v", "options": {"token": leaked}})


def _scan(paths: list[Path], needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        data = path.read_bytes()
        hits = [n for n in needles if n.encode() in data]
        if hits:
            found[path.name] = hits
    return found


def test_redaction_no_secret_or_token_in_db_wal_checkpoints_or_logs(
    make_guard: Any, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    guard = make_guard(
        clock=clock,
        redact_keys=["ssn"],
        tools={
            "kv_get": {"operation": "read", "resource": "{key}"},
            "kv_set": {"operation": "write", "resource": "{key}", "redact": ["value"]},
        },
    )
    issued: list[str] = []

    _run_workload(guard, clock, issued)

    assert len(issued) == 5 and all(t.count(".") == 2 for t in issued)
    needles = [*issued, *(t.rsplit(".", 1)[1] for t in issued), *SECRET_VALUES]
    files = [tmp_path / n for n in ("audit.db", "audit.db-wal", "audit.db.checkpoints")]
    assert all(f.exists() for f in files)
    assert _scan(files, needles) == {}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [n for n in needles if n in logged]

    events = guard.audit.events()
    requests = [e for e in events if e.kind == "request"]
    # What is kept is still useful: the shape of the call, and the digest of the original.
    first = json.loads(requests[0].args or "")
    assert first == {
        "key": KEY,
        "value": REDACTED,
        "options": {"db": {"password": REDACTED}, "api_key": REDACTED},
    }
    original = {
        "key": KEY,
        "value": "v1",
        "options": {"db": {"password": SECRET_VALUES[0]}, "api_key": SECRET_VALUES[1]},
    }
    key = load_args_key(guard.config.args_key_path, create=False)
    assert requests[0].args_sha256 == args_digest(original, key)
    errors = [e.error or "" for e in events if e.kind == "outcome" and e.outcome == "error"]
    assert len(errors) == 1 and errors[0].startswith("ConnectionError: upstream rejected")
    denied = [e for e in events if e.kind == "denied"]
    assert len(denied) == 1 and json.loads(denied[0].args or "")["options"] == {"token": REDACTED}
    guard.close()  # the WAL is checkpointed into the main file
    assert _scan([p for p in tmp_path.iterdir() if p.is_file()], needles) == {}


def test_redaction_opaque_credential_echoed_in_error_is_not_stored(
    make_guard: Any, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "legacy-opaque-secret-7f3a9c"
    monkeypatch.setenv("LEGACY_KV_SECRET", secret)
    guard = make_guard(
        clock=clock, providers={"kv_get": StaticSecretProvider(env="LEGACY_KV_SECRET")}
    )

    @tool
    def kv_get(key: str) -> str:
        """Read a key from a legacy API."""
        raise PermissionError(f"legacy API refused secret {tg.current_credential().token}")

    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42"), pytest.raises(PermissionError):
        get.invoke({"key": KEY})
    guard.close()

    assert _scan([p for p in tmp_path.iterdir() if p.is_file()], [secret]) == {}


def test_redaction_no_token_fragment_in_error_text(make_guard: Any, clock: Clock) -> None:
    guard = make_guard(clock=clock)

    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        raise ConnectionError(f"upstream rejected Bearer {tg.current_credential().token}")

    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42"), pytest.raises(ConnectionError):
        get.invoke({"key": KEY})
    guard.store.flush()

    (error,) = [e.error for e in guard.audit.events(kind="outcome")]
    assert error == f"ConnectionError: upstream rejected Bearer {REDACTED}"
