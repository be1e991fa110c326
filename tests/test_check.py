"""``toolguard check``: every problem at once, like ruff, with ``file:line:col`` and its path.

Errors (the config does not load) and warnings (it loads, but part of it can never take effect)
in one run, one line each, then ``Found N errors, M warnings.``; ``--strict`` fails on warnings;
``--json`` lists the same problems; exit 0 clean, 1 problems, 2 nothing to check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import Clock, make_config
from hypothesis import given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard.cli import EXIT_ERROR, EXIT_FINDINGS, CliContext, main
from toolguard.config import load_config
from toolguard.configcheck import CODES, check_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = Path(__file__).resolve().parent.parent / "docs"
_QUICKSTART = (EXAMPLES / "quickstart.yaml").read_text(encoding="utf-8")

# Three layers of mistakes (an unset variable, values and keys, references) and every kind of
# warning; today's check stopped at the first layer and said "ok" to the warnings.
BAD = """\
store: ${TOOLGUARD_TEST_UNSET}/audit.db
identities:
  agent-runner:
    allow:
      read: ["agents:context:*", "agents:jobs:*"]
    limits: {writes_per_minute: -1}
  paused: {disabled: true, allow: {read: ["agents:*"]}}
tools:
  kv_get: {operation: read, resource: "{key}"}
  kv_set: {operation: write, resource: "{key}"}
  kv_delete: {operation: delete, resource: "{key}"}
intents:
  process-job:
    identity: agent-runner
    tools: [kv_get, kv_set, kv_scan]
    allow:
      read: ["agents:jobs:{job_id}:*", "agents:{jobid}:*", "billing:*"]
      writ: ["agents:jobs:{job_id}:*"]
      write: ["agents:jobs:{job_id}:*"]
    ttl: 15 minutes
    budgt: {max_calls: 3}
  read-context:
    identity: ghost
    tools: [kv_get]
    allow: {read: ["agents:context:*"], delete: ["agents:context:*"]}
