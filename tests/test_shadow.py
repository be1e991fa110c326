"""Shadow mode (``mode: shadow`` on an intent or an identity): a call the policy or a budget
refuses runs anyway and is recorded as ``would_deny``, budgets spend, and what must fail closed
stays denied."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock, raw_sql, store_arg

import toolguard as tg
from toolguard.configcheck import check_config

Factory = Callable[..., tg.Guard]


def _intents(**modes: str) -> dict[str, Any]:
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    for name, mode in modes.items():
        intents[name]["mode"] = mode
    return intents


def _run(guard: tg.Guard, tool: str, args: dict[str, Any]) -> tg.Credential:
    """Authorize one call, 'run' it, record its outcome; the credential it got."""
    permit = guard.authorize(tool, args)
    with permit as credential:
        pass
    guard.finish(permit)
    return credential


def _requests(guard: tg.Guard) -> list[dict[str, Any]]:
    names = ("kind", "tool", "decision", "reason", "rule", "jti", "resources")
    rows = raw_sql(
        guard,
        f"SELECT {', '.join(names)} FROM events WHERE kind IN ('request', 'denied') ORDER BY seq",
    )
    return [dict(zip(names, row)) for row in rows]


def test_shadow_intent_runs_a_policy_denial_and_records_would_deny(
    make_guard: Factory, clock: Clock, tmp_path: Path
) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    with guard.task("process-job", job_id="42"):
        allowed = _run(guard, "kv_get", {"key": "agents:jobs:42:input"})
        credential = _run(guard, "kv_set", {"key": "agents:jobs:7:result", "value": "x"})
        claims = guard.verifier().verify(credential.token)
        assert "shadow" not in guard.verifier().verify(allowed.token)
    rows = _requests(guard)
    assert [(r["kind"], r["decision"]) for r in rows] == [
        ("request", "allow"),
        ("request", "would_deny"),
    ]
    would = rows[1]
    assert would["rule"] == "intents.process-job.allow.write"
    assert "outside what this task may do" in would["reason"]
    assert would["jti"] == credential.jti
    # the credential names the call's own resource, not the intent's patterns
    assert claims["res"] == ["agents:jobs:7:result"]
    assert claims["shadow"] == "would_deny"  # a downstream service can tell and refuse
    assert credential.resources == ("agents:jobs:7:result",)


def test_enforce_is_the_default_and_still_denies(make_guard: Factory, clock: Clock) -> None:
    guard = make_guard(clock=clock)
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied):
        guard.authorize("kv_set", {"key": "agents:jobs:7:result", "value": "x"})


def test_intent_enforce_wins_over_a_shadow_identity(make_guard: Factory, clock: Clock) -> None:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["mode"] = "shadow"
    guard = make_guard(
        clock=clock, identities=identities, intents=_intents(**{"process-job": "enforce"})
    )
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied):
        guard.authorize("kv_set", {"key": "agents:jobs:7:result", "value": "x"})


def test_shadow_identity_covers_its_intents(
    make_guard: Factory, clock: Clock, tmp_path: Path
) -> None:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["summariser"]["mode"] = "shadow"
    guard = make_guard(clock=clock, identities=identities)
    with guard.task("summarise-job", job_id="42"):
        # outside the intent and outside the identity's ceiling (read only): would_deny
        _run(guard, "kv_get", {"key": "agents:context:x"})
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied):
        guard.authorize("kv_set", {"key": "agents:jobs:7:result", "value": "x"})  # enforced
    rows = _requests(guard)
    assert [(r["kind"], r["decision"]) for r in rows] == [
        ("request", "would_deny"),
        ("denied", "deny"),
    ]
    assert rows[0]["rule"] == "intents.summarise-job.allow.read"


def test_a_tool_outside_the_intent_is_a_would_deny(
    make_guard: Factory, clock: Clock, tmp_path: Path
) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    with guard.task("process-job", job_id="42"):
        _run(guard, "kv_delete", {"key": "agents:jobs:42:x"})
    (row,) = _requests(guard)
    assert (row["decision"], row["rule"]) == ("would_deny", "intents.process-job.tools")


def test_budget_refusals_run_in_shadow_and_spend(
    make_guard: Factory, clock: Clock, tmp_path: Path
) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    with guard.task("process-job", job_id="42") as task:
        credentials = [
            _run(guard, "kv_set", {"key": f"agents:jobs:42:k{i}", "value": "x"})
            for i in range(7)  # per_tool.kv_set is 5
        ]
        used = guard.store.task_spent(task.task_id, ["per_tool.kv_set", "max_calls"])
        marks = [guard.verifier().verify(c.token).get("shadow") for c in credentials]
    assert marks == [None] * 5 + ["would_deny"] * 2
    rows = _requests(guard)
    assert [r["decision"] for r in rows] == ["allow"] * 5 + ["would_deny"] * 2
    assert rows[5]["rule"] == "intents.process-job.budget.per_tool.kv_set"
    assert "budget 'task.per_tool.kv_set' is exhausted (5 of 5 used)" in rows[5]["reason"]
    assert "6 of 5" in rows[6]["reason"]  # the would-deny call spent
    assert used == {"per_tool.kv_set": 7 * 1_000_000, "max_calls": 7 * 1_000_000}


def test_identity_rate_refusal_runs_in_shadow_and_counts(
    make_guard: Factory, clock: Clock, tmp_path: Path
) -> None:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["limits"] = {
        "writes_per_minute": 2,
        "on_anomaly": {"revoke_when_rate_exceeds": "2x"},
    }
    guard = make_guard(
        clock=clock, identities=identities, intents=_intents(**{"process-job": "shadow"})
    )
    with guard.task("process-job", job_id="42"):
        for i in range(5):  # 2x of 2 per minute would revoke an enforced identity
            _run(guard, "kv_set", {"key": f"agents:jobs:42:k{i}", "value": "x"})
    rows = _requests(guard)
    assert [r["decision"] for r in rows] == ["allow"] * 2 + ["would_deny"] * 3
    assert rows[2]["rule"] == "identities.agent-runner.limits.writes_per_minute"
    assert "(4 of 2 used)" in rows[4]["reason"]  # the would-deny calls are in the window
    assert raw_sql(guard, "SELECT COUNT(*) FROM revocations WHERE by = 'anomaly'") == [(0,)]


@pytest.mark.parametrize(
    ("tool", "args", "rule"),
    [
        ("kv_nope", {"key": "agents:jobs:42:x"}, "tools.kv_nope"),  # unknown tool
        ("kv_set", {"value": "x"}, "tools.kv_set.resource"),  # no resource argument
        ("kv_set", {"key": ["a"], "value": "x"}, "tools.kv_set.resource"),  # not a string
        ("kv_set", {"key": "agents:jobs:42:\x1b[2J", "value": "x"}, "tools.kv_set.resource"),
    ],
)
def test_what_stays_denied_in_shadow_mode(
    make_guard: Factory, clock: Clock, tmp_path: Path, tool: str, args: dict[str, Any], rule: str
) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied) as err:
        guard.authorize(tool, args)
    assert err.value.rule == rule
    (row,) = _requests(guard)
    assert (row["kind"], row["decision"], row["jti"]) == ("denied", "deny", None)


def test_path_escape_stays_denied_in_shadow(make_guard: Factory, clock: Clock) -> None:
    intents = _intents(**{"process-job": "shadow"})
    intents["process-job"]["tools"].append("read_file")
    tools = copy.deepcopy(BASE_CONFIG["tools"])
    tools["read_file"] = {"operation": "read", "resource": "{path}", "kind": "path"}
    guard = make_guard(clock=clock, intents=intents, tools=tools)
    with guard, guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied) as err:
        guard.authorize("read_file", {"path": "agents/../../etc/passwd"})
    assert err.value.rule == "tools.read_file.resource"


def test_revoked_ended_and_expired_tasks_stay_denied_in_shadow(
    make_guard: Factory, clock: Clock
) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    with guard.task("process-job", job_id="42") as task:
        guard.revoke(task_id=task.task_id, reason="incident")
        with pytest.raises(tg.PolicyDenied) as err:
            guard.authorize("kv_get", {"key": "agents:jobs:7:x"})
        assert err.value.rule in ("task.active", "revocation.task")
    with guard.task("process-job", job_id="42"):
        clock.advance(16 * 60)  # past the intent's ttl of 15m
        with pytest.raises(tg.PolicyDenied) as err:
            guard.authorize("kv_get", {"key": "agents:jobs:7:x"})
        assert err.value.rule == "task.ttl"
    session = guard.task("process-job", job_id="42")
    with session:
        pass
    with pytest.raises(tg.ToolGuardError):
        guard.authorize("kv_get", {"key": "agents:jobs:7:x"})  # no active task


def test_disabled_identity_stays_refused_in_shadow(make_guard: Factory, clock: Clock) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    guard.revoke(identity="agent-runner", disable=True, reason="incident")
    with pytest.raises(tg.PolicyDenied):
        guard.task("process-job", job_id="42").__enter__()


def test_identity_revocation_stays_denied_in_shadow(make_guard: Factory, clock: Clock) -> None:
    guard = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    with guard.task("process-job", job_id="42"):
        clock.advance(1)
        guard.revoke(identity="agent-runner", reason="incident")
        with pytest.raises(tg.PolicyDenied) as err:
            guard.authorize("kv_get", {"key": "agents:jobs:7:x"})
    assert err.value.rule.startswith(("revocation.", "task.active"))


def test_a_shadow_child_of_an_enforcing_parent_is_enforced(
    make_guard: Factory, clock: Clock
) -> None:
    intents = _intents(**{"summarise-job": "shadow"})
    guard = make_guard(clock=clock, intents=intents)
    parent = guard.task("process-job", job_id="42")
    with parent, parent.delegate("summarise-job", job_id="42"), pytest.raises(tg.PolicyDenied):
        guard.authorize("kv_get", {"key": "agents:jobs:7:x"})


def test_check_warns_about_shadow_mode(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE_CONFIG)
    config["intents"]["process-job"]["mode"] = "shadow"
    config["identities"]["summariser"]["mode"] = "shadow"
    report = check_config(config)
    found = {(f.path, f.code) for f in report.warnings}
    assert ("intents.process-job.mode", "shadow-mode") in found
    assert ("identities.summariser.mode", "shadow-mode") in found
    assert not report.errors


def test_check_refuses_an_unknown_mode(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE_CONFIG)
    config["intents"]["process-job"]["mode"] = "audit-only"
    report = check_config(config)
    assert [e.path for e in report.errors] == ["intents.process-job.mode"]
    with pytest.raises(tg.ConfigError):
        tg.Guard(config)
    assert json.dumps(report.errors[0].to_dict())


# -- the viewer, the summary and the report ------------------------------------------------------


@pytest.fixture
def shadow_trail(make_guard: Factory, tmp_path: Path, clock: Clock) -> tuple[Path, str]:
    """A trail with one allowed call, one would_deny call and one denial; (config, task id).
    The config file names the guard's store (a file, or the test's PostgreSQL database)."""
    from conftest import make_config

    intents = _intents(**{"process-job": "shadow"})
    with make_guard(clock=clock, intents=intents) as guard:
        with guard.task("process-job", job_id="42") as task:
            _run(guard, "kv_get", {"key": "agents:jobs:42:input"})
            _run(guard, "kv_set", {"key": "agents:jobs:7:result", "value": "x"})
            with pytest.raises(tg.PolicyDenied):
                guard.authorize("kv_nope", {"key": "x"})
        task_id = task.task_id
        config = make_config(tmp_path, intents=intents, store=guard.config.store)
        if guard.config.store_location.is_postgres:
            config["checkpoints"] = guard.config.checkpoints
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(config))
    return path, task_id


def _cli(clock: Clock, *args: str) -> Any:
    from click.testing import CliRunner

    from toolguard.cli import CliContext, main

    context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
    result = CliRunner().invoke(main, list(args), obj=context)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_show_tail_and_tasks_mark_would_deny(shadow_trail: tuple[Path, str], clock: Clock) -> None:
    config, task_id = shadow_trail
    show = _cli(clock, "audit", "show", task_id, "--config", str(config)).stdout
    (line,) = [x for x in show.splitlines() if "agents:jobs:7:result" in x]
    assert "WOULD-DENY (ok)" in line
    assert "would deny:" in line and "intents.process-job.allow.write" in line
    tail = _cli(clock, "audit", "tail", "--config", str(config)).stdout
    (line,) = [x for x in tail.splitlines() if "agents:jobs:7:result" in x and "request" in x]
    assert "WOULD-DENY" in line and "intents.process-job.allow.write" in line
    tasks = _cli(clock, "audit", "tasks", "--config", str(config)).stdout.splitlines()
    header, row = tasks[0].split(), tasks[1].split()
    assert header[6:8] == ["denied", "would-deny"]
    assert row[header.index("calls") + 1 : header.index("calls") + 4] == ["2", "1", "1"]
    as_json = _cli(clock, "audit", "tasks", "--config", str(config), "--json").stdout
    assert json.loads(as_json)["would_deny"] == 1
    timeline = json.loads(_cli(clock, "audit", "show", task_id, "--config", str(config), "--json")
                          .stdout)["timeline"]  # fmt: skip
    assert [r["decision"] for r in timeline if r["kind"] == "request"] == ["allow", "would_deny"]


def test_tasks_without_shadow_calls_have_no_would_deny_column(
    make_guard: Factory, clock: Clock, tmp_path: Path
) -> None:
    guard = make_guard(clock=clock)
    with guard.task("process-job", job_id="42"):
        _run(guard, "kv_get", {"key": "agents:jobs:42:input"})
    guard.close()
    out = _cli(clock, "audit", "tasks", "--db", store_arg(guard)).stdout
    assert "would-deny" not in out


def test_denied_lists_denials_or_would_deny_calls(
    shadow_trail: tuple[Path, str], clock: Clock
) -> None:
    config, _ = shadow_trail
    denied = _cli(clock, "audit", "denied", "--config", str(config), "--json").stdout
    assert [json.loads(x)["tool"] for x in denied.splitlines()] == ["kv_nope"]
    would = _cli(clock, "audit", "denied", "--would-deny", "--config", str(config), "--json")
    rows = [json.loads(x) for x in would.stdout.splitlines()]
    assert [(r["tool"], r["decision"], r["kind"]) for r in rows] == [
        ("kv_set", "would_deny", "request")
    ]
    text = _cli(clock, "audit", "denied", "--would-deny", "--config", str(config)).stdout
    assert "WOULD-DENY" in text
    tail = _cli(clock, "audit", "tail", "--decision", "would_deny", "--config", str(config))
    assert "agents:jobs:7:result" in tail.stdout and "kv_get" not in tail.stdout


def test_summary_counts_would_deny_apart(shadow_trail: tuple[Path, str], clock: Clock) -> None:
    config, _ = shadow_trail
    out = _cli(clock, "audit", "summary", "--config", str(config), "--json").stdout
    rows = {r["key"]: r for r in json.loads(out)["by_tool"]}
    assert (rows["kv_set"]["calls"], rows["kv_set"]["would_deny"]) == (1, 1)
    assert (rows["kv_get"]["would_deny"], rows["kv_nope"]["denials"]) == (0, 1)
    text = _cli(clock, "audit", "summary", "--config", str(config), "--by", "tool").stdout
    header = next(x for x in text.splitlines() if x.split()[:1] == ["tool"]).split()
    assert header[:5] == ["tool", "calls", "denied", "would-deny", "errors"]
    (line,) = [x.split() for x in text.splitlines() if x.startswith("kv_set")]
    assert line[:5] == ["kv_set", "1", "0", "1", "0"]


def test_html_report_has_a_would_deny_section(
    shadow_trail: tuple[Path, str], clock: Clock, tmp_path: Path
) -> None:
    config, task_id = shadow_trail
    page = tmp_path / "report.html"
    _cli(clock, "audit", "export", "--format", "html", "-o", str(page), "--config", str(config))
    html = page.read_text()
    assert 'id="would-deny"' in html and "1 call that would be denied" in html
    assert '<tr class="would" data-kind="request">' in html
    assert 'class="badge would">1 would-deny</span>' in html
    assert f'data-task-id="{task_id}"' in html and 'data-would-deny="1"' in html
    exported = _cli(clock, "audit", "export", "--config", str(config)).stdout
    decisions = [json.loads(x)["decision"] for x in exported.splitlines()]
    assert "would_deny" in decisions


def test_a_guarded_langchain_tool_runs_in_shadow_mode(make_guard: Factory, clock: Clock) -> None:
    from langchain_core.tools import tool

    ran: list[str] = []

    @tool
    def kv_set(key: str, value: str) -> str:
        """Write a key."""
        ran.append(tg.current_credential().resources[0])
        return "ok"

    shadow = make_guard(clock=clock, intents=_intents(**{"process-job": "shadow"}))
    (guarded,) = shadow.wrap([kv_set])
    with shadow.task("process-job", job_id="42"):
        assert guarded.invoke({"key": "agents:jobs:7:result", "value": "x"}) == "ok"
    assert ran == ["agents:jobs:7:result"]


def test_a_provider_is_told_the_call_would_be_denied(make_guard: Factory, clock: Clock) -> None:
    class Recording:
        jit = True

        def __init__(self) -> None:
            self.seen: list[bool] = []
            self.issuer: Any = None

        def bind(self, guard: tg.Guard) -> None:
            self.issuer = guard.issuer

        def mint(self, request: tg.MintRequest, /) -> tg.Credential:
            self.seen.append(request.would_deny)
            credential: tg.Credential = self.issuer.mint(request)
            return credential

        def end_task(self, task_id: str, jtis: Any) -> None:
            pass

    provider = Recording()
    guard = make_guard(
        clock=clock, intents=_intents(**{"process-job": "shadow"}), providers={"kv_set": provider}
    )
    with guard.task("process-job", job_id="42"):
        _run(guard, "kv_set", {"key": "agents:jobs:42:ok", "value": "x"})
        _run(guard, "kv_set", {"key": "agents:jobs:7:no", "value": "x"})
    assert provider.seen == [False, True]
