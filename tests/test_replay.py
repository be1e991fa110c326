"""``toolguard audit replay``: the recorded calls re-evaluated under another config (allowed ->
denied, denied -> allowed, budgets that would run out), with --since and --intent, exit codes,
calls that cannot be replayed (redacted or cut arguments), a hostile config, and purity (the
database is opened read-only and not changed)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import Clock, make_config

import toolguard as tg
from toolguard.cli import EXIT_ERROR, EXIT_FINDINGS, CliContext, main
from toolguard.store.sqlite import core as store_core

Run = Callable[..., Result]


@pytest.fixture
def run(clock: Clock) -> Run:
    def invoke(*args: str) -> Result:
        context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
        return CliRunner().invoke(main, list(args), obj=context)

    return invoke


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _call(guard: tg.Guard, tool: str, args: dict[str, Any]) -> bool:
    """One call through the guard; True if it ran."""
    try:
        permit = guard.authorize(tool, args)
    except tg.PolicyDenied:
        return False
    with permit:
        pass
    guard.finish(permit)
    return True


def _replay(run: Run, config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run("audit", "replay", "--config", str(config), "--json", *extra)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def old(tmp_path: Path, store_config: dict[str, str]) -> dict[str, Any]:
    """The config the trail was recorded under, on the test's backend."""
    return make_config(tmp_path, **store_config)