"""

JOBID = '"agents:{jobid}:*"'
# (line, the text the column points at, path, severity, code)
EXPECTED = [
    (1, "${TOOLGUARD_TEST_UNSET}", "store", "error", "env-unset"),
    (6, "-1", "identities.agent-runner.limits.writes_per_minute", "error", "invalid"),
    (7, "true", "identities.paused.disabled", "warning", "disabled-identity"),
    (11, "kv_delete", "tools.kv_delete", "warning", "unused-tool"),
    (15, "kv_scan", "intents.process-job.tools[2]", "error", "undefined-tool"),
    (17, JOBID, "intents.process-job.allow.read[1]", "warning", "wider-than-identity"),
    (17, JOBID, "intents.process-job.allow.read[1]", "warning", "placeholder-typo"),
    (17, '"billing:*"', "intents.process-job.allow.read[2]", "warning", "wider-than-identity"),
    (18, "writ", "intents.process-job.allow.writ", "warning", "unused-operation"),
    (19, "write", "intents.process-job.allow.write", "warning", "wider-than-identity"),
    (20, "15 minutes", "intents.process-job.ttl", "error", "invalid"),
    (21, "budgt", "intents.process-job.budgt", "error", "unknown-key"),
    (23, "ghost", "intents.read-context.identity", "error", "undefined-identity"),
    (25, "delete", "intents.read-context.allow.delete", "warning", "unreachable"),
]


def _col(text: str, line: int, token: str) -> int:
    return text.splitlines()[line - 1].index(token) + 1


@pytest.fixture
def run(clock: Clock) -> Any:
    def invoke(*args: str) -> Result:
        context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
        return CliRunner().invoke(main, list(args), obj=context)

    return invoke


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "toolguard.yaml"
    path.write_text(BAD, encoding="utf-8")
    return path


def _rows(result: Result) -> list[dict[str, Any]]:
    doc = json.loads(result.stdout)
    rows: list[dict[str, Any]] = doc["problems"]
    return rows


# -- every problem, at once, where it is ---------------------------------------------------------


def test_every_problem_is_reported_in_one_run_at_its_line_and_column(run: Any, bad: Path) -> None:
    result = run("check", "--json", str(bad))
    assert result.exit_code == EXIT_FINDINGS
    got = [(p["line"], p["col"], p["path"], p["severity"], p["code"]) for p in _rows(result)]
    assert got == [
        (line, _col(BAD, line, token), path, severity, code)
        for line, token, path, severity, code in EXPECTED
    ]


def test_the_text_lines_look_like_ruff_and_end_with_a_count(run: Any, bad: Path) -> None:
    result = run("check", str(bad))
    assert result.exit_code == EXIT_FINDINGS
    lines = result.stdout.splitlines()
    assert len(lines) == len(EXPECTED) + 1
    for line, (number, token, path, severity, code) in zip(lines, EXPECTED):
        assert line.startswith(f"{bad}:{number}:{_col(BAD, number, token)}: {severity}: {path}: ")
        assert line.endswith(f" [{code}]")
    assert lines[-1] == "Found 6 errors, 8 warnings."


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("intents.process-job.allow.writ", ["'writ'", "did you mean 'write'?"]),
        ("intents.process-job.allow.write", ["identity 'agent-runner' allows no write"]),
        ("intents.process-job.allow.read[2]", ["'billing:*' is outside everything", "never"]),
        ("intents.process-job.budgt", ["did you mean 'budget'?"]),
        ("intents.read-context.allow.delete", ["none of the intent's tools performs delete"]),
        ("tools.kv_delete", ["not listed by any intent"]),
        ("identities.paused.disabled", ["identity paused is disabled by the config"]),
    ],
)
def test_messages_say_what_is_wrong_and_what_to_do(
    run: Any, bad: Path, path: str, words: list[str]
) -> None:
    messages = [p["message"] for p in _rows(run("check", "--json", str(bad))) if p["path"] == path]
    assert len(messages) == 1
    for word in words:
        assert word in messages[0]


def test_a_placeholder_one_character_off_names_the_usual_spelling(run: Any, bad: Path) -> None:
    rows = _rows(run("check", "--json", str(bad)))
    (typo,) = [p for p in rows if p["code"] == "placeholder-typo"]
    assert "{jobid} differs by one character from {job_id}" in typo["message"]
    assert "intents.process-job.allow.read[0]" in typo["message"]


def test_a_key_pointed_at_is_the_key_and_a_value_is_the_value(bad: Path) -> None:
    lines = BAD.splitlines()
    for f in check_config(bad).findings:
        assert f.line is not None and f.col is not None
        at = lines[f.line - 1][f.col - 1 :]
        last = f.path.rsplit(".", 1)[-1]
        if f.code in ("unused-tool", "unused-operation", "unknown-key") or f.path.endswith(
            ".allow.delete"
        ):
            assert at.startswith(last), (f, at)


def test_json_lists_the_same_problems_with_every_field(run: Any, bad: Path) -> None:
    doc = json.loads(run("check", "--json", str(bad)).stdout)
    assert doc["ok"] is False and doc["errors"] == 6 and doc["warnings"] == 8
    assert doc["source"] == str(bad) and doc["disabled_identities"] == ["paused"]
    assert (doc["identities"], doc["tools"], doc["intents"]) == (2, 3, 2)
    for row in doc["problems"]:
        assert set(row) == {"file", "line", "col", "path", "severity", "code", "message"}
        assert row["file"] == str(bad) and CODES[row["code"]] == row["severity"]
    text = run("check", str(bad)).stdout.splitlines()[:-1]
    assert [line.split(": ", 3)[-1] for line in text] == [
        f"{p['message']} [{p['code']}]" for p in doc["problems"]
    ]


def test_guard_from_config_raises_the_errors_only_each_with_file_line_col(bad: Path) -> None:
    with pytest.raises(tg.ConfigError) as info:
        tg.Guard.from_config(bad)
    lines = str(info.value).splitlines()
    errors = [e for e in EXPECTED if e[3] == "error"]
    assert lines[0] == f"{len(errors)} problem(s) in {bad}:"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [
        f"{bad}:{n}:{_col(BAD, n, token)}" for n, token, *_ in errors
    ]
    assert [loc for loc, _ in info.value.problems] == [e[2] for e in errors]


def test_warnings_do_not_stop_a_guard(tmp_path: Path) -> None:
    text = BAD.split("intents:")[0].replace("${TOOLGUARD_TEST_UNSET}/", "")
    text = text.replace("writes_per_minute: -1", "writes_per_minute: 1")
    path = tmp_path / "toolguard.yaml"
    path.write_text(text, encoding="utf-8")
    report = check_config(path)
    assert report.warnings and not report.errors
    assert load_config(path) == report.config


# -- severity, --strict, exit codes --------------------------------------------------------------


@pytest.mark.parametrize("name", ["quickstart.yaml", "agents.yaml"])
def test_the_examples_are_clean(run: Any, name: str) -> None:
    result = run("check", str(EXAMPLES / name))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {EXAMPLES / name}: ")
    assert len(result.stdout.splitlines()) == 1
    assert (
        json.loads(run("check", "--json", "--strict", str(EXAMPLES / name)).stdout)["problems"]
        == []
    )


def test_strict_fails_on_warnings(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "toolguard.yaml"
    text = _QUICKSTART.replace("\ntools:", "\ntools:\n  spare: {operation: read, resource: x}")
    path.write_text(text, encoding="utf-8")
    result = run("check", str(path))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1].startswith("Found 1 warning.")
    strict = run("check", "--strict", str(path))
    assert strict.exit_code == EXIT_FINDINGS
    assert "warning: tools.spare:" in strict.stdout
    doc = json.loads(run("check", "--strict", "--json", str(path)).stdout)
    assert doc["ok"] is False and doc["strict"] is True and doc["warnings"] == 1


def test_a_yaml_syntax_error_is_one_readable_line(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "toolguard.yaml"
    path.write_text("identities:\n  a:\n   allow: {read: [x}\ntools: {}\n", encoding="utf-8")
    result = run("check", str(path))
    assert result.exit_code == EXIT_FINDINGS
    assert result.stdout.splitlines() == [
        f"{path}:3:20: error: not valid YAML: expected ',' or ']', but got '}}' (while parsing a "
        "flow sequence on line 3) [syntax]",
        "Found 1 error.",
    ]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "text", "line", "col"),
    [
        ("bad.json", '{"identities": {\n  "a": [1,]\n}}', 2, 11),
        ("bad.toml", "[identities.a]\nowner = \n", 2, 9),
    ],
)
def test_json_and_toml_syntax_errors_have_a_position(
    run: Any, tmp_path: Path, name: str, text: str, line: int, col: int
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    (row,) = _rows(run("check", "--json", str(path)))
    assert (row["line"], row["col"], row["code"]) == (line, col, "syntax")


def test_a_json_file_gives_positions_and_a_toml_file_none(tmp_path: Path) -> None:
    data = {"identities": {"a": {"owner": 3}}, "tools": {}, "intents": {}}
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    (f,) = check_config(path).findings
    assert (f.path, f.line, f.col) == ("identities.a.owner", 4, 16)
    path = tmp_path / "toolguard.toml"
    path.write_text("[identities.a]\nowner = 3\n", encoding="utf-8")
    (f,) = check_config(path).findings
    assert (f.path, f.line, f.col) == ("identities.a.owner", None, None)
    assert f.format() == f"{path}: error: identities.a.owner: {f.message} [invalid]"


def test_a_json_file_is_read_as_yaml_only_for_positions_a_finding_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a JSON file's positions with YAML took ~50 times json's time on every load;
    it is done only when a finding is reported (or a key is written twice)."""
    from toolguard import configcheck

    reads: list[str] = []
    real = configcheck._yaml_marks
    monkeypatch.setattr(configcheck, "_yaml_marks", lambda *a: reads.append("yaml") or real(*a))
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(make_config(tmp_path), indent=2), encoding="utf-8")
    assert check_config(path, warnings=False).findings == () and reads == []
    tg.Guard(path).close()
    assert reads == []
    data = {"identities": {"a": {"owner": 3}}, "tools": {}, "intents": {}}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    (f,) = check_config(path).findings
    assert (f.path, f.line, f.col) == ("identities.a.owner", 4, 16) and reads == ["yaml"]


