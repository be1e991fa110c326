"""Tests for the ``toolguard`` command (toolguard.cli and toolguard.viewer): every command with
and without --json, help on every command, plain text when piped and colour when forced,
friendly errors (missing or foreign database, bad config, bad times) with clean exit codes,
database resolution, following new events, revocation and keys."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from conftest import Clock, make_config, raw_sql, store_arg
from test_audit import JOB, TOOLS, build_trail, kv_get

import toolguard as tg
from toolguard.cli import EXIT_ERROR, EXIT_FINDINGS, CliContext, main, parse_when

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOX = set("┏┓┗┛━┃│─┼╇┡┩└┘┌┐")


@pytest.fixture
def config_file(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Path:
    """The test config (store and key in tmp_path; with ``backend`` postgres, the store is a
    new database of the test server, its checkpoints in tmp_path) as a JSON file."""
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(_config(tmp_path, backend, request)))
    return path


def _config(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, **overrides: Any
) -> dict[str, Any]:
    config = make_config(tmp_path, tools=TOOLS)
    if backend == "postgres":
        config["store"] = request.getfixturevalue("pg_url")
        config["checkpoints"] = str(tmp_path / "audit.db.checkpoints")
    return {**config, **overrides}


@pytest.fixture
def guard(config_file: Path, clock: Clock) -> Iterator[tg.Guard]:
    """A guard on ``config_file`` (the CLI and the guard share its database and key)."""
    with tg.Guard.from_config(config_file, clock=clock) as guard:
        yield guard


@pytest.fixture
def ids(guard: tg.Guard, clock: Clock) -> dict[str, str]:
    return build_trail(guard, clock)


@pytest.fixture
def db(guard: tg.Guard) -> str:
    """The guard's store as ``--db`` takes it: a SQLite path or a PostgreSQL URL."""
    return store_arg(guard)


Run = Callable[..., Result]


@pytest.fixture
def run(clock: Clock) -> Run:
    """``run(*args, obj=None)``: invoke the command with the test clock; never sleeps."""

    def invoke(*args: str, obj: CliContext | None = None, **kwargs: Any) -> Result:
        context = obj or CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
        return CliRunner().invoke(main, list(args), obj=context, **kwargs)

    return invoke


def _json_lines(result: Result) -> list[Any]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


# -- every command, with and without --json -----------------------------------------------------


def _foreign_checkpoint(guard: tg.Guard, tmp_path: Path) -> str:
    """A checkpoint file whose newest record is signed by a key the config does not hold."""
    from toolguard.integrity import sign_checkpoint
    from toolguard.keys import KeyRing

    (seq, digest), *_ = raw_sql(guard, "SELECT seq, hash FROM events ORDER BY seq DESC")
    path = tmp_path / "foreign.checkpoints"
    path.write_text(json.dumps(sign_checkpoint(KeyRing.generate(), seq, digest, 1.0)) + "\n")
    return str(path)


def _held_call(guard: tg.Guard, task_id: str) -> str:
    """A call of ``task_id`` waiting for approval (its request, in the trail); its id."""
    from toolguard.chain import Event
    from toolguard.store.approvals import request_event

    ((ts,),) = raw_sql(guard, "SELECT MAX(ts) FROM events")
    extra = {"request_id": "ab" * 12, "digest": "0" * 64, "expires_at": 1e10, "args": {}}
    event = Event(
        ts=ts, kind="approval_requested", task_id=task_id, identity="agent-runner",
        intent="process-job", tool="kv_set", operation="write",
        resources='["agents:jobs:42:final"]', decision="hold", reason="held",
        rule="intents.process-job.approve.write", correlation_id="held-1",
    )  # fmt: skip
    guard.store.append(request_event(event, extra))
    return "ab" * 12


