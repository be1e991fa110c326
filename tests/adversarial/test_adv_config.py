"""Adversarial configs: numbers out of range, a disabled identity, YAML alias bombs, huge and
deeply nested files, and the inline signing key.

The promises: a config value toolguard cannot honour is a ConfigError naming the field; a kill
switch in the config (``identities.X.disabled: true``) stops the identity's tasks, audited; a
config file cannot make loading run for minutes or grow to gigabytes; the signing key given
inline never shows in a repr, a dump or an error.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import BASE_CONFIG, Clock, make_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard.cli import CliContext, main
from toolguard.config import GuardConfig, load_config
from toolguard.durations import parse_duration

# -- numbers ------------------------------------------------------------------------------------

BAD_NUMBERS: list[tuple[str, Any]] = [
    ("issuer.ttl", float("nan")),
    ("issuer.ttl", float("inf")),
    ("issuer.ttl", "1" + "0" * 400),
    ("issuer.ttl", 1e400),
    ("issuer.max_ttl", -5),
    ("issuer.leeway", float("nan")),
    ("busy_timeout", -1),
    ("busy_timeout", 0),
    ("busy_timeout", 1e300),
    ("busy_timeout", float("nan")),
    ("max_arg_chars", 10**30),
    ("max_arg_chars", float("inf")),
    ("identities.agent-runner.limits.writes_per_minute", float("inf")),
    ("identities.agent-runner.limits.writes_per_minute", 10**30),
    ("identities.agent-runner.limits.requests_per_day", -1),
    ("identities.agent-runner.limits.cost_per_day", float("nan")),
    ("identities.agent-runner.limits.cost_per_day", 1e30),
    ("identities.agent-runner.limits.on_anomaly.revoke_when_rate_exceeds", "nanx"),
    ("identities.agent-runner.limits.on_anomaly.revoke_when_rate_exceeds", float("inf")),
    ("intents.process-job.ttl", float("nan")),
    ("intents.process-job.ttl", "1e999"),
    ("intents.process-job.ttl", True),
    ("intents.process-job.ttl", "99999999d"),
    ("intents.process-job.budget.max_cost", 1e30),
    ("intents.process-job.budget.max_cost", float("nan")),
    ("intents.process-job.budget.max_cost", float("-inf")),
    ("intents.process-job.budget.max_calls", 2**63),
    ("intents.process-job.budget.per_tool.kv_set", -1),
    ("intents.process-job.budget.per_tool.kv_set", 10**20),
    ("intents.process-job.budget.per_operation.write", float("inf")),
    ("tools.kv_get.cost", float("inf")),
    ("tools.kv_get.cost", -0.01),
    # YAML's true/false are not 1/0 in any number field (pydantic's lax mode would take them)
    *(
        (path, flag)
        for flag in (True, False)
        for path in (
            "store_pool_size",
            "max_arg_chars",
            "issuer.leeway",
            "identities.agent-runner.limits.writes_per_minute",
            "identities.agent-runner.limits.requests_per_day",
            "identities.agent-runner.limits.cost_per_day",
            "identities.agent-runner.limits.on_anomaly.revoke_when_rate_exceeds",
            "intents.process-job.budget.max_calls",
            "intents.process-job.budget.max_cost",
            "intents.process-job.budget.per_tool.kv_set",
            "intents.process-job.budget.per_operation.write",
            "tools.kv_get.cost",
            "busy_timeout",
        )
    ),
]


def _with(path: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(BASE_CONFIG)
    config["identities"]["agent-runner"]["limits"]["on_anomaly"] = {"revoke_when_rate_exceeds": 5}
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize(("path", "value"), BAD_NUMBERS, ids=lambda v: str(v)[:20])
def test_a_number_out_of_range_is_a_config_error_naming_its_field(path: str, value: Any) -> None:
    with pytest.raises(tg.ConfigError) as info:
        load_config(_with(path, value))
    assert [loc for loc, _ in info.value.problems] == [path]


@pytest.mark.parametrize(("path", "value"), BAD_NUMBERS[:12], ids=lambda v: str(v)[:20])
def test_the_same_numbers_in_a_yaml_file_are_config_errors_too(
    tmp_path: Path, path: str, value: Any
) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_text(yaml.safe_dump(_with(path, value)))
    with pytest.raises(tg.ConfigError, match=path.replace(".", r"\.")):
        tg.Guard.from_config(file)


def test_yaml_spellings_of_nan_and_inf_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    for spelling in (".nan", ".inf", "-.inf", ".NaN", "1e999"):
        file.write_text(
            yaml.safe_dump(copy.deepcopy(BASE_CONFIG)).replace(
                "max_cost: 1.0", f"max_cost: {spelling}"
            )
        )
        with pytest.raises(tg.ConfigError, match=r"intents\.process-job\.budget\.max_cost"):
            load_config(file)


def test_yaml_true_in_a_count_is_refused_with_its_line(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_text(
        yaml.safe_dump(copy.deepcopy(BASE_CONFIG)).replace("max_calls: 20", "max_calls: true")
    )
    assert "max_calls: true" in file.read_text()
    with pytest.raises(tg.ConfigError, match=r"max_calls.*expected a number, got true"):
        load_config(file)


def test_the_largest_values_still_load() -> None:
    config = load_config(
        _with("intents.process-job.budget.max_cost", 1e9)
        | {"busy_timeout": "36500d", "max_arg_chars": 10_000_000}
    )
    assert config.intents["process-job"].budget.max_cost == 1e9


@settings(max_examples=100, deadline=None)
@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.text(max_size=30),
        st.booleans(),
    )
)
def test_any_duration_is_a_positive_finite_number_or_a_value_error(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        assert "duration" in str(exc) and len(str(exc)) < 200
    else:
        assert 0 < seconds <= 100 * 365.25 * 86400


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(
        [
            "busy_timeout",
            "issuer.ttl",
            "intents.process-job.budget.max_cost",
            "intents.process-job.budget.max_calls",
            "identities.agent-runner.limits.cost_per_day",
            "identities.agent-runner.limits.requests_per_minute",
            "tools.send_email.cost",
        ]
    ),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**30), max_value=10**30),
    ),
)
def test_any_number_in_a_config_field_loads_in_range_or_names_the_field(
    field: str, value: Any
) -> None:
    try:
        config = load_config(_with(field, value))
    except tg.ConfigError as exc:
        assert field in [loc for loc, _ in exc.problems]
        return
    node: Any = config
    for key in field.split("."):
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    assert 0 <= float(node) <= 1e9 or field in ("busy_timeout", "issuer.ttl")


# -- identities.X.disabled: true ------------------------------------------------------------


def _disabled_config(tmp_path: Path, identity: str = "agent-runner") -> dict[str, Any]:
    config = make_config(tmp_path)
    config["identities"][identity]["disabled"] = True
    return config


def test_a_config_disabled_identity_starts_no_task_and_the_refusal_is_audited(
    tmp_path: Path, clock: Clock
) -> None:
    with tg.Guard(_disabled_config(tmp_path), clock=clock) as guard:
        task = guard.task("process-job", job_id="42")
        with pytest.raises(tg.PolicyDenied, match=r"identity 'agent-runner' is disabled") as info:
            task.start()
        assert "identities.agent-runner.disabled" in info.value.reason
        assert info.value.rule == "identities.agent-runner.disabled"
        assert guard.store.task_row(task.task_id) is None
        denied = guard.audit.events(kind="denied")
        assert [(e.identity, e.rule) for e in denied] == [
            ("agent-runner", "identities.agent-runner.disabled")
        ]
        with (
            pytest.raises(tg.PolicyDenied, match="disabled"),
            guard.task("process-job", job_id="42"),
        ):
            pytest.fail("a task of a disabled identity ran")
        # another identity is not affected
        with guard.task("summarise-job", job_id="42") as other:
            pass
        assert other.status == "ok"


def test_a_cli_disabled_identity_refusal_is_audited_too(guard: tg.Guard) -> None:
    guard.revoke(identity="agent-runner", reason="incident 17", disable=True)
    with pytest.raises(tg.PolicyDenied, match=r"incident 17.*toolguard enable agent-runner"):
        guard.task("process-job", job_id="42").start()
    assert guard.audit.events(kind="denied")[-1].rule == "identities.agent-runner.disabled"


def test_a_config_disabled_identity_cannot_be_delegated_to(tmp_path: Path, clock: Clock) -> None:
    config = make_config(tmp_path)
    config["identities"]["agent-runner"]["allow"]["read"].append("agents:jobs:*")
    config["identities"]["summariser"]["disabled"] = True
    with tg.Guard(config, clock=clock) as guard, guard.task("process-job", job_id="42") as task:
        with pytest.raises(tg.PolicyDenied, match=r"identity 'summariser' is disabled"):
            task.delegate("summarise-job", job_id="42")
        assert guard.audit.events(task_id=task.task_id, kind="denied")[-1].rule == (
            "intents.summarise-job.delegation"
        )


def test_a_task_of_an_identity_disabled_later_in_the_config_cannot_be_resumed(
    tmp_path: Path, clock: Clock
) -> None:
    with tg.Guard(make_config(tmp_path), clock=clock) as first:
        task = first.task("process-job", job_id="42").start()
        with tg.Guard(_disabled_config(tmp_path), clock=clock) as second:
            with pytest.raises(tg.PolicyDenied, match=r"identity 'agent-runner' is disabled"):
                second.resume(task.task_id)
            assert second.audit.events(kind="denied")[-1].rule == "task.resume"
        task.end()


def test_check_shows_a_config_disabled_identity(tmp_path: Path, clock: Clock) -> None:
    file = tmp_path / "toolguard.json"
    file.write_text(json.dumps(_disabled_config(tmp_path)))
    context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
    result = CliRunner().invoke(main, ["check", str(file)], obj=context)
    assert result.exit_code == 0
    assert "identity agent-runner is disabled by the config" in result.stdout
    result = CliRunner().invoke(main, ["check", "--json", str(file)], obj=context)
    assert json.loads(result.stdout)["disabled_identities"] == ["agent-runner"]


# -- YAML alias bombs, huge and deep files --------------------------------------------------

BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
        for prev, name in zip("abcdefg", "bcdefgh")
    )
    + "identities:\n  x:\n    owner: *h\n"
)


def test_the_bomb_is_small_and_would_expand_to_nine_to_the_eighth() -> None:
    assert len(BOMB) < 1024
    assert "h: &h [*g" in BOMB


def test_a_yaml_alias_bomb_is_refused_fast_by_guard_from_config(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_text(BOMB)
    started = time.perf_counter()
    with pytest.raises(tg.ConfigError, match=r"alias") as info:
        tg.Guard.from_config(file)
    # expanded, the bomb would take minutes and gigabytes; 10 s leaves room for a loaded machine
    assert time.perf_counter() - started < 10.0
    assert info.value.source == str(file) and str(file) in str(info.value)


@pytest.mark.slow
def test_a_yaml_alias_bomb_is_refused_fast_by_toolguard_check(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_text(BOMB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGUARD_")}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "toolguard", "check", str(file)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 1, proc.stderr
    assert "alias" in proc.stdout and str(file) in proc.stdout
    assert "Traceback" not in proc.stderr
    assert elapsed < 30.0  # a hang guard (start-up included; the check itself is milliseconds)


def test_aliases_used_sensibly_still_work(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_text(
        "identities:\n"
        "  a: {allow: {read: &jobs ['agents:jobs:*', 'agents:context:*']}}\n"
        "  b: {allow: {read: *jobs, write: *jobs}}\n"
    )
    config = load_config(file)
    assert config.identities["b"].allow["write"] == ["agents:jobs:*", "agents:context:*"]


def test_a_config_larger_than_a_mebibyte_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(tg.ConfigError, match="larger than 1 MiB"):
        load_config(file)


def test_a_deeply_nested_config_is_refused(tmp_path: Path) -> None:
    deep: Any = "x"
    for _ in range(40):
        deep = {"k": deep}
    with pytest.raises(tg.ConfigError, match="deeper than"):
        load_config({"identities": {"x": {"owner": deep}}})
    file = tmp_path / "deep.json"
    file.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(tg.ConfigError, match=r"deep\.json"):
        load_config(file)


def test_a_mapping_with_shared_references_is_bounded_too() -> None:
    node: Any = ["lol"] * 9
    for _ in range(7):
        node = [node] * 9
    started = time.perf_counter()
    with pytest.raises(tg.ConfigError, match="alias"):
        load_config({"identities": {"x": {"owner": node}}})
    # expanded, the bomb would take minutes and gigabytes; 10 s leaves room for a loaded machine
    assert time.perf_counter() - started < 10.0


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "toolguard.yaml"
    file.write_bytes(b"store: \xff\xfe\n")
    with pytest.raises(tg.ConfigError, match="not valid UTF-8"):
        load_config(file)


# -- the inline signing key -----------------------------------------------------------------


@pytest.fixture
def pem() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def _secret_parts(pem: str) -> list[str]:
    body = "".join(pem.strip().splitlines()[1:-1])
    return [body, body[:24], body[-24:]]


def test_the_inline_signing_key_never_shows_in_a_repr_a_dump_or_an_error(
    tmp_path: Path, clock: Clock, pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLGUARD_SIGNING_KEY", pem)
    config = make_config(tmp_path)
    config["issuer"]["key"] = "${TOOLGUARD_SIGNING_KEY}"
    file = tmp_path / "toolguard.yaml"
    file.write_text(yaml.safe_dump(config))
    with tg.Guard.from_config(file, clock=clock) as guard:
        loaded = guard.config
        assert loaded.issuer.key is not None
        assert loaded.issuer.key.get_secret_value() == pem  # the code that needs it reads it
        shown = [
            repr(loaded),
            str(loaded),
            repr(loaded.issuer),
            str(loaded.issuer),
            f"{loaded.issuer}",
            repr(guard),
            repr(guard.__dict__),
            json.dumps(loaded.model_dump(mode="json")),
            loaded.model_dump_json(),
            str(loaded.model_dump()),
            repr(guard.keys),
            repr(guard.issuer),
        ]
        # it still signs: the guard works with the inline key
        with guard.task("process-job", job_id="42"):
            permit = guard.authorize("kv_get", {"key": "agents:jobs:42:x"})
            assert guard.verifier(audience="kv-service").verify(permit.credential.token)
            guard.finish(permit)
    for text in shown:
        for part in _secret_parts(pem):
            assert part not in text
    assert "**********" in repr(loaded.issuer)


def test_a_bad_inline_key_error_does_not_echo_it(pem: str) -> None:
    broken = pem.replace("\n", "\n ", 2)[:-40] + "\n-----END PRIVATE KEY-----\n"
    config = copy.deepcopy(BASE_CONFIG) | {"issuer": {"key": broken}}
    with pytest.raises(tg.ToolGuardError) as info:
        tg.Guard(config)
    for part in _secret_parts(broken)[1:]:
        assert part not in str(info.value)
        assert part not in repr(info.value)
    with pytest.raises(tg.ConfigError) as info2:  # a wrong type: named, not echoed
        load_config(copy.deepcopy(BASE_CONFIG) | {"issuer": {"key": ["x" + pem]}})
    assert "issuer.key" in str(info2.value) and _secret_parts(pem)[1] not in str(info2.value)


def test_the_json_schema_marks_the_key_as_a_secret() -> None:
    schema = GuardConfig.json_schema()
    issuer = schema["$defs"]["IssuerConfig"]["properties"]["key"]
    assert "password" in json.dumps(issuer)


def test_make_guard_with_key_still_works(make_guard: Callable[..., tg.Guard], pem: str) -> None:
    guard = make_guard(issuer={"key": pem, "audience": "kv-service"})
    with guard.task("process-job", job_id="42"):
        permit = guard.authorize("kv_get", {"key": "agents:jobs:42:x"})
        guard.finish(permit)
    assert permit.credential.token