def _trail(old: dict[str, Any], clock: Clock, calls: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Record ``(intent, tool, args)`` calls, one task per intent in order, 1 s apart."""
    with tg.Guard(old, clock=clock) as guard:
        for intent, tool, args in calls:
            with guard.task(intent, job_id="42"):
                _call(guard, tool, args)
            clock.advance(1)


def test_allowed_to_denied_exits_1(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    _trail(old, clock, [("process-job", "kv_set", {"key": "agents:jobs:42:result", "value": "v"})])
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["allow"]["write"] = ["agents:jobs:{job_id}:final"]
    code, out = _replay(run, _write(tmp_path / "new.yaml", new))
    assert code == EXIT_FINDINGS
    (change,) = out["newly_denied"]
    assert (change["before"], change["after"]) == ("allow", "deny")
    assert change["rule"] == "intents.process-job.allow.write"
    assert change["resources"] == ["agents:jobs:42:result"]
    assert out["calls"] == 1 and not out["newly_allowed"]
    text = run("audit", "replay", "--config", str(tmp_path / "new.yaml"))
    assert text.exit_code == EXIT_FINDINGS
    assert "1 newly denied" in text.stdout and "allow -> deny" in text.stdout


def test_denied_to_allowed_exits_0(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    _trail(old, clock, [("process-job", "kv_get", {"key": "agents:jobs:7:input"})])
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["allow"]["read"].append("agents:jobs:*")
    code, out = _replay(run, _write(tmp_path / "new.yaml", new))
    assert code == 0
    (change,) = out["newly_allowed"]
    assert (change["before"], change["after"]) == ("deny", "allow")
    text = run("audit", "replay", "--config", str(tmp_path / "new.yaml"))
    assert text.exit_code == 0 and "nothing would newly be denied" in text.stdout


def test_the_same_config_changes_nothing(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    _trail(
        old,
        clock,
        [
            ("process-job", "kv_get", {"key": "agents:jobs:42:input"}),
            ("process-job", "kv_get", {"key": "agents:jobs:7:input"}),  # denied
            ("process-job", "kv_nope", {"key": "x"}),  # unknown tool: denied
        ],
    )
    code, out = _replay(run, _write(tmp_path / "same.yaml", old))
    assert code == 0
    assert out["calls"] == 3 and out["unchanged"] == 3
    assert not (out["newly_denied"] or out["newly_allowed"] or out["cannot_replay"])


def test_task_budget_exhaustion_and_when(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    with tg.Guard(old, clock=clock) as guard, guard.task("process-job", job_id="42") as task:
        for i in range(4):
            assert _call(guard, "kv_set", {"key": f"agents:jobs:42:k{i}", "value": "v"})
            clock.advance(5)
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["budget"]["per_tool"]["kv_set"] = 2
    code, out = _replay(run, _write(tmp_path / "new.yaml", new))
    assert code == EXIT_FINDINGS
    assert [c["resources"] for c in out["newly_denied"]] == [
        ["agents:jobs:42:k2"],
        ["agents:jobs:42:k3"],
    ]
    assert (
        "budget 'task.per_tool.kv_set' is exhausted (2 of 2 used)"
        in (out["newly_denied"][0]["reason"])
    )
    (budget,) = out["budgets"]
    assert budget["scope"] == "task.per_tool.kv_set"
    assert budget["rule"] == "intents.process-job.budget.per_tool.kv_set"
    assert budget["owner"] == task.task_id
    assert budget["first_ts"] == out["newly_denied"][0]["ts"]
    assert budget["refused"] == 2


def test_identity_rolling_window_and_day(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    with tg.Guard(old, clock=clock) as guard, guard.task("process-job", job_id="42"):
        for i in range(3):  # three writes within a minute, then one 61 s later
            assert _call(guard, "kv_set", {"key": f"agents:jobs:42:k{i}", "value": "v"})
            clock.advance(1)
        clock.advance(61)
        assert _call(guard, "kv_set", {"key": "agents:jobs:42:late", "value": "v"})
    new = copy.deepcopy(old)
    new["identities"]["agent-runner"]["limits"] = {"writes_per_minute": 2}
    code, out = _replay(run, _write(tmp_path / "new.yaml", new))
    assert code == EXIT_FINDINGS
    assert [c["resources"] for c in out["newly_denied"]] == [["agents:jobs:42:k2"]]
    assert out["budgets"][0]["scope"] == "identity.agent-runner.writes_per_minute"
    new["identities"]["agent-runner"]["limits"] = {"requests_per_day": 3}
    code, out = _replay(run, _write(tmp_path / "day.yaml", new))
    assert [c["resources"] for c in out["newly_denied"]] == [["agents:jobs:42:late"]]


def test_since_and_intent_filters(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    _trail(old, clock, [("process-job", "kv_set", {"key": "agents:jobs:42:a", "value": "v"})])
    clock.advance(3 * 86400)
    _trail(
        old,
        clock,
        [
            ("process-job", "kv_set", {"key": "agents:jobs:42:b", "value": "v"}),
            ("summarise-job", "kv_get", {"key": "agents:jobs:42:c"}),
        ],
    )
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["allow"]["write"] = ["agents:jobs:{job_id}:final"]
    new["intents"]["summarise-job"]["allow"]["read"] = ["agents:jobs:{job_id}:final"]
    path = _write(tmp_path / "new.yaml", new)
    _, everything = _replay(run, path)
    assert len(everything["newly_denied"]) == 3
    _, recent = _replay(run, path, "--since", "1d")
    assert sorted(c["resources"][0] for c in recent["newly_denied"]) == [
        "agents:jobs:42:b",
        "agents:jobs:42:c",
    ]
    _, one = _replay(run, path, "--since", "1d", "--intent", "summarise-job")
    assert [c["intent"] for c in one["newly_denied"]] == ["summarise-job"]
    assert one["calls"] == 1
    bad = run("audit", "replay", "--config", str(path), "--intent", "nope")
    assert bad.exit_code == EXIT_ERROR and "intent 'nope' is not in" in bad.output


def test_redacted_or_cut_arguments_cannot_be_replayed(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    old["tools"]["kv_get"]["redact"] = ["key"]
    old["max_arg_chars"] = 16
    _trail(
        old,
        clock,
        [
            ("process-job", "kv_get", {"key": "agents:jobs:42:input"}),  # redacted
            ("process-job", "kv_set", {"key": "agents:jobs:42:" + "x" * 40, "value": "v"}),  # cut
        ],
    )
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["allow"] = {"read": ["nothing"], "write": ["nothing"]}
    code, out = _replay(run, _write(tmp_path / "new.yaml", new))
    assert code == 0  # nothing is known to be newly denied: never guessed
    reasons = [(c["tool"], c["after"], c["reason"]) for c in out["cannot_replay"]]
    assert reasons == [
        ("kv_get", "cannot-replay", "argument 'key' is redacted in the trail"),
        ("kv_set", "cannot-replay", "argument 'key' was cut in the trail (max_arg_chars)"),
    ]
    text = run("audit", "replay", "--config", str(tmp_path / "new.yaml"))
    assert "cannot replay" in text.stdout and "redacted in the trail" in text.stdout


@pytest.mark.sqlite_only  # compares the database file's bytes and its -wal
def test_replay_is_pure_and_read_only(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trail(old, clock, [("process-job", "kv_set", {"key": "agents:jobs:42:result", "value": "v"})])
    db = Path(old["store"])
    before = (db.read_bytes(), os.stat(db).st_mtime_ns)
    opened: list[bool] = []
    real = store_core.Store.__init__

    def spy(self: store_core.Store, *args: Any, **kwargs: Any) -> None:
        opened.append(bool(kwargs.get("readonly")))
        real(self, *args, **kwargs)

    monkeypatch.setattr(store_core.Store, "__init__", spy)
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["allow"]["write"] = ["agents:jobs:{job_id}:final"]
    code, _ = _replay(run, _write(tmp_path / "new.yaml", new))
    assert code == EXIT_FINDINGS
    assert opened == [True]
    assert (db.read_bytes(), os.stat(db).st_mtime_ns) == before
    wal = Path(f"{db}-wal")  # SQLite's reader may leave an empty log; never a written one
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_shadow_trail_replayed_under_enforce(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    old["intents"]["process-job"]["mode"] = "shadow"
    _trail(old, clock, [("process-job", "kv_set", {"key": "agents:jobs:7:result", "value": "v"})])
    enforce = copy.deepcopy(old)
    del enforce["intents"]["process-job"]["mode"]
    code, out = _replay(run, _write(tmp_path / "enforce.yaml", enforce))
    assert code == EXIT_FINDINGS  # it ran in shadow mode; enforcing would refuse it
    (change,) = out["newly_denied"]
    assert (change["before"], change["after"]) == ("would_deny", "deny")
    code, out = _replay(run, _write(tmp_path / "same.yaml", old))
    assert code == 0 and out["unchanged"] == 1


def test_a_hostile_config_exits_2_with_its_location(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    _trail(old, clock, [("process-job", "kv_get", {"key": "agents:jobs:42:input"})])
    bad = tmp_path / "bad.yaml"
    bad.write_text("intents:\n  process-job: [unclosed\n")
    result = run("audit", "replay", "--config", str(bad))
    assert result.exit_code == EXIT_ERROR
    assert f"{bad}:" in result.output and "YAML" in result.output
    assert "Traceback" not in result.output
    typo = copy.deepcopy(old)
    typo["intents"]["process-job"]["mode"] = "sometimes"
    result = run("audit", "replay", "--config", str(_write(tmp_path / "typo.yaml", typo)))
    assert result.exit_code == EXIT_ERROR and "intents.process-job.mode" in result.output
    missing = run("audit", "replay", "--config", str(tmp_path / "none.yaml"))
    assert missing.exit_code == EXIT_ERROR
    no_config = run("audit", "replay", "--db", old["store"])
    assert no_config.exit_code == EXIT_ERROR and "pass --config" in no_config.output
    no_db = run("audit", "replay", "--config", str(_write(tmp_path / "ok.yaml", old)), "--db",
                str(tmp_path / "nothing.db"))  # fmt: skip
    assert no_db.exit_code == EXIT_ERROR and "no audit database" in no_db.output


@pytest.mark.sqlite_only  # text in a REAL column: only SQLite's type affinity lets it in
def test_a_malformed_row_is_a_clean_error(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    import sqlite3

    _trail(old, clock, [("process-job", "kv_get", {"key": "agents:jobs:42:input"})])
    with sqlite3.connect(old["store"]) as conn:
        conn.execute("UPDATE tasks SET started_at = 'yesterday'")
    result = run("audit", "replay", "--config", str(_write(tmp_path / "new.yaml", old)))
    assert result.exit_code == EXIT_ERROR
    assert "malformed row" in result.output and "Traceback" not in result.output


def test_budget_state_counts_calls_before_since(
    old: dict[str, Any], clock: Clock, tmp_path: Path, run: Run
) -> None:
    with tg.Guard(old, clock=clock) as guard, guard.task("process-job", job_id="42"):
        for i in range(3):
            assert _call(guard, "kv_set", {"key": f"agents:jobs:42:k{i}", "value": "v"})
            clock.advance(120)
    new = copy.deepcopy(old)
    new["intents"]["process-job"]["budget"]["per_tool"]["kv_set"] = 2
    _, out = _replay(run, _write(tmp_path / "new.yaml", new), "--since", "3m")
    # only the third call is reported, and it is refused: the two before it spent the budget
    assert out["calls"] == 1
    assert [c["resources"] for c in out["newly_denied"]] == [["agents:jobs:42:k2"]]