def _commands(
    guard: tg.Guard, ids: dict[str, str], config: Path, tmp_path: Path
) -> dict[str, list[str]]:
    key = str(tmp_path / "other" / "key.pem")
    cfg = str(config)
    db = store_arg(guard)
    held = _held_call(guard, ids["job"])
    (seq, args), *_ = raw_sql(  # a request whose arguments had nothing to redact
        guard,
        "SELECT seq, args FROM events WHERE kind = 'request' AND args NOT LIKE '%REDACTED%'"
        " ORDER BY seq LIMIT 1",
    )
    return {
        "audit-match-args": ["audit", "match-args", str(seq), "--args", args, "--config", cfg],
        "audit-tasks": ["audit", "tasks", "--db", str(db)],
        "audit-show": ["audit", "show", ids["job"], "--db", str(db)],
        "audit-tail": ["audit", "tail", "--db", str(db)],
        "audit-tail-follow": ["audit", "tail", "-f", "--db", str(db)],
        "audit-denied": ["audit", "denied", "--db", str(db)],
        "audit-summary": ["audit", "summary", "--config", str(config)],
        "audit-verify": ["audit", "verify", "--config", str(config)],
        "audit-acknowledge": [
            *("audit", "acknowledge", "--config", str(config), "--key-change", "--by", "ops"),
            *("--reason", "test", "--checkpoints", _foreign_checkpoint(guard, tmp_path)),
        ],
        "audit-export": ["audit", "export", "--db", str(db)],
        "audit-prune": ["audit", "prune", "--before", "1h", "--config", str(config)],
        "audit-replay": ["audit", "replay", "--config", str(config)],
        "revoke": ["revoke", "--task", ids["job"][:8], "--db", str(db)],
        "enable": ["enable", "agent-runner", "--config", str(config)],
        "keys-create": ["keys", "create", "--key-file", key],
        "keys-rotate": ["keys", "rotate", "--config", str(config)],
        "keys-jwks": ["keys", "jwks", "--config", str(config)],
        "check": ["check", str(config)],
        "check-schema": ["check", "--schema"],
        "db-migrate": ["db", "migrate", "--db", str(db)],
        "approvals-list": ["approvals", "list", "--db", str(db)],
        "approvals-show": ["approvals", "show", held[:6], "--db", str(db)],
        "approvals-approve": ["approvals", "approve", held, "--by", "alice", "--db", str(db)],
        "approvals-reject": ["approvals", "reject", held, "--config", str(config)],
    }


COMMANDS = [
    "audit-tasks",
    "audit-show",
    "audit-tail",
    "audit-tail-follow",
    "audit-denied",
    "audit-summary",
    "audit-verify",
    "audit-acknowledge",
    "audit-export",
    "audit-prune",
    "audit-replay",
    "audit-match-args",
    "revoke",
    "enable",
    "keys-create",
    "keys-rotate",
    "keys-jwks",
    "check",
    "check-schema",
    "db-migrate",
    "approvals-list",
    "approvals-show",
    "approvals-approve",
    "approvals-reject",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_every_command_runs_with_and_without_json(
    run: Run,
    guard: tg.Guard,
    ids: dict[str, str],
    config_file: Path,
    tmp_path: Path,
    clock: Clock,
    name: str,
    as_json: bool,
) -> None:
    clock.advance(7200)  # so that `prune --before 1h` has something to remove
    args = _commands(guard, ids, config_file, tmp_path)[name]
    result = _ok(run(*args, *(["--json"] if as_json else [])))
    assert result.stdout.strip()
    assert not ANSI.search(result.stdout)
    if as_json:
        assert _json_lines(result)  # every line parses
    elif name not in ("keys-jwks", "check-schema", "audit-export"):
        with pytest.raises(json.JSONDecodeError):
            json.loads(result.stdout.splitlines()[0])


def test_cli_commands_table_covers_every_command() -> None:
    def leaves(group: click.Group, prefix: str) -> set[str]:
        out: set[str] = set()
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                out |= leaves(command, f"{prefix}{name}-")
            else:
                out.add(f"{prefix}{name}")
        return out

    covered = {n.removesuffix("-follow").removesuffix("-schema") for n in COMMANDS}
    assert leaves(main, "") == covered


def _all_commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*path, name))
        else:
            yield (*path, name), command


@pytest.mark.parametrize(
    ("path", "command"),
    [pytest.param(p, c, id=" ".join(p) or "toolguard") for p, c in _all_commands(main)],
)
def test_cli_every_command_and_option_has_help(
    run: Run, path: tuple[str, ...], command: click.Command
) -> None:
    assert command.help and command.help.strip(), path
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {param.opts} has no help"
    result = _ok(run(*path, "--help"))
    assert "Usage:" in result.output


