"""The viewer's terminal tables at 80, 120 and 200 columns: ids and times never wrap, the reason
(``detail``) column takes the remaining width and wraps by words, no line is wider than the
terminal; piped output keeps full task ids, one record per line."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
from conftest import Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audit import TOOLS, build_trail

import toolguard as tg
from toolguard.viewer import Viewer, format_time

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_REASON = (
    "incident 17: the agent pasted a production token into a shared channel, rotate the "
    "credentials of every downstream service before re-enabling"
)


@pytest.fixture
def trail(make_guard: Callable[..., tg.Guard], clock: Clock) -> tuple[tg.Guard, dict[str, str]]:
    guard = make_guard(clock=clock, tools=TOOLS)
    ids = build_trail(guard, clock)
    clock.advance(1)
    guard.revoke(identity="summariser", reason=LONG_REASON, disable=True)
    return guard, ids


def _render(guard: tg.Guard, ids: dict[str, str], width: int, clock: Clock) -> list[str]:
    out = io.StringIO()
    viewer = Viewer(file=out, force_terminal=True, width=width)
    viewer.tasks(guard.audit.tasks())
    viewer.events(guard.audit.latest(50))
    job = guard.audit.task(ids["job"])
    assert job is not None
    viewer.timeline(job, guard.audit.timeline(ids["job"]))
    viewer.summary(guard.audit.summary(since=clock.now - 3600, now=clock.now))
    return ANSI.sub("", out.getvalue()).splitlines()


def _words_whole(text: str, lines: list[str]) -> None:
    """Every word of ``text`` is on one line (wrapped by words, never inside one)."""
    for word in text.split():
        assert any(word in line for line in lines), word


@pytest.mark.parametrize("width", [80, 120, 200])
def test_tables_fit_the_terminal_and_never_wrap_ids_or_times(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock, width: int
) -> None:
    guard, ids = trail
    lines = _render(guard, ids, width, clock)
    assert max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    for task_id in ids.values():
        assert task_id[:12] in text  # a 12-character id, whole on one line
    for event in guard.audit.events():
        assert format_time(event.ts) in text  # a time, whole on one line
        assert format_time(event.ts, clock_only=True) in text or event.task_id != ids["job"]
    _words_whole(LONG_REASON, lines)
    denial = next(e for e in guard.audit.events() if e.kind == "denied")
    _words_whole(str(denial.reason), lines)


def test_at_200_columns_each_event_is_one_row_with_its_reason(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, ids = trail
    lines = _render(guard, ids, 200, clock)
    row = next(line for line in lines if " denied " in line and "DENIED" in line)
    assert "agents:jobs:43:state" in row and "write on" in row  # reason on the row's line
    revoke = next(line for line in lines if " revoke " in line)
    assert "incident 17:" in revoke
    start = revoke.index("incident 17:")
    follow = lines[lines.index(revoke) + 1]
    assert follow[:start].strip() == "" and follow[start:].split()  # wraps under its column


@pytest.mark.parametrize("width", [80, 120])
def test_on_a_narrower_terminal_the_reason_goes_under_its_row_full_width(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock, width: int
) -> None:
    guard, ids = trail
    lines = _render(guard, ids, width, clock)
    row = next(i for i, line in enumerate(lines) if " revoke " in line and "revoked" in line)
    below = [line for line in lines[row + 1 : row + 5] if line.startswith("     ")]
    reason = " ".join(line.strip() for line in below)
    assert LONG_REASON in reason
    assert max(len(line) for line in below) > width - 20  # takes the width there is


def test_at_80_columns_the_other_columns_go_on_a_labelled_line(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, ids = trail
    lines = _render(guard, ids, 80, clock)
    row = next(i for i, line in enumerate(lines) if " denied " in line and "DENIED" in line)
    assert lines[row].split()[4] == ids["job"][:12]
    assert "identity agent-runner" in lines[row + 1] and "tool kv_set" in lines[row + 1]


def test_piped_output_has_full_task_ids_one_record_per_line(
    trail: tuple[tg.Guard, dict[str, str]],
) -> None:
    guard, ids = trail
    out = io.StringIO()
    viewer = Viewer(file=out)
    assert not viewer.rich
    viewer.tasks(guard.audit.tasks())
    events = guard.audit.latest(50)
    viewer.events(events)
    for event in events:
        viewer.event(event)
    lines = out.getvalue().splitlines()
    assert sum(ids["job"] in line for line in lines) == 1 + 2 * sum(
        e.task_id == ids["job"] for e in events
    )
    assert "─" not in out.getvalue()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    width=st.integers(min_value=80, max_value=240),
    reason=st.text(st.sampled_from("abc defgh ijklmnop-:'/[]."), min_size=0, max_size=400),
    resource=st.text(st.sampled_from("abcdefgh:*_-/"), min_size=1, max_size=90),
)
def test_any_text_at_any_width_keeps_ids_and_times_whole(
    guard: tg.Guard, clock: Clock, width: int, reason: str, resource: str
) -> None:
    from toolguard.audit import AuditEvent

    events = [
        AuditEvent(
            seq=seq,
            ts=clock.now + seq,
            kind="denied",
            task_id="0123456789abcdef0123456789abcdef",
            identity="agent-runner",
            tool="kv_set",
            operation="write",
            resources=(resource,),
            decision="deny",
            reason=reason or None,
            rule="intents.process-job.allow.write",
        )
        for seq in (1, 22, 333)
    ]
    out = io.StringIO()
    Viewer(file=out, force_terminal=True, width=width).events(events)
    lines = ANSI.sub("", out.getvalue()).splitlines()
    assert max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    for e in events:
        assert format_time(e.ts) in text
    assert text.count("0123456789ab") == len(events)
    words = [w for w in f"{reason} [intents.process-job.allow.write]".split() if len(w) < 40]
    _words_whole(" ".join(words), lines)


def test_at_120_columns_a_task_keeps_its_row_and_only_params_go_under_it(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, ids = trail
    out = io.StringIO()
    Viewer(file=out, force_terminal=True, width=120).tasks(guard.audit.tasks())
    lines = ANSI.sub("", out.getvalue()).splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(ids["job"][:12]))
    assert "process-job" in lines[row] and "agent-runner" in lines[row]
    assert lines[row + 1].split() == ["params", "job_id=42"]
