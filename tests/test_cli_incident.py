"""Incident commands resolve their target and say what they revoked (issue 10 item 16).

``toolguard revoke --task/--identity/--jti``, ``toolguard enable`` and ``Guard.revoke`` /
``Guard.enable``: a unique prefix (6+ characters) resolves to the full id, which is recorded;
an unknown target, an ambiguous or too short prefix is an error (exit 2) that records nothing;
the output counts the live credentials and the tasks (and delegated child tasks) revoked;
revoking what is already revoked says so (exit 0). Every trail is written by the real
pipeline on real files.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import BASE_CONFIG, Clock, make_config, raw_sql, store_arg
from langchain_core.tools import tool

import toolguard as tg
from toolguard.cli import EXIT_ERROR, CliContext, main
from toolguard.incident import MIN_PREFIX, Enablement, Revocation

JOB = "agents:jobs:42:input"


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return f"value of {key}"


def _config(tmp_path: Path, store: dict[str, str] | None = None) -> dict[str, Any]:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["allow"]["delegate"] = ["agents:jobs:*"]
    identities["dormant"] = {"owner": "data-platform", "allow": {"read": ["agents:jobs:*"]}}
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["allow"]["delegate"] = ["agents:jobs:{job_id}:*"]
    tools = {
        **BASE_CONFIG["tools"],
        "summarise": {"operation": "delegate", "resource": "agents:jobs:{job_id}:summary"},
    }
    return make_config(tmp_path, identities=identities, intents=intents, tools=tools, **store or {})


@pytest.fixture
def config_file(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Path:
    """The config as a file; with ``backend`` postgres its store is a new database of the test
    server (checkpoints in tmp_path)."""
    store = None
    if backend == "postgres":
        store = {
            "store": request.getfixturevalue("pg_url"),
            "checkpoints": str(tmp_path / "audit.db.checkpoints"),
        }
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(_config(tmp_path, store)))
    return path


@pytest.fixture
def guard(config_file: Path, clock: Clock) -> Iterator[tg.Guard]:
    with tg.Guard.from_config(config_file, clock=clock) as guard:
        yield guard


@pytest.fixture
def db(guard: tg.Guard) -> str:
    """The guard's database as ``--db`` takes it (a path or a PostgreSQL URL), created (with
    one ended task of agent-runner)."""
    with guard.task("process-job", job_id="7"):
        pass
    return store_arg(guard)


Run = Callable[..., Result]


@pytest.fixture
def run(clock: Clock) -> Run:
    def invoke(*args: str) -> Result:
        context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)  # never waits
        return CliRunner().invoke(main, list(args), obj=context)

    return invoke


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _read(guard: tg.Guard, task: tg.TaskSession) -> tg.Credential:
    """One allowed call in ``task``; returns its credential."""
    seen: list[tg.Credential] = []

    @tool("kv_get")
    def peek(key: str) -> str:
        """Read a key."""
        seen.append(tg.current_credential())
        return "v"

    guarded = tg.guard(peek, guard, on_deny="raise")
    task.carry(guarded.invoke)({"key": JOB})
    return seen[0]


def _revocations(guard: tg.Guard) -> list[tuple[str, str, str]]:
    rows = raw_sql(guard, "SELECT scope, value, by FROM revocations ORDER BY id")
    return [(r[0], r[1], r[2]) for r in rows]


def _events(guard: tg.Guard) -> int:
    return int(raw_sql(guard, "SELECT COUNT(*) FROM events")[0][0])


# -- --jti: the 8-character prefix the viewer prints ----------------------------------------


def test_revoke_jti_by_the_viewers_prefix_records_the_full_id(
    run: Run, guard: tg.Guard, db: str
) -> None:
    with guard.task("process-job", job_id="42") as task:
        credential = _read(guard, task)
        out = _ok(run("revoke", "--jti", credential.jti[:8], "--db", str(db))).stdout
        assert out.splitlines() == [
            f"revoked credential {credential.jti}: 1 live credential, 0 tasks"
        ]
        assert _revocations(guard)[-1] == ("jti", credential.jti, "cli")
        with pytest.raises(tg.CredentialRevoked):
            guard.verifier().verify(credential.token, operation="read", resource=JOB)


@pytest.mark.slow
@pytest.mark.parametrize("with_config", [False, True], ids=["db", "config"])
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        pytest.param("--jti", "nosuchcredential", "no credential 'nosuchcredential'", id="jti"),
        pytest.param("--task", "nosuchtask", "no task 'nosuchtask'", id="task"),
        pytest.param("--identity", "nobody", "no identity 'nobody'", id="identity"),
        pytest.param("--jti", "abc", "at least 6 characters", id="short-jti"),
        pytest.param("--task", "abc", "at least 6 characters", id="short-task"),
        pytest.param("--jti", "______", "no credential '______'", id="like-wildcards"),
        pytest.param("--jti", "%%%%%%", "no credential '%%%%%%'", id="like-percent"),
        pytest.param("--task", "\u202eevil", "control, format or surrogate", id="bidi"),
    ],
)
def test_revoke_an_unknown_target_exits_2_and_records_nothing(
    run: Run,
    guard: tg.Guard,
    db: str,
    config_file: Path,
    option: str,
    value: str,
    message: str,
    with_config: bool,
) -> None:
    with guard.task("process-job", job_id="42") as task:
        _read(guard, task)
    before = (_revocations(guard), _events(guard))
    where = ["--config", str(config_file)] if with_config else ["--db", str(db)]
    result = run("revoke", option, value, *where)
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.output
    assert (_revocations(guard), _events(guard)) == before


def test_revoke_an_ambiguous_prefix_lists_the_candidates(
    run: Run, guard: tg.Guard, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = iter(["abcdef01" + "0" * 24, "abcdef02" + "0" * 24])
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(next(ids)))
    jtis = iter(["Zq3-Ab_x" + "1" * 14, "Zq3-Ab_y" + "2" * 14])
    monkeypatch.setattr("toolguard.engine.new_jti", lambda: next(jtis))
    with (
        guard.task("process-job", job_id="42") as one,
        guard.task("process-job", job_id="42") as two,
    ):
        first = _read(guard, one)
        _read(guard, two)
        before = _revocations(guard)
        for option, prefix, full in [
            ("--task", "abcdef0", (one.task_id, two.task_id)),
            ("--jti", "Zq3-Ab_", ("Zq3-Ab_x" + "1" * 14, "Zq3-Ab_y" + "2" * 14)),
        ]:
            result = run("revoke", option, prefix, "--db", str(db))
            assert result.exit_code == EXIT_ERROR
            assert "is ambiguous" in result.stderr
            assert all(f in result.stderr for f in full)
        assert _revocations(guard) == before
        # one more character makes each unique
        out = _ok(run("revoke", "--jti", "Zq3-Ab_y", "--db", str(db), "--json")).stdout
        assert json.loads(out)["revoked"] == {"jti": "Zq3-Ab_y" + "2" * 14}
        guard.verifier().verify(first.token)  # the other credential stays valid
        assert _revocations(guard)[-1] == ("jti", "Zq3-Ab_y" + "2" * 14, "cli")


def test_a_jti_starting_with_a_dash_is_taken_as_the_value(
    run: Run, guard: tg.Guard, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("toolguard.engine.new_jti", lambda: "-p3sXYZabc_defghijklmno")
    with guard.task("process-job", job_id="42") as task:
        _read(guard, task)
        out = _ok(run("revoke", "--jti", "-p3sXYZ", "--db", str(db))).stdout
    assert out.startswith("revoked credential -p3sXYZabc_defghijklmno: 1 live credential")


def test_revoke_needs_a_reason(run: Run, guard: tg.Guard, db: str) -> None:
    before = _revocations(guard)
    result = run("revoke", "--identity", "agent-runner", "--reason", " ", "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "--reason must say why" in result.stderr
    assert _revocations(guard) == before
    with pytest.raises(ValueError, match="needs a reason"):
        guard.revoke(identity="agent-runner", reason="")


# -- counts ---------------------------------------------------------------------------------


def test_revoke_task_counts_live_credentials_tasks_and_delegated_children(
    run: Run, guard: tg.Guard, db: str
) -> None:
    with guard.task("process-job", job_id="42") as parent:
        child = parent.delegate("summarise-job", job_id="42").start()
        grandchild = child.delegate("summarise-job", job_id="42").start()
        creds = [_read(guard, t) for t in (parent, parent, grandchild)]
        doc = json.loads(
            _ok(run("revoke", "--task", parent.task_id[:8], "--db", str(db), "--json")).stdout
        )
        assert doc["revoked"] == {"task_id": parent.task_id}
        assert (doc["live_credentials"], doc["tasks"], doc["child_tasks"]) == (3, 1, 2)
        assert sorted(doc["credentials"]) == sorted(c.jti for c in creds)
        assert set(doc["ended"]) == {parent.task_id, child.task_id, grandchild.task_id}
        assert doc["already_revoked"] is False
        for cred in creds:
            with pytest.raises(tg.CredentialRevoked):
                guard.verifier().verify(cred.token)


def test_a_task_revocation_records_one_row_per_task(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as parent:
        child = parent.delegate("summarise-job", job_id="42").start()
        guard.revoke(task_id=parent.task_id, reason="incident 17")
    rows = guard.store.query(
        "SELECT value FROM revocations WHERE scope = 'task' AND reason = 'incident 17'"
    )
    assert sorted(r["value"] for r in rows) == sorted([parent.task_id, child.task_id])
    listed = [r for r in guard.audit.revocations() if r["reason"] == "incident 17"]
    assert sorted(r["value"] for r in listed) == sorted([parent.task_id, child.task_id])


def test_revoke_task_text_names_the_children(run: Run, guard: tg.Guard, db: str) -> None:
    with guard.task("process-job", job_id="42") as parent:
        child = parent.delegate("summarise-job", job_id="42").start()
        _read(guard, parent)
        _read(guard, child)
        out = _ok(run("revoke", "--task", parent.task_id, "--db", str(db))).stdout.splitlines()
    assert out[0] == (
        f"revoked task {parent.task_id}: 2 live credentials, 1 task (and 1 delegated child task)"
    )


def test_revoke_identity_counts_and_disables(
    run: Run, guard: tg.Guard, config_file: Path, clock: Clock
) -> None:
    with (
        guard.task("process-job", job_id="42") as one,
        guard.task("process-job", job_id="42") as two,
    ):
        _read(guard, one)
        _read(guard, two)
        _read(guard, two)
        out = _ok(
            run("revoke", "--identity", "agent-runner", "--disable", "--config", str(config_file))
        ).stdout.splitlines()
    assert out[0] == "revoked identity agent-runner: 3 live credentials, 2 tasks; disabled it"
    assert out[1].startswith("ended: ")
    assert set(out[1].removeprefix("ended: ").split(", ")) == {one.task_id, two.task_id}


def test_expired_credentials_are_not_counted_live(
    run: Run, guard: tg.Guard, db: str, clock: Clock
) -> None:
    with guard.task("process-job", job_id="42") as task:
        _read(guard, task)
        clock.advance(6 * 60)  # past the 5-minute credential ttl, inside the task's 15 minutes
        fresh = _read(guard, task)
        doc = json.loads(
            _ok(run("revoke", "--task", task.task_id, "--db", str(db), "--json")).stdout
        )
    assert (doc["live_credentials"], doc["credentials"]) == (1, [fresh.jti])


# -- already revoked ------------------------------------------------------------------------


def test_revoking_an_ended_task_says_it_was_already_revoked(
    run: Run, guard: tg.Guard, db: str
) -> None:
    with guard.task("process-job", job_id="42") as task:
        _read(guard, task)
    result = _ok(
        run("revoke", "--task", task.task_id[:8], "--reason", "incident 17", "--db", str(db))
    )
    assert result.stdout.startswith(f"revoked task {task.task_id}: 0 live credentials, 0 tasks")
    assert "(already revoked: the task ended (ok) at " in result.stdout
    assert _revocations(guard)[-1] == ("task", task.task_id, "cli")  # the new reason is recorded


def test_revoking_a_revoked_credential_twice(run: Run, guard: tg.Guard, db: str) -> None:
    with guard.task("process-job", job_id="42") as task:
        cred = _read(guard, task)
        _ok(run("revoke", "--jti", cred.jti, "--reason", "leaked", "--db", str(db)))
        doc = json.loads(_ok(run("revoke", "--jti", cred.jti, "--db", str(db), "--json")).stdout)
    assert doc["live_credentials"] == 0 and doc["already_revoked"] is True
    assert doc["already"].startswith("already revoked at ") and doc["already"].endswith(": leaked")


def test_an_earlier_reason_is_shown_as_one_printable_line(
    run: Run, guard: tg.Guard, db: str
) -> None:
    with guard.task("process-job", job_id="42") as task:
        cred = _read(guard, task)
        guard.revoke(jti=cred.jti, reason="leaked\u202e\nin a log" + "x" * 500)
        out = _ok(run("revoke", "--jti", cred.jti, "--db", str(db))).stdout
    assert out.count("\n") == 1 and "\u202e" not in out
    assert "already revoked at " in out and ": leaked??in a log" in out and out.endswith("...)\n")


# -- identities and enable ------------------------------------------------------------------


def test_an_identity_only_in_the_config_needs_the_config(
    run: Run, guard: tg.Guard, db: str, config_file: Path
) -> None:
    result = run("revoke", "--identity", "dormant", "--disable", "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert "pass --config" in result.stderr
    out = _ok(run("revoke", "--identity", "dormant", "--disable", "--config", str(config_file)))
    assert out.stdout.startswith("revoked identity dormant: 0 live credentials, 0 tasks; disabled")
    assert "(nothing was live)" in out.stdout
    # now the trail knows it: --db alone works
    _ok(run("enable", "dormant", "--db", str(db)))


@pytest.mark.parametrize("with_config", [False, True], ids=["db", "config"])
def test_enable_an_unknown_identity_exits_2(
    run: Run, guard: tg.Guard, db: str, config_file: Path, with_config: bool
) -> None:
    before = _events(guard)
    where = ["--config", str(config_file)] if with_config else ["--db", str(db)]
    result = run("enable", "nobody", *where)
    assert result.exit_code == EXIT_ERROR
    assert "no identity 'nobody'" in result.stderr
    assert _events(guard) == before


def test_enable_an_identity_that_is_not_disabled_writes_nothing(
    run: Run, guard: tg.Guard, db: str, config_file: Path
) -> None:
    before = _events(guard)
    doc = json.loads(
        _ok(run("enable", "agent-runner", "--config", str(config_file), "--json")).stdout
    )
    assert doc == {
        "enabled": "agent-runner",
        "reason": "re-enabled from the command line",
        "changed": False,
        "was_disabled_for": None,
    }
    assert _events(guard) == before


# -- the Python API -------------------------------------------------------------------------


def test_guard_revoke_returns_what_it_revoked(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42") as task:
        cred = _read(guard, task)
        result = guard.revoke(task_id=task.task_id[:MIN_PREFIX], reason="incident 17")
    assert isinstance(result, Revocation)
    assert (result.scope, result.target) == ("task", task.task_id)
    assert result.live_credentials == (cred.jti,)
    assert result.tasks == (task.task_id,) and result.child_tasks == ()
    # backward compatible: still the list of the ended task ids
    assert result == [task.task_id] and list(result) == [task.task_id] and len(result) == 1
    assert task.task_id in result
    assert result.summary() == f"revoked task {task.task_id}: 1 live credential, 1 task"


@pytest.mark.parametrize(
    "target",
    [
        {"task_id": "no-such-task"},
        {"identity": "nobody"},
        {"jti": "no-such-credential"},
        {"jti": ""},
        {"task_id": "12345"},
    ],
    ids=["task", "identity", "jti", "empty", "short"],
)
def test_guard_revoke_unknown_target_raises_and_records_nothing(
    guard: tg.Guard, db: str, target: dict[str, str]
) -> None:
    head = guard.audit.head_seq()
    with pytest.raises(tg.UnknownTarget) as caught:
        guard.revoke(**target, reason="incident 17")
    assert isinstance(caught.value, tg.ToolGuardError) and isinstance(caught.value, LookupError)
    assert caught.value.scope == {"task_id": "task"}.get(*target, next(iter(target)))
    assert guard.audit.head_seq() == head


def test_guard_enable_returns_an_enablement(guard: tg.Guard) -> None:
    assert guard.enable("agent-runner") == Enablement("agent-runner", "re-enabled", False)
    guard.revoke(identity="agent-runner", reason="incident", disable=True)
    done = guard.enable("agent-runner", reason="reviewed")
    assert done and done.was_disabled_for == "incident"
    with pytest.raises(tg.UnknownTarget, match="no identity 'nobody'"):
        guard.enable("nobody")


def test_exact_ids_shorter_than_a_prefix_are_accepted(
    guard: tg.Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The length rule is for prefixes: an id the store holds is taken whatever its length."""
    counter = itertools.count()
    monkeypatch.setattr("toolguard.engine.new_jti", lambda: f"j{next(counter)}")
    with guard.task("process-job", job_id="42") as task:
        _read(guard, task)
        assert guard.revoke(jti="j0").live_credentials == ("j0",)


