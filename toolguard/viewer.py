"""Rendering for the command line: rich tables and colour on a terminal, plain text when piped.

:class:`Viewer` turns what :mod:`toolguard.audit` returns into output. On a terminal (or with
``force_terminal``) it draws tables fitted to the terminal's width (:func:`_layout`: ids and
times never wrap, the reason column takes the remaining width and wraps by words), with
denials in red; otherwise it writes plain, column-aligned text with no colour and no box
characters, full task ids, one record per line, so the output can be piped to ``grep``,
``cut`` or ``sort``. ``--json`` output goes through :meth:`json`
(one object per line for streams). Every string from the trail is cleaned of control
characters before it reaches a terminal (:func:`toolguard.text.printable`: controls, bidi
overrides and isolates, invisible characters, lone surrogates): arguments, resources and
reasons may carry model-written text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from ._extras import CLI, raise_if_missing

try:  # agent-toolguard-core alone has no rich: say what to install (toolguard/_extras.py)
    from rich.console import Console
    from rich.text import Text
except ImportError as exc:
    raise_if_missing(CLI, exc)
    raise

from .audit import AuditEvent, Summary, UsageRow
from .formatting import (
    TIMELINE_HEADERS,
    WOULD_DENY,
    event_result,
    format_cost,
    format_duration,
    format_time,
    plural,
)
from .integrity import VerifyReport
from .store import PruneResult
from .store.approvals import ApprovalRecord
from .text import printable

if TYPE_CHECKING:  # the replay needs the config (pydantic); the viewer does not
    from .replay import ReplayReport

__all__ = [
    "EVENT_HEADERS",
    "TIMELINE_HEADERS",
    "Viewer",
    "format_cost",
    "format_duration",
    "format_time",
    "plural",
]

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
    "AWAITING APPROVAL": "bold yellow",
    "approved": "green",
    "REJECTED": "bold red",
    "EXPIRED": "yellow",
}
_KIND_STYLES = {
    "task_start": "cyan",
    "task_resume": "cyan",
    "task_end": "cyan",
    "denied": "bold red",
    "revoke": "magenta",
    "enable": "magenta",
    "approval_requested": "bold yellow",
    "approved": "green",
    "rejected": "bold red",
    "approval_expired": "yellow",
}


_REASON = "detail"
"""The free-text column (reasons, errors): it takes the width the other columns leave and
wraps by words; on a narrow terminal it goes on its own lines under its row."""
_FLEX = frozenset({"resources", "params", "quota"})
"""Columns that may wrap by words (at least :data:`_FLEX_MIN` wide) to make room."""
_SHORT = frozenset({"intent", "identity", "tool", "op", "cost", "duration", "today", "usual"})
"""Columns that move to a labelled line under their row when the row does not fit."""
_GAP = 2
_REASON_MIN = 48
_FLEX_MIN = 12


def _clean(value: object) -> str:
    """Text safe for a terminal (:func:`toolguard.text.printable`): control characters, bidi
    controls, invisible characters and lone surrogates shown as ``\\xNN``/``\\uXXXX``."""
    return printable(value)


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
        self._stream_widths: list[int] | None = None  # tail -f: the widths printed so far

    @property
    def rich(self) -> bool:
        """True when drawing tables and colour (a terminal)."""
        return self.console.is_terminal

    @property
    def file(self) -> IO[str]:
        return self._file if self._file is not None else sys.stdout

    # -- primitives ---------------------------------------------------------------------------

    def line(self, text: str, style: str | None = None) -> None:
        """One line of text (cleaned of control characters); on a terminal, wrapped by words
        at its width (so an id is never cut in two)."""
        if self.rich:
            self.console.print(Text(_clean(text), style=style or "", overflow="fold"))
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
            for text in _layout(rows, self.console):
                self.console.print(text, soft_wrap=True)
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
        shadow = any(int(t.get("would_deny") or 0) for t in tasks)
        rows = _Rows(
            [
                "task",
                "started",
                "intent",
                "identity",
                "status",
                "calls",
                "denied",
                *(["would-deny"] if shadow else []),
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
            would = int(t.get("would_deny") or 0)
            rows.add(
                str(t["task_id"])[:12] if self.rich else str(t["task_id"]),
                format_time(t.get("started_at")),
                str(t.get("intent") or "-"),
                str(t.get("identity") or "-"),
                (status, _RESULT_STYLES.get(str(t.get("status")))),
                str(t.get("calls") or 0),
                (str(denied), "bold red" if denied else None),
                *([(str(would), _WOULD_STYLE if would else None)] if shadow else []),
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
        """One event as one line (``tail -f``), the column names before the first one. Each
        value is padded to the widest value seen so far in its column, so lines stay aligned
        as long as values do not grow; task ids are full when piped (12 characters on a
        terminal), as in :meth:`events`."""
        cells = [(_clean(v), style) for v, style in _event_cells(event, short=self.rich)]
        if self._stream_widths is None:
            typical = {"seq": 5, "time": 20, "kind": 11, "task": 12 if self.rich else 32}
            typical.update(identity=12, tool=8, op=6, resources=20, result=7)
            self._stream_widths = [max(len(h), typical.get(h, 0)) for h in EVENT_HEADERS]
            self._stream_line([(h, "bold") for h in EVENT_HEADERS])
        self._stream_widths = [max(w, len(v)) for w, (v, _) in zip(self._stream_widths, cells)]
        self._stream_line(cells)

    def _stream_line(self, cells: Sequence[tuple[str, str | None]]) -> None:
        widths = self._stream_widths or []
        if self.rich:
            text = Text()
            for i, (value, style) in enumerate(cells):
                if i:
                    text.append("  ")
                pad = widths[i] - len(value) if i < len(cells) - 1 else 0
                text.append(value, style=style or "")
                text.append(" " * pad)
            text.rstrip()
            self.console.print(text, soft_wrap=True)
        else:
            padded = [v.ljust(w) for (v, _), w in zip(cells[:-1], widths)] + [cells[-1][0]]
            self.file.write("  ".join(padded).rstrip() + "\n")

    # -- replay -------------------------------------------------------------------------------

    def replay(self, report: ReplayReport, config: str) -> None:
        """What ``audit replay`` found: the changes, the budgets that would run out, the calls
        that cannot be replayed."""
        what = f" of intent {report.intent}" if report.intent else ""
        self.line(
            f"replayed {plural(report.calls, 'call')}{what} from {format_time(report.since)}"
            f" under {config}: {len(report.newly_denied)} newly denied, "
            f"{len(report.newly_allowed)} newly allowed, {len(report.shadowed)} shadow "
            f"changes, {len(report.cannot_replay)} cannot replay, {len(report.held)} held for "
            f"approval, {report.unchanged} unchanged",
            "bold",
        )
        sections = (
            ("would now be denied (they ran)", report.newly_denied, "bold red"),
            ("would now be allowed (they were denied)", report.newly_allowed, "green"),
            ("shadow mode changes (they run either way)", report.shadowed, _WOULD_STYLE),
            ("cannot replay (never guessed)", report.cannot_replay, "magenta"),
            ("held for a person's approval (their answer is not guessed)", report.held, "yellow"),
        )
        for title, changes, style in sections:
            if not changes:
                continue
            rows = _Rows(
                ["time", "task", "intent", "tool", "op", "resources", "change", "detail"],
                title=title,
            )
            for c in changes:
                rows.add(
                    format_time(c.ts),
                    c.task_id[:12] if self.rich else c.task_id,
                    c.intent,
                    c.tool,
                    c.operation or "-",
                    ",".join(c.resources) or "-",
                    (f"{c.before} -> {c.after}", style),
                    f"{c.reason} [{c.rule}]" if c.rule else c.reason or "-",
                )
            self._table(rows)
        if report.budgets:
            rows = _Rows(["budget", "rule", "of", "runs out", "calls refused"], title="budgets")
            for b in report.budgets:
                rows.add(b.scope, b.rule, b.owner, format_time(b.first_ts), str(b.refused))
            self._table(rows)
        if not report.newly_denied:
            self.line("nothing would newly be denied", "green")

    # -- summary ------------------------------------------------------------------------------

    def summary(self, summary: Summary) -> None:
        """Usage per identity and tool, spikes, idle identities."""
        window = f"from {format_time(summary.since)}" + (
            f" to {format_time(summary.until)}" if summary.until is not None else " to now"
        )
        self.line(f"usage {window} (today = {format_time(summary.now)[:10]} UTC)", "bold")
        for by, usage in summary.rows.items():
            shadow = any(r.would_deny for r in usage)
            headers = [by, "calls", "denied", "errors", "cost", "peak/min", "today", "quota"]
            if shadow:  # calls that ran in shadow mode although refused
                headers.insert(3, "would-deny")
            rows = _Rows(headers, title=f"by {by}")
            for r in usage:
                cells = _usage_cells(r)
                if shadow:
                    cells.insert(3, (str(r.would_deny), _WOULD_STYLE if r.would_deny else None))
                rows.add(*cells)
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

    # -- approvals ----------------------------------------------------------------------------

    def approvals(
        self, records: Sequence[ApprovalRecord], now: float, *, title: str | None = None
    ) -> None:
        """Approval requests: the awaiting ones with their age and time left; the decided ones
        with who decided and when."""
        if not records:
            self.line("no approval requests match", "dim")
            return
        rows = _Rows(
            ["id", "state", "age", "tool", "op", "resources", "task", "detail"], title=title
        )
        for r in records:
            state = r.state(now)
            if state == "pending":
                detail = f"expires in {format_duration((r.expires_at - now) * 1000)}; {r.reason}"
            elif r.decision is None:
                detail = "expired without a decision"
            else:
                detail = f"{r.decision} by {r.by or '?'}" + (f": {r.note}" if r.note else "")
                detail += f" at {format_time(r.decided_at)}"
            style = {"pending": "bold yellow", "approved": "green", "rejected": "bold red"}
            rows.add(
                r.request_id[:12],
                (state, style.get(state, "yellow")),
                format_duration(max(0.0, now - r.requested_at) * 1000),
                r.tool or "-",
                r.operation or "-",
                ",".join(r.resources) or "-",
                r.task_id[:12],
                detail,
            )
        self._table(rows)

    def approval(self, record: ApprovalRecord, now: float) -> None:
        """One approval request in full (``toolguard approvals show``)."""
        state = record.state(now)
        self.line(f"approval request {record.request_id}: {state}", "bold")
        fields = [
            ("task", record.task_id),
            ("intent", record.intent or "-"),
            ("identity", record.identity or "-"),
            ("tool", record.tool or "-"),
            ("operation", record.operation or "-"),
            ("resources", ", ".join(record.resources) or "-"),
            ("arguments", json.dumps(record.args, sort_keys=True, ensure_ascii=False)),
            ("why held", record.reason or "-"),
            ("rule", record.rule or "-"),
            ("digest", record.digest),
            ("tool call", record.correlation_id or "-"),
            ("requested", f"{format_time(record.requested_at)} "
                          f"({format_duration(max(0.0, now - record.requested_at) * 1000)} ago)"),
            ("expires", format_time(record.expires_at)),
        ]  # fmt: skip
        if record.decision is not None:
            fields.append(
                ("decision", f"{record.decision} by {record.by or '?'} at "
                             f"{format_time(record.decided_at)}")
            )  # fmt: skip
            if record.note:
                fields.append(("note", record.note))
        for name, value in fields:
            self.line(f"  {name:<10} {value}")

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
        if result.checkpoints is not None:
            self.line(
                f"the signed record of the cut is in {result.checkpoints}: keep it, and give it "
                "to `toolguard audit verify --checkpoints` (with the guards' files), which "
                "accepts the cut only with it"
            )

    def done(self, text: str) -> None:
        """A confirmation line."""
        self.line(text, "green")

    def warn(self, text: str) -> None:
        """A warning line."""
        self.line(text, "yellow")


def _layout(rows: _Rows, console: Console) -> list[Text]:
    """The lines of a table for a terminal ``console.width`` wide. Ids, times, counts and
    statuses never wrap. The first layout that fits wins:

    1. one line per row, the ``detail`` column taking the remaining width (at least
       :data:`_REASON_MIN`, or all it needs) and wrapping by words (a table with no detail
       column: ``resources``, ``params`` and ``quota`` wrapped by words, at least
       :data:`_FLEX_MIN` wide);
    2. the other columns on the row's line (``resources``, ``params`` and ``quota`` wrapped by
       words, at least :data:`_FLEX_MIN` wide), the detail under it, indented, as wide as the
       terminal allows;
    3. the wrap-able columns on a labelled line under the row (``params job_id=42``), then
       the detail; else only the key columns (ids, times, kinds, statuses, counts) on the
       row's line and all the others on the labelled line (``identity agent-runner  tool
       kv_set ...``), then the detail.
    """
    width = max(console.width, 20)
    headers = rows.headers
    cells = [[Text(_clean(text), style=style or "") for text, style in row] for row in rows.rows]
    natural = [max([len(h), *(row[i].cell_len for row in cells)]) for i, h in enumerate(headers)]
    reason = headers.index(_REASON) if _REASON in headers else None
    roles = [
        "key" if i == 0 else "reason" if i == reason else "flex" if h in _FLEX else
        "short" if h in _SHORT else "key"
        for i, h in enumerate(headers)
    ]  # fmt: skip

    def fit(columns: list[int], room: int, *, shrink: bool = True) -> dict[int, int] | None:
        """Widths for ``columns`` in ``room`` (flex columns shrunk as needed), or None."""
        widths = {i: natural[i] for i in columns}
        over = sum(widths.values()) + _GAP * (len(columns) - 1) - room
        flex = [i for i in columns if roles[i] == "flex"] if shrink else []
        for i in sorted(flex, key=lambda i: -natural[i]):
            if over <= 0:
                break
            cut = min(over, max(0, natural[i] - _FLEX_MIN))
            widths[i] -= cut
            over -= cut
        return widths if over <= 0 else None

    plain = [i for i in range(len(headers)) if i != reason]
    widths: dict[int, int] | None = None
    below: list[int] = []  # columns on the labelled line under the row
    layout = 1
    if reason is not None:
        need = min(natural[reason], _REASON_MIN)
        widths = fit(plain, width - _GAP - need, shrink=False)
        if widths is not None:
            widths[reason] = width - _GAP * len(plain) - sum(widths.values())
            widths[reason] = min(widths[reason], natural[reason])
    else:
        widths = fit(plain, width)
    if widths is None and reason is not None:
        layout, widths = 2, fit(plain, width)
    if widths is None:  # the wrap-able columns under the row, then the short ones too
        layout = 2 if reason is None else 3
        below = [i for i in plain if roles[i] == "flex"]
        widths = fit([i for i in plain if i not in below], width)
    if widths is None:
        layout = 3
        below = [i for i in plain if roles[i] != "key"]
        widths = {i: natural[i] for i in plain if roles[i] == "key"}
    columns = sorted(widths)
    indent = natural[0] + _GAP if natural[0] + _GAP <= width // 3 else 2
    rest = max(width - indent, 10)
    used = sum(widths.values()) + _GAP * (len(columns) - 1)

    lines: list[Text] = []
    if rows.title:
        lines.append(Text(_clean(rows.title), style="bold"))
    head = [Text(headers[i], style="bold") for i in columns]
    lines += _row_lines(head, [widths[i] for i in columns], console)
    if below:
        lines.append(Text(" " * indent + "  ".join(headers[i] for i in below), style="dim"))
    if reason is not None and layout > 1:
        lines.append(Text(" " * indent + headers[reason], style="dim"))
    lines.append(Text("\u2500" * min(used, width), style="dim"))
    for row in cells:
        lines += _row_lines([row[i] for i in columns], [widths[i] for i in columns], console)
        if below:
            pieces = []
            for i in below:
                if row[i].plain not in ("", "-"):
                    piece = Text(headers[i] + " ", style="dim")
                    pieces.append(piece.append_text(row[i]))
            lines += _packed(pieces, indent, rest, console)
        if reason is not None and layout > 1 and row[reason].plain not in ("", "-"):
            lines += _indented(row[reason], indent, rest, console)
    return lines


def _row_lines(cells: Sequence[Text], widths: Sequence[int], console: Console) -> list[Text]:
    """One row as lines: each cell wrapped by words to its width (a word longer than the
    width is folded), padded so the next cell starts in its column."""
    wrapped = [
        list(cell.wrap(console, max(w, 1), overflow="fold")) or [Text()]
        for cell, w in zip(cells, widths)
    ]
    out: list[Text] = []
    for n in range(max(len(w) for w in wrapped)):
        line = Text()
        for k, (parts, w) in enumerate(zip(wrapped, widths)):
            part = parts[n].copy() if n < len(parts) else Text()
            part.rstrip()
            if k < len(widths) - 1:
                part.pad_right(w - part.cell_len)
                part.append(" " * _GAP)
            line.append_text(part)
        line.rstrip()
        out.append(line)
    return out


def _packed(pieces: Sequence[Text], indent: int, width: int, console: Console) -> list[Text]:
    """``label value`` pieces packed into indented lines, never split between lines unless one
    piece is wider than a line."""
    out: list[Text] = []
    line = Text()
    for piece in pieces:
        if line and line.cell_len + _GAP + piece.cell_len > width:
            out += _indented(line, indent, width, console)
            line = Text()
        if line:
            line.append(" " * _GAP)
        line.append_text(piece)
    if line:
        out += _indented(line, indent, width, console)
    return out


def _indented(text: Text, indent: int, width: int, console: Console) -> list[Text]:
    out = []
    for part in text.wrap(console, width, overflow="fold"):
        part.rstrip()
        out.append(Text(" " * indent) + part)
    return out


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


_WOULD_STYLE = "bold yellow"
"""A call that ran in shadow mode although refused (``would_deny``)."""


def _timeline_cells(row: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    kind = str(row.get("kind"))
    result, detail = event_result(row)
    if kind == "task_start":  # the terminal shows the task's parameters with its start
        detail = " ".join(p for p in (detail, _params(row.get("args"))) if p)
    would = kind == "request" and row.get("decision") == WOULD_DENY
    style = (
        "bold red" if kind == "denied" else _WOULD_STYLE if would else _RESULT_STYLES.get(result)
    )
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


def _event_cells(e: AuditEvent, *, short: bool) -> list[tuple[str, str | None]]:
    if e.kind == "denied":
        result, detail = "DENIED", f"{e.reason} [{e.rule}]"
    elif e.kind == "outcome":
        result, detail = (
            e.outcome or "-",
            f"{format_duration(e.duration_ms)} {e.error or ''}".strip(),
        )
    elif e.kind == "request" and e.decision == WOULD_DENY:  # shadow mode: refused, but ran
        result, detail = "WOULD-DENY", f"{e.reason} [{e.rule}] jti {_short(e.jti, 8)}"
    elif e.kind == "request":
        result, detail = e.decision or "allow", f"jti {_short(e.jti, 8)}"
    else:
        result, detail = event_result(e.to_dict())
    style = (
        "bold red"
        if e.kind == "denied"
        else _WOULD_STYLE
        if result == "WOULD-DENY"
        else _RESULT_STYLES.get(result)
    )
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
