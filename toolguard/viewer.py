"""Rendering for the command line: rich tables and colour on a terminal, plain text when piped.

:class:`Viewer` turns what :mod:`toolguard.audit` returns into output. On a terminal (or with
``force_terminal``) it draws rich tables, with denials in red; otherwise it writes plain,
column-aligned text with no colour and no box characters, one record per line, so the output
can be piped to ``grep``, ``cut`` or ``sort``. ``--json`` output goes through :meth:`json`
(one object per line for streams). Every string from the trail is cleaned of control
characters before it reaches a terminal (:func:`toolguard.text.printable`: controls, bidi
overrides and isolates, invisible characters, lone surrogates): arguments, resources and
reasons may carry model-written text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .audit import AuditEvent, Summary, UsageRow
from .integrity import VerifyReport
from .store import PruneResult
from .text import printable

__all__ = [
    "EVENT_HEADERS",
    "TIMELINE_HEADERS",
    "Viewer",
    "format_cost",
    "format_duration",
    "format_time",
    "plural",
]

TIMELINE_HEADERS = (
    "time", "kind", "tool", "op", "resources", "result", "jti", "duration", "cost", "detail",
)  # fmt: skip
"""The columns of a task's timeline (``audit show``, the HTML export)."""
EVENT_HEADERS = (
    "seq", "time", "kind", "task", "identity", "tool", "op", "resources", "result", "detail",
)  # fmt: skip
"""The columns of an event list (``audit tail``, ``audit denied``)."""

_RESULT_STYLES = {
    "ok": "green",
    "allow": "green",
    "error": "yellow",
    "incomplete": "magenta",
    "not-run": "red",
    "denied": "bold red",
    "deny": "bold red",
    "revoked": "magenta",
    "revoke": "magenta",
    "cancelled": "yellow",
    "expired": "yellow",
    "tainted": "yellow",
    "active": "cyan",
    "abandoned": "yellow",
    "revoke failed": "bold red",
    "not revocable": "yellow",
}
_KIND_STYLES = {
    "task_start": "cyan",
    "task_resume": "cyan",
    "task_end": "cyan",
    "denied": "bold red",
    "revoke": "magenta",
    "enable": "magenta",
}


_WRAP = frozenset({"resources", "detail", "params", "quota"})
"""Columns that may wrap on a narrow terminal; the others keep their width."""


def _clean(value: object) -> str:
    """Text safe for a terminal (:func:`toolguard.text.printable`): control characters, bidi
    controls, invisible characters and lone surrogates shown as ``\\xNN``/``\\uXXXX``."""
    return printable(value)


_PLURALS = {"identity": "identities", "credential id": "credential ids"}


def plural(count: int, word: str) -> str:
    """``1 call``, ``2 calls``, ``1 identity``, ``0 identities``."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {_PLURALS.get(word, word + 's')}"


def format_time(ts: float | None, *, clock_only: bool = False) -> str:
    """A UTC timestamp: ``2026-09-21 13:46:40Z``, or ``13:46:40.123`` with ``clock_only``."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    if clock_only:
        return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_duration(ms: float | None) -> str:
    """``0.09ms``, ``12ms``, ``3.2s``, ``4m05s``, ``2h10m``; ``-`` for None."""
    if ms is None:
        return "-"
    ms = float(ms)
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_cost(cost: float | None) -> str:
    """A cost with up to four decimals (``0.01``); ``-`` for none."""
    if not cost:
        return "-"
    return f"{float(cost):.4f}".rstrip("0").rstrip(".")


def _short(value: str | None, size: int) -> str:
    return (value or "")[:size] if value else "-"


class _Rows:
    """A table being built: rich on a terminal, aligned plain text otherwise."""

    def __init__(self, headers: Sequence[str], *, title: str | None = None) -> None:
        self.headers = list(headers)
        self.title = title
        self.rows: list[list[tuple[str, str | None]]] = []

    def add(self, *cells: str | tuple[str, str | None]) -> None:
        self.rows.append([c if isinstance(c, tuple) else (c, None) for c in cells])


