"""Exports of the trail: JSON lines, CSV, and one self-contained HTML page.

- JSON lines: one event per line, every column exactly as stored (``resources`` stays its JSON
  text), so anyone can recompute each ``hash`` from ``prev_hash`` (:mod:`toolguard.chain`).
- CSV: the same columns with a header row, for spreadsheets. A free-text cell (``tool``,
  ``resources``, ``reason``, ``args``, ``error``: model- or tool-written text) that starts with
  ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` so a spreadsheet does
  not run it as a formula. Identifiers (ids, hashes, names, numbers: only letters, digits and
  ``. _ : -``) are written exactly as stored, even when they start with ``-``; any other cell
  that starts like a formula is escaped too. Use JSON lines to re-verify hashes.
- HTML: one page with no external resource: revocations (task, identity, credential; who,
  why, when; identities disabled now), usage over time as an inline SVG chart spanning the
  calls, the usage summary, the task list (statuses in colour, tainted tasks marked, tasks with
  denials open, parent/child links, each task's budget against its intent's limits, its
  timeline with millisecond times) with a filter bar and expand/collapse controls, and the
  events outside any task (denials, ``acknowledge``, ``enable``). Its Content-Security-Policy
  (:data:`CSP`) forbids any network access and allows only the page's own stylesheet and
  script, by their SHA-256 hashes. docs/cli.md describes the page.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from .audit import AuditEvent, AuditLog, Summary, Usage
from .budget import COST_RESOLUTION
from .chain import EVENT_FIELDS
from .formatting import (
    TIMELINE_HEADERS,
    WOULD_DENY,
    event_result,
    format_cost,
    format_duration,
    format_time,
    plural,
)
from .store.approvals import ApprovalRecord
from .text import printable

if TYPE_CHECKING:
    from .config import Budget

__all__ = ["CSP", "HtmlReport", "render_html", "write_csv", "write_html", "write_jsonl"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    """Write one JSON object per event row (:meth:`AuditLog.iter_rows`); returns how many."""
    count = 0
    for row in rows:
        out.write(json.dumps({k: row.get(k) for k in EVENT_FIELDS}, sort_keys=True) + "\n")
        count += 1
    return count


_CSV_FREE_TEXT = frozenset({"tool", "resources", "reason", "args", "error"})
"""CSV columns that hold free text (from a model, a tool or an error): a cell that starts like
a formula gets a leading ``'``."""

_ID = re.compile(r"[A-Za-z0-9._:-]*")
"""What an identifier cell (ids, hashes, names, numbers) holds: never a formula, kept as is."""


def _csv_cell(column: str, value: Any) -> Any:
    """A CSV cell: no controls, bidi overrides or lone surrogates; identifiers exactly as stored
    (a credential id may start with ``-``), free text (and any identifier cell with other
    characters) escaped when it starts like a formula."""
    if not isinstance(value, str):
        return value
    formula = value.startswith(_FORMULA_START)
    value = printable(value)
    if not (formula or value.startswith(_FORMULA_START)):
        return value
    if column not in _CSV_FREE_TEXT and _ID.fullmatch(value):
        return value
    return "'" + value


def write_csv(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    """Write event rows (:meth:`AuditLog.iter_rows`) as CSV with a header row; returns how
    many events. Free-text cells that start like a formula are escaped (:func:`_csv_cell`)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EVENT_FIELDS)
    count = 0
    for row in rows:
        writer.writerow([_csv_cell(k, row.get(k)) for k in EVENT_FIELDS])
        count += 1
    return count


# -- HTML ---------------------------------------------------------------------------------------

_PALETTE = (
    "#2563eb",
    "#16a34a",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
)

_CSS = (
    """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}