# -- the incident path, CLI edges (issue 12) ------------------------------------------------

ANSI = "\x1b["


def _denied(guard: tg.Guard, task: tg.TaskSession, key: str) -> None:
    reply = task.carry(tg.guard(kv_get, guard).invoke)({"key": key})
    assert "Denied by toolguard" in reply


@pytest.mark.parametrize("fmt", ["html", "csv"])
def test_export_refuses_json_with_another_format(
    run: Run, guard: tg.Guard, db: str, tmp_path: Path, fmt: str
) -> None:
    report = tmp_path / "report.html"
    result = run("audit", "export", "--format", fmt, "-o", str(report), "--json", "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert f"--json means --format json; it cannot go with --format {fmt}" in result.stderr
    assert not report.exists()
    # --json alone, or with --format json, is JSON lines
    for extra in ([], ["--format", "json"]):
        out = _ok(run("audit", "export", "--json", *extra, "--db", str(db))).stdout
        assert all(json.loads(line)["seq"] for line in out.splitlines())


def test_csv_keeps_identifiers_exact_and_escapes_free_text(
    run: Run, guard: tg.Guard, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("toolguard.engine.new_jti", lambda: "-p3sXYZabc_defghijklmno")
    with guard.task("process-job", job_id="42") as task:
        _read(guard, task)
        with pytest.raises(tg.PolicyDenied):
            task.carry(guard.authorize)("=cmd|' /C calc'!A0", {"key": "-2+3"})
        with pytest.raises(tg.PolicyDenied):
            task.carry(guard.authorize)("kv_get", {"key": "-2+3"}, correlation_id="=1+2")
    out = _ok(run("audit", "export", "--format", "csv", "--db", str(db))).stdout
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(out)))
    request = next(r for r in rows if r["kind"] == "request")
    assert request["jti"] == "-p3sXYZabc_defghijklmno"  # an identifier: exactly as stored
    denials = [r for r in rows if r["kind"] == "denied"]
    assert denials[0]["tool"] == "'=cmd|' /C calc'!A0"  # model-written free text: escaped
    assert denials[1]["correlation_id"] == "'=1+2"  # an id column with formula text: escaped
    assert denials[1]["resources"] == '["-2+3"]'  # JSON text starts with [: no formula
    free = _csv_free_text()
    assert free == {"tool", "resources", "reason", "args", "error"}


