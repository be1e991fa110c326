"""Tests for toolguard.config: loading YAML/TOML/JSON, ``${ENV}``, and every error kind with
its location."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from conftest import BASE_CONFIG

import toolguard as tg
from toolguard.config import GuardConfig, load_config, parse_duration

Mutation = Callable[[dict[str, Any]], None]


def _config(mutate: Mutation | None = None) -> dict[str, Any]:
    data = copy.deepcopy(BASE_CONFIG)
    if mutate is not None:
        mutate(data)
    return data


def _problems(mutate: Mutation) -> list[tuple[str, str]]:
    with pytest.raises(tg.ConfigError) as info:
        load_config(_config(mutate))
    return info.value.problems


def _intent(data: dict[str, Any]) -> dict[str, Any]:
    intent: dict[str, Any] = data["intents"]["process-job"]
    return intent


_TOML = """
store = "audit.db"

[issuer]
name = "toolguard-test"
audience = "kv-service"
ttl = "5m"

[identities.agent-runner]
owner = "data-platform"
purpose = "runs job workers"
allow = { read = ["agents:context:*", "agents:jobs:*"], write = ["agents:jobs:*"] }
limits = { writes_per_minute = 10 }

[tools]
kv_get = { operation = "read", resource = "{key}" }
kv_set = { operation = "write", resource = "{key}" }

[intents.process-job]
identity = "agent-runner"
purpose = "Process job {job_id}"
tools = ["kv_get", "kv_set"]
budget = { max_calls = 20 }
ttl = "15m"

