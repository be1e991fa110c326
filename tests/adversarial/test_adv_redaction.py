"""Red team: secrets in every column, and the keyed ``args_sha256`` (issue 10, items 9, 10).

A secret the model writes into a resource, a secret quoted in a denial reason, a secret in a
tool's exception: none may reach the database file or its WAL. The digest of the original
arguments is keyed (HMAC-SHA256 with a key outside the database), so a redacted 4-digit PIN
cannot be recovered from the trail by trying all 10,000.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import timeit
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Clock, make_config

import toolguard as tg
from toolguard.cli import CliContext, main
from toolguard.errors import ConfigError
from toolguard.keys import ARGS_KEY_ENV, load_args_key
from toolguard.redaction import DIGEST_PREFIX, Redactor, args_digest

JWT = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJhZ2VudCIsImp0aSI6Ing5In0"
    ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)
BEARER_CRED = "QmVhcmVyU2VjcmV0VmFsdWUxMjM0"
URL_PASSWORD = "hunter2-url-pass"
PEM_BODY = "MC4CAQAwBQYDK2VwBCIEIFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAK"
PEM = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"
CUSTOM = "ACCT-99887766"
NEEDLES = [JWT, JWT.rsplit(".", 1)[1], BEARER_CRED, URL_PASSWORD, PEM_BODY, CUSTOM]
SECRET_TEXTS = [
    JWT,
    f"Bearer {BEARER_CRED}",
    f"https://svc:{URL_PASSWORD}@db.internal/x",
    PEM,
    CUSTOM,
]


PIN_TOOLS = {
    "kv_get": {"operation": "read", "resource": "{key}", "redact": ["pin"]},
    "kv_set": {"operation": "write", "resource": "{key}"},
}


def _files(guard: tg.Guard) -> list[Path]:
    db = guard.config.store_path
    return [p for p in (db, Path(f"{db}-wal"), guard.config.checkpoints_path) if p.exists()]


def _leaks(guard: tg.Guard) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _files(guard):
        data = path.read_bytes()
        hits = [n for n in NEEDLES if n.encode() in data]
        if hits:
            found[path.name] = hits
    return found


@pytest.fixture
def secret_guard(make_guard: Any, clock: Clock) -> tg.Guard:
    return make_guard(
        clock=clock,
        redact_patterns=[r"ACCT-\d{8}"],
        tools={
            "kv_get": {"operation": "read", "resource": "{key}"},
            "kv_set": {"operation": "write", "resource": "{key}"},
            "fetch": {"operation": "read", "resource": "{url}", "kind": "url"},
        },
        intents={
            "process-job": {
                "identity": "agent-runner",
                "tools": ["kv_get", "kv_set", "fetch"],
                "allow": {"read": ["agents:jobs:{job_id}:*"], "write": ["agents:jobs:{job_id}:*"]},
            }
        },
    )


def test_secrets_in_resources_reasons_and_errors_never_reach_the_database(
    secret_guard: tg.Guard,
) -> None:
    guard = secret_guard
    with guard.task("process-job", job_id="42"):
        for text in SECRET_TEXTS:
            if "\n" in text:  # a PEM key is not a resource: denied, its quote redacted
                with pytest.raises(tg.PolicyDenied, match="REDACTED"):
                    guard.authorize("kv_get", {"key": f"agents:jobs:42:{text}"})
                permit = guard.authorize("kv_get", {"key": "agents:jobs:42:pem"})
            else:  # allowed: the glob matches, the secret is in the resources column
                permit = guard.authorize("kv_get", {"key": f"agents:jobs:42:{text}"})
                assert permit.call.resources == (f"agents:jobs:42:{text}",)  # decided raw
            # the tool fails with the secret in its message
            guard.finish(permit, error=RuntimeError(f"upstream said {text}"))
            # denied: the secret is quoted in the reason (outside the task's keys)
            with pytest.raises(tg.PolicyDenied) as info:
                guard.authorize("kv_get", {"key": f"agents:jobs:43:{text}"})
            assert text not in str(info.value)  # nor echoed back to the model
            # malformed: a control character next to the secret
            with pytest.raises(tg.PolicyDenied):
                guard.authorize("kv_set", {"key": f"agents:jobs:42:\x85{text}"})
    guard.store.flush()
    assert _leaks(guard) == {}
    resources = [e.resources for e in guard.audit.events() if e.kind == "request"]
    assert sum("[REDACTED]" in r[0] for r in resources) == len(SECRET_TEXTS) - 1
    assert guard.audit.verify().ok


def test_the_credential_carries_the_raw_resource_only_the_trail_is_redacted(
    secret_guard: tg.Guard,
) -> None:
    with secret_guard.task("process-job", job_id="42"):
        permit = secret_guard.authorize("kv_get", {"key": f"agents:jobs:42:{CUSTOM}"})
        with permit as credential:
            assert credential.resources == (f"agents:jobs:42:{CUSTOM}",)
        secret_guard.finish(permit)
    request = secret_guard.audit.events(kind="request")[-1]
    assert list(request.resources) == ["agents:jobs:42:[REDACTED]"]


def test_a_provider_failure_quoting_a_secret_is_redacted(make_guard: Any) -> None:
    class Leaky:
        def mint(self, **kwargs: Any) -> Any:
            raise RuntimeError(f"broker rejected subject token {JWT} for {CUSTOM}")

    guard = make_guard(redact_patterns=[r"ACCT-\d{8}"], providers={"kv_get": Leaky()})
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied) as info:
        guard.authorize("kv_get", {"key": "agents:jobs:42:x"})
    assert JWT not in str(info.value) and CUSTOM not in str(info.value)
    guard.store.flush()
    assert _leaks(guard) == {}


# -- the keyed digest ------------------------------------------------------------------------


def test_a_redacted_pin_cannot_be_brute_forced_from_the_trail(make_guard: Any) -> None:
    """An unkeyed SHA-256 of ``{"key": ..., "pin": "4821"}`` gives the PIN away in 10,000
    guesses; the keyed digest gives nothing without the key, and the key finds it."""
    guard = make_guard(tools=PIN_TOOLS)
    key_name = "agents:jobs:42:vault"
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", {"key": key_name, "pin": "4821"}))
    request = guard.audit.events(kind="request")[-1]
    stored = request.args_sha256 or ""
    assert json.loads(request.args or "")["pin"] == "[REDACTED]"
    assert stored.startswith(DIGEST_PREFIX)

    def unkeyed(pin: str) -> str:
        text = json.dumps({"key": key_name, "pin": pin}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    guesses = [f"{n:04d}" for n in range(10_000)]
    hexpart = stored.removeprefix(DIGEST_PREFIX)
    assert not [p for p in guesses if unkeyed(p) in (stored, hexpart)]
    key = load_args_key(guard.config.args_key_path, create=False)
    found = [p for p in guesses if args_digest({"key": key_name, "pin": p}, key) == stored]
    assert found == ["4821"]


def test_args_key_file_is_created_private_beside_the_signing_key(make_guard: Any) -> None:
    guard = make_guard()
    with guard.task("process-job", job_id="42"):
        pass
    path = guard.config.args_key_path
    assert path == guard.config.resolve_path(guard.config.issuer.key_file).parent / "args-hmac.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    db_bytes = guard.config.store_path.read_bytes()
    assert path.read_text().strip().encode() not in db_bytes
    # a second guard on the same files uses the same key: digests stay comparable
    again = make_guard()
    assert load_args_key(again.config.args_key_path) == load_args_key(path)


def test_args_key_env_wins_and_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(ARGS_KEY_ENV, key.hex())
    assert load_args_key(tmp_path / "none.key", create=False) == key
    assert not (tmp_path / "none.key").exists()
    monkeypatch.setenv(ARGS_KEY_ENV, "abc")
    with pytest.raises(ConfigError, match="64 hex characters"):
        load_args_key(tmp_path / "none.key")


def test_args_key_file_problems_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    with pytest.raises(ConfigError, match="does not exist"):
        load_args_key(path, create=False)
    path.write_text(os.urandom(32).hex())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_args_key(path)
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(ConfigError, match="64 hex characters"):
        load_args_key(path)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="cannot open"):
        load_args_key(link)


def test_args_key_config_field(tmp_path: Path) -> None:
    config = make_config(tmp_path, args_key_file=str(tmp_path / "elsewhere" / "a.key"))
    with tg.Guard(config) as guard:
        assert guard.config.args_key_path == tmp_path / "elsewhere" / "a.key"
        assert guard.config.args_key_path.exists()


def test_keyed_digest_costs_microseconds() -> None:
    """The hot path: HMAC adds about a microsecond to a call's redaction."""
    args = {"key": "agents:jobs:42:input", "value": "v" * 200, "n": 3}
    plain, keyed = Redactor(), Redactor(digest_key=os.urandom(32))
    for redactor in (plain, keyed):
        redactor(args)
    timings = [
        min(timeit.repeat(lambda r=r: r(args), number=500, repeat=5)) / 500 for r in (plain, keyed)
    ]
    assert timings[1] < timings[0] + 50e-6