class Viewer:
    """Writes the viewer's output to ``file`` (default: the current ``sys.stdout``)."""

    def __init__(
        self,
        *,
        file: IO[str] | None = None,
        color: bool | None = None,
        force_terminal: bool | None = None,
        width: int | None = None,
    ) -> None:
        """``color``: None = rich output on a terminal only, True = always, False = plain text
        always. ``force_terminal``: draw rich output even when not writing to a terminal."""
        self._file = file
        if color is not None:  # --color: rich output even when piped; --no-color: plain text
            force_terminal = color
        self.console = Console(
            file=file,
            force_terminal=force_terminal,
            no_color=(color is False) or None,
            highlight=False,
            emoji=False,
            markup=False,
            width=width,
            soft_wrap=False,
        )

    @property
    def rich(self) -> bool:
        """True when drawing tables and colour (a terminal)."""
        return self.console.is_terminal

    @property
    def file(self) -> IO[str]:
        return self._file if self._file is not None else sys.stdout

    # -- primitives ---------------------------------------------------------------------------

    def line(self, text: str, style: str | None = None) -> None:
        """One line of text (cleaned of control characters)."""
        if self.rich:
            self.console.print(Text(_clean(text), style=style or ""), soft_wrap=True)
        else:
            self.file.write(_clean(text) + "\n")

    def json(self, obj: Any) -> None:
        """One JSON document on one line (ASCII only: safe for any terminal)."""
        self.file.write(json.dumps(obj, sort_keys=True, default=str) + "\n")

    def json_lines(self, objs: Iterable[Any]) -> int:
        """One JSON object per line; returns how many."""
        count = 0
        for obj in objs:
            self.json(obj)
            count += 1
        return count

    def _table(self, rows: _Rows) -> None:
        if self.rich:
            table = Table(title=rows.title, header_style="bold", box=box.SIMPLE_HEAD)
            roomy = self.console.width >= 120  # else every column may fold
            for header in rows.headers:
                if header in _WRAP or not roomy:
                    table.add_column(header, overflow="fold")
                else:
                    table.add_column(header, no_wrap=True)
            for row in rows.rows:
                table.add_row(*(Text(_clean(text), style=style or "") for text, style in row))
            self.console.print(table)
            return
        if rows.title:
            self.file.write(_clean(rows.title) + "\n")
        cells = [[_clean(text) for text, _ in row] for row in rows.rows]
        widths = [
            max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(rows.headers)
        ]
        for line in [rows.headers, *cells]:
            padded = [c.ljust(w) for c, w in zip(line[:-1], widths)] + [line[-1]]
            self.file.write("  ".join(padded).rstrip() + "\n")

    # -- tasks --------------------------------------------------------------------------------

    def tasks(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        """The task list."""
        if not tasks:
            self.line("no tasks match", "dim")
            return
        rows = _Rows(
            [
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
        )
        for t in tasks:
            status = str(t.get("status") or "-") + (" (tainted)" if t.get("tainted") else "")
            duration = (
                (float(t["ended_at"]) - float(t["started_at"])) * 1000.0
                if t.get("ended_at") is not None and t.get("started_at") is not None
                else None
            )
            denied = int(t.get("denied") or 0)
            rows.add(
                str(t["task_id"])[:12] if self.rich else str(t["task_id"]),
                format_time(t.get("started_at")),
                str(t.get("intent") or "-"),
                str(t.get("identity") or "-"),
                (status, _RESULT_STYLES.get(str(t.get("status")))),
                str(t.get("calls") or 0),
                (str(denied), "bold red" if denied else None),
                (str(t.get("errors") or 0), "yellow" if t.get("errors") else None),
                format_cost(t.get("cost")),
                format_duration(duration),
                _params(t.get("params")),
            )
        self._table(rows)

    def timeline(self, task: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
        """A task's header and its timeline, one line per event."""
        started = task.get("started_at")
        head = (
            f"task {task['task_id']}  intent {task.get('intent')}  identity "
            f"{task.get('identity')}  status {task.get('status')}"
            + ("  TAINTED" if task.get("tainted") else "")
        )
        self.line(head, "bold")
        detail = f"started {format_time(started)}"
        if task.get("ended_at") is not None:
            detail += f"  ended {format_time(task.get('ended_at'))}"
        if task.get("parent_id"):
            detail += f"  parent {task['parent_id']}"
        if task.get("purpose"):
            detail += f"  purpose: {task['purpose']}"
        self.line(detail)
        table = _Rows(TIMELINE_HEADERS)
        for row in rows:
            table.add(*_timeline_cells(row))
        self._table(table)

    # -- events -------------------------------------------------------------------------------

    def events(self, events: Sequence[AuditEvent], *, empty: str = "no events match") -> None:
        """A list of events (``tail``, ``denied``)."""
        if not events:
            self.line(empty, "dim")
            return
        rows = _Rows(EVENT_HEADERS)
        for e in events:
            rows.add(*_event_cells(e, short=self.rich))
        self._table(rows)

    def event(self, event: AuditEvent) -> None:
        """One event as one line (``tail -f``)."""
        cells = _event_cells(event, short=True)
        if self.rich:
            text = Text()
            for i, (value, style) in enumerate(cells):
                if i:
                    text.append("  ")
                text.append(_clean(value), style=style or "")
            self.console.print(text, soft_wrap=True)
        else:
            self.file.write("  ".join(_clean(v) for v, _ in cells).rstrip() + "\n")

    # -- summary ------------------------------------------------------------------------------

    def summary(self, summary: Summary) -> None:
        """Usage per identity and tool, spikes, idle identities."""
        window = f"from {format_time(summary.since)}" + (
            f" to {format_time(summary.until)}" if summary.until is not None else " to now"
        )
        self.line(f"usage {window} (today = {format_time(summary.now)[:10]} UTC)", "bold")
        for by, usage in summary.rows.items():
            rows = _Rows(
                [by, "calls", "denied", "errors", "cost", "peak/min", "today", "quota"],
                title=f"by {by}",
            )
            for r in usage:
                rows.add(*_usage_cells(r))
            if usage:
                self._table(rows)
            else:
                self.line(f"by {by}: no calls in this window", "dim")
        if summary.spikes:
            rows = _Rows(["by", "name", "recent", "usual", "ratio"], title="spikes")
            for s in summary.spikes:
                rows.add(
                    s.by,
                    s.key,
                    (f"{s.recent} in {format_duration(s.window * 1000)}", "bold red"),
                    f"{s.usual:.1f}",
                    (f"{s.ratio:.1f}x", "bold red"),
                )
            self._table(rows)
        else:
            self.line("spikes: none", "dim")
        if summary.idle:
            rows = _Rows(
                ["identity", "last task"],
                title=f"identities with no task in {summary.idle_days:g} days",
            )
            for idle in summary.idle:
                rows.add(
                    idle.identity,
                    (format_time(idle.last_task), None) if idle.last_task else ("never", "dim"),
                )
            self._table(rows)
        else:
            self.line(f"idle identities (no task in {summary.idle_days:g} days): none", "dim")

    # -- verify, prune, messages --------------------------------------------------------------

    def verify(self, report: VerifyReport) -> None:
        """The result of ``verify``: the verdict, every damage, the notes."""
        self.line(report.summary(), "bold green" if report.ok else "bold red")
        for d in report.damage:
            where = f"seq {d.seq}" + (f"..{d.last_seq}" if d.last_seq not in (None, d.seq) else "")
            self.line(f"  {d.kind} at {where}: {d.detail}", "red")
        for note in report.notes:
            self.line(f"note: {note}", "dim")

    def prune(self, result: PruneResult) -> None:
        """The result of ``prune``."""
        if result.removed == 0:
            self.line("nothing to prune: no event is older than the cut")
            return
        verb = "would remove" if result.dry_run else "removed"
        self.line(
            f"{verb} {plural(result.removed, 'event')} before seq {result.before_seq}, "
            f"{plural(result.tasks, 'ended task')}, "
            f"{plural(result.credentials, 'expired credential id')}",
            "bold",
        )
        self.line(f"the kept chain starts from hash {result.head_hash}")

    def done(self, text: str) -> None:
        """A confirmation line."""
        self.line(text, "green")

    def warn(self, text: str) -> None:
        """A warning line."""
        self.line(text, "yellow")


def _params(value: Any) -> str:
    if not value:
        return "-"
    try:
        params = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return str(value)
    if isinstance(params, Mapping):
        return " ".join(f"{k}={v}" for k, v in params.items()) or "-"
    return str(params)


def _resources(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    return ",".join(str(v) for v in value or ()) or "-"


def _timeline_cells(row: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    kind = str(row.get("kind"))
    result: str = "-"
    detail = ""
    if kind == "request":
        result = str(row.get("result") or "incomplete")
        detail = str(row.get("error") or row.get("reason") or "")
    elif kind == "outcome":
        result = str(row.get("outcome") or "-")
        detail = str(row.get("error") or row.get("reason") or "")
    elif kind == "denied":
        result = "DENIED"
        detail = f"{row.get('reason')} [{row.get('rule')}]"
    elif kind == "task_start":
        result = "started"
        detail = " ".join(p for p in (str(row.get("reason") or ""), _params(row.get("args"))) if p)
    elif kind == "task_resume":
        result = "resumed"
        detail = str(row.get("reason") or "")
    elif kind == "task_end":
        result = str(row.get("outcome") or "ended")
        detail = str(row.get("reason") or "")
    elif kind == "revoke":
        result = _revoke_result(row.get("decision"))
        by = f" by {row['by']}" if row.get("by") else ""
        detail = f"{row.get('reason')} [{row.get('rule')}{by}]"
    else:
        result = str(row.get("outcome") or row.get("decision") or "-")
        detail = str(row.get("reason") or "")
    style = "bold red" if kind == "denied" else _RESULT_STYLES.get(result)
    return [
        (format_time(row.get("ts"), clock_only=True), None),
        (kind, _KIND_STYLES.get(kind)),
        (str(row.get("tool") or "-"), None),
        (str(row.get("operation") or "-"), None),
        (_resources(row.get("resources")), None),
        (result, style),
        (_short(row.get("jti"), 8), None),
        (format_duration(row.get("duration_ms")), None),
        (format_cost(row.get("cost")), None),
        (detail or "-", "red" if kind == "denied" else None),
    ]


def _revoke_result(decision: object) -> str:
    """A revocation's result: a broker's failed or impossible revocation must not read as done."""
    if decision == "failed":
        return "revoke failed"
    if decision == "not-revocable":
        return "not revocable"
    return "revoked"


def _event_cells(e: AuditEvent, *, short: bool) -> list[tuple[str, str | None]]:
    if e.kind == "denied":
        result, detail = "DENIED", f"{e.reason} [{e.rule}]"
    elif e.kind == "outcome":
        result, detail = (
            e.outcome or "-",
            f"{format_duration(e.duration_ms)} {e.error or ''}".strip(),
        )
    elif e.kind == "request":
        result, detail = e.decision or "allow", f"jti {_short(e.jti, 8)}"
    elif e.kind == "task_end":
        result, detail = e.outcome or "ended", e.reason or ""
    elif e.kind == "revoke":
        result, detail = _revoke_result(e.decision), f"{e.reason} [{e.rule}]"
    elif e.kind == "enable":
        result, detail = "enabled", f"{e.reason} [{e.rule}]"
    else:
        result, detail = e.decision or "-", e.reason or ""
    style = "bold red" if e.kind == "denied" else _RESULT_STYLES.get(result)
    return [
        (str(e.seq), "dim"),
        (format_time(e.ts), None),
        (e.kind, _KIND_STYLES.get(e.kind)),
        ((e.task_id or "-")[:12] if short else (e.task_id or "-"), None),
        (e.identity or "-", None),
        (e.tool or "-", None),
        (e.operation or "-", None),
        (",".join(e.resources) or "-", None),
        (result, style),
        (detail or "-", "red" if e.kind == "denied" else None),
    ]


def _usage_cells(r: UsageRow) -> list[tuple[str, str | None]]:
    quota = []
    for name, q in r.quota.items():
        if name == "requests_per_minute":
            quota.append(f"{q['peak']:g}/{q['limit']:g} per min")
        elif name == "requests_per_day":
            pct = 100.0 * q["used"] / q["limit"] if q["limit"] else 100.0
            quota.append(f"{q['used']:g}/{q['limit']:g} calls ({pct:.0f}%)")
        elif name == "cost_per_day":
            pct = 100.0 * q["used"] / q["limit"] if q["limit"] else 100.0
            quota.append(f"{q['used']:g}/{q['limit']:g} cost ({pct:.0f}%)")
    hot = any(
        q.get("used", q.get("peak", 0)) >= 0.8 * q["limit"] for q in r.quota.values() if q["limit"]
    )
    today = plural(r.today_calls, "call") + (
        f", {format_cost(r.today_cost)} cost" if r.today_cost else ""
    )
    return [
        (r.key, None),
        (str(r.calls), None),
        (str(r.denials), "bold red" if r.denials else None),
        (str(r.errors), "yellow" if r.errors else None),
        (format_cost(r.cost), None),
        (str(r.peak_per_minute), None),
        (today, None),
        ("; ".join(quota) or "-", "yellow" if hot else None),
    ]