def _csv_free_text() -> set[str]:
    from toolguard.export import _CSV_FREE_TEXT, _csv_cell

    assert _csv_cell("reason", "=cmd") == "'=cmd"
    assert _csv_cell("tool", "-x") == "'-x"
    assert _csv_cell("jti", "-p3s") == "-p3s"
    assert _csv_cell("identity", "-ops") == "-ops"
    assert _csv_cell("identity", "@ops") == "'@ops"  # '@' is no identifier character
    assert _csv_cell("identity", "=A1+1") == "'=A1+1"
    assert _csv_cell("cost", -1.5) == -1.5
    return set(_CSV_FREE_TEXT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["audit", "tasks", "--status", "bogus"], "'bogus' is not a status", id="status"
        ),
        pytest.param(["audit", "tail", "--kind", "bogus"], "'bogus' is not a kind", id="kind"),
        pytest.param(["audit", "tail", "-f", "--kind", "reqest"], "'reqest' is not a kind", id="f"),
    ],
)
def test_status_and_kind_values_are_validated(
    run: Run, guard: tg.Guard, db: str, args: list[str], message: str
) -> None:
    result = run(*args, "--db", str(db))
    assert result.exit_code == EXIT_ERROR
    assert message in result.stderr and "one of: " in result.stderr