def test_a_key_written_twice_in_a_json_file_is_an_error_with_both_positions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "toolguard.json"
    path.write_text('{"store": "a.db",\n "store": "b.db"}', encoding="utf-8")
    findings = check_config(path).findings
    assert [(f.code, f.path, f.line, f.col) for f in findings] == [("duplicate-key", "store", 2, 2)]
    assert "first at 1:2" in findings[0].message
    with pytest.raises(tg.ConfigError, match=r"toolguard\.json:2:2: .*written twice"):
        load_config(path)


def test_a_missing_file_is_exit_2(run: Any, tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.strip() == f"Error: config file {tmp_path / 'nope.yaml'} does not exist"


def test_a_folder_is_exit_2(run: Any, tmp_path: Path) -> None:
    result = run("check", "--config", str(tmp_path))
    assert result.exit_code == EXIT_ERROR
    assert "is a folder" in result.stderr or "is a directory" in result.stderr


# -- which config --------------------------------------------------------------------------------


def test_without_an_argument_the_config_is_found(
    run: Any, tmp_path: Path, bad: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # ./toolguard.yaml
    result = run("check")
    assert result.exit_code == EXIT_FINDINGS
    assert result.stdout.startswith("toolguard.yaml:1:8: error: store:")
    monkeypatch.setenv("TOOLGUARD_CONFIG", str(EXAMPLES / "quickstart.yaml"))
    assert run("check").exit_code == 0  # $TOOLGUARD_CONFIG wins over ./toolguard.yaml
    assert run("check", "--config", str(bad)).exit_code == EXIT_FINDINGS  # --config wins
    monkeypatch.setenv("TOOLGUARD_CONFIG", str(tmp_path / "gone.yaml"))
    result = run("check")
    assert result.exit_code == EXIT_ERROR and "TOOLGUARD_CONFIG names" in result.stderr


def test_without_any_config_it_is_a_usage_error(run: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("check")
    assert result.exit_code == EXIT_ERROR
    assert "no config to check" in result.stderr and "--schema" in result.stderr


def test_a_config_given_twice_differently_is_a_usage_error(run: Any, bad: Path) -> None:
    result = run("check", str(bad), "--config", str(EXAMPLES / "quickstart.yaml"))
    assert result.exit_code == EXIT_ERROR and "give the config once" in result.stderr


# -- kinds of problems, one at a time ------------------------------------------------------------


def _findings(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    path = tmp_path / "toolguard.yaml"
    path.write_text(text, encoding="utf-8")
    return [(f.line, f.path, f.code) for f in check_config(path).findings]


_BASE = """\
identities:
  runner: {allow: {read: ["a:*"], write: ["a:{id}:*"]}}
tools:
  get: {operation: read, resource: "{key}"}
  put: {operation: write, resource: "{key}"}
intents:
  job:
    identity: runner
    tools: [get, put]
    allow: {read: ["a:{id}:*"], write: ["a:{id}:out"]}
"""


def test_the_base_of_these_tests_is_clean(tmp_path: Path) -> None:
    assert _findings(tmp_path, _BASE) == []


def test_a_duplicate_key_is_an_error_and_a_yaml_merge_is_not(tmp_path: Path) -> None:
    text = _BASE.replace("    tools: [get, put]\n", "    tools: [get, put]\n    tools: [get]\n")
    assert (10, "intents.job.tools", "duplicate-key") in _findings(tmp_path, text)
    merged = _BASE.replace(
        '  get: {operation: read, resource: "{key}"}',
        '  get: &get {operation: read, resource: "{key}"}',
    ).replace('  put: {operation: write, resource: "{key}"}', "  put: {<<: *get, operation: write}")
    assert _findings(tmp_path, merged) == []


def test_a_duplicate_key_refuses_the_load(tmp_path: Path) -> None:
    path = tmp_path / "toolguard.yaml"
    path.write_text(_BASE.replace('["a:*"]', '["a:*"], read: ["b:*"]'), encoding="utf-8")
    with pytest.raises(tg.ConfigError, match=r"toolguard\.yaml:2:\d+: .*written twice"):
        load_config(path)


def test_an_intent_pattern_covered_by_a_placeholder_ceiling_is_not_wider(tmp_path: Path) -> None:
    text = _BASE.replace('write: ["a:{id}:out"]', 'write: ["a:{id}:*", "a:{other}:x"]')
    assert _findings(tmp_path, text) == [(10, "intents.job.allow.write[1]", "wider-than-identity")]


def test_a_tool_whose_operation_the_intent_does_not_allow(tmp_path: Path) -> None:
    text = _BASE.replace(', write: ["a:{id}:out"]}', "}")
    assert _findings(tmp_path, text) == [(9, "intents.job.tools[1]", "unreachable")]


def test_a_per_operation_budget_no_tool_of_the_intent_performs(tmp_path: Path) -> None:
    text = _BASE + "    budget: {per_operation: {write: 1, delete: 1}}\n"
    text = text.replace("  put:", "  drop: {operation: delete, resource: x}\n  put:")
    assert _findings(tmp_path, text) == [
        (5, "tools.drop", "unused-tool"),
        (12, "intents.job.budget.per_operation.delete", "unreachable"),
    ]


@pytest.mark.parametrize(
    ("first", "second", "typo"),
    [("job_id", "jobid", True), ("job_id", "job_ID", True), ("job_id", "job_if", True),
     ("tenant", "tenants", True), ("a", "b", False), ("id", "ids", False),
     ("job_id", "user_id", False)],
)  # fmt: skip
def test_placeholders_one_character_apart(
    tmp_path: Path, first: str, second: str, typo: bool
) -> None:
    patterns = f'["a:{{{first}}}:*", "a:{{{first}}}:x:*", "a:{{{second}}}"]'
    text = _BASE.replace('["a:{id}:*"]', patterns)
    text = text.replace('write: ["a:{id}:out"]', f'write: ["a:{{{first}}}:out"]')
    text = text.replace('["a:*"], write: ["a:{id}:*"]', '["a:*"], write: ["a:*"]')
    found = _findings(tmp_path, text)
    assert found == ([(10, "intents.job.allow.read[2]", "placeholder-typo")] if typo else [])


def test_every_code_is_documented() -> None:
    cli = (DOCS / "cli.md").read_text(encoding="utf-8")
    for code in CODES:
        assert f"`{code}`" in cli, code


def test_a_mapping_is_checked_the_same_way_without_positions() -> None:
    data = yaml.safe_load(BAD.replace("${TOOLGUARD_TEST_UNSET}/", ""))
    report = check_config(data)
    assert report.findings and all(f.line is None and f.file is None for f in report.findings)
    assert {f.code for f in report.findings} == {code for *_, code in EXPECTED} - {"env-unset"}


# -- whatever the file holds, a report -----------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(_QUICKSTART) - 1),
            st.sampled_from(["", " ", ":", "-", "{", "}", "[", "]", "\n", "*", "x", "&a", "*a"]),
            st.integers(min_value=0, max_value=3),
        ),
        min_size=1,
        max_size=4,
    )
)
@pytest.mark.slow
def test_any_damaged_config_gives_a_report_with_positions_in_the_file(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, str, int]]
) -> None:
    text = _QUICKSTART
    for at, insert, cut in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut :]
    path = tmp_path_factory.mktemp("fuzz") / "toolguard.yaml"
    path.write_text(text, encoding="utf-8")
    report = check_config(path)
    lines = text.split("\n")
    for f in report.findings:
        assert f.code in CODES and f.message
        if f.line is not None:
            assert 1 <= f.line <= len(lines) + 1 and f.col is not None and f.col >= 1
    try:
        loaded = load_config(path)
    except tg.ConfigError as exc:
        assert report.errors and len(exc.problems) == len(report.errors)
    else:
        assert not report.errors and loaded == report.config


@pytest.mark.slow
def test_long_patterns_cannot_keep_the_check_busy(tmp_path: Path) -> None:
    long = "a" * 300_000  # comparing these two pattern by pattern would take 9 * 10^10 steps
    path = tmp_path / "toolguard.yaml"
    path.write_text(
        f'identities: {{a: {{allow: {{read: ["{long}*"]}}}}}}\n'
        "tools: {t: {operation: read, resource: x}}\n"
        f'intents: {{i: {{identity: a, tools: [t], allow: {{read: ["*{long}"]}}}}}}\n',
        encoding="utf-8",
    )
    started = time.perf_counter()
    assert check_config(path).errors == []
    assert time.perf_counter() - started < 5.0
