"""Red team: model-written characters and sizes (issue 10, items 8 and 12).

One module (toolguard/text.py) decides which characters are unsafe and how text is bounded;
these tests attack every place model text enters (tool names, tool-call ids, resource values,
argument keys, tool exceptions) or is shown (viewer, CSV/HTML export, CLI error lines).
"""

from __future__ import annotations

import io
import json
import sqlite3
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toolguard as tg
from toolguard.cli import CliContext, CliError, main
from toolguard.errors import AuditError
from toolguard.export import write_csv
from toolguard.text import (
    MAX_ERROR_CHARS,
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    UNSAFE,
    check_text,
    printable,
    quote,
)
from toolguard.viewer import Viewer

JOB_KEY = "agents:jobs:42:input"
BIDI = ["\u202e", "\u202d", "\u202a", "\u202b", "\u202c", "\u2066", "\u2067", "\u2068", "\u2069"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\U000e0041"]
C1 = ["\x80", "\x85", "\x9b", "\x9f"]
C0 = ["\x00", "\x07", "\x1b", "\n", "\r", "\t", "\x7f"]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
EVIL = BIDI + INVISIBLE + C1 + C0 + SURROGATES

# text including lone surrogates and every unsafe class, weighted towards the nasty ones
nasty_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, categories=None),
        st.sampled_from(EVIL),
        st.sampled_from("agents:jobs:42:/.*{}'\"\\"),
    ),
    max_size=60,
)


def _rows(guard: tg.Guard) -> int:
    with sqlite3.connect(guard.config.store_path) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


# -- the one definition ----------------------------------------------------------------------


@pytest.mark.slow
def test_unsafe_covers_every_control_format_separator_and_surrogate() -> None:
    """UNSAFE matches every Cc, Cf, Cs, Zl, Zp code point and no letter, digit or symbol."""
    missed, over = [], []
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        matched = UNSAFE.match(char) is not None
        if category in ("Cc", "Cf", "Cs", "Zl", "Zp") and not matched:
            missed.append(hex(code))
        elif category[0] in "LNPS" and matched:
            over.append(hex(code))
    assert missed == [] and over == []


@pytest.mark.parametrize("char", EVIL)
def test_printable_escapes_every_unsafe_character(char: str) -> None:
    shown = printable(f"a{char}b")
    assert UNSAFE.search(shown) is None
    assert shown.startswith("a\\") and shown.endswith("b")
    shown.encode("utf-8")  # never a lone surrogate
    assert check_text(f"a{char}b") is not None


@settings(max_examples=300, deadline=None)
@given(nasty_text)
def test_printable_is_safe_and_identity_on_safe_text(text: str) -> None:
    shown = printable(text)
    assert UNSAFE.search(shown) is None
    shown.encode("utf-8")
    if check_text(text) is None:
        assert shown == text


def test_quote_bounds_escapes_and_redacts() -> None:
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    shown = quote("x\u202e" + jwt + " " + "y" * 1_000_000)
    assert len(shown) < 200
    assert "\u202e" not in shown and "\\u202e" in shown
    assert jwt not in shown and "[REDACTED]" in shown
    assert shown.endswith("more chars]'")


# -- input: tool names, tool-call ids, resources ---------------------------------------------


@pytest.mark.parametrize("where", ["tool", "correlation_id"])
@pytest.mark.parametrize("char", ["\ud800", "\udfff", "\u202e", "\x85", "\x00"])
def test_unsafe_tool_name_or_call_id_is_denied_or_recorded_never_crashes(
    guard: tg.Guard, where: str, char: str
) -> None:
    """A lone surrogate in a tool name or tool-call id used to raise UnicodeEncodeError from
    the hash chain: no denial, no audit row. Now: a denial (tool) or an allowed call
    (call id), each recorded with the text escaped."""
    tool, cid = ("kv_get", f"call{char}1") if where == "correlation_id" else (f"kv{char}", None)
    with guard.task("process-job", job_id="42"):
        before = _rows(guard)
        if where == "tool":
            with pytest.raises(tg.PolicyDenied, match="has no rule") as info:
                guard.authorize(tool, {"key": JOB_KEY}, correlation_id=cid)
            assert UNSAFE.search(str(info.value)) is None
        else:
            guard.finish(guard.authorize(tool, {"key": JOB_KEY}, correlation_id=cid))
        guard.store.flush()
        assert _rows(guard) == before + (1 if where == "tool" else 2)  # request + outcome
    event = [e for e in guard.audit.events() if e.kind in ("denied", "request")][-1]
    stored = event.tool if where == "tool" else event.correlation_id
    assert stored == printable(tool if where == "tool" else cid)
    assert guard.audit.verify().ok


