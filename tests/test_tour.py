"""The README's tour works literally, top to bottom, as a person would follow it.

In one empty folder: every block of "A five-minute tour" in order. A block marked
``<!-- file: NAME -->`` is saved as NAME (``toolguard.yaml``, ``tour.py``); every line of a
```sh block is run as a shell command, with ``toolguard`` and ``python`` on PATH as after
``. .venv/bin/activate``. ``TASK_ID`` is the id that ``python tour.py`` printed, as the README
says. Each command must exit 0 and print its key lines; the checks below name them.

(tests/test_readme.py checks the parsing and runs the Python blocks that are not files; this
test runs the story, which is how a person meets it.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import README, Block, parse

import toolguard as tg

ROOT = Path(__file__).resolve().parent.parent
TOUR_HEADING = "## A five-minute tour"

# Key lines per command (matched against the start of the command line): what a person
# following the tour is told to expect.
EXPECT: dict[str, list[str]] = {
    "toolguard check toolguard.yaml": [],  # exit 0 says it: no problem found
    "python tour.py": [
        r"^ok$",
        r"^done$",
        r"^Denied by toolguard: write on 'agents:jobs:43:result' is outside what this task",
        r"^task [0-9a-f]{32} ended: ok$",
        r"task_end",
    ],
    "toolguard audit tasks": [r"process-job\s+agent-runner\s+ok"],
    "toolguard audit show": [r"agents:jobs:43:result", r"task_end"],
    "toolguard audit denied": [r"agents:jobs:43:result"],
    "toolguard audit verify": [r"OK"],
    "toolguard audit export --format html": [],
    "toolguard revoke --task": [r"revoked"],
    "toolguard revoke --identity": [r"revoked .*agent-runner.*disabled"],
    "toolguard enable": [r"enabled .*agent-runner"],
}
# Exit codes other than 0 that a command of the tour may give. The tour's task has ended (its
# credentials are revoked already), so revoking it again may be reported as such.
ALSO_OK: dict[str, set[int]] = {"toolguard revoke --task": {1}}
# What must not appear (stdout or stderr): verify finds the config, so it checks signatures.
REFUSE: dict[str, list[str]] = {"toolguard audit verify": [r"no public keys"]}


def tour_blocks() -> list[Block]:
    """The fenced blocks of the README's tour section, in order."""
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == TOUR_HEADING)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [b for b in parse(text) if start < b.line <= end and not b.skip]


def commands(block: Block) -> list[str]:
    """The commands of a ```sh block, without their trailing comments."""
    out = []
    for line in block.code.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command and not command.startswith("#"):
            out.append(command)
    return out


