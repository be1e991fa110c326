"""A SIGKILL storm across processes: several processes make guarded calls on one trail and are
killed at random points, round after round. After each round the database opens and passes
``PRAGMA integrity_check``, every tool that ran has its ``request`` event, no budget was
overspent (a task's ``max_calls``, the identity's ``requests_per_day``), and
``toolguard audit verify`` passes. (tests/test_crash.py is the single-process version.)"""

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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
]

MAX_CALLS = 5  # per task; each task tries 7 calls
PER_DAY = 250  # the identity's requests_per_day, shared by every process
PROCESSES = 3
ROUNDS = 4

# A child runs guarded calls until killed; its tool appends its credential's jti to a side file
# before returning: a line there proves the tool ran.
_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from langchain_core.tools import tool
    import toolguard as tg

    config, side, name = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
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
        with guard.task("stream", job_id=f"{name}-{n}"):
            for i in range(7):
                put.invoke({"key": f"agents:jobs:{name}-{n}:{i}", "value": "x" * (i * 40)})
        n += 1
    """
)


def _config(tmp_path: Path) -> dict[str, Any]:
    return make_config(
        tmp_path,
        busy_timeout=10.0,
        identities={
            "streamer": {
                "owner": "tests",
                "allow": {"write": ["agents:jobs:*"]},
                "limits": {"requests_per_day": PER_DAY},
            }
        },
        tools={"kv_set": {"operation": "write", "resource": "{key}"}},
        intents={
            "stream": {
                "identity": "streamer",
                "tools": ["kv_set"],
                "allow": {"write": ["agents:jobs:{job_id}:*"]},
                "budget": {"max_calls": MAX_CALLS},
            }
        },
    )


def _ran(side: Path) -> list[str]:
    if not side.exists():
        return []
    return [line for line in side.read_text().split("\n")[:-1] if line]


def _round(config: dict[str, Any], side: Path, rng: random.Random, deadline: float) -> None:
    """Start the processes, let each run a random while, SIGKILL them at random moments."""
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                json.dumps(config),
                str(side),
                f"p{k}{rng.random():.6f}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k in range(PROCESSES)
    ]
    try:
        start = len(_ran(side))
        target = start + rng.randint(5, 40)
        # wait (bounded) until some tools ran, or the day's budget is spent and all is denial
        while len(_ran(side)) < target and time.monotonic() < deadline:
            if all(c.poll() is not None for c in children):
                break
            time.sleep(0.002)  # polling only; nothing depends on it
        order = list(children)
        rng.shuffle(order)
        for child in order:  # killed one by one, at different points of their work
            time.sleep(rng.random() * 0.03)
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)


def _check(config: dict[str, Any], config_file: Path, side: Path) -> int:
    db = Path(config["store"])
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        requests = {
            r[0] for r in conn.execute("SELECT jti FROM events WHERE kind = 'request'") if r[0]
        }
        per_task = conn.execute(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM events WHERE kind = 'request'"
            " GROUP BY task_id)"
        ).fetchone()[0]
    finally:
        conn.close()
    ran = _ran(side)
    missing = [jti for jti in ran if jti not in requests]
    assert missing == [], f"{len(missing)} tools ran without a request event"
    assert len(requests) <= PER_DAY  # the identity's day budget held across processes
    assert (per_task or 0) <= MAX_CALLS  # and every task's budget
    done = subprocess.run(
        [sys.executable, "-m", "toolguard", "audit", "verify", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return len(requests)


def test_fault_storm_sigkill_across_processes_keeps_every_promise(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    config = _config(tmp_path)
    config_file = tmp_path / "toolguard.json"
    config_file.write_text(json.dumps(config))
    side = tmp_path / "ran.txt"
    deadline = time.monotonic() + 10  # the whole storm stays bounded in time
    rounds = 0
    for _ in range(ROUNDS):
        if rounds >= 2 and time.monotonic() > deadline:
            break
        # the first two rounds always run, each given 30 s on a loaded machine (start-up included)
        _round(config, side, rng, deadline if rounds >= 2 else time.monotonic() + 30)
        rounds += 1
        if Path(config["store"]).exists():
            _check(config, config_file, side)
    print(f"storm: {rounds} rounds, {len(_ran(side))} tools ran, seed {seed}")
    assert rounds >= 2, f"seed {seed}"
    assert _ran(side), f"no tool ran in {rounds} rounds (seed {seed})"