def test_status_and_kind_found_in_the_trail_are_accepted(
    run: Run, guard: tg.Guard, db: str
) -> None:
    task = guard.task("process-job", job_id="42").start()
    task.end("handed-over")
    out = _ok(run("audit", "tasks", "--status", "handed-over", "--db", str(db), "--json")).stdout
    assert [json.loads(line)["task_id"] for line in out.splitlines()] == [task.task_id]
    assert _ok(run("audit", "tasks", "--status", "revoked", "--db", str(db))).stdout
    assert _ok(run("audit", "tail", "--kind", "task_end", "--db", str(db))).stdout


def test_no_color_works_after_the_subcommand(run: Run, guard: tg.Guard, db: str) -> None:
    with guard.task("process-job", job_id="42") as task:
        _denied(guard, task, "agents:jobs:43:input")
    assert ANSI in _ok(run("--color", "audit", "denied", "--db", str(db))).stdout
    assert ANSI in _ok(run("audit", "denied", "--db", str(db), "--color")).stdout
    plain = _ok(run("--color", "audit", "denied", "--db", str(db), "--no-color")).stdout
    assert ANSI not in plain and "DENIED" in plain
    assert "--no-color" in _ok(run("revoke", "--help")).stdout


def test_limit_0_means_no_limit_everywhere(run: Run, guard: tg.Guard, db: str) -> None:
    with guard.task("process-job", job_id="42") as task:
        for n in range(3):
            _denied(guard, task, f"agents:jobs:4{n + 3}:input")
    count = {
        limit: len(
            _ok(
                run("audit", "denied", "--limit", limit, "--db", str(db), "--json")
            ).stdout.splitlines()
        )
        for limit in ("1", "0")
    }
    assert count == {"1": 1, "0": 3}
    tasks = _ok(run("audit", "tasks", "--limit", "0", "--db", str(db), "--json")).stdout
    assert len(tasks.splitlines()) == 2
    for command in (["audit", "tasks"], ["audit", "denied"], ["audit", "export"]):
        assert "0: no limit" in " ".join(_ok(run(*command, "--help")).stdout.split())