def test_tool_name_and_call_id_are_bounded(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied) as info:
        guard.authorize("t" * 1_000_000, {"key": JOB_KEY}, correlation_id="c" * 1_000_000)
    assert len(str(info.value)) < MAX_REASON_CHARS
    denied = guard.audit.events(kind="denied")[-1]
    assert len(denied.tool or "") < MAX_NAME_CHARS + 30
    assert len(denied.correlation_id or "") < MAX_NAME_CHARS + 30


@pytest.mark.parametrize("char", BIDI + INVISIBLE + C1 + SURROGATES + ["\u2028", "\u2029"])
def test_unsafe_resource_is_a_denial(guard: tg.Guard, char: str) -> None:
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied) as info:
        guard.authorize("kv_get", {"key": f"agents:jobs:42:{char}x"})
    assert info.value.rule == "tools.kv_get.resource"
    assert "contains" in info.value.reason and UNSAFE.search(info.value.reason) is None


@pytest.mark.slow
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tool=nasty_text, key=nasty_text, cid=st.one_of(st.none(), nasty_text))
def test_authorize_only_denies_or_allows_and_always_records(
    guard: tg.Guard, tool: str, key: str, cid: str | None
) -> None:
    """Whatever the model writes: a Permit or PolicyDenied (never another exception), and
    exactly one new event in the trail either way."""
    tool = tool if tool else "kv_get"
    with guard.task("process-job", job_id="42"):
        before = _rows(guard)
        try:
            permit = guard.authorize(tool, {"key": key}, correlation_id=cid or None)
        except (tg.PolicyDenied, AuditError) as exc:
            assert isinstance(exc, tg.PolicyDenied)
            assert len(str(exc)) <= MAX_REASON_CHARS + 30
        else:
            guard.finish(permit)
        guard.store.flush()
        assert _rows(guard) in (before + 1, before + 2)  # request (+ its outcome) or denial


# -- size: a 1 MB key ------------------------------------------------------------------------


def _trail_bytes(guard: tg.Guard) -> int:
    with sqlite3.connect(guard.config.store_path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        total = " + ".join(f"coalesce(length(CAST({c} AS BLOB)), 0)" for c in columns)
        return int(conn.execute(f"SELECT coalesce(sum({total}), 0) FROM events").fetchone()[0])


def test_a_megabyte_key_costs_a_bounded_trail_and_message(guard: tg.Guard) -> None:
    """Used to be ~4 MB of trail per denied call, and the whole key echoed to the model."""
    huge = "agents:jobs:43:" + "k" * 1_000_000
    path = guard.config.store_path
    with guard.task("process-job", job_id="42"):
        guard.store.flush()
        before, files_before = _trail_bytes(guard), _file_bytes(path)
        messages = []
        for _ in range(5):
            with pytest.raises(tg.PolicyDenied) as info:
                guard.authorize("kv_get", {"key": huge})
            messages.append(str(info.value))
        after, files_after = _trail_bytes(guard), _file_bytes(path)
    assert all(len(m) <= 300 for m in messages)
    assert "more chars]" in messages[0] and "at most 2048" in messages[0]
    per_call = (after - before) / 5
    assert per_call < 3 * guard.config.max_arg_chars + 1000
    assert (files_after - files_before) / 5 < 64 * 1024


def test_a_megabyte_allowed_resource_is_refused(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied) as info:
        guard.authorize("kv_get", {"key": "agents:jobs:42:" + "k" * 1_000_000})
    assert "characters long (at most 2048)" in info.value.reason


@pytest.mark.slow
def test_megabyte_argument_names_are_cut(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", {"key": JOB_KEY, "n" * 1_000_000: 1}))
    request = guard.audit.events(kind="request")[-1]
    assert len(request.args or "") < 2 * guard.config.max_arg_chars


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


class _Boom(Exception):
    pass


def test_a_tool_error_with_surrogates_and_a_megabyte_message_is_bounded_and_the_task_ends(
    guard: tg.Guard,
) -> None:
    """A surrogate in a tool's exception used to poison the queued outcome: every later
    transaction failed, the task end and its revocation were never written."""
    with guard.task("process-job", job_id="42") as task:
        permit = guard.authorize("kv_get", {"key": JOB_KEY})
        guard.finish(permit, error=_Boom("\ud800\u202e" + "m" * 1_000_000))
        guard.finish(guard.authorize("kv_get", {"key": JOB_KEY}))
    assert task.status == "ok"
    events = guard.audit.events(task_id=task.task_id)
    assert events[-1].kind == "task_end"
    error = next(e.error for e in events if e.outcome == "error")
    assert error is not None and len(error) <= MAX_ERROR_CHARS + 30
    assert error.startswith("_Boom: \\ud800\\u202e")
    assert guard.audit.verify().ok


def test_resume_with_a_malformed_task_id_is_a_denial(guard: tg.Guard) -> None:
    for task_id in ("\ud800", "\u202eabc", "x" * 1_000_000):
        with pytest.raises(tg.PolicyDenied) as info:
            guard.resume(task_id, intent="\udc80")
        assert len(str(info.value)) < 400 and UNSAFE.search(str(info.value)) is None
    assert guard.audit.verify().ok


# -- output: viewer, exports, CLI errors -----------------------------------------------------


@pytest.fixture
def hostile_trail(guard: tg.Guard) -> tg.Guard:
    with guard.task("process-job", job_id="42"):
        for char in EVIL:
            with pytest.raises(tg.PolicyDenied):
                guard.authorize(f"kv{char}x", {"key": f"agents:jobs:42:{char}"})
        permit = guard.authorize("kv_get", {"key": JOB_KEY, "note": "ok\u202eevil\u2066"})
        guard.finish(permit, error=_Boom("\u202ereversed\x1b[2J"))
    return guard


def _assert_safe(text: str) -> None:
    assert UNSAFE.search(text.replace("\n", "")) is None, [
        c for c in text if UNSAFE.match(c) and c != "\n"
    ]


@pytest.mark.parametrize("rich", [False, True])
def test_viewer_never_prints_unsafe_characters(hostile_trail: tg.Guard, rich: bool) -> None:
    out = io.StringIO()
    viewer = Viewer(file=out, color=False, force_terminal=rich)
    events = hostile_trail.audit.events()
    viewer.events(events)
    for event in events:
        viewer.event(event)
    task_id = events[0].task_id or ""
    task = hostile_trail.audit.task(task_id)
    assert task is not None
    viewer.timeline(task, hostile_trail.audit.timeline(task_id))
    _assert_safe(out.getvalue())
    assert "\\u202e" in out.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "html"])