[intents.process-job.allow]
read = ["agents:context:*", "agents:jobs:{job_id}:*"]
write = ["agents:jobs:{job_id}:*"]
"""


def _small() -> dict[str, Any]:
    """The config of ``_TOML`` as a mapping."""
    return {
        "store": "audit.db",
        "issuer": {"name": "toolguard-test", "audience": "kv-service", "ttl": "5m"},
        "identities": {
            "agent-runner": {
                "owner": "data-platform",
                "purpose": "runs job workers",
                "allow": {
                    "read": ["agents:context:*", "agents:jobs:*"],
                    "write": ["agents:jobs:*"],
                },
                "limits": {"writes_per_minute": 10},
            }
        },
        "tools": {
            "kv_get": {"operation": "read", "resource": "{key}"},
            "kv_set": {"operation": "write", "resource": "{key}"},
        },
        "intents": {
            "process-job": {
                "identity": "agent-runner",
                "purpose": "Process job {job_id}",
                "tools": ["kv_get", "kv_set"],
                "allow": {
                    "read": ["agents:context:*", "agents:jobs:{job_id}:*"],
                    "write": ["agents:jobs:{job_id}:*"],
                },
                "budget": {"max_calls": 20},
                "ttl": "15m",
            }
        },
    }


# -- loading files ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["yaml", "yml", "json", "toml"])
def test_load_config_reads_each_file_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"toolguard.{suffix}"
    if suffix == "toml":
        path.write_text(_TOML, encoding="utf-8")
    elif suffix == "json":
        path.write_text(json.dumps(_small()), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(_small()), encoding="utf-8")

    config = load_config(path)

    assert config.issuer.ttl == 300.0
    assert config.intents["process-job"].ttl == 900.0
    assert config.identities["agent-runner"].limits.writes_per_minute == 10
    assert config.tools["kv_set"].operation == "write"
    assert config.intents["process-job"].allow["write"] == ["agents:jobs:{job_id}:*"]
    # Relative paths are resolved against the config file's directory, not the cwd.
    assert config.store_path == tmp_path / "audit.db"
    assert config.checkpoints_path == tmp_path / "audit.db.checkpoints"


def test_load_config_same_result_from_every_format(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_small()), encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps(_small()), encoding="utf-8")
    (tmp_path / "a.toml").write_text(_TOML, encoding="utf-8")

    loaded = [load_config(tmp_path / name) for name in ("a.yaml", "a.json", "a.toml")]

    assert loaded[0] == loaded[1] == loaded[2]


def test_load_config_from_mapping_and_model() -> None:
    config = load_config(_config())
    assert isinstance(config, GuardConfig)
    assert load_config(config) is config


def test_guard_from_config_file(tmp_path: Path) -> None:
    data = _small()
    data["issuer"]["key_file"] = "keys/signing.pem"
    path = tmp_path / "toolguard.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    with tg.Guard.from_config(path) as guard, guard.task("process-job", job_id="42") as task:
        pass

    assert (tmp_path / "keys" / "signing.pem").is_file()
    assert (tmp_path / "audit.db").is_file()
    assert task.status == "ok"


def test_load_config_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")

    config = load_config(path)

    assert config.intents == {}
    assert config.issuer.ttl == 300.0
    assert config.durability == "normal"


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(tg.ConfigError, match=r"nope\.yaml does not exist") as info:
        load_config(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        pytest.param("bad.yaml", "identities: [unclosed", "YAML: expected ','", id="yaml"),
        pytest.param("bad.json", "{", "JSON: Expecting property name", id="json"),
        pytest.param("bad.toml", "store = ", "TOML: Invalid value", id="toml"),
    ],
)
def test_load_config_unparseable_file(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(tg.ConfigError, match=rf"not valid {kind}") as info:
        load_config(path)
    assert str(info.value).startswith(f"1 problem(s) in {path}:")


def test_load_config_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(tg.ConfigError, match="must be a mapping") as info:
        load_config(path)
    assert info.value.problems == [("", "the config must be a mapping of keys to values")]


def test_store_path_defaults_to_env_then_local(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config({}).store_path == Path(".toolguard/audit.db")
    monkeypatch.setenv("TOOLGUARD_DB", "/var/lib/tg/audit.db")
    assert load_config({}).store_path == Path("/var/lib/tg/audit.db")


# -- ${ENV} ----------------------------------------------------------------------------------


def test_env_variables_are_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLGUARD_TEST_AUD", "billing-api")
    monkeypatch.setenv("TOOLGUARD_TEST_NS", "tenant-7")

    def mutate(c: dict[str, Any]) -> None:
        c["issuer"]["audience"] = "${TOOLGUARD_TEST_AUD}"
        _intent(c)["allow"]["read"] = ["${TOOLGUARD_TEST_NS}:jobs:{job_id}:*"]

    config = load_config(_config(mutate))

    assert config.issuer.audience == "billing-api"
    assert config.intents["process-job"].allow["read"] == ["tenant-7:jobs:{job_id}:*"]


def test_env_variable_missing_names_variable_and_location() -> None:
    problems = _problems(lambda c: c["issuer"].update(key_file="${TOOLGUARD_NOT_SET}/key.pem"))
    assert problems == [
        ("issuer.key_file", "environment variable TOOLGUARD_NOT_SET is not set; export it")
    ]


def test_env_variable_missing_in_list_names_index() -> None:
    problems = _problems(lambda c: _intent(c)["allow"]["write"].append("${TOOLGUARD_NOT_SET}"))
    assert (
        "intents.process-job.allow.write[1]",
        "environment variable TOOLGUARD_NOT_SET is not set; export it",
    ) in problems


def test_env_variable_missing_reports_only_that_problem() -> None:
    problems = _problems(lambda c: _intent(c)["allow"]["write"].append("${TOOLGUARD_NOT_SET}"))
    assert problems == [
        (
            "intents.process-job.allow.write[1]",
            "environment variable TOOLGUARD_NOT_SET is not set; export it",
        )
    ]


def test_env_syntax_without_braces_is_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLGUARD_TEST_AUD", "billing-api")
    config = load_config(_config(lambda c: c["issuer"].update(audience="$TOOLGUARD_TEST_AUD")))
    assert config.issuer.audience == "$TOOLGUARD_TEST_AUD"


# -- errors with their location ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "location", "near"),
    [
        pytest.param(lambda c: c.update(stor="x.db"), "stor", "store", id="top-level"),
        pytest.param(
            lambda c: c["issuer"].update(audiance="x"), "issuer.audiance", "audience", id="issuer"
        ),
        pytest.param(
            lambda c: c["identities"]["agent-runner"]["limits"].update(writes_per_hour=3),
            "identities.agent-runner.limits.writes_per_hour",
            "writes_per_minute",
            id="identity-limits",
        ),
        pytest.param(
            lambda c: c["tools"]["kv_get"].update(resource_kind="path"),
            "tools.kv_get.resource_kind",
            "resource",
            id="tool-rule",
        ),
        pytest.param(
            lambda c: _intent(c)["budget"].update(max_call=3),
            "intents.process-job.budget.max_call",
            "max_calls",
            id="intent-budget",
        ),
        pytest.param(
            lambda c: _intent(c).update(tool=["kv_get"]),
            "intents.process-job.tool",
            "tools",
            id="intent",
        ),
    ],
)
def test_unknown_key_is_error_with_location(mutate: Mutation, location: str, near: str) -> None:
    assert _problems(mutate) == [
        (location, f"unknown key (did you mean {near!r}?); remove it or fix it")
    ]


def test_unknown_key_without_a_near_name() -> None:
    problems = _problems(lambda c: c.update(zzz=1))
    assert problems == [("zzz", "unknown key; remove it or check its spelling")]


@pytest.mark.parametrize(
    ("mutate", "location", "message"),
    [
        pytest.param(
            lambda c: _intent(c).update(ttl="5 minutes"),
            "intents.process-job.ttl",
            "expected a duration such as 30s, 5m or 24h, got '5 minutes'",
            id="words",
        ),
        pytest.param(
            lambda c: _intent(c).update(ttl=-1),
            "intents.process-job.ttl",
            "a duration must be positive, got -1",
            id="negative",
        ),
        pytest.param(
            lambda c: c["issuer"].update(ttl="0s"),
            "issuer.ttl",
            "a duration must be positive, got '0s'",
            id="zero",
        ),
        pytest.param(
            lambda c: c["issuer"].update(ttl=True),
            "issuer.ttl",
            "expected a duration such as 30s, 5m or 24h, got True",
            id="bool",
        ),
        pytest.param(
            lambda c: c.update(busy_timeout="5 mins"),
            "busy_timeout",
            "expected a duration such as 30s, 5m or 24h, got '5 mins'",
            id="busy-timeout",
        ),
        pytest.param(
            lambda c: c["issuer"].update(max_ttl="1w"),
            "issuer.max_ttl",
            "expected a duration such as 30s, 5m or 24h, got '1w'",
            id="unknown-unit",
        ),
    ],
)
def test_bad_duration_is_error_with_location(mutate: Mutation, location: str, message: str) -> None:
    assert _problems(mutate) == [(location, message)]


def test_undefined_tool_in_intent_names_index() -> None:
    problems = _problems(lambda c: _intent(c)["tools"].append("kv_scan"))
    assert problems == [
        (
            "intents.process-job.tools[2]",
            "tool 'kv_scan' has no rule under tools:; add one with an operation and a resource",
        )
    ]


def test_undefined_identity_in_intent() -> None:
    problems = _problems(lambda c: _intent(c).update(identity="ghost"))
    assert problems == [
        (
            "intents.process-job.identity",
            "identity 'ghost' is not defined; add it under identities:",
        )
    ]


def test_budget_per_tool_outside_intent_tools() -> None:
    problems = _problems(lambda c: _intent(c)["budget"]["per_tool"].update(kv_delete=1))
    assert problems == [
        (
            "intents.process-job.budget.per_tool.kv_delete",
            "tool 'kv_delete' is not among the intent's tools",
        )
    ]


def test_reference_problems_are_all_reported_together() -> None:
    def mutate(c: dict[str, Any]) -> None:
        _intent(c)["tools"].append("kv_scan")
        c["intents"]["summarise-job"]["identity"] = "ghost"

    problems = _problems(mutate)

    assert [loc for loc, _ in problems] == [
        "intents.process-job.tools[2]",
        "intents.summarise-job.identity",
    ]


def test_several_field_problems_are_reported_together() -> None:
    def mutate(c: dict[str, Any]) -> None:
        _intent(c)["ttl"] = "soon"
        c["bogus"] = 1
        c["tools"]["kv_get"]["kind"] = "weird"

    with pytest.raises(tg.ConfigError, match=r"^3 problem\(s\):") as info:
        load_config(_config(mutate))

    assert sorted(loc for loc, _ in info.value.problems) == [
        "bogus",
        "intents.process-job.ttl",
        "tools.kv_get.kind",
    ]


def test_operation_must_be_lowercase_word() -> None:
    problems = _problems(lambda c: c["tools"]["kv_get"].update(operation="READ"))
    assert problems == [
        (
            "tools.kv_get.operation",
            "operation 'READ' must be a lowercase word such as read, write, delete",
        )
    ]


def test_allow_operation_must_be_lowercase_word() -> None:
    problems = _problems(lambda c: _intent(c)["allow"].update(Write=["agents:*"]))
    assert len(problems) == 1
    assert problems[0][0].startswith("intents.process-job.allow")
    assert "operation 'Write' must be a lowercase word" in problems[0][1]


@pytest.mark.parametrize(
    "pattern",
    [pytest.param("", id="empty"), pytest.param("agents:\njobs", id="newline")],
)
def test_empty_or_control_pattern_is_error(pattern: str) -> None:
    problems = _problems(lambda c: _intent(c)["allow"]["write"].append(pattern))
    assert len(problems) == 1
    assert problems[0][0].startswith("intents.process-job.allow")
    assert "is empty or has control characters" in problems[0][1]


def test_bad_pattern_location_names_operation_and_index() -> None:
    problems = _problems(lambda c: _intent(c)["allow"]["write"].append(""))
    assert problems == [
        ("intents.process-job.allow.write[1]", "pattern '' is empty or has control characters")
    ]


def test_choice_error_names_location() -> None:
    problems = _problems(lambda c: c["tools"]["kv_get"].update(kind="glob"))
    assert problems == [("tools.kv_get.kind", "Input should be 'plain', 'path' or 'url'")]


def test_config_error_message_lists_problems_and_source(tmp_path: Path) -> None:
    data = _small()
    data["intents"]["process-job"]["tools"].append("kv_scan")
    path = tmp_path / "toolguard.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    with pytest.raises(tg.ConfigError) as info:
        load_config(path)

    message = str(info.value)
    assert message.splitlines()[0] == f"1 problem(s) in {path}:"
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "kv_scan" in text)
    assert (
        f"  {path}:{line}:7: intents.process-job.tools[2]: tool 'kv_scan' has no rule under "
        "tools:" in message
    )
    assert info.value.source == str(path)


# -- models ----------------------------------------------------------------------------------


def test_config_models_are_frozen() -> None:
    config = load_config(_config())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.issuer.ttl = 10  # type: ignore[misc]


def test_json_schema_hides_base_dir_and_forbids_extra() -> None:
    schema = GuardConfig.json_schema()
    assert "base_dir" not in schema["properties"]
    assert schema["additionalProperties"] is False
    assert {"issuer", "identities", "tools", "intents", "store"} <= set(schema["properties"])


def test_max_ttl_defaults_to_ttl() -> None:
    config = load_config(_config(lambda c: c["issuer"].update(ttl="2m")))
    assert config.issuer.effective_max_ttl == 120.0
    config = load_config(_config(lambda c: c["issuer"].update(ttl="2m", max_ttl="10m")))
    assert config.issuer.effective_max_ttl == 600.0


def test_tool_rule_resources_from_one_or_many_templates() -> None:
    def mutate(c: dict[str, Any]) -> None:
        c["tools"]["kv_copy"] = {"operation": "write", "resource": ["{src}", "{dst}"]}

    config = load_config(_config(mutate))
    assert config.tools["kv_copy"].resources == ("{src}", "{dst}")
    assert config.tools["kv_get"].resources == ("{key}",)


# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("15m", 900.0, id="15m"),
        pytest.param("24h", 86400.0, id="hours"),
        pytest.param("7d", 604800.0, id="days"),
        pytest.param("250ms", 0.25, id="millis"),
        pytest.param("1.5m", 90.0, id="fraction"),
        pytest.param(" 10 s ", 10.0, id="spaces"),
        pytest.param("45", 45.0, id="bare-string"),
        pytest.param(12, 12.0, id="int"),
        pytest.param(0.5, 0.5, id="float"),
    ],
)
def test_parse_duration_accepts(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("5 minutes", id="words"),
        pytest.param("m5", id="unit-first"),
        pytest.param("-5s", id="negative-string"),
        pytest.param(0, id="zero"),
        pytest.param(-1.0, id="negative"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="none"),
        pytest.param([5], id="list"),
    ],
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        pytest.param(
            {"requests_per_minute": 10, "on_anomaly": {"revoke_when_rate_exceeds": "1x"}},
            "must be more than 1x",
            id="multiple-1x",
        ),
        pytest.param(
            {"requests_per_day": 10, "on_anomaly": {"revoke_when_rate_exceeds": "5x"}},
            "needs a positive per-minute limit",
            id="no-rate",
        ),
    ],
)
def test_on_anomaly_needs_a_rate_and_a_multiple_above_one(
    limits: dict[str, Any], message: str
) -> None:
    with pytest.raises(tg.ConfigError, match=message) as info:
        load_config(_config(lambda c: c["identities"]["agent-runner"].update(limits=limits)))
    assert info.value.problems[0][0] == "identities.agent-runner.limits"


@pytest.mark.parametrize(
    ("where", "value", "says"),
    [
        (("store_pool_size",), 0, "greater than or equal to 1"),
        (("store_pool_size",), 10**6, "less than or equal to 1000"),
        (("store_pool_size",), float("nan"), "finite"),
        (("intents", "process-job", "approval_ttl"), "0s", "must be positive"),
        (("intents", "process-job", "approval_ttl"), float("nan"), "finite"),
        (("intents", "process-job", "approval_ttl"), "10000000d", "at most 100 years"),
        (("intents", "process-job", "mode"), "shadow\u202e", "'enforce' or 'shadow'"),
        (("identities", "agent-runner", "mode"), "", "'enforce' or 'shadow'"),
    ],
)
def test_pool_size_approval_ttl_and_mode_refuse_bad_values(
    where: tuple[str, ...], value: object, says: str
) -> None:
    config = copy.deepcopy(BASE_CONFIG)
    node = config
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(tg.ConfigError) as caught:
        tg.load_config(config)
    assert says in str(caught.value) and ".".join(where) in str(caught.value)
