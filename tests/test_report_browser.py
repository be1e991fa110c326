"""The HTML report in a real browser: headless Chromium opens the page written by ``toolguard
audit export --format html -o report.html`` and a DevTools-protocol client checks, with the
DOM, that the sections are there (revocations, usage, tasks with budgets, parent/child links,
events outside tasks), that the controls work (expand and collapse all, the text filter,
"with denials only"), that the page makes no network request and that the Content-Security-
Policy reports no violation while still blocking an injected inline script. A screenshot is
saved next to the report (its path is printed).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). Without it the test skips,
except in CI (``$CI`` set), where it fails.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import BASE_CONFIG, Clock, make_config
from test_audit import kv_get, kv_set

import toolguard as tg
from toolguard.chain import Event
from toolguard.cli import CliContext, main

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return CHROMIUM


class DevTools:
    """A minimal Chrome DevTools Protocol client over one websocket (flattened sessions)."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=64 << 20, open_timeout=20)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session is not None:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == msg_id:
                assert "error" not in reply, (method, reply["error"])
                return dict(reply.get("result") or {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for event in self.events:
            if event["method"] == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if "method" in reply:
                self.events.append(reply)
                if reply["method"] == method:
                    return reply

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, (expression, result["exceptionDetails"])
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[DevTools]:
    profile = tmp_path / "chromium-profile"
    log = (tmp_path / "chromium.log").open("w")
    proc = subprocess.Popen(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
            "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            assert proc.poll() is None, (tmp_path / "chromium.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)  # waiting for another process to start, not for timing
        port, path = active.read_text().splitlines()[:2]
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck browser
            proc.kill()
            proc.wait()
        log.close()


def _config(tmp_path: Path) -> dict[str, Any]:
    identities = copy.deepcopy(BASE_CONFIG["identities"])
    identities["agent-runner"]["allow"]["delegate"] = ["agents:jobs:*"]
    intents = copy.deepcopy(BASE_CONFIG["intents"])
    intents["process-job"]["allow"]["delegate"] = ["agents:jobs:{job_id}:*"]
    tools = {**BASE_CONFIG["tools"], "kv_set": {"operation": "write", "resource": "{key}"}}
    return make_config(tmp_path, identities=identities, intents=intents, tools=tools)


def _trail(tmp_path: Path, clock: Clock) -> tuple[Path, dict[str, str]]:
    """A trail with every part of the report: a delegated task, a denial, revocations of a
    task, an identity (disabled) and a credential, an acknowledge event, a tainted task."""
    config = tmp_path / "toolguard.json"
    config.write_text(json.dumps(_config(tmp_path)))
    ids: dict[str, str] = {}
    with tg.Guard.from_config(config, clock=clock) as guard:
        get, put = tg.guard([kv_get, kv_set], guard)
        with guard.task("process-job", job_id="42") as parent:
            get.invoke({"key": "agents:jobs:42:input"})
            clock.advance(0.25)
            put.invoke({"key": "agents:jobs:43:state", "value": "x"})  # denied
            with parent.delegate("summarise-job", job_id="42") as child:
                get.invoke({"key": "agents:jobs:42:input"})
                ids["child"] = child.task_id
            put.invoke({"key": "agents:jobs:42:state", "value": "done"})
            ids["parent"] = parent.task_id
        for n in range(6):  # a burst of a few minutes
            clock.advance(30)
            with guard.task("summarise-job", job_id=str(n)) as task:
                get.invoke({"key": f"agents:jobs:{n}:input"})
                ids[f"burst{n}"] = task.task_id
        clock.advance(5)
        with guard.task("process-job", job_id="77") as revoked:
            get.invoke({"key": "agents:jobs:77:input"})
            ids["revoked"] = revoked.task_id
            guard.revoke(task_id=revoked.task_id, reason="incident 17: wrong job")
        jti = next(e.jti for e in guard.audit.events(kind="request") if e.jti)
        ids["jti"] = str(jti)
        guard.revoke(jti=str(jti), reason="leaked in a log")
        guard.store.append(
            Event(
                ts=clock.now,
                kind="acknowledge",
                decision="acknowledge",
                operation="truncated",
                reason="acknowledged by alice: power cut, restored from backup",
                rule="audit.acknowledge",
            )
        )
        store = guard.config.store_path
    with sqlite3.connect(store) as conn:  # a tainted task (see docs/budgets.md)
        conn.execute("UPDATE tasks SET tainted = 1 WHERE task_id = ?", (ids["burst5"],))
    clock.advance(1)
    cli = CliContext(clock=clock)
    revoke = CliRunner().invoke(
        main,
        ["revoke", "--identity", "summariser", "--disable", "--reason", "incident 18",
         "--config", str(config)],
        obj=cli,
    )  # fmt: skip
    assert revoke.exit_code == 0, revoke.output
    report = tmp_path / "report.html"
    export = CliRunner().invoke(
        main,
        ["audit", "export", "--format", "html", "-o", str(report), "--config", str(config)],
        obj=cli,
    )
    assert export.exit_code == 0, export.output
    return report, ids


def test_report_in_a_real_browser(browser: DevTools, tmp_path: Path, clock: Clock) -> None:
    report, ids = _trail(tmp_path, clock)
    tools = browser
    tools.send("Page.enable")
    tools.send("Runtime.enable")
    tools.send("Log.enable")
    tools.send("Network.enable")
    tools.send(
        "Page.addScriptToEvaluateOnNewDocument",
        source="window.__csp=[];document.addEventListener('securitypolicyviolation',"
        "function(e){window.__csp.push(e.violatedDirective+' '+e.blockedURI);});",
    )
    tools.send("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1,
               mobile=False)  # fmt: skip
    url = report.resolve().as_uri()
    tools.send("Page.navigate", url=url)
    tools.wait_for("Page.loadEventFired")

    # The sections.
    for section in ("revocations", "usage", "tasks", "outside"):
        assert tools.js(f"!!document.getElementById('{section}')"), section
    revocations = tools.js(
        "Array.from(document.querySelectorAll('#revocations + table tbody tr'))"
        ".map(function(r){return r.textContent;})"
    )
    assert any("incident 17: wrong job" in r and ids["revoked"] in r for r in revocations)
    assert any("leaked in a log" in r and ids["jti"] in r for r in revocations)
    assert any("summariser" in r and "disabled" in r and "cli" in r for r in revocations)
    assert "acknowledged by alice" in tools.js(
        "document.getElementById('outside').nextElementSibling.textContent"
    )
    assert "Calls per 5s bucket" in tools.js("document.getElementById('chart-note').textContent")

    # Tasks: those with denials are open, the others closed; budgets; links; tainted; status.
    tasks = tools.js(
        "Array.from(document.querySelectorAll('details.task')).map(function(t){return "
        "[t.dataset.taskId,t.open,t.dataset.denied];})"
    )
    assert len(tasks) == 9
    assert all(is_open == (denied == "1") for _, is_open, denied in tasks)
    assert [t for t, is_open, _ in tasks if is_open] == [ids["parent"]]
    parent = f"document.getElementById('task-{ids['parent']}')"
    child = f"document.getElementById('task-{ids['child']}')"
    assert "max_calls: 3 of 20" in tools.js(f"{parent}.querySelector('.budget').textContent")
    assert "per_tool.kv_set: 1 of 5" in tools.js(f"{parent}.querySelector('.budget').textContent")
    assert tools.js(f"{parent}.querySelector('a[href=\"#task-{ids['child']}\"]') !== null")
    assert tools.js(f"{child}.querySelector('a[href=\"#task-{ids['parent']}\"]') !== null")
    tools.js(f"{child}.querySelector('a[href=\"#task-{ids['parent']}\"]').click()")
    assert tools.js("location.hash") == f"#task-{ids['parent']}"
    assert tools.js(
        f"document.getElementById('task-{ids['burst5']}').querySelector('.badge.tainted') !== null"
    )
    assert (
        tools.js(f"getComputedStyle({parent}.querySelector('.status')).color") == "rgb(21, 128, 61)"
    )
    revoked = f"document.getElementById('task-{ids['revoked']}')"
    assert (
        tools.js(f"getComputedStyle({revoked}.querySelector('.status')).color")
        == "rgb(162, 28, 175)"
    )
    # Times with milliseconds, never wrapped: one line box each.
    times = tools.js(
        f"{parent}.open=true;Array.from({parent}.querySelectorAll('td.t:first-child')).map(function(td){{"
        "var r=document.createRange();r.selectNodeContents(td);"
        "return [td.textContent,r.getClientRects().length];})"
    )
    assert times and all(
        n == 1 and len(text) == len("2026-09-21 14:13:20.250Z") for text, n in times
    )
    lines = tools.js(  # kinds, results, credential ids, durations: never wrapped either
        f"Array.from({parent}.querySelectorAll('td.t')).map(function(td){{"
        "var r=document.createRange();r.selectNodeContents(td);return r.getClientRects().length;})"
    )
    assert lines and set(lines) == {1}

    # Expand all / collapse all.
    tools.js("document.getElementById('expand-all').click()")
    assert tools.js(
        "Array.from(document.querySelectorAll('details.task')).every(function(t){return t.open;})"
    )
    tools.js("document.getElementById('collapse-all').click()")
    assert tools.js(
        "Array.from(document.querySelectorAll('details.task')).every(function(t){return !t.open;})"
    )
    # The text filter.
    visible = (
        "Array.from(document.querySelectorAll('details.task')).filter(function(t){"
        "return !t.hidden && t.getClientRects().length;})"
        ".map(function(t){return t.dataset.taskId;})"
    )
    tools.js(
        f"var q=document.getElementById('q');q.value='{ids['child'][:12]}';"
        "q.dispatchEvent(new Event('input'));"
    )
    assert sorted(tools.js(visible)) == sorted([ids["child"], ids["parent"]])  # and its link
    assert tools.js("document.getElementById('shown').textContent") == "2"
    # With denials only.
    tools.js(
        "var q=document.getElementById('q');q.value='';q.dispatchEvent(new Event('input'));"
        "var d=document.getElementById('f-denied');d.checked=true;"
        "d.dispatchEvent(new Event('change'));"
    )
    assert tools.js(visible) == [ids["parent"]]
    tools.js(
        "var d=document.getElementById('f-denied');d.checked=false;"
        "d.dispatchEvent(new Event('change'));document.getElementById('expand-all').click();"
    )
    assert len(tools.js(visible)) == 9

    shot = tools.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    import base64

    png = tmp_path / "report.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot of the report: {png}")
    assert png.stat().st_size > 10_000

    # No network request but the page itself; no CSP violation, no error in the console.
    requests = [e["params"]["request"]["url"] for e in tools.events
                if e["method"] == "Network.requestWillBeSent"]  # fmt: skip
    assert requests and all(u == url or u.startswith("data:") for u in requests), requests
    assert tools.js("window.__csp") == []
    errors = [e for e in tools.events if e["method"] in ("Runtime.exceptionThrown",)]
    errors += [e for e in tools.events if e["method"] == "Log.entryAdded"
               and e["params"]["entry"]["level"] == "error"]  # fmt: skip
    errors += [e for e in tools.events if e["method"] == "Runtime.consoleAPICalled"
               and e["params"]["type"] in ("error", "warning")]  # fmt: skip
    assert errors == []
    # ... and the policy is enforced: an injected inline script does not run.
    tools.js(
        "var s=document.createElement('script');s.textContent='window.__ran=1;';"
        "document.body.appendChild(s);"
    )
    assert tools.js("window.__ran === undefined")
    assert any("script-src" in v for v in tools.js("window.__csp"))