def test_exports_never_hold_unsafe_characters(
    hostile_trail: tg.Guard, clock: Clock, fmt: str
) -> None:
    db = str(hostile_trail.config.store_path)
    result = CliRunner().invoke(
        main, ["audit", "export", "--format", fmt, "--db", db], obj=CliContext(clock=clock)
    )
    assert result.exit_code == 0, result.output
    assert len(result.output) > 500
    _assert_safe(result.output)
    out = io.StringIO()
    write_csv(hostile_trail.audit.iter_rows(), out)
    _assert_safe(out.getvalue())


def test_cli_output_and_error_lines_never_hold_unsafe_characters(
    hostile_trail: tg.Guard, clock: Clock
) -> None:
    db = str(hostile_trail.config.store_path)
    runner = CliRunner()
    for args in (["audit", "tail", "--db", db], ["audit", "denied", "--db", db]):
        result = runner.invoke(main, args, obj=CliContext(clock=clock))
        assert result.exit_code == 0, result.output
        _assert_safe(result.output)
    result = runner.invoke(main, ["audit", "show", "\u202e\x1b", "--db", db], obj=CliContext())
    assert result.exit_code == 2
    _assert_safe(result.output)
    assert CliError("a\u202eb\nc\x85").format_message() == "a\\u202eb\nc\\x85"


def test_many_long_arguments_are_bounded_as_a_whole(guard: tg.Guard) -> None:
    args: dict[str, object] = {"key": JOB_KEY}
    args.update({f"a{i}": "v" * 50_000 for i in range(99)})
    with guard.task("process-job", job_id="42"):
        guard.finish(guard.authorize("kv_get", args))
    stored = guard.audit.events(kind="request")[-1].args or ""
    assert len(stored) < 17 * guard.config.max_arg_chars + 200
    assert json.loads(stored)["…"].startswith("[arguments cut:")


def test_a_task_end_reason_with_surrogates_still_ends_and_revokes(guard: tg.Guard) -> None:
    """An app that passes an exception's text as the end reason must not block the end (and
    its revocation) with an unencodable or huge string."""
    session = guard.task("process-job", job_id="42")
    with session:
        permit = guard.authorize("kv_get", {"key": JOB_KEY})
        with permit as credential:
            token = credential.token
        guard.verifier().verify(token)
        guard.finish(permit)
        session.end("error\ud800", reason="boom \ud800\u202e" + "x" * 1_000_000)
    end = guard.audit.events(task_id=session.task_id)[-1]
    assert end.kind == "task_end" and end.outcome == "error\\ud800"
    assert (end.reason or "").startswith("boom \\ud800\\u202e")
    assert len(end.reason or "") <= MAX_REASON_CHARS + 30
    with pytest.raises(tg.ToolGuardError, match="revoked"):
        guard.verifier().verify(token)
