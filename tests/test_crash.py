"""Crash safety: a process killed with SIGKILL at any point of a stream of guarded calls leaves
a database that opens, whose chain verifies, and in which every tool that ran has its
``request`` event (only outcomes may be missing)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

import toolguard as tg

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
    pytest.mark.slow,  # subprocesses: `make test-fast` skips them
]

# The child runs guarded calls until it is killed. Its tool appends the jti of its credential to
# a side file *before returning*: a line in that file proves the tool ran.
_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from langchain_core.tools import tool
    import toolguard as tg

    config, side = json.loads(sys.argv[1]), sys.argv[2]
    guard = tg.Guard(config)
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @tool
    def kv_set(key: str, value: str) -> str:
        \"\"\"Store a value.\"\"\"
        os.write(fd, (tg.current_credential().jti + "\\n").encode())
        return "stored"

    put = tg.guard(kv_set, guard)
    n = 0
    while True:
        with guard.task("stream", job_id=str(n)):
            for i in range(7):
                put.invoke({"key": f"agents:jobs:{n}:{i}", "value": "x" * (i * 50)})
        n += 1
    """
)


def _config(tmp_path: Path) -> dict[str, Any]:
    """No limits: the stream must never be refused, whatever the machine's speed."""
    return make_config(
        tmp_path,
        identities={"streamer": {"owner": "tests", "allow": {"write": ["agents:jobs:*"]}}},
        tools={"kv_set": {"operation": "write", "resource": "{key}"}},
        intents={
            "stream": {
                "identity": "streamer",
                "tools": ["kv_set"],
                "allow": {"write": ["agents:jobs:{job_id}:*"]},
            }
        },
    )


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1] if line]  # complete lines only


def _run_and_kill(config: dict[str, Any], side: Path, more: int) -> None:
    """Start the child, wait (bounded) until ``more`` further tools ran, then SIGKILL it."""
    target = len(_lines(side)) + more
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(config), str(side)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_lines(side)) < target:
            if child.poll() is not None:
                raise AssertionError(f"the child died on its own: {child.stderr.read()!r}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not reach {target} calls within 60 s")
            time.sleep(0.001)  # polling interval only; nothing depends on it
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.stderr is not None
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def _check(config: dict[str, Any], side: Path) -> tuple[int, int]:
    """The database opens and is intact, the chain verifies, every tool that ran is recorded.
    Returns (requests, outcomes)."""
    db = Path(config["store"])
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    guard = tg.Guard(config)
    try:
        report = guard.audit.verify()
        requests = guard.audit.events(kind="request")
        outcomes = guard.audit.events(kind="outcome")
    finally:
        guard.close()
    assert report.damage == [], report.damage
    assert report.checked == report.head_seq
    recorded = {e.jti for e in requests}
    ran = _lines(side)
    missing = [jti for jti in ran if jti not in recorded]
    assert missing == [], f"{len(missing)} tools ran without a request event"
    assert len(requests) >= len(ran)
    return len(requests), len(outcomes)


def test_crash_sigkill_during_guarded_calls_keeps_a_valid_trail(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    config = _config(tmp_path)
    side = tmp_path / "ran.txt"
    # The first kill lands before any call (start-up, schema creation), the others at random
    # points of the stream: inside a transaction, a tool, a task end or a checkpoint write.
    plan = [0, *(rng.randint(1, 60) for _ in range(5))]

    for more in plan:
        _run_and_kill(config, side, more)
        if Path(config["store"]).exists():
            requests, outcomes = _check(config, side)
            assert outcomes <= requests

    assert len(_lines(side)) >= sum(plan), f"seed {seed}"