def test_the_json_key_for_denials_is_denials_everywhere(
    run: Run, guard: tg.Guard, db: str, config_file: Path
) -> None:
    with guard.task("process-job", job_id="42") as task:
        _denied(guard, task, "agents:jobs:43:input")
    tasks = [
        json.loads(x)
        for x in _ok(run("audit", "tasks", "--db", str(db), "--json")).stdout.splitlines()
    ]
    assert all("denials" in t and "denied" not in t for t in tasks)
    assert sorted(t["denials"] for t in tasks) == [0, 1]
    show = json.loads(_ok(run("audit", "show", task.task_id, "--db", str(db), "--json")).stdout)
    assert "denied" not in show["task"]
    summary = json.loads(_ok(run("audit", "summary", "--db", str(db), "--json")).stdout)
    assert summary["by_identity"][0]["denials"] == 1


def test_plural_forms(run: Run, guard: tg.Guard, db: str, tmp_path: Path) -> None:
    with guard.task("summarise-job", job_id="42") as task:
        task.carry(tg.guard(kv_get, guard).invoke)({"key": JOB})
    summary = _ok(run("audit", "summary", "--db", str(db), "--by", "tool")).stdout
    assert "1 call" in summary and "1 calls" not in summary
    one = tmp_path / "one.json"
    config = make_config(tmp_path)
    config["identities"] = {"summariser": config["identities"]["summariser"]}
    config["tools"] = {"kv_get": config["tools"]["kv_get"]}
    config["intents"] = {"summarise-job": config["intents"]["summarise-job"]}
    one.write_text(json.dumps(config))
    assert _ok(run("check", str(one))).stdout == f"ok: {one}: 1 identity, 1 tool, 1 intent\n"
    out = tmp_path / "one.jsonl"
    result = _ok(run("audit", "export", "--task", task.task_id, "--decision", "allow",
                     "-o", str(out), "--db", str(db)))  # fmt: skip
    assert result.stderr == f"exported 1 event to {out}\n"


def test_read_only_commands_never_ask_for_a_writable_database(run: Run, tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    for args in (["audit", "tasks"], ["audit", "verify"], ["audit", "tail"], ["audit", "export"]):
        result = run(*args, "--db", str(junk))
        assert result.exit_code == EXIT_ERROR
        assert result.stderr.startswith(f"Error: {junk} cannot be read as a toolguard audit")
        assert "writable" not in result.stderr


@pytest.mark.sqlite_only  # a missing database file (an empty PostgreSQL one says `db migrate`)
def test_a_missing_db_given_with_db_does_not_say_pass_db(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    missing = tmp_path / "missing.db"
    given = run("audit", "tasks", "--db", str(missing))
    assert given.exit_code == EXIT_ERROR
    assert (
        given.stderr == f"Error: no audit database at {missing}; check the path given with --db\n"
    )
    from_config = run("audit", "tasks", "--config", str(config_file))
    assert "it is the store of the config" in from_config.stderr
    monkeypatch.setenv("TOOLGUARD_DB", str(missing))
    assert "it is $TOOLGUARD_DB" in run("audit", "tasks").stderr
    for result in (given, from_config):
        assert "pass --db" not in result.stderr