def _path_with_commands(bin_dir: Path) -> str:
    """A PATH with ``toolguard`` and ``python`` as an activated virtualenv would have them."""
    bin_dir.mkdir()
    for name, run in (
        ("toolguard", f'exec "{sys.executable}" -m toolguard "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
    ):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{run}\n", encoding="utf-8")
        script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


def _env(bin_dir: Path, home: Path) -> dict[str, str]:
    """A clean environment: no TOOLGUARD_* variables, this checkout's code first."""
    paths = [ROOT, ROOT / "integrations" / "langchain", ROOT / "integrations" / "starlette"]
    return {
        "PATH": _path_with_commands(bin_dir),
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
        "PYTHONUTF8": "1",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }


def test_the_tour_has_the_story_it_promises(tmp_path: Path) -> None:
    """One story: the config of step 1 is the one step 2 loads and the commands find."""
    blocks = tour_blocks()
    files = [b.file for b in blocks if b.file]
    assert files[:2] == ["toolguard.yaml", "tour.py"]
    yaml_block, tour = (next(b for b in blocks if b.file == name) for name in files[:2])
    (tmp_path / "toolguard.yaml").write_text(yaml_block.code, encoding="utf-8")
    config = tg.load_config(tmp_path / "toolguard.yaml")
    assert config.store_path == tmp_path / ".toolguard" / "audit.db"
    assert 'Guard.from_config("toolguard.yaml")' in tour.code
    run = [c for b in blocks if b.language == "sh" for c in commands(b)]
    assert run[0] == "toolguard check toolguard.yaml"
    assert run[1] == "python tour.py"
    for command in run[2:]:
        assert command.startswith("toolguard "), command
        assert "--db" not in command and "--config" not in command, command
    for prefix in EXPECT:
        assert any(c.startswith(prefix) for c in run), f"the tour lost {prefix!r}"


@pytest.mark.slow
def test_the_readme_tour_runs_top_to_bottom(tmp_path: Path) -> None:
    folder = tmp_path / "my-agent"
    folder.mkdir()
    env = _env(tmp_path / "bin", tmp_path)
    task_id: str | None = None
    ran: list[str] = []
    for block in tour_blocks():
        if block.file:
            (folder / block.file).write_text(block.code, encoding="utf-8")
            continue
        if block.language != "sh":
            continue
        for command in commands(block):
            if "TASK_ID" in command:
                assert task_id is not None, f"{command!r} comes before the task ran"
                command = command.replace("TASK_ID", task_id)
            result = subprocess.run(
                command,
                shell=True,
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            where = f"README.md:{block.line}: {command}\n{result.stdout}\n{result.stderr}"
            allowed = {0}.union(*(v for k, v in ALSO_OK.items() if command.startswith(k)))
            assert result.returncode in allowed, where
            assert "Traceback" not in result.stderr, where
            expected = next((v for k, v in EXPECT.items() if command.startswith(k)), None)
            assert expected is not None, f"no expectations for {command!r}; add them to EXPECT"
            for pattern in expected:
                assert re.search(pattern, result.stdout, re.MULTILINE), (pattern, where)
            for prefix, patterns in REFUSE.items():
                for pattern in patterns if command.startswith(prefix) else []:
                    assert not re.search(pattern, result.stdout + result.stderr), (pattern, where)
            found = re.search(r"^task ([0-9a-f]{32}) ended", result.stdout, re.MULTILINE)
            if found:
                task_id = found.group(1)
            ran.append(command)

    assert ran[:2] == ["toolguard check toolguard.yaml", "python tour.py"]
    # The files landed where toolguard.yaml said, next to it, and nowhere else.
    assert (folder / ".toolguard" / "audit.db").is_file()
    assert (folder / ".toolguard" / "signing-key.pem").stat().st_mode & 0o077 == 0
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert task_id is not None and task_id in page
    with tg.Guard.from_config(folder / "toolguard.yaml") as guard:
        assert guard.audit.verify().ok
        statuses = {t["intent"]: t["status"] for t in guard.audit.tasks()}
    assert statuses == {"process-job": "ok"}


# -- the CLI finds the config as the tour needs: --config, $TOOLGUARD_CONFIG, ./toolguard.yaml --

PROJECT_CONFIG = """\
store: data/trail.db            # not the CLI's default: found only through the config
issuer: {audience: kv-service, key_file: keys/signing.pem}
identities:
  agent-runner: {allow: {read: ["agents:*"], write: ["agents:*"]}}
tools:
  kv_set: {operation: write, resource: "{key}"}
intents:
  process-job:
    identity: agent-runner
    tools: [kv_set]
    allow: {write: ["agents:jobs:{job_id}:*"]}
"""

# Every command that takes --config or --db, with arguments that work on the project's trail.
DISCOVERING = {
    "audit tasks": ["audit", "tasks"],
    "audit show": ["audit", "show", "TASK"],
    "audit tail": ["audit", "tail"],
    "audit denied": ["audit", "denied"],
    "audit summary": ["audit", "summary"],
    "audit verify": ["audit", "verify"],
    "audit export": ["audit", "export", "--format", "csv"],
    "audit prune": ["audit", "prune", "--before", "30d", "--dry-run"],
    "revoke": ["revoke", "--task", "TASK", "--reason", "test"],
    "enable": ["enable", "agent-runner"],
    "keys jwks": ["keys", "jwks"],
    "keys rotate": ["keys", "rotate", "--keep", "1h"],
    "keys create": ["keys", "create"],
    # nothing to acknowledge (exit 2), said of the config's trail: it found the config
    "audit acknowledge": ["audit", "acknowledge", "--truncated", "--by", "me", "--reason", "t"],
    # event 1 is the task start, with no arguments to match (exit 2), found in the config's trail
    "audit match-args": ["audit", "match-args", "1", "--args", "{}"],
    "check": ["check"],
    "approvals list": ["approvals", "list", "--all"],
    # no such request (exit 2), said of the config's trail: they found the config
    "approvals show": ["approvals", "show", "abcdef"],
    "approvals approve": ["approvals", "approve", "abcdef", "--by", "me"],
    "approvals reject": ["approvals", "reject", "abcdef"],
    "audit replay": ["audit", "replay"],
    "db migrate": ["db", "migrate"],
}
# Commands above that end with exit 2 on this trail, and what they must say about it.
REFUSING = {
    "approvals show": "no approval request 'abcdef'",
    "approvals approve": "no approval request 'abcdef'",
    "approvals reject": "no approval request 'abcdef'",
    "audit acknowledge": "nothing to acknowledge: the trail",
    "audit match-args": "seq 1",
}


def _cli_commands() -> dict[str, set[str]]:
    """Every command of ``toolguard`` (``audit tasks``, ``revoke``, ...) and its options."""
    import click

    from toolguard.cli import main

    found: dict[str, set[str]] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = {p.name or "" for p in command.params}

    walk(main, "")
    return found


@pytest.fixture()
def project(tmp_path: Path) -> tuple[Path, str]:
    """A project folder with toolguard.yaml and a trail of one task, where the config says."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "toolguard.yaml").write_text(PROJECT_CONFIG, encoding="utf-8")
    with (
        tg.Guard.from_config(folder / "toolguard.yaml") as guard,
        guard.task("process-job", job_id="7") as task,
    ):
        pass
    assert (folder / "data" / "trail.db").is_file()
    return folder, task.task_id


def _invoke(args: list[str], task_id: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from toolguard.cli import main

    args = [task_id if a == "TASK" else a for a in args]
    result = CliRunner().invoke(main, ["--no-color", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_every_command_with_a_config_or_db_option_is_covered() -> None:
    taking = {n for n, params in _cli_commands().items() if {"config_path", "db_path"} & params}
    assert taking == set(DISCOVERING)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DISCOVERING))
def test_a_command_finds_toolguard_yaml_in_the_current_folder(
    name: str, project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, task_id = project
    monkeypatch.chdir(folder)
    if name == "keys create":  # creating needs no key yet: the config's path is the target
        (folder / "keys" / "signing.pem").unlink()
    code, output = _invoke(DISCOVERING[name], task_id)
    if name in REFUSING:
        assert code == 2 and REFUSING[name] in output, output
        assert "trail.db" in output or name == "audit match-args", output
    else:
        assert code == 0, output
    assert "no public keys" not in output  # verify and prune got the config's key
    assert not (folder / ".toolguard").exists()  # nothing went to the CLI's default place
    if name == "keys create":
        assert (folder / "keys" / "signing.pem").is_file()


def test_the_config_is_found_from_toolguard_config_anywhere(
    project: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, task_id = project
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # relative: against the current folder; its store: against the config's folder
    monkeypatch.setenv("TOOLGUARD_CONFIG", "../project/toolguard.yaml")
    code, output = _invoke(["audit", "show", task_id[:8]], task_id)
    assert code == 0, output
    assert "process-job" in output


def test_config_beats_toolguard_config_which_beats_the_current_folder(
    project: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, task_id = project
    other = tmp_path / "other"
    other.mkdir()
    (other / "toolguard.yaml").write_text(
        PROJECT_CONFIG.replace("data/trail.db", "other.db"), encoding="utf-8"
    )
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TOOLGUARD_CONFIG", str(other / "toolguard.yaml"))
    code, output = _invoke(["audit", "tasks"], task_id)
    assert code == 2 and "other.db" in output  # $TOOLGUARD_CONFIG over ./toolguard.yaml
    code, output = _invoke(["audit", "tasks", "--config", "toolguard.yaml"], task_id)
    assert code == 0 and task_id in output  # --config over $TOOLGUARD_CONFIG


def test_a_missing_toolguard_config_is_a_clean_error(
    project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, task_id = project
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TOOLGUARD_CONFIG", "nowhere.yaml")
    code, output = _invoke(["audit", "tasks"], task_id)
    assert code == 2
    assert output.startswith("Error: $TOOLGUARD_CONFIG names the config file nowhere.yaml")
    assert "unset TOOLGUARD_CONFIG" in output


def test_db_alone_uses_only_that_database(
    project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--db`` without ``--config``: no config is looked for, so a broken or unrelated
    ./toolguard.yaml (another trail's keys and checkpoints) does not get in the way."""
    folder, task_id = project
    (folder / "data" / "trail.db").rename(folder / "copy.db")
    (folder / "toolguard.yaml").write_text("intents: [not, a, mapping]\n", encoding="utf-8")
    monkeypatch.chdir(folder)
    code, output = _invoke(["audit", "tasks", "--db", "copy.db"], task_id)
    assert code == 0 and task_id in output
    code, output = _invoke(["audit", "tasks"], task_id)  # found, and it is broken: said so
    assert code == 2 and "intents" in output


def test_no_config_anywhere_keeps_the_old_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = _invoke(["audit", "tasks"], "")
    assert code == 2 and ".toolguard/audit.db" in output


# -- docs/credentials.md, the page the tour sends a newcomer to next ---------------------------

CREDENTIALS_MD = ROOT / "docs" / "credentials.md"
RUNNABLE_SECTIONS = ("## The credential of a call", "## External token brokers")


def test_the_credentials_page_examples_run_in_the_tour_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sections on claims, keys and the verifier run, in order, in the tour's folder."""
    text = CREDENTIALS_MD.read_text(encoding="utf-8")
    lines = text.splitlines()
    start, end = (lines.index(heading) for heading in RUNNABLE_SECTIONS)
    blocks = [
        b for b in parse(text) if start < b.line <= end and b.language == "python" and not b.skip
    ]
    assert len(blocks) == 3
    config = next(b for b in tour_blocks() if b.file == "toolguard.yaml")
    (tmp_path / "toolguard.yaml").write_text(config.code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__credentials_md__"}
    for block in blocks:
        exec(compile(block.code, f"docs/credentials.md:{block.line}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["credential was revoked: task revoked: task ended (ok)"] * 2
    for heading in ("## Signing keys and rotation", "## The verifier"):
        assert heading in lines