def test_match_args_cli(make_guard: Any, tmp_path: Path, clock: Clock) -> None:
    guard = make_guard(tools=PIN_TOOLS)
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:42:v", "pin": "0007"}))
    seq = guard.audit.events(kind="request")[-1].seq
    config = tmp_path / "toolguard.json"
    config.write_text(json.dumps(make_config(tmp_path)))
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(
            main, ["audit", "match-args", *args, "--config", str(config)], obj=CliContext()
        )

    ok = run(str(seq), "--args", '{"key": "agents:jobs:42:v", "pin": "0007"}')
    assert ok.exit_code == 0 and "match" in ok.output
    wrong = run(str(seq), "--args", '{"key": "agents:jobs:42:v", "pin": "0008"}')
    assert wrong.exit_code == 1 and "differ" in wrong.output
    assert run("9999", "--args", "{}").exit_code == 2
    assert run(str(seq), "--args", "[1]").exit_code == 2
    as_json = run(str(seq), "--args", '{"key": "agents:jobs:42:v", "pin": "0007"}', "--json")
    assert json.loads(as_json.output) == {"match": True, "seq": seq}
    assert hmac.compare_digest("a", "a")


def test_match_args_takes_the_key_from_the_environment_alone(
    make_guard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(ARGS_KEY_ENV, key.hex())
    guard = make_guard(tools=PIN_TOOLS)
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", {"key": "agents:jobs:42:v", "pin": "0007"}))
    seq = guard.audit.events(kind="request")[-1].seq
    db = str(guard.config.store_path)
    args = '{"key": "agents:jobs:42:v", "pin": "0007"}'
    done = CliRunner().invoke(
        main, ["audit", "match-args", str(seq), "--args", args, "--db", db], obj=CliContext()
    )
    assert done.exit_code == 0 and "match" in done.output, done.output
    monkeypatch.delenv(ARGS_KEY_ENV)
    done = CliRunner().invoke(
        main, ["audit", "match-args", str(seq), "--args", args, "--db", db], obj=CliContext()
    )
    assert done.exit_code == 2 and "TOOLGUARD_ARGS_KEY" in done.output


@pytest.mark.parametrize("size", [0, 1, 32, 64, 65, 200])
def test_the_fast_hmac_is_the_standard_hmac(size: int) -> None:
    key = os.urandom(size)
    args = {"key": "agents:jobs:42:x", "pin": "1234", "n": [1, 2.5, None], "é": "\u202e"}
    _, digest = Redactor(digest_key=key)(args)
    assert digest == args_digest(args, key)
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert digest == DIGEST_PREFIX + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_args_key_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot create the arguments key file"):
            load_args_key(locked / "sub" / "args-hmac.key")
    finally:
        locked.chmod(0o700)


def test_an_args_key_path_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"the arguments key file .*args-hmac\.key"):
        load_args_key(blocker / "args-hmac.key")
