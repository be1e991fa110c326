"""Tests for toolguard.export: JSON lines that re-verify, CSV that a spreadsheet cannot run,
and one self-contained HTML page with the tasks, their timelines, the summary and a chart."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from conftest import Clock
from test_audit import TOOLS, build_trail, kv_get

import toolguard as tg
from toolguard.chain import EVENT_FIELDS, GENESIS, Event, event_hash
from toolguard.export import write_csv, write_html, write_jsonl
from toolguard.text import printable


@pytest.fixture
def trail(make_guard: Callable[..., tg.Guard], clock: Clock) -> tuple[tg.Guard, dict[str, str]]:
    guard = make_guard(clock=clock, tools=TOOLS)
    return guard, build_trail(guard, clock)


class _Page(HTMLParser):
    """Collects what the tests look at: tags, attributes, task ids, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.task_ids: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("data-task-id"):
            self.task_ids.append(str(attributes["data-task-id"]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _html(guard: tg.Guard, clock: Clock, **kwargs: object) -> str:
    out = io.StringIO()
    write_html(guard.audit, out, now=clock.now, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


# -- JSON lines and CSV -------------------------------------------------------------------------


def test_jsonl_has_one_event_per_line_and_recomputes_every_hash(
    trail: tuple[tg.Guard, dict[str, str]],
) -> None:
    guard, _ = trail
    out = io.StringIO()
    count = write_jsonl(guard.audit.iter_rows(), out)
    lines = out.getvalue().splitlines()
    assert count == len(lines) == guard.audit.head_seq()
    prev = GENESIS
    for line in lines:
        row = json.loads(line)
        assert set(row) == set(EVENT_FIELDS)
        assert row["prev_hash"] == prev
        assert event_hash(prev, row) == row["hash"]
        prev = row["hash"]


def test_jsonl_filters(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, ids = trail
    out = io.StringIO()
    write_jsonl(guard.audit.iter_rows(task_id=ids["summary"]), out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {r["task_id"] for r in rows} == {ids["summary"]}
    assert [r["kind"] for r in rows] == ["task_start", "request", "outcome", "task_end"]


def test_csv_has_a_header_and_every_event(trail: tuple[tg.Guard, dict[str, str]]) -> None:
    guard, _ = trail
    out = io.StringIO()
    count = write_csv(guard.audit.iter_rows(), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == guard.audit.head_seq()
    assert list(rows[0]) == list(EVENT_FIELDS)
    assert rows[0]["kind"] == "task_start"


@pytest.mark.parametrize("payload", ["=HYPERLINK(1)", "+1+1", "-2+3", "@SUM(A1)", "\tx"])
def test_csv_neutralizes_formulas(payload: str) -> None:
    row = {"seq": 1, "kind": "denied", "reason": payload, "args": "{}", "cost": -1.5}
    out = io.StringIO()
    write_csv([row], out)
    written = next(csv.DictReader(io.StringIO(out.getvalue())))
    assert written["reason"] == "'" + printable(payload)  # a tab is also shown as \x09
    assert written["args"] == "{}"
    assert written["cost"] == "-1.5"  # numbers are not text: left alone


# -- HTML ---------------------------------------------------------------------------------------


def test_html_lists_every_task_with_its_timeline(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, ids = trail
    page = _page(_html(guard, clock, since=clock.now - 3600))
    assert page.task_ids == [ids["summary"], ids["job"]]
    text = " ".join(page.text)
    assert "agents:jobs:42:input" in text
    assert "DENIED" in text
    assert "kv store is down" in text
    denied_rows = [a for t, a in page.tags if t == "tr" and a.get("class") == "deny"]
    assert len(denied_rows) == 1


def test_html_has_no_external_resources(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    text = _html(guard, clock)
    page = _page(text)
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "xlink:href", "data"):
            value = attrs.get(name) or ""
            assert not value.lower().startswith(("http:", "https:", "//")), (tag, name, value)
        if tag == "script":
            assert "src" not in attrs
        assert tag not in ("link", "iframe", "img", "object", "embed")
    assert "http://" not in text and "https://" not in text
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in str(csp[0].get("content"))


def test_html_has_summary_chart_and_filters(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, _ = trail
    page = _page(_html(guard, clock, since=clock.now - 3600))
    tags = [t for t, _ in page.tags]
    assert "svg" in tags and "polyline" in tags
    ids = {a.get("id") for _, a in page.tags}
    assert {"q", "f-identity", "f-status", "f-denied"} <= ids
    text = " ".join(page.text)
    assert "agent-runner" in text and "summariser" in text
    assert "peak/min" in text


def test_html_escapes_model_written_text(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    attack = '<script>alert(1)</script><img src="https://evil.example/x">'
    with guard.task("process-job", job_id="42"):
        get.invoke({"key": attack})
    text = _html(guard, clock)
    page = _page(text)
    assert [t for t, _ in page.tags].count("script") == 1  # only the page's own
    assert "img" not in [t for t, _ in page.tags]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_html_filters_and_limit(trail: tuple[tg.Guard, dict[str, str]], clock: Clock) -> None:
    guard, ids = trail
    only = _page(_html(guard, clock, identity="summariser"))
    assert only.task_ids == [ids["summary"]]
    limited_text = _html(guard, clock, limit=1)
    assert _page(limited_text).task_ids == [ids["summary"]]
    assert "Showing the newest 1 task;" in limited_text
    denied = _page(_html(guard, clock, decision="deny"))
    assert denied.task_ids == [ids["job"]]


def test_html_shows_denials_outside_any_task(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    get.invoke({"key": "agents:jobs:1:input"})  # no task: NoActiveTask, audited
    text = _html(guard, clock)
    assert "Events outside any task" in text
    assert "outside a task" in text


def test_html_of_empty_trail(guard: tg.Guard, clock: Clock) -> None:
    page = _page(_html(guard, clock))
    assert page.task_ids == []
    assert "svg" in [t for t, _ in page.tags]


# -- the report's sections (issue 12; tests/test_report_browser.py checks them in Chromium) ----


def test_html_csp_allows_exactly_the_page_script_and_style(guard: tg.Guard, clock: Clock) -> None:
    import base64
    import hashlib
    import re

    text = _html(guard, clock)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)
    assert csp is not None
    policy = csp.group(1)
    assert "'unsafe-inline'" not in policy and "default-src 'none'" in policy
    for tag in ("script", "style"):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        assert body is not None
        digest = base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy, tag
    assert " style=" not in text and " on" + "click=" not in text  # no inline style or handler


def test_html_revocations_budgets_and_open_denials(
    trail: tuple[tg.Guard, dict[str, str]], clock: Clock
) -> None:
    guard, ids = trail
    clock.advance(1)
    guard.revoke(identity="summariser", reason="incident 18", disable=True)
    guard.revoke(task_id=ids["job"], reason="incident 19")
    budgets = {name: intent.budget for name, intent in guard.config.intents.items()}
    text = _html(guard, clock, budgets=budgets)
    page = _page(text)
    assert 'id="revocations"' in text and "incident 18" in text and "incident 19" in text
    assert '<span class="badge disabled">disabled</span>' in text
    assert "Identities disabled now" in text
    opened = {a["data-task-id"] for t, a in page.tags if t == "details" and "open" in a}
    assert opened == {ids["job"]}  # the task with a denial, and only it
    assert "max_calls: 3 of 20" in text and "per_tool.kv_set: 2 of 5" in text
    assert "max_cost: 0.5 of 1" in text
    unknown = _html(guard, clock)
    assert "limits unknown" in unknown and "max_calls: 3 used" in unknown


def test_html_chart_bucket_fits_the_calls_not_the_window(guard: tg.Guard, clock: Clock) -> None:
    get = tg.guard(kv_get, guard)
    for _ in range(10):  # a five-minute burst ...
        with guard.task("process-job", job_id="42"):
            get.invoke({"key": "agents:jobs:42:input"})
        clock.advance(30)
    clock.advance(6 * 3600)  # ... in a 24 h window
    page = _page(_html(guard, clock))
    text = " ".join(page.text)
    assert "Calls per 5s bucket" in text
    points = [t for t, _ in page.tags if t == "circle"]
    assert len(points) == 10  # each call in its own bucket, not one spike


def test_html_shows_delegation_links_acknowledge_and_tainted(
    make_guard: Callable[..., tg.Guard], clock: Clock
) -> None:
    import copy

    from conftest import BASE_CONFIG, raw_sql

    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["allow"]["delegate"] = ["agents:jobs:*"]
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["allow"]["delegate"] = ["agents:jobs:{job_id}:*"]
    guard = make_guard(clock=clock, identities=identities, intents=intents)
    get = tg.guard(kv_get, guard)
    with (
        guard.task("process-job", job_id="42") as parent,
        parent.delegate("summarise-job", job_id="42") as child,
    ):
        get.invoke({"key": "agents:jobs:42:input"})
    guard.store.append(
        Event(
            ts=clock.now, kind="acknowledge", decision="acknowledge", operation="truncated",
            reason="acknowledged by alice: restored", rule="audit.acknowledge",
        )
    )  # fmt: skip
    raw_sql(guard, "UPDATE tasks SET tainted = 1 WHERE task_id = ?", (child.task_id,))
    text = _html(guard, clock)
    assert f'href="#task-{child.task_id}"' in text and f'href="#task-{parent.task_id}"' in text
    assert "acknowledged by alice: restored" in text
    assert '<span class="badge tainted">tainted</span>' in text
    budgets = {name: intent.budget for name, intent in guard.config.intents.items()}
    parent_only = _html(guard, clock, task_id=parent.task_id, budgets=budgets)
    assert "max_calls: 1 of 20" in parent_only  # the child's call spends the parent's budget
    only_child = _html(guard, clock, task_id=child.task_id)
    assert f"<code>{parent.task_id}</code> <span" in only_child  # not in this report: no link


@pytest.mark.slow
@pytest.mark.sqlite_only  # sqlite-utils on the database file
def test_docs_sqlite_utils_examples_run_on_a_real_trail(
    make_guard: Callable[..., tg.Guard], clock: Clock, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """docs/audit.md, "The database is plain SQLite": its sqlite-utils commands and its Python
    lines work, as printed, from the folder that holds ``.toolguard/``."""
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path_factory.mktemp("project")
    guard = make_guard(clock=clock, tools=TOOLS, store=str(folder / ".toolguard" / "audit.db"))
    ids = build_trail(guard, clock)
    guard.revoke(task_id=ids["job"], reason="incident 17")
    guard.close()
    doc = (Path(__file__).resolve().parent.parent / "docs" / "audit.md").read_text()
    section = doc.split("## The database is plain SQLite", 1)[1].split("\n## ", 1)[0]
    commands = [
        line
        for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
        for line in block.splitlines()
        if line.startswith("sqlite-utils ")
    ]
    assert len(commands) >= 3
    tool = str(Path(sys.executable).parent / "sqlite-utils")
    outputs = []
    for command in commands:
        args = shlex.split(command)
        done = subprocess.run(
            [tool, *args[1:]], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    text = "\n".join(outputs)
    assert "events" in outputs[0] and "credentials" in outputs[0]
    assert json.loads(outputs[1]) == [{"identity": "agent-runner", "denials": 1}]
    assert "incident 17" in text
    (code,) = re.findall(r"```py\n(.*?)```", section, flags=re.DOTALL)
    printed = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert printed.returncode == 0, printed.stderr
    assert "'tool': 'kv_set', 'calls': 2" in printed.stdout
    again = make_guard(clock=clock, tools=TOOLS, store=str(folder / ".toolguard" / "audit.db"))
    assert again.audit.verify().ok  # the reads changed nothing