@pytest.mark.slow  # a subprocess
def test_cli_python_dash_m_reports_a_missing_database_without_traceback(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGUARD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "toolguard", "audit", "tasks", "--db", str(tmp_path / "no.db")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == EXIT_ERROR
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error: no audit database at")
    assert len(proc.stderr.strip().splitlines()) == 1


# -- friendly errors ----------------------------------------------------------------------------


def test_cli_missing_database_is_a_clean_error(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "audit.db"
    result = run("audit", "tasks", "--db", str(missing))
    assert result.exit_code == EXIT_ERROR
    assert f"Error: no audit database at {missing}" in result.stderr
    assert "Traceback" not in result.output
    assert not missing.exists()  # a reader never creates it
    assert not missing.parent.exists()


def test_cli_non_toolguard_sqlite_file_is_a_clean_error(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    for args in (["audit", "show", "abc"], ["audit", "prune", "--before", "1d", "--dry-run"]):
        result = run(*args, "--db", str(other))
        assert result.exit_code == EXIT_ERROR
        assert "is not a toolguard audit database" in result.stderr
    with sqlite3.connect(other) as conn:  # and nothing was created in it
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}


def test_cli_garbage_file_is_a_clean_error(run: Run, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    result = run("audit", "tasks", "--db", str(garbage))
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.output


def test_cli_invalid_config_is_a_clean_error(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("identities:\n  x:\n    colour: red\n")
    result = run("audit", "tasks", "--config", str(bad))
    assert result.exit_code == EXIT_ERROR
    assert "identities.x.colour: unknown key" in result.stderr


@pytest.mark.parametrize("value", ["yesterday", "-5m", "0"])
def test_cli_bad_time_is_a_usage_error(run: Run, db: str, value: str) -> None:
    result = run("audit", "tasks", "--since", value, "--db", str(db))
    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.stderr


def test_cli_unknown_task_is_a_clean_error(run: Run, db: str, ids: dict[str, str]) -> None:
    result = run("audit", "show", "ffffffffnotatask", "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "no task 'ffffffffnotatask'" in result.stderr


def test_cli_ambiguous_task_prefix_is_a_clean_error(run: Run, guard: tg.Guard, db: str) -> None:
    for _ in range(40):  # 40 random hex ids: two share a first character
        with guard.task("process-job", job_id="1"):
            pass
    firsts = [t["task_id"][0] for t in guard.audit.tasks(limit=None)]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    result = run("audit", "show", shared, "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "is ambiguous" in result.stderr


# -- database resolution ------------------------------------------------------------------------


def test_cli_db_from_config_store(run: Run, config_file: Path, ids: dict[str, str]) -> None:
    rows = _json_lines(_ok(run("audit", "tasks", "--config", str(config_file), "--json")))
    assert {r["task_id"] for r in rows} == set(ids.values())


def test_cli_db_option_wins_over_config(
    run: Run, config_file: Path, ids: dict[str, str], tmp_path: Path
) -> None:
    result = run("audit", "tasks", "--config", str(config_file), "--db", str(tmp_path / "x.db"))
    assert result.exit_code == EXIT_ERROR
    assert "x.db" in result.stderr


def test_cli_db_from_environment(
    run: Run, db: str, ids: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLGUARD_DB", str(db))
    rows = _json_lines(_ok(run("audit", "tasks", "--json")))
    assert len(rows) == 2


@pytest.mark.sqlite_only  # the default store is the file .toolguard/audit.db
def test_cli_db_default_path(
    run: Run, db: str, ids: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "work"
    (workdir / ".toolguard").mkdir(parents=True)
    monkeypatch.chdir(workdir)
    result = run("audit", "tasks")
    assert result.exit_code == EXIT_ERROR
    assert "no audit database at .toolguard/audit.db" in result.stderr
    with sqlite3.connect(db) as src, sqlite3.connect(workdir / ".toolguard" / "audit.db") as dst:
        src.backup(dst)
    assert len(_json_lines(_ok(run("audit", "tasks", "--json")))) == 2


# -- tasks, show --------------------------------------------------------------------------------


def test_cli_tasks_plain_text_when_piped(run: Run, db: str, ids: dict[str, str]) -> None:
    lines = _ok(run("audit", "tasks", "--db", str(db))).stdout.splitlines()
    assert lines[0].split() == [
        "task",
        "started",
        "intent",
        "identity",
        "status",
        "calls",
        "denied",
        "errors",
        "cost",
        "duration",
        "params",
    ]
    assert lines[1].startswith(ids["summary"])  # full ids when piped
    assert lines[2].split()[0] == ids["job"]
    assert "job_id=42" in lines[2]
    assert not BOX & set("".join(lines))


def test_cli_tasks_json_decodes_params_and_counts(run: Run, db: str, ids: dict[str, str]) -> None:
    rows = _json_lines(_ok(run("audit", "tasks", "--db", str(db), "--json")))
    job = next(r for r in rows if r["task_id"] == ids["job"])
    assert job["params"] == {"job_id": "42"}
    assert (job["calls"], job["denials"], job["errors"], job["cost"]) == (3, 1, 1, 0.5)


def test_cli_tasks_filters(run: Run, db: str, ids: dict[str, str], clock: Clock) -> None:
    def task_ids(*args: str) -> list[str]:
        out = _ok(run("audit", "tasks", "--db", str(db), "--json", *args))
        return [r["task_id"] for r in _json_lines(out)]

    assert task_ids("--identity", "summariser") == [ids["summary"]]
    assert task_ids("--tool", "kv_set") == [ids["job"]]
    assert task_ids("--decision", "deny") == [ids["job"]]
    assert task_ids("--since", "30s") == [ids["summary"]]
    assert task_ids("--until", "30s") == [ids["job"]]
    assert task_ids("--task", ids["job"][:6]) == [ids["job"]]
    assert task_ids("--limit", "1") == [ids["summary"]]
    assert task_ids("--status", "error") == []


def test_cli_tasks_empty(run: Run, guard: tg.Guard, db: str) -> None:
    with guard.task("process-job", job_id="1"):
        pass
    result = _ok(run("audit", "tasks", "--db", str(db), "--identity", "nobody"))
    assert result.stdout == "no tasks match\n"


def test_cli_show_timeline_one_line_per_event(run: Run, db: str, ids: dict[str, str]) -> None:
    out = _ok(run("audit", "show", ids["job"][:8], "--db", str(db))).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"task {ids['job']}  intent process-job  identity agent-runner")
    table = lines[2:]
    assert table[0].split()[:6] == ["time", "kind", "tool", "op", "resources", "result"]
    kinds = [line.split()[1] for line in table[1:]]
    assert kinds == ["task_start", "request", "denied", "request", "request", "task_end"]
    denied = table[3]
    assert "DENIED" in denied and "agents:jobs:43:state" in denied
    assert "[intents.process-job.allow.write]" in denied
    assert "kv store is down" in table[4]
    assert re.search(r"\bok\b.*\b0\.25\b", table[5])
    assert "task ended (ok)" in table[6]


def test_cli_show_marks_calls_without_outcome_incomplete(
    run: Run, guard: tg.Guard, db: str
) -> None:
    with guard.task("process-job", job_id="42") as task:
        guard.authorize("kv_get", {"key": JOB})
    out = _ok(run("audit", "show", task.task_id, "--db", str(db))).stdout
    assert "incomplete" in out
    doc = json.loads(_ok(run("audit", "show", task.task_id, "--db", str(db), "--json")).stdout)
    assert [r.get("result") for r in doc["timeline"] if r["kind"] == "request"] == ["incomplete"]


def test_cli_show_json_has_task_and_timeline(run: Run, db: str, ids: dict[str, str]) -> None:
    result = _ok(run("audit", "show", ids["job"], "--db", str(db), "--json"))
    assert len(result.stdout.splitlines()) == 1
    doc = json.loads(result.stdout)
    assert doc["task"]["task_id"] == ids["job"]
    assert doc["task"]["params"] == {"job_id": "42"}
    assert [r["kind"] for r in doc["timeline"]][-1] == "task_end"


def test_cli_show_in_colour_highlights_denials(
    run: Run, db: str, ids: dict[str, str], clock: Clock
) -> None:
    obj = CliContext(clock=clock, force_terminal=True)
    wide = {"COLUMNS": "200"}
    out = _ok(run("audit", "show", ids["job"], "--db", str(db), obj=obj, env=wide)).stdout
    assert "\x1b[1;31mDENIED" in out  # bold red
    assert set(out) & BOX  # a table
    plain = _ok(run("--no-color", "audit", "show", ids["job"], "--db", str(db), obj=obj)).stdout
    assert not ANSI.search(plain)


def test_cli_color_flag_forces_colour(run: Run, db: str, ids: dict[str, str]) -> None:
    out = _ok(run("--color", "audit", "denied", "--db", str(db))).stdout
    assert ANSI.search(out)


def test_cli_output_never_carries_terminal_escapes_from_the_trail(
    run: Run, guard: tg.Guard, db: str, clock: Clock
) -> None:
    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task:
        get.invoke({"key": "agents:jobs:42:\x1b]0;pwned\x07\x1b[2J"})  # denied: control chars
    for obj in (None, CliContext(clock=clock, force_terminal=True)):
        for args in (["audit", "show", task.task_id], ["audit", "denied"], ["audit", "tail"]):
            out = _ok(run(*args, "--db", str(db), obj=obj)).stdout
            assert "\x07" not in out and "\x1b]" not in out and "\x1b[2J" not in out
    out = _ok(run("audit", "denied", "--db", str(db), "--json")).stdout
    assert "\x1b" not in out and "\\u001b" in out


# -- tail, denied -------------------------------------------------------------------------------


def test_cli_tail_shows_the_newest_events(
    run: Run, guard: tg.Guard, db: str, ids: dict[str, str]
) -> None:
    rows = _json_lines(_ok(run("audit", "tail", "-n", "3", "--db", str(db), "--json")))
    head = guard.audit.head_seq()
    assert [r["seq"] for r in rows] == [head - 2, head - 1, head]
    plain = _ok(run("audit", "tail", "-n", "2", "--db", str(db))).stdout.splitlines()
    assert plain[0].split()[:3] == ["seq", "time", "kind"]
    assert len(plain) == 3


def test_cli_tail_follow_prints_events_as_they_are_written(
    run: Run, guard: tg.Guard, db: str, ids: dict[str, str], clock: Clock
) -> None:
    get = tg.guard(kv_get, guard)
    naps: list[float] = []

    def writer(seconds: float) -> None:  # another process writing while tail sleeps
        naps.append(seconds)
        with guard.task("process-job", job_id="42"):
            get.invoke({"key": JOB})

    obj = CliContext(clock=clock, sleep=writer, max_polls=50)
    result = _ok(
        run(
            "audit", "tail", "-f", "-n", "0", "--count", "6", "--interval", "0.2",
            "--kind", "request", "--db", str(db), "--json", obj=obj,
        )
    )  # fmt: skip
    rows = _json_lines(result)
    assert [r["kind"] for r in rows] == ["request"] * 6
    assert len(naps) == 6
    assert set(naps) == {0.2}


def test_cli_tail_follow_stops_after_max_polls_without_events(
    run: Run, db: str, ids: dict[str, str], clock: Clock
) -> None:
    obj = CliContext(clock=clock, sleep=lambda s: None, max_polls=3)
    result = _ok(run("audit", "tail", "-f", "-n", "1", "--db", str(db), obj=obj))
    header, *lines = result.stdout.splitlines()
    assert header.split()[:4] == ["seq", "time", "kind", "task"]
    assert len(lines) == 1  # the newest event, then nothing new
    assert lines[0].split()[4] == ids["summary"]  # piped: the full task id
    assert lines[0].index(ids["summary"]) == header.index("task")  # aligned under its name


def test_cli_tail_follow_on_a_terminal_prints_coloured_lines(
    run: Run, guard: tg.Guard, db: str, ids: dict[str, str], clock: Clock
) -> None:
    get = tg.guard(kv_get, guard)

    def writer(seconds: float) -> None:
        with guard.task("process-job", job_id="42"):
            get.invoke({"key": "agents:jobs:99:input"})  # denied: another job

    obj = CliContext(clock=clock, sleep=writer, force_terminal=True, max_polls=5)
    result = _ok(
        run("audit", "tail", "-f", "-n", "0", "--count", "1", "--kind", "denied", "--db", str(db),
            obj=obj)
    )  # fmt: skip
    header, *lines = result.stdout.splitlines()
    assert "seq" in header and "detail" in header
    assert len(lines) == 1
    assert "\x1b[1;31mDENIED" in lines[0]
    assert not set(lines[0]) & BOX


def test_cli_denied_lists_only_denials(run: Run, db: str, ids: dict[str, str]) -> None:
    rows = _json_lines(_ok(run("audit", "denied", "--db", str(db), "--json")))
    assert [(r["kind"], r["tool"]) for r in rows] == [("denied", "kv_set")]
    none = _ok(run("audit", "denied", "--db", str(db), "--identity", "summariser"))
    assert none.stdout == "no denials match\n"


# -- summary ------------------------------------------------------------------------------------


def test_cli_summary_with_config_shows_quota(
    run: Run, config_file: Path, ids: dict[str, str]
) -> None:
    out = _ok(run("audit", "summary", "--config", str(config_file), "--since", "1h")).stdout
    assert "by identity" in out and "by tool" in out
    runner = next(line for line in out.splitlines() if line.startswith("agent-runner"))
    assert "3/1000 calls (0%)" in runner
    assert "0.5/5 cost (10%)" in runner
    doc = json.loads(_ok(run("audit", "summary", "--config", str(config_file), "--json")).stdout)
    quota = doc["by_identity"][0]["quota"]
    assert quota["requests_per_day"] == {"used": 3, "limit": 1000}


def test_cli_summary_by_tool_without_config(run: Run, db: str, ids: dict[str, str]) -> None:
    doc = json.loads(_ok(run("audit", "summary", "--by", "tool", "--db", str(db), "--json")).stdout)
    assert "by_identity" not in doc
    assert {r["key"]: r["calls"] for r in doc["by_tool"]} == {"kv_get": 2, "kv_set": 2}


def test_cli_summary_lists_idle_identities(
    run: Run, config_file: Path, ids: dict[str, str], clock: Clock
) -> None:
    clock.advance(8 * 86400)
    doc = json.loads(_ok(run("audit", "summary", "--config", str(config_file), "--json")).stdout)
    assert {i["identity"] for i in doc["idle"]} == {"agent-runner", "summariser"}
    out = _ok(run("audit", "summary", "--config", str(config_file), "--idle-days", "30")).stdout
    assert "idle identities (no task in 30 days): none" in out


# -- verify -------------------------------------------------------------------------------------


def test_cli_verify_clean_trail(run: Run, config_file: Path, ids: dict[str, str]) -> None:
    doc = json.loads(_ok(run("audit", "verify", "--config", str(config_file), "--json")).stdout)
    assert doc["ok"] is True
    assert doc["signatures_checked"] is True
    out = _ok(run("audit", "verify", "--config", str(config_file))).stdout
    assert out.startswith("checked 13 events")
    assert "OK" in out.splitlines()[0]


def test_cli_verify_reads_the_checkpoints_of_the_config_even_with_db(
    run: Run, tmp_path: Path, clock: Clock, backend: str, request: pytest.FixtureRequest
) -> None:
    elsewhere = tmp_path / "anchors" / "trail.checkpoints"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(_config(tmp_path, backend, request, checkpoints=str(elsewhere))))
    with tg.Guard.from_config(path, clock=clock) as guard:
        build_trail(guard, clock)
        db = store_arg(guard)
    assert elsewhere.stat().st_size > 0
    result = _ok(run("audit", "verify", "--config", str(path), "--db", db, "--json"))
    doc = json.loads(result.stdout)
    assert doc["checkpoint_file"] == str(elsewhere)
    assert doc["ok"] and doc["checkpoints"] == len(elsewhere.read_text().splitlines())
    assert doc["unanchored"] == 0


def test_cli_verify_tampered_trail_exits_1(
    run: Run, config_file: Path, guard: tg.Guard, ids: dict[str, str]
) -> None:
    raw_sql(guard, "UPDATE events SET reason = 'nothing to see' WHERE kind = 'denied'")
    result = run("audit", "verify", "--config", str(config_file))
    assert result.exit_code == EXIT_FINDINGS
    assert "DAMAGED: modified" in result.stdout
    doc = json.loads(run("audit", "verify", "--config", str(config_file), "--json").stdout)
    assert doc["ok"] is False
    assert doc["damage"][0]["kind"] == "modified"


def test_cli_verify_with_jwks(
    run: Run, guard: tg.Guard, db: str, ids: dict[str, str], tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(guard.keys.jwks()))
    doc = json.loads(
        _ok(run("audit", "verify", "--db", str(db), "--jwks", str(jwks), "--json")).stdout
    )
    assert (doc["ok"], doc["signatures_checked"]) == (True, True)
    bare = json.loads(_ok(run("audit", "verify", "--db", str(db), "--json")).stdout)
    assert bare["signatures_checked"] is False


# -- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "csv", "html"])
def test_cli_export_to_a_file(
    run: Run, db: str, ids: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    target = tmp_path / f"export.{fmt}"
    result = _ok(run("audit", "export", "--format", fmt, "-o", str(target), "--db", str(db)))
    assert result.stdout == ""
    assert result.stderr.startswith("exported ")
    text = target.read_text()
    if fmt == "json":
        assert len(text.splitlines()) == 13
    elif fmt == "csv":
        assert text.startswith("seq,ts,task_id")
    else:
        assert text.startswith("<!DOCTYPE html>")
        assert ids["job"] in text


def test_cli_export_filters_by_task(run: Run, db: str, ids: dict[str, str]) -> None:
    out = _ok(run("audit", "export", "--task", ids["summary"], "--db", str(db), "--json"))
    assert {r["task_id"] for r in _json_lines(out)} == {ids["summary"]}


def test_cli_export_to_an_unwritable_path_is_a_clean_error(
    run: Run, db: str, ids: dict[str, str], tmp_path: Path
) -> None:
    result = run("audit", "export", "-o", str(tmp_path / "no" / "dir" / "x.json"), "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "cannot write" in result.stderr


# -- prune --------------------------------------------------------------------------------------


def test_cli_prune_then_verify_passes(
    run: Run, config_file: Path, guard: tg.Guard, ids: dict[str, str], clock: Clock
) -> None:
    clock.advance(3 * 86400)
    with guard.task("process-job", job_id="9"):
        pass
    dry = json.loads(
        _ok(run("audit", "prune", "--before", "2d", "--dry-run", "--config", str(config_file),
                "--json")).stdout
    )  # fmt: skip
    assert (dry["dry_run"], dry["removed"]) == (True, 13)
    out = _ok(run("audit", "prune", "--before", "2d", "--config", str(config_file))).stdout
    assert out.startswith("removed 13 events before seq 14, 2 ended tasks")
    verify = _ok(run("audit", "verify", "--config", str(config_file)))
    assert "OK" in verify.stdout.splitlines()[0]
    assert "were pruned" in verify.stdout


def test_cli_prune_needs_the_signing_key(run: Run, db: str, ids: dict[str, str]) -> None:
    result = run("audit", "prune", "--before", "1s", "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "pass --config or --key-file" in result.stderr


def test_cli_prune_with_key_file(
    run: Run,
    guard: tg.Guard,
    db: str,
    ids: dict[str, str],
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --config the record of the cut goes to the store's default checkpoint file:
    the guard's own on SQLite (<db>.checkpoints); on PostgreSQL this host's file under
    ./.toolguard, which verify is then given beside the guard's."""
    monkeypatch.chdir(tmp_path)
    clock.advance(3600)
    key = guard.config.resolve_path(guard.config.issuer.key_file)
    doc = json.loads(
        _ok(run("audit", "prune", "--before", "30m", "--db", str(db), "--key-file", str(key),
                "--json")).stdout
    )  # fmt: skip
    assert doc["removed"] == 13
    assert doc["checkpoints"] == str(guard.store.default_checkpoints())  # where the record went
    files = {guard.config.checkpoints_path, guard.store.default_checkpoints().resolve()}
    assert len(files) == (2 if guard.config.store_location.is_postgres else 1)
    if len(files) == 1:
        assert guard.audit.verify().ok
    given = [arg for path in sorted(files) for arg in ("--checkpoints", str(path))]
    report = json.loads(_ok(run("audit", "verify", "--db", db, *given, "--json")).stdout)
    assert report["ok"] and not report["damage"]


def test_cli_prune_writes_its_record_to_the_checkpoints_file_given_and_says_where(
    run: Run,
    guard: tg.Guard,
    db: str,
    ids: dict[str, str],
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    clock.advance(3600)
    key = guard.config.resolve_path(guard.config.issuer.key_file)
    own = guard.config.checkpoints_path  # the guard's file: verify needs no other
    out = _ok(run("audit", "prune", "--before", "30m", "--db", db, "--key-file", str(key),
                  "--checkpoints", str(own))).stdout  # fmt: skip
    assert f"the signed record of the cut is in {own}" in " ".join(out.split())
    assert not (tmp_path / ".toolguard").exists()  # nothing written beside the operator
    report = json.loads(
        _ok(run("audit", "verify", "--db", db, "--checkpoints", str(own), "--json")).stdout
    )
    assert report["ok"] and not report["damage"]


# -- revoke, enable -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_config", [False, True], ids=["db", "config"])
def test_cli_revoke_identity_disable_and_enable(
    run: Run, guard: tg.Guard, db: str, config_file: Path, with_config: bool
) -> None:
    where = ["--config", str(config_file)] if with_config else ["--db", str(db)]
    with guard.task("process-job", job_id="1") as active:
        doc = json.loads(
            _ok(run("revoke", "--identity", "agent-runner", "--disable", "--reason", "incident 9",
                    *where, "--json")).stdout
        )  # fmt: skip
        assert doc["ended"] == [active.task_id]
        assert doc["disabled"] is True
    with pytest.raises(tg.PolicyDenied, match="is disabled"):
        guard.task("process-job", job_id="2").start()
    out = _ok(run("enable", "agent-runner", *where)).stdout
    assert out == "enabled identity agent-runner\n"
    again = _ok(run("enable", "agent-runner", *where)).stdout
    assert again == "identity agent-runner is not disabled; nothing to enable\n"
    with guard.task("process-job", job_id="3") as task:
        assert task.status == "active"
    revoke = guard.audit.events(kind="revoke")[-1]
    assert (revoke.identity, revoke.reason) == ("agent-runner", "incident 9 (identity disabled)")
    assert guard.audit.events(kind="enable")[-1].reason == "re-enabled from the command line"


def test_cli_revoke_task_by_prefix_ends_it(
    run: Run, guard: tg.Guard, db: str, clock: Clock
) -> None:
    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="42") as task:
        out = _ok(run("revoke", "--task", task.task_id[:10], "--db", str(db))).stdout
        assert out.splitlines() == [
            f"revoked task {task.task_id}: 0 live credentials, 1 task",
            f"ended: {task.task_id}",
        ]
        reply = get.invoke({"key": JOB})
        assert "Denied by toolguard: the task was revoked" in reply


def test_cli_revoke_jti(run: Run, guard: tg.Guard, db: str) -> None:
    with guard.task("process-job", job_id="42"):
        permit = guard.authorize("kv_get", {"key": JOB})
        guard.finish(permit)
    jti = permit.credential.jti
    doc = json.loads(_ok(run("revoke", "--jti", jti, "--db", str(db), "--json")).stdout)
    assert doc["revoked"] == {"jti": jti}
    assert doc["live_credentials"] == 0  # its task had ended: already revoked
    assert doc["already_revoked"] is True
    verifier = guard.verifier()
    with pytest.raises(tg.CredentialRevoked):
        verifier.verify(permit.credential.token, operation="read", resource=JOB)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "give exactly one of --task, --identity or --jti", id="none"),
        pytest.param(["--task", "a", "--jti", "b"], "give exactly one", id="two"),
        pytest.param(["--jti", "b", "--disable"], "--disable goes with --identity", id="disable"),
    ],
)
def test_cli_revoke_usage_errors(run: Run, db: str, args: list[str], message: str) -> None:
    result = run("revoke", *args, "--db", str(db))
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_revoke_unknown_task(run: Run, db: str, ids: dict[str, str]) -> None:
    result = run("revoke", "--task", "nosuchtask", "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "no task 'nosuchtask'" in result.stderr


def test_cli_revoke_on_a_missing_database_creates_nothing(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "audit.db"
    result = run("revoke", "--identity", "x", "--db", str(missing))
    assert result.exit_code == EXIT_ERROR
    assert not missing.exists()


# -- keys ---------------------------------------------------------------------------------------


def test_cli_keys_create_rotate_jwks(run: Run, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing.pem"
    created = json.loads(_ok(run("keys", "create", "--key-file", str(key), "--json")).stdout)
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    again = run("keys", "create", "--key-file", str(key))
    assert again.exit_code == EXIT_ERROR
    assert "already exists" in again.stderr
    rotated = json.loads(
        _ok(run("keys", "rotate", "--key-file", str(key), "--keep", "10m", "--json")).stdout
    )
    assert rotated["retired"] == created["kid"]
    assert rotated["kid"] != created["kid"]
    jwks = json.loads(_ok(run("keys", "jwks", "--key-file", str(key))).stdout)
    assert {k["kid"] for k in jwks["keys"]} == {created["kid"], rotated["kid"]}
    assert not any("d" in k for k in jwks["keys"])  # public parts only


def test_cli_keys_create_es256(run: Run, tmp_path: Path) -> None:
    key = tmp_path / "es.pem"
    out = _ok(run("keys", "create", "--key-file", str(key), "--algorithm", "ES256")).stdout
    assert out.startswith("created ES256 key ")
    assert str(key) in out


def test_cli_keys_from_config(run: Run, config_file: Path, guard: tg.Guard, tmp_path: Path) -> None:
    jwks = json.loads(_ok(run("keys", "jwks", "--config", str(config_file))).stdout)
    assert [k["kid"] for k in jwks["keys"]] == [guard.keys.active.kid]


def test_cli_keys_jwks_of_a_missing_key_is_a_clean_error(run: Run, tmp_path: Path) -> None:
    result = run("keys", "jwks", "--key-file", str(tmp_path / "none.pem"))
    assert result.exit_code == EXIT_ERROR
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.output


# -- check --------------------------------------------------------------------------------------


def test_cli_check_valid_config(run: Run, config_file: Path) -> None:
    result = _ok(run("check", str(config_file)))  # warnings only: exit 0
    lines = result.stdout.splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in lines[:-1]] == ["[unused-tool]"] * 2
    assert lines[-1] == "Found 2 warnings. The config loads; --strict fails on warnings."


def test_cli_check_prints_every_problem_with_its_location(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "identities:\n  runner: {allow: {write: ['']}}\n"
        "tools: {kv_get: {operation: read, resource: '{key}'}}\n"
        "intents:\n  job: {identity: ghost, tools: [kv_get, kv_nope]}\n"
    )
    result = run("check", str(bad))
    assert result.exit_code == EXIT_FINDINGS
    doc = json.loads(run("check", str(bad), "--json").stdout)
    assert doc["ok"] is False and doc["errors"] == 3
    assert [(p["line"], p["col"], p["path"], p["severity"]) for p in doc["problems"]] == [
        (2, 20, "identities.runner.allow.write", "warning"),  # no tool performs write
        (2, 28, "identities.runner.allow.write[0]", "error"),
        (5, 19, "intents.job.identity", "error"),
        (5, 34, "intents.job.tools[0]", "warning"),  # the intent allows no read
        (5, 42, "intents.job.tools[1]", "error"),
    ]
    assert result.stdout.splitlines() == [
        f"{bad}:{p['line']}:{p['col']}: {p['severity']}: {p['path']}: {p['message']} [{p['code']}]"
        for p in doc["problems"]
    ] + ["Found 3 errors, 2 warnings."]


def test_cli_check_missing_file(run: Run, tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "none.yaml"))
    assert result.exit_code == EXIT_ERROR
    assert "does not exist" in result.stderr


def test_cli_check_schema(run: Run) -> None:
    schema = json.loads(_ok(run("check", "--schema")).stdout)
    assert "intents" in schema["properties"]
    assert "base_dir" not in schema["properties"]


def test_cli_check_needs_a_config_or_schema(run: Run) -> None:
    result = run("check")
    assert result.exit_code == 2
    assert "give a CONFIG file" in result.stderr


# -- times --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1h", 1_000_000.0 - 3600, id="duration"),
        pytest.param("90d", 1_000_000.0 - 90 * 86400, id="days"),
        pytest.param("2026-11-22", 1795305600.0, id="date"),
        pytest.param("2026-11-22T10:00:00Z", 1795341600.0, id="utc"),
        pytest.param("2026-11-22T12:00:00+02:00", 1795341600.0, id="offset"),
    ],
)
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, 1_000_000.0) == expected


def test_parse_when_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_when("last tuesday", 0.0)