th,td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}
td.num{text-align:right}
.t{white-space:nowrap;font-variant-numeric:tabular-nums}
.deny,.deny td{color:#b91c1c;font-weight:600}
.would,.would td{color:#c2410c;font-weight:600}
.err{color:#b45309}.inc{color:#7e22ce}.ok{color:#15803d}.rev{color:#a21caf}
.act{color:#0e7490}.warn{color:#b45309}
.task{border:1px solid #e5e7eb;border-radius:4px;margin:.3em 0;padding:.2em .6em}
.task summary{cursor:pointer}
.task.has-deny{border-left:4px solid #b91c1c}
.task.has-would{border-right:4px solid #c2410c}
.badge.would{background:#ffedd5;color:#9a3412}
.badge{border-radius:3px;padding:0 4px;font-size:.85em;font-weight:600}
.badge.tainted{background:#fef3c7;color:#92400e}
.badge.disabled{background:#fee2e2;color:#991b1b}
.meta{margin:.3em 0}.meta span{margin-right:1.2em}
.over{color:#b91c1c;font-weight:600}
.muted{color:#6b7280}
code{font-size:.95em}
#filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
#filters input,#filters select,#filters button{margin-right:.8em}
[hidden]{display:none}
"""
    + "".join(f".c{k}{{color:{c}}}" for k, c in enumerate(_PALETTE))
    + ".cd{color:#f87171}\n"
)

_SCRIPT = """
(function(){
  var q=document.getElementById('q'),idn=document.getElementById('f-identity'),
      st=document.getElementById('f-status'),dn=document.getElementById('f-denied'),
      count=document.getElementById('shown'),tasks=document.querySelectorAll('.task');
  function apply(){
    var text=q.value.toLowerCase(),n=0;
    for(var i=0;i<tasks.length;i++){
      var t=tasks[i],ok=true;
      if(text&&t.textContent.toLowerCase().indexOf(text)<0)ok=false;
      if(idn.value&&t.getAttribute('data-identity')!==idn.value)ok=false;
      if(st.value&&t.getAttribute('data-status')!==st.value)ok=false;
      if(dn.checked&&t.getAttribute('data-denied')==='0')ok=false;
      t.hidden=!ok;if(ok)n++;
    }
    count.textContent=n;
  }
  function expand(open){
    for(var i=0;i<tasks.length;i++){if(!tasks[i].hidden)tasks[i].open=open;}
  }
  [q,idn,st,dn].forEach(function(el){el.addEventListener('input',apply);
    el.addEventListener('change',apply);});
  document.getElementById('expand-all').addEventListener('click',function(){expand(true);});
  document.getElementById('collapse-all').addEventListener('click',function(){expand(false);});
  apply();
})();
"""


def _csp_hash(text: str) -> str:
    return (
        "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"
    )


CSP = (
    f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_SCRIPT)};"
    " img-src data:; base-uri 'none'; form-action 'none'"
)
"""The page's Content-Security-Policy: no network access at all; the one stylesheet and the one
script of the page run (by their SHA-256), nothing else does (no other inline script, no
``style`` attribute, no event handler attribute)."""

_STATUS_CLASS = {
    "ok": "ok",
    "error": "err",
    "revoked": "rev",
    "active": "act",
    "expired": "warn",
    "cancelled": "warn",
    "abandoned": "warn",
    "parent-ended": "warn",
}

_BUCKETS = (1.0, 5.0, 10.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 21600.0, 86400.0)
_CHART_BUCKETS = 60
"""The chart's bucket is the shortest of :data:`_BUCKETS` that cuts the span of the calls (not
of the whole window) into at most this many."""


class HtmlReport:
    """The data of the HTML page: summary, usage, revocations, tasks and their timelines."""

    def __init__(
        self,
        *,
        title: str,
        generated_at: float,
        source: str,
        filters: Mapping[str, Any],
        summary: Summary,
        usage: Usage,
        tasks: Sequence[Mapping[str, Any]],
        timelines: Mapping[str, Sequence[Mapping[str, Any]]],
        outside: Sequence[AuditEvent] = (),
        truncated: bool = False,
        revocations: Sequence[Mapping[str, Any]] = (),
        disabled: Sequence[Mapping[str, Any]] = (),
        budgets: Mapping[str, Sequence[tuple[str, float | None, float]]] | None = None,
        limits_known: bool = False,
        children: Mapping[str, Sequence[str]] | None = None,
        window: tuple[float, float] | None = None,
        approvals: Sequence[ApprovalRecord] = (),
    ) -> None:
        self.title = title
        self.approvals = approvals
        """The approval requests awaiting a decision (oldest first)."""
        self.generated_at = generated_at
        self.source = source
        self.filters = filters
        self.summary = summary
        self.usage = usage
        self.tasks = tasks
        self.timelines = timelines
        self.outside = outside
        self.truncated = truncated
        self.revocations = revocations
        self.disabled = disabled
        self.budgets = budgets or {}
        """task id -> (limit name, limit or None when unknown, used)."""
        self.limits_known = limits_known
        self.children = children or {}
        """task id -> the ids of its delegated child tasks."""
        self.window = window


def _e(value: Any) -> str:
    return html.escape(printable(value), quote=True)


def _time_ms(ts: Any) -> str:
    """``2026-09-21 14:13:20.123Z`` in a cell that never wraps."""
    if ts is None:
        return "-"
    return f"{format_time(ts)[:10]} {format_time(ts, clock_only=True)}Z"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_headers(by: str) -> list[str]:
    return [by, "calls", "denied", "would-deny", "errors", "cost", "peak/min", "today", "quota"]


def _summary_html(summary: Summary) -> str:
    parts = []
    for by, rows in summary.rows.items():
        parts.append(f"<h3>By {_e(by)}</h3>")
        if not rows:
            parts.append('<p class="muted">No calls in this window.</p>')
            continue
        body = []
        for r in rows:
            quota = "; ".join(
                f"{k}: {v.get('used', v.get('peak'))}/{v['limit']:g}" for k, v in r.quota.items()
            )
            body.append(
                [
                    f"<td>{_e(r.key)}</td>",
                    f'<td class="num">{r.calls}</td>',
                    f'<td class="num{" deny" if r.denials else ""}">{r.denials}</td>',
                    f'<td class="num{" would" if r.would_deny else ""}">{r.would_deny}</td>',
                    f'<td class="num{" err" if r.errors else ""}">{r.errors}</td>',
                    f'<td class="num">{_e(format_cost(r.cost))}</td>',
                    f'<td class="num">{r.peak_per_minute}</td>',
                    f'<td class="num">{r.today_calls}</td>',
                    f"<td>{_e(quota or '-')}</td>",
                ]
            )
        parts.append(
            _table(
                _summary_headers(by),
                body,
                raw=True,
            )
        )
    if summary.spikes:
        parts.append("<h3>Spikes</h3>")
        parts.append(
            _table(
                ["by", "name", "recent calls", "usual", "ratio"],
                (
                    [s.by, s.key, str(s.recent), f"{s.usual:.1f}", f"{s.ratio:.1f}x"]
                    for s in summary.spikes
                ),
            )
        )
    if summary.idle:
        parts.append(f"<h3>Identities with no task in {summary.idle_days:g} days</h3>")
        parts.append(
            _table(
                ["identity", "last task"],
                (
                    [i.identity, format_time(i.last_task) if i.last_task else "never"]
                    for i in summary.idle
                ),
            )
        )
    return "\n".join(parts)


def _bucket_label(seconds: float) -> str:
    """``5s``, ``1m``, ``15m``, ``6h``, ``1d``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _chart_svg(
    usage: Usage, window: tuple[float, float] | None, *, width: int = 900, height: int = 240
) -> str:
    """Calls per key (lines) and denials (red bars) per bucket, as inline SVG."""
    left, bottom, top, right = 48, 28, 12, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    n = usage.buckets
    peak = max([1, *usage.denials, *(v for s in usage.series.values() for v in s)])
    step = plot_w / max(n, 1)

    def x(i: int) -> float:
        return left + step * (i + 0.5)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / peak

    out = [
        f'<svg role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="calls over time">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#9ca3af"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#9ca3af"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
        f'<text x="{left}" y="{height - 8}" font-size="11">{_e(_time_ms(usage.since))}</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" font-size="11">'
        f"{_e(_time_ms(usage.since + usage.bucket * n))}</text>",
    ]
    bar = max(1.0, step * 0.6)
    for i, v in enumerate(usage.denials):
        if v:
            out.append(
                f'<rect x="{x(i) - bar / 2:.1f}" y="{y(v):.1f}" width="{bar:.1f}" '
                f'height="{top + plot_h - y(v):.1f}" fill="#fca5a5"><title>{v} denied'
                "</title></rect>"
            )
    for k, (key, values) in enumerate(sorted(usage.series.items())):
        colour = _PALETTE[k % len(_PALETTE)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>{_e(key)}</title></polyline>"
        )
        for i, v in enumerate(values):
            if v:
                out.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{_e(key)}: {v} in the bucket from "
                    f"{_e(_time_ms(usage.since + usage.bucket * i))}</title></circle>"
                )
    out.append("</svg>")
    legend = " ".join(
        f'<span class="c{k % len(_PALETTE)}">&#9632; {_e(key)}</span>'
        for k, key in enumerate(sorted(usage.series))
    )
    legend += ' <span class="cd">&#9632; denials</span>'
    every = _e(_bucket_label(usage.bucket))
    span = ""
    if window is not None:
        span = (
            f" The chart spans the calls, from {_e(_time_ms(usage.since))} to "
            f"{_e(_time_ms(usage.since + usage.bucket * n))}, of the window "
            f"{_e(format_time(window[0]))} to {_e(format_time(window[1]))}."
        )
    return (
        "".join(out)
        + f'<div class="muted" id="chart-note">Calls per {every} bucket.{span} {legend}</div>'
    )


def _timeline_row(row: Mapping[str, Any]) -> str:
    kind = str(row.get("kind"))
    result, detail = event_result(row)
    cls = {
        "DENIED": "deny",
        "error": "err",
        "not-run": "deny",
        "incomplete": "inc",
        "ok": "ok",
        "revoked": "rev",
        "revoke failed": "deny",
        "acknowledged": "warn",
        "enabled": "rev",
    }.get(result, "")
    if kind == "request" and row.get("decision") == WOULD_DENY:
        cls = "would"
    resources = row.get("resources") or []
    if isinstance(resources, str):
        resources = [resources]
    cells = [
        (kind, "t"),
        (row.get("tool") or "-", ""),
        (row.get("operation") or "-", ""),
        (", ".join(str(r) for r in resources) or "-", ""),
        (result, "t"),
        ((row.get("jti") or "-")[:8], "t"),
        (format_duration(row.get("duration_ms")), "t"),
        (format_cost(row.get("cost")), ""),
        (detail or "-", ""),
    ]
    return (
        f'<tr class="{cls}" data-kind="{_e(kind)}"><td class="t">{_e(_time_ms(row.get("ts")))}</td>'
        + "".join(f'<td class="{c}">{_e(v)}</td>' if c else f"<td>{_e(v)}</td>" for v, c in cells)
        + "</tr>"
    )


def _timeline_table(rows: Iterable[Mapping[str, Any]]) -> str:
    body = "".join(_timeline_row(r) for r in rows)
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in TIMELINE_HEADERS)
        + f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _task_link(task_id: str, present: Container[str]) -> str:
    if task_id in present:
        return f'<a href="#task-{_e(task_id)}"><code>{_e(task_id)}</code></a>'
    return f'<code>{_e(task_id)}</code> <span class="muted">(not in this report)</span>'


def _budget_html(task: Mapping[str, Any], report: HtmlReport) -> str:
    used = report.budgets.get(str(task["task_id"]), ())
    if not used:
        return ""
    cells = []
    for name, limit, spent in used:
        amount = format_cost(spent) if name == "max_cost" else f"{spent:g}"
        if name == "max_cost" and not spent:
            amount = "0"
        if limit is None:
            cells.append(f"<span>{_e(name)}: {_e(amount)} used</span>")
        else:
            over = ' class="over"' if spent >= limit else ""
            cells.append(f"<span{over}>{_e(name)}: {_e(amount)} of {limit:g}</span>")
    note = (
        ""
        if report.limits_known
        else ' <span class="muted">limits unknown (export with --config to compare)</span>'
    )
    return f'<div class="meta budget"><b>budget</b> {" ".join(cells)}{note}</div>'


def _task_html(
    task: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    report: HtmlReport,
    present: Container[str],
) -> str:
    task_id = str(task["task_id"])
    denied = int(task.get("denied") or 0)
    would = int(task.get("would_deny") or 0)
    params = task.get("params") or ""
    try:
        loaded = json.loads(params) if params else {}
        params = (
            " ".join(f"{k}={v}" for k, v in loaded.items())
            if isinstance(loaded, dict)
            else str(loaded)
        )
    except ValueError:
        pass
    status = str(task.get("status") or "")
    tainted = bool(task.get("tainted"))
    head = (
        f"<code>{_e(task_id)}</code> &middot; "
        f'<span class="t">{_e(_time_ms(task.get("started_at")))}</span>'
        f" &middot; <b>{_e(task.get('intent'))}</b> &middot; {_e(task.get('identity'))}"
        f' &middot; <span class="status {_STATUS_CLASS.get(status, "")}">{_e(status)}</span>'
        + (' <span class="badge tainted">tainted</span>' if tainted else "")
        + f" &middot; {plural(int(task.get('calls') or 0), 'call')}"
        f' &middot; <span class="{"deny" if denied else ""}">{denied} denied</span>'
        + (f' <span class="badge would">{would} would-deny</span>' if would else "")
        + f" &middot; cost {_e(format_cost(task.get('cost')))}"
        f' <span class="muted">{_e(params)}</span>'
    )
    meta = []
    if task.get("parent_id"):
        meta.append(f"<span>delegated by {_task_link(str(task['parent_id']), present)}</span>")
    kids = report.children.get(task_id, ())
    if kids:
        meta.append(
            "<span>delegated to " + ", ".join(_task_link(k, present) for k in kids) + "</span>"
        )
    if task.get("purpose"):
        meta.append(f"<span>purpose: {_e(task['purpose'])}</span>")
    if task.get("ended_at") is not None:
        meta.append(f'<span>ended <span class="t">{_e(_time_ms(task["ended_at"]))}</span></span>')
    if tainted:
        meta.append(
            '<span class="warn">tainted: an outcome of this task was written without its '
            "settlement (see docs/budgets.md)</span>"
        )
    meta_html = f'<div class="meta">{"".join(meta)}</div>' if meta else ""
    return (
        f'<details class="task{" has-deny" if denied else ""}{" has-would" if would else ""}"'
        f' id="task-{_e(task_id)}"'
        f' data-task-id="{_e(task_id)}" data-identity="{_e(task.get("identity"))}"'
        f' data-status="{_e(status)}" data-denied="{1 if denied else 0}"'
        f' data-would-deny="{would}"'
        f' data-tainted="{1 if tainted else 0}"{" open" if denied or would else ""}>'
        f"<summary>{head}</summary>{meta_html}{_budget_html(task, report)}"
        f"{_timeline_table(rows)}</details>"
    )


_SCOPES = {"task": "task", "identity": "identity", "jti": "credential"}


def _revocations_html(report: HtmlReport, present: Container[str]) -> str:
    parts = ['<h2 id="revocations">Revocations</h2>']
    if report.revocations:
        body = []
        for r in report.revocations:
            scope = str(r.get("scope"))
            value = str(r.get("value"))
            target = _task_link(value, present) if scope == "task" else f"<code>{_e(value)}</code>"
            what = _SCOPES.get(scope, scope) + (
                ' <span class="badge disabled">disabled</span>' if r.get("disabled") else ""
            )
            body.append(
                [
                    f'<td class="t">{_e(_time_ms(r.get("ts")))}</td>',
                    f"<td>{what}</td>",
                    f"<td>{target}</td>",
                    f"<td>{_e(r.get('by') or '-')}</td>",
                    f"<td>{_e(r.get('reason') or '-')}</td>",
                ]
            )
        parts.append(_table(["time", "revoked", "target", "by", "reason"], body, raw=True))
    else:
        parts.append(
            '<p class="muted">No task, identity or credential was revoked in this window.</p>'
        )
    if report.disabled:
        parts.append("<h3>Identities disabled now</h3>")
        parts.append(
            _table(
                ["identity", "since", "reason"],
                (
                    [
                        f"<td>{_e(d.get('identity'))}</td>",
                        f'<td class="t">{_e(_time_ms(d.get("ts")))}</td>',
                        f"<td>{_e(d.get('reason') or '-')}</td>",
                    ]
                    for d in report.disabled
                ),
                raw=True,
            )
        )
    return "\n".join(parts)


def _approvals_html(report: HtmlReport) -> str:
    """The requests awaiting a person's decision, oldest first, with their age: what an
    on-call person looks for first."""
    if not report.approvals:
        return ""
    now = report.generated_at
    rows = [
        [
            r.request_id[:12],
            format_duration(max(0.0, now - r.requested_at) * 1000),
            format_duration(max(0.0, r.expires_at - now) * 1000),
            r.tool or "-",
            r.operation or "-",
            ", ".join(r.resources) or "-",
            r.task_id[:12],
            r.reason or "-",
        ]
        for r in report.approvals
    ]
    headers = ["request", "age", "expires in", "tool", "op", "resources", "task", "why held"]
    return (
        f'<h2 id="approvals">Awaiting approval ({len(rows)})</h2>'
        '<p class="muted">Answer with <code>toolguard approvals approve ID --by NAME</code> or '
        "<code>toolguard approvals reject ID</code>.</p>" + _table(headers, rows)
    )


def render_html(report: HtmlReport) -> str:
    """The whole page as one string (no external resources)."""
    identities = sorted({str(t.get("identity")) for t in report.tasks if t.get("identity")})
    statuses = sorted({str(t.get("status")) for t in report.tasks if t.get("status")})
    filters = ", ".join(f"{k}={v}" for k, v in report.filters.items() if v is not None)
    options_identity = "".join(f'<option value="{_e(i)}">{_e(i)}</option>' for i in identities)
    options_status = "".join(f'<option value="{_e(s)}">{_e(s)}</option>' for s in statuses)
    present = {str(t["task_id"]) for t in report.tasks}
    tasks = "\n".join(
        _task_html(t, report.timelines.get(str(t["task_id"]), ()), report, present)
        for t in report.tasks
    )
    outside = ""
    if report.outside:
        outside = '<h2 id="outside">Events outside any task</h2>' + _timeline_table(
            e.to_dict() for e in report.outside
        )
    truncated = (
        f'<p class="muted">Showing the newest {plural(len(report.tasks), "task")}; narrow the '
        "filters or raise --limit (0: no limit) to see more.</p>"
        if report.truncated
        else ""
    )
    with_denials = sum(1 for t in report.tasks if int(t.get("denied") or 0))
    tainted = sum(1 for t in report.tasks if t.get("tainted"))
    counts = f"{plural(with_denials, 'task')} with denials (open below)" + (
        f', <span class="badge tainted">{plural(tainted, "tainted task")}</span>' if tainted else ""
    )
    shadow = _shadow_html(report)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(report.title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(report.title)}</h1>
<p class="muted">Generated {_e(format_time(report.generated_at))} from {_e(report.source)}.
Filters: {_e(filters or "none")}. Times are UTC.</p>
{_approvals_html(report)}
{_revocations_html(report, present)}
<h2 id="usage">Usage</h2>
{_chart_svg(report.usage, report.window)}
{_summary_html(report.summary)}
{shadow}
<h2 id="tasks">Tasks (<span id="shown">{len(report.tasks)}</span> of {len(report.tasks)})</h2>
<p>{counts}</p>
{truncated}
<div id="filters">
<input id="q" type="search" placeholder="filter: id, tool, resource, reason..." size="40">
<select id="f-identity"><option value="">any identity</option>{options_identity}</select>
<select id="f-status"><option value="">any status</option>{options_status}</select>
<label><input id="f-denied" type="checkbox"> with denials only</label>
<button id="expand-all" type="button">Expand all</button>
<button id="collapse-all" type="button">Collapse all</button>
</div>
{tasks}
{outside}
<script>{_SCRIPT}</script>
</body></html>
"""


def _shadow_html(report: HtmlReport) -> str:
    """The section of the calls shadow mode let run although refused (``would_deny``), from
    the tasks of the page; empty when there are none."""
    rows = [
        (task_id, r)
        for task_id, timeline in report.timelines.items()
        for r in timeline
        if r.get("kind") == "request" and r.get("decision") == WOULD_DENY
    ]
    if not rows:
        return ""
    rows.sort(key=lambda item: float(item[1].get("ts") or 0.0))
    body = [
        [
            f'<td class="t">{_e(_time_ms(r.get("ts")))}</td>',
            f'<td><a href="#task-{_e(task_id)}"><code>{_e(task_id[:12])}</code></a></td>',
            f"<td>{_e(r.get('tool') or '-')}</td>",
            f"<td>{_e(r.get('operation') or '-')}</td>",
            f"<td>{_e(', '.join(str(x) for x in r.get('resources') or []) or '-')}</td>",
            f'<td class="would">{_e(r.get("result") or "incomplete")}</td>',
            f"<td>{_e(r.get('reason') or '-')} [{_e(r.get('rule') or '-')}]</td>",
        ]
        for task_id, r in rows
    ]
    return (
        f'<h2 id="would-deny">Shadow mode: {plural(len(rows), "call")} that would be denied</h2>'
        '<p class="muted">These calls ran because their intent or identity is in shadow mode; '
        "in enforce mode they would have been refused.</p>"
        + _table(
            ["time", "task", "tool", "op", "resources", "outcome", "why it would be denied"],
            body,
            raw=True,
        )
    )


_OUTSIDE_KINDS = ("denied", "acknowledge", "enable")
"""Events outside any task that the page lists (revocations have their own section)."""


def _task_budgets(
    audit: AuditLog,
    tasks: Sequence[Mapping[str, Any]],
    timelines: Mapping[str, Sequence[Mapping[str, Any]]],
    budgets: Mapping[str, Budget] | None,
    children: Mapping[str, Sequence[str]],
) -> dict[str, list[tuple[str, float | None, float]]]:
    """Each task's budget (what it and its delegated tasks spent, as the guard counts it:
    :func:`toolguard.store.sqlite.tasks.spent_from_trail`) against the limits of its intent in the
    config; with no config, what was spent (limits unknown)."""
    out: dict[str, list[tuple[str, float | None, float]]] = {}
    for task in tasks:
        task_id = str(task["task_id"])
        idle = not int(task.get("calls") or 0) and not children.get(task_id)
        budget = budgets.get(str(task.get("intent"))) if budgets is not None else None
        limits: list[tuple[str, float | None]] = []
        if budget is not None:
            limits += [("max_calls", budget.max_calls), ("max_cost", budget.max_cost)]
            limits += [(f"per_tool.{k}", v) for k, v in sorted(budget.per_tool.items())]
            limits += [(f"per_operation.{k}", v) for k, v in sorted(budget.per_operation.items())]
            limits = [(k, v) for k, v in limits if v is not None]
        else:
            tools = sorted(
                {
                    str(r["tool"])
                    for r in timelines.get(task_id, ())
                    if r.get("kind") == "request" and r.get("tool")
                }
            )
            limits = [("max_calls", None), ("max_cost", None)]
            limits += [(f"per_tool.{t}", None) for t in tools]
        # a task with no call (and no child here) spent 0: no read
        spent = {} if idle else audit.store.task_spent(task_id, [n for n, _ in limits])
        out[task_id] = [
            (name, None if limit is None else float(limit), spent.get(name, 0) / COST_RESOLUTION)
            for name, limit in limits
        ]
    return out


def _chart_range(audit: AuditLog, start: float, end: float) -> tuple[float, float, float]:
    """The chart's ``since``, ``until`` and bucket: the span of the calls in ``[start, end)``
    (the whole window when there are none), cut into at most :data:`_CHART_BUCKETS` buckets."""
    rows = audit.store.usage_rows("identity", since=start, until=end)
    firsts = [float(r["first_ts"]) for r in rows if r.get("first_ts") is not None]
    lasts = [float(r["last_ts"]) for r in rows if r.get("last_ts") is not None]
    low, high = (min(firsts), max(lasts)) if firsts else (start, end)
    span = max(high - low, 1.0)
    size = next((b for b in _BUCKETS if span / b <= _CHART_BUCKETS), _BUCKETS[-1])
    since = low - (low % size)
    until = max(high - (high % size) + size, since + size)
    return since, until, size


def write_html(
    audit: AuditLog,
    out: IO[str],
    *,
    now: float,
    since: float | None = None,
    until: float | None = None,
    identity: str | None = None,
    tool: str | None = None,
    decision: str | None = None,
    task_id: str | None = None,
    limit: int | None = 500,
    limits: Mapping[str, Any] | None = None,
    identities: Sequence[str] = (),
    budgets: Mapping[str, Budget] | None = None,
    source: str = "",
    title: str = "toolguard audit report",
) -> int:
    """Write the HTML page for the tasks matching the filters; returns how many tasks.

    The summary, the revocations and the chart cover ``since`` to ``until`` (default: the last
    24 hours before ``now``); the chart spans the calls inside that window. The task list holds
    the newest ``limit`` tasks matching the filters, each with its budget: ``budgets`` (intent
    name -> :class:`~toolguard.config.Budget`, from the config) gives the limits; without it
    the page shows what was spent and says the limits are unknown.
    """
    start = since if since is not None else now - 86400.0
    end = until if until is not None else now
    tasks = audit.tasks(
        identity=identity,
        since=since,
        until=until,
        tool=tool,
        decision=decision,
        task_id=task_id,
        limit=None if limit is None else limit + 1,
    )
    truncated = limit is not None and len(tasks) > limit
    tasks = tasks[:limit] if limit is not None else tasks
    timelines = {str(t["task_id"]): audit.timeline(str(t["task_id"])) for t in tasks}
    children = audit.children(list(timelines))
    outside: list[AuditEvent] = []
    if task_id is None:
        for kind in _OUTSIDE_KINDS:
            outside += [
                e
                for e in audit.latest(200, kind=kind, since=since, until=until, tool=tool)
                if e.task_id is None and (identity is None or e.identity in (None, identity))
            ]
        outside.sort(key=lambda e: e.seq)
    revocations = audit.revocations(since=start, until=until)
    if identity is not None or task_id is not None or tool is not None or decision is not None:
        present = set(timelines)
        jtis = {str(r["jti"]) for rows in timelines.values() for r in rows if r.get("jti")}
        revocations = [
            r
            for r in revocations
            if (r["scope"] == "task" and r["value"] in present)
            or (r["scope"] == "jti" and r["value"] in jtis)
            or (r["scope"] == "identity" and identity in (None, r["value"]) and task_id is None)
        ]
    summary = audit.summary(since=start, until=until, now=now, limits=limits, identities=identities)
    chart_since, chart_until, bucket = _chart_range(audit, start, max(end, start + 60.0))
    usage = audit.usage(since=chart_since, until=chart_until, bucket=bucket)
    report = HtmlReport(
        title=title,
        generated_at=now,
        source=source,
        filters={
            "identity": identity,
            "tool": tool,
            "decision": decision,
            "task": task_id,
            "since": format_time(since) if since is not None else None,
            "until": format_time(until) if until is not None else None,
        },
        summary=summary,
        usage=usage,
        tasks=tasks,
        timelines=timelines,
        outside=outside,
        truncated=truncated,
        revocations=revocations,
        disabled=audit.disabled_identities(),
        budgets=_task_budgets(audit, tasks, timelines, budgets, children),
        limits_known=budgets is not None,
        children=children,
        window=(start, max(end, start + 60.0)),
        approvals=[r for r in audit.store.approval_requests() if r.state(now) == "pending"],
    )
    out.write(render_html(report))
    return len(tasks)
