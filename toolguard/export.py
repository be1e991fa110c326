"""Exports of the trail: JSON lines, CSV, and one self-contained HTML page.

- JSON lines: one event per line, every column exactly as stored (``resources`` stays its JSON
  text), so anyone can recompute each ``hash`` from ``prev_hash`` (:mod:`toolguard.chain`).
- CSV: the same columns with a header row, for spreadsheets. A free-text cell (``tool``,
  ``resources``, ``reason``, ``args``, ``error``: model- or tool-written text) that starts with
  ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` so a spreadsheet does
  not run it as a formula. Identifiers (ids, hashes, names, numbers: only letters, digits and
  ``. _ : -``) are written exactly as stored, even when they start with ``-``; any other cell
  that starts like a formula is escaped too. Use JSON lines to re-verify hashes.
- HTML: one page with no external resource (a ``Content-Security-Policy`` forbids any network
  access): the usage summary, usage over time as an inline SVG chart, and the task list with
  each task's timeline, filterable by text, identity, status and denials with inline script.
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from .audit import AuditEvent, AuditLog, Summary, Usage
from .chain import EVENT_FIELDS
from .text import printable
from .viewer import TIMELINE_HEADERS, format_cost, format_duration, format_time, plural

__all__ = ["HtmlReport", "render_html", "write_csv", "write_html", "write_jsonl"]

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

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}
th,td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}
td.num{text-align:right}
.deny,.deny td{color:#b91c1c;font-weight:600}
.err{color:#b45309}.inc{color:#7e22ce}.ok{color:#15803d}.rev{color:#a21caf}
.task{border:1px solid #e5e7eb;border-radius:4px;margin:.3em 0;padding:.2em .6em}
.task summary{cursor:pointer}
.task.has-deny{border-left:4px solid #b91c1c}
.muted{color:#6b7280}
code{font-size:.95em}
#filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
#filters input,#filters select{margin-right:1em}
"""

_SCRIPT = """
(function(){
  var q=document.getElementById('q'),idn=document.getElementById('f-identity'),
      st=document.getElementById('f-status'),dn=document.getElementById('f-denied'),
      count=document.getElementById('shown');
  function apply(){
    var text=q.value.toLowerCase(),n=0,tasks=document.querySelectorAll('.task');
    for(var i=0;i<tasks.length;i++){
      var t=tasks[i],ok=true;
      if(text&&t.textContent.toLowerCase().indexOf(text)<0)ok=false;
      if(idn.value&&t.getAttribute('data-identity')!==idn.value)ok=false;
      if(st.value&&t.getAttribute('data-status')!==st.value)ok=false;
      if(dn.checked&&t.getAttribute('data-denied')==='0')ok=false;
      t.style.display=ok?'':'none';if(ok)n++;
    }
    count.textContent=n;
  }
  [q,idn,st,dn].forEach(function(el){el.addEventListener('input',apply);
    el.addEventListener('change',apply);});
  apply();
})();
"""


class HtmlReport:
    """The data of the HTML page: summary, usage, tasks and their timelines."""

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
    ) -> None:
        self.title = title
        self.generated_at = generated_at
        self.source = source
        self.filters = filters
        self.summary = summary
        self.usage = usage
        self.tasks = tasks
        self.timelines = timelines
        self.outside = outside
        self.truncated = truncated


