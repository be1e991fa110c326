"""Red team: hostile targets for the incident commands (issue 10 item 16).

Whatever text reaches ``Guard.revoke`` / ``Guard.enable`` or ``toolguard revoke`` / ``enable``
(control, bidi and surrogate characters, SQL LIKE wildcards, prefixes of real ids, megabytes),
the outcome is one of two: the text names exactly one target the store or the config knows and
that full id is what gets recorded, or :class:`toolguard.UnknownTarget` (exit 2 with one
``Error:`` line) and nothing is written. Never another exception, never a silent success.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Clock, make_config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from langchain_core.tools import tool

import toolguard as tg
from toolguard.cli import EXIT_ERROR, CliContext, main
from toolguard.incident import MIN_PREFIX

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

HOSTILE = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("%_*?[]-\\'\"\x00\u202e\u2066\ud800\x85 aZ09"), max_size=12),
    st.sampled_from(["", " ", "%", "______", "%%%%%%", "' OR 1=1 --", "x" * 100_000, "\U0010ffff"]),
)


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return f"value of {key}"


class Trail:
    def __init__(self, guard: tg.Guard) -> None:
        self.guard = guard
        self.db = guard.config.store_path
        with guard.task("process-job", job_id="42") as ended:
            tg.guard(kv_get, guard).invoke({"key": "agents:jobs:42:input"})
        self.active = guard.task("process-job", job_id="42").start()
        self.active.carry(tg.guard(kv_get, guard).invoke)({"key": "agents:jobs:42:input"})
        self.task_ids = [ended.task_id, self.active.task_id]
        with sqlite3.connect(self.db) as conn:
            self.jtis = [
                r[0] for r in conn.execute("SELECT jti FROM credentials WHERE jti IS NOT NULL")
            ]

    def rows(self) -> tuple[int, int]:
        with sqlite3.connect(self.db) as conn:
            return (
                int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]),
                int(conn.execute("SELECT COUNT(*) FROM revocations").fetchone()[0]),
            )

    def names(self, text: str) -> bool:
        """Whether ``text`` names a real target (exactly, or as a 6+ character prefix)."""
        ids = [*self.task_ids, *self.jtis]
        return text in (*ids, *self.guard.config.identities) or (
            len(text) >= MIN_PREFIX and any(i.startswith(text) for i in ids)
        )


@pytest.fixture
def trail(tmp_path: Path, clock: Clock) -> Iterator[Trail]:
    with tg.Guard(make_config(tmp_path), clock=clock) as guard:
        yield Trail(guard)


@SETTINGS
@given(text=HOSTILE, scope=st.sampled_from(["task_id", "identity", "jti"]))
def test_hostile_targets_raise_unknown_target_and_write_nothing(
    trail: Trail, text: str, scope: str
) -> None:
    assume(not trail.names(text))
    before = trail.rows()
    with pytest.raises(tg.UnknownTarget) as caught:
        trail.guard.revoke(**{scope: text}, reason="red team")
    assert len(str(caught.value)) < 1000
    assert str(caught.value).isprintable()
    assert trail.rows() == before


@SETTINGS
@given(text=HOSTILE)
def test_hostile_enable_targets_raise_unknown_target(trail: Trail, text: str) -> None:
    assume(text not in trail.guard.config.identities)
    before = trail.rows()
    with pytest.raises(tg.UnknownTarget):
        trail.guard.enable(text)
    assert trail.rows() == before


@SETTINGS
@given(text=HOSTILE, option=st.sampled_from(["--task", "--identity", "--jti"]))
def test_hostile_targets_on_the_command_line_exit_2_with_one_line(
    trail: Trail, clock: Clock, text: str, option: str
) -> None:
    assume(not trail.names(text) and not text.startswith("-"))
    before = trail.rows()
    result = CliRunner().invoke(
        main, ["revoke", option, text, "--db", str(trail.db)], obj=CliContext(clock=clock)
    )
    assert result.exit_code == EXIT_ERROR, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "\u202e" not in result.stderr and "\x00" not in result.stderr
    assert trail.rows() == before


@SETTINGS
@given(data=st.data())
def test_every_prefix_of_a_real_id_resolves_to_it_or_is_refused(
    trail: Trail, data: st.DataObject
) -> None:
    """A prefix of 6+ characters resolves to the full id (ids are random: unique here); a
    shorter one is refused; neither ever records the prefix itself."""
    scope, full = data.draw(
        st.sampled_from([("task_id", trail.task_ids[1]), *[("jti", j) for j in trail.jtis]])
    )
    cut = data.draw(st.integers(min_value=1, max_value=len(full)))
    prefix = full[:cut]
    if cut < MIN_PREFIX:
        before = trail.rows()
        with pytest.raises(tg.UnknownTarget, match="at least 6 characters"):
            trail.guard.revoke(**{scope: prefix}, reason="red team")
        assert trail.rows() == before
        return
    result = trail.guard.revoke(**{scope: prefix}, reason="red team")
    assert result.target == full
    with sqlite3.connect(trail.db) as conn:
        value = conn.execute("SELECT value FROM revocations ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert value == full


@SETTINGS
@given(text=HOSTILE, command=st.sampled_from(["show", "tasks", "tail", "denied", "export"]))
def test_hostile_task_ids_in_the_viewer_are_a_clean_error(
    trail: Trail, clock: Clock, text: str, command: str
) -> None:
    """``audit show TASK`` and ``--task`` of every listing: an id no task can have (surrogates,
    U+10FFFF, control characters) is one ``Error:`` line, never a traceback."""
    assume(not trail.names(text) and not text.startswith("-") and text)
    args = [command, text] if command == "show" else [command, "--task", text]
    context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
    result = CliRunner().invoke(main, ["audit", *args, "--db", str(trail.db)], obj=context)
    if result.exit_code == 0:  # a prefix shorter than 6 characters may resolve for readers
        assert any(t.startswith(text) for t in trail.task_ids)
        return
    assert result.exit_code == EXIT_ERROR, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
