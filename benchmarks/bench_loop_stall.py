"""How long the event loop stalls while async agents make guarded calls (issue 15).

An async agent server runs many agent runs on one event loop; if the guard's store work ran
on the loop (its wait for the write lock, its busy-retry sleeps, the ``COMMIT`` and SQLite's
automatic WAL checkpoint inside it), every coroutine would stall with it. This benchmark runs
``--runs`` (50) concurrent coroutines, each inside ``async with guard.task(...)`` making
``--calls`` guarded ``ainvoke`` calls of a native async tool that reads its token, each after
``--think`` ms of simulated model time (``asyncio.sleep``; 0 saturates the loop with the
runs' own Python work, which then dominates the stall), and a
ticker coroutine that sleeps 1 ms in a loop and records how late each wake-up is (the loop's
stall). Meanwhile another *process* holds the database's write lock in bursts (``BEGIN
IMMEDIATE``, ``--hold`` ms, ``COMMIT``, ``--gap`` ms; ``--hold 0`` for no holder).

    python benchmarks/bench_loop_stall.py [--runs 50] [--calls 20] [--think 20] [--hold 50]
                                          [--gap 20] [--repeat 1]

Reports the worst stall and the p99 and p99.9 of the ticker's lateness, the guarded calls per
second, the holder's bursts, and how many of the store's write transactions ran on the loop's
thread and for how long (``store_on_loop*``: the guard's own share of the stall, unlike the
ticker not inflated by a loaded machine preempting the whole process); writes
``benchmarks/results/loop_stall.json``. Goal (issue 15): worst stall <= 5 ms with the holder
on. ``PYTHONPATH=<an older tree>`` measures another version of toolguard with the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.tools import StructuredTool

import toolguard as tg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "loop_stall.json"
TARGET_MS = 5.0
KEY = "agents:jobs:42:input"


async def _read(key: str) -> str:
    """Read the value stored under a key, presenting the call's credential."""
    token = tg.current_credential().token
    await asyncio.sleep(0)
    return f"value of {key} ({len(token)})"


kv_get = StructuredTool.from_function(coroutine=_read, name="kv_get", description="Read a key.")


def config(workdir: Path) -> dict[str, Any]:
    return {
        "store": str(workdir / "audit.db"),
        "issuer": {"key_file": str(workdir / "signing-key.pem")},
        "identities": {
            "agent-runner": {
                "allow": {"read": ["agents:jobs:*"]},
                "limits": {"requests_per_minute": 10**9, "requests_per_day": 10**9},
            }
        },
        "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
        "intents": {
            "process-job": {
                "identity": "agent-runner",
                "tools": ["kv_get"],
                "allow": {"read": ["agents:jobs:{job_id}:*"]},
                "budget": {"max_calls": 10**9},
                "ttl": "24h",
            }
        },
    }


def hold(db: str, hold_ms: float, gap_ms: float, stop: str) -> None:
    """The other process: take the write lock in bursts until ``stop`` exists."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    bursts = 0
    while not Path(stop).exists():
        try:  # as eager as the guard's writers (SQLite's own busy handler would lose to them)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            time.sleep(50e-6)
            continue
        time.sleep(hold_ms / 1000.0)
        conn.execute("COMMIT")
        bursts += 1
        time.sleep(gap_ms / 1000.0)
    print(bursts, flush=True)


def _probe_store(loop_thread: int, spans: list[float]) -> Callable[[], None]:
    """Time every store write transaction that runs on the loop's thread (ms, into
    ``spans``): the part of the stall that is the guard's, independent of the machine's load
    (which preempts the whole process too). Returns the undo."""
    from toolguard.store import Store

    original = Store._write

    @contextmanager
    def timed(self: Any, what: str) -> Iterator[Any]:
        if threading.get_ident() != loop_thread:
            with original(self, what) as conn:
                yield conn
            return
        start = time.perf_counter()
        try:
            with original(self, what) as conn:
                yield conn
        finally:
            spans.append((time.perf_counter() - start) * 1000.0)

    Store._write = timed  # type: ignore[method-assign]

    def undo() -> None:
        Store._write = original  # type: ignore[method-assign]

    return undo


async def _measure(guard: tg.Guard, runs: int, calls: int, think: float) -> dict[str, Any]:
    tool = tg.guard(kv_get, guard)
    on_loop: list[float] = []
    undo = _probe_store(threading.get_ident(), on_loop)
    lateness: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        clock = time.perf_counter
        while not done.is_set():
            start = clock()
            await asyncio.sleep(0.001)
            lateness.append((clock() - start - 0.001) * 1000.0)

    async def run(i: int) -> int:
        async with guard.task("process-job", job_id="42"):
            for _ in range(calls):
                await asyncio.sleep(think / 1000.0)  # the model's turn
                await tool.ainvoke({"key": KEY})
        return calls

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)  # the ticker's baseline
    start = time.perf_counter()
    try:
        made = sum(await asyncio.gather(*(run(i) for i in range(runs))))
    finally:
        undo()
    elapsed = time.perf_counter() - start
    done.set()
    await tick
    ordered = sorted(lateness)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))], 2)

    return {
        "calls": made,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(made / elapsed, 1),
        "ticks": len(ordered),
        "stall_max_ms": round(ordered[-1], 2),
        "stall_p999_ms": pct(0.999),
        "stall_p99_ms": pct(0.99),
        "stall_median_ms": round(statistics.median(ordered), 3),
        "store_on_loop": len(on_loop),
        "store_on_loop_max_ms": round(max(on_loop, default=0.0), 2),
        "store_on_loop_total_ms": round(sum(on_loop), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--hold", type=float, default=50.0, help="ms per burst; 0: no holder")
    parser.add_argument("--gap", type=float, default=20.0, help="ms between bursts")
    parser.add_argument("--think", type=float, default=20.0, help="ms of model time per call")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--holder", nargs=3, metavar=("DB", "STOP", "MS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.holder:
        db, stop, gap = args.holder
        hold(db, args.hold, float(gap), stop)
        return
    reports = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="tg-stall-") as tmp:
            workdir = Path(tmp)
            guard = tg.Guard(config(workdir))
            guard.store.open()
            holder = None
            stop = workdir / "stop"
            if args.hold > 0:
                holder = subprocess.Popen(
                    [sys.executable, __file__, "--hold", str(args.hold), "--holder",
                     str(workdir / "audit.db"), str(stop), str(args.gap)],
                    stdout=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                time.sleep(0.3)  # let it start bursting
            try:
                report = asyncio.run(_measure(guard, args.runs, args.calls, args.think))
            finally:
                stop.touch()
                if holder is not None:
                    out, _ = holder.communicate(timeout=30)
                    report["holder_bursts"] = int(out.strip() or 0)
                guard.close()
            reports.append(report)
            print(json.dumps(report))
    result = {
        "benchmark": "loop_stall",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "toolguard": tg.__version__,
        "toolguard_path": str(Path(tg.__file__).parent),
        "runs": args.runs,
        "calls_per_run": args.calls,
        "hold_ms": args.hold,
        "gap_ms": args.gap,
        "think_ms": args.think,
        "reports": reports,
        "target_stall_max_ms": TARGET_MS,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    worst = [r["stall_max_ms"] for r in reports]
    print(f"worst loop stall (ms) per repeat: {worst}; target <= {TARGET_MS}")


if __name__ == "__main__":
    main()