def _e(value: Any) -> str:
    return html.escape(printable(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
                    f'<td class="num{" err" if r.errors else ""}">{r.errors}</td>',
                    f'<td class="num">{_e(format_cost(r.cost))}</td>',
                    f'<td class="num">{r.peak_per_minute}</td>',
                    f'<td class="num">{r.today_calls}</td>',
                    f"<td>{_e(quota or '-')}</td>",
                ]
            )
        parts.append(
            _table(
                [by, "calls", "denied", "errors", "cost", "peak/min", "today", "quota"],
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


def _chart_svg(usage: Usage, *, width: int = 900, height: int = 240) -> str:
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
        f'<text x="{left}" y="{height - 8}" font-size="11">{_e(format_time(usage.since))}</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" font-size="11">'
        f"{_e(format_time(usage.since + usage.bucket * n))}</text>",
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
    out.append("</svg>")
    legend = " ".join(
        f'<span style="color:{_PALETTE[k % len(_PALETTE)]}">&#9632; {_e(key)}</span>'
        for k, key in enumerate(sorted(usage.series))
    )
    legend += ' <span style="color:#f87171">&#9632; denials</span>'
    every = _e(format_duration(usage.bucket * 1000))
    return "".join(out) + f'<div class="muted">calls per {every} bucket. {legend}</div>'


def _timeline_row(row: Mapping[str, Any]) -> str:
    kind = str(row.get("kind"))
    if kind == "request":
        result = str(row.get("result") or "incomplete")
        detail = row.get("error") or row.get("reason") or ""
    elif kind == "denied":
        result, detail = "DENIED", f"{row.get('reason')} [{row.get('rule')}]"
    elif kind == "task_end":
        result, detail = str(row.get("outcome") or "ended"), row.get("reason") or ""
    elif kind == "task_start":
        result, detail = "started", row.get("reason") or ""
    elif kind == "task_resume":
        result, detail = "resumed", row.get("reason") or ""
    elif kind == "revoke":
        result, detail = "revoked", f"{row.get('reason')} [{row.get('rule')}]"
    else:
        result = str(row.get("outcome") or row.get("decision") or "-")
        detail = row.get("error") or row.get("reason") or ""
    cls = {
        "DENIED": "deny",
        "error": "err",
        "not-run": "deny",
        "incomplete": "inc",
        "ok": "ok",
        "revoked": "rev",
    }.get(result, "")
    resources = row.get("resources") or []
    cells = [
        format_time(row.get("ts")),
        kind,
        row.get("tool") or "-",
        row.get("operation") or "-",
        ", ".join(str(r) for r in resources) or "-",
        result,
        (row.get("jti") or "-")[:8],
        format_duration(row.get("duration_ms")),
        format_cost(row.get("cost")),
        detail or "-",
    ]
    return f'<tr class="{cls}">' + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"


def _task_html(task: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    denied = int(task.get("denied") or 0)
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
    head = (
        f"<code>{_e(task['task_id'])}</code> &middot; {_e(format_time(task.get('started_at')))}"
        f" &middot; <b>{_e(task.get('intent'))}</b> &middot; {_e(task.get('identity'))}"
        f" &middot; {_e(status)}{' (tainted)' if task.get('tainted') else ''}"
        f" &middot; {plural(int(task.get('calls') or 0), 'call')}"
        f' &middot; <span class="{"deny" if denied else ""}">{denied} denied</span>'
        f" &middot; cost {_e(format_cost(task.get('cost')))}"
        f' <span class="muted">{_e(params)}</span>'
    )
    body = "".join(_timeline_row(r) for r in rows)
    timeline = (
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in TIMELINE_HEADERS)
        + f"</tr></thead><tbody>{body}</tbody></table>"
    )
    return (
        f'<div class="task{" has-deny" if denied else ""}" data-task-id="{_e(task["task_id"])}"'
        f' data-identity="{_e(task.get("identity"))}" data-status="{_e(status)}"'
        f' data-denied="{1 if denied else 0}"><details><summary>{head}</summary>'
        f"{timeline}</details></div>"
    )


def render_html(report: HtmlReport) -> str:
    """The whole page as one string (no external resources)."""
    identities = sorted({str(t.get("identity")) for t in report.tasks if t.get("identity")})
    statuses = sorted({str(t.get("status")) for t in report.tasks if t.get("status")})
    filters = ", ".join(f"{k}={v}" for k, v in report.filters.items() if v is not None)
    options_identity = "".join(f'<option value="{_e(i)}">{_e(i)}</option>' for i in identities)
    options_status = "".join(f'<option value="{_e(s)}">{_e(s)}</option>' for s in statuses)
    tasks = "\n".join(
        _task_html(t, report.timelines.get(str(t["task_id"]), ())) for t in report.tasks
    )
    outside = ""
    if report.outside:
        rows = "".join(_timeline_row(e.to_dict()) for e in report.outside)
        outside = (
            "<h2>Events outside any task</h2><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in TIMELINE_HEADERS)
            + f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    truncated = (
        f'<p class="muted">Showing the newest {plural(len(report.tasks), "task")}; narrow the '
        "filters or raise --limit (0: no limit) to see more.</p>"
        if report.truncated
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(report.title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(report.title)}</h1>
<p class="muted">Generated {_e(format_time(report.generated_at))} from {_e(report.source)}.
Filters: {_e(filters or "none")}. Times are UTC.</p>
<h2>Usage</h2>
{_chart_svg(report.usage)}
{_summary_html(report.summary)}
<h2>Tasks (<span id="shown">{len(report.tasks)}</span> of {len(report.tasks)})</h2>
{truncated}
<div id="filters">
<input id="q" type="search" placeholder="filter: id, tool, resource, reason..." size="40">
<select id="f-identity"><option value="">any identity</option>{options_identity}</select>
<select id="f-status"><option value="">any status</option>{options_status}</select>
<label><input id="f-denied" type="checkbox"> with denials only</label>
</div>
{tasks}
{outside}
<script>{_SCRIPT}</script>
</body></html>
"""


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
    source: str = "",
    title: str = "toolguard audit report",
) -> int:
    """Write the HTML page for the tasks matching the filters; returns how many tasks.

    The summary and the chart cover ``since`` to ``until`` (default: the last 24 hours before
    ``now``); the task list the newest ``limit`` tasks matching the filters.
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
    outside: list[AuditEvent] = []
    if task_id is None:
        outside = [
            e
            for e in audit.latest(200, kind="denied", since=since, until=until, tool=tool)
            if e.task_id is None and (identity is None or e.identity == identity)
        ]
    summary = audit.summary(since=start, until=until, now=now, limits=limits, identities=identities)
    usage = audit.usage(since=start, until=max(end, start + 60.0))
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
    )
    out.write(render_html(report))
    return len(tasks)
