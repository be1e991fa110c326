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
IMMEDIATE``, ``--hold`` ms, ``COMMIT``, ``--gap`` ms; ``--hold 0`` for no holder). ``--bare``
runs the same coroutines with the tool unguarded (no task, no credential, no store work): the
stalls the agent runs make on their own, the baseline of toolguard's share.

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
import contextlib
import gc
import json
import os
import platform
import random
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


async def _read_bare(key: str) -> str:
    """The same tool without a guard (``--bare``): no credential to present."""
    await asyncio.sleep(0)
    return f"value of {key} (0)"


kv_get_bare = StructuredTool.from_function(
    coroutine=_read_bare, name="kv_get", description="Read a key."
)


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
    spans: list[tuple[float, float]] = []
    while not Path(stop).exists():
        try:  # as eager as the guard's writers (SQLite's own busy handler would lose to them)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            time.sleep(50e-6)
            continue
        began = time.monotonic()
        time.sleep(hold_ms / 1000.0)
        conn.execute("COMMIT")
        spans.append((began, time.monotonic()))
        bursts += 1
        time.sleep(gap_ms / 1000.0)
    print(json.dumps({"bursts": bursts, "spans": spans}), flush=True)


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


class Tracer:
    """``--trace``: what ran during each stall longer than ``threshold_ms``, to attribute it.

    Records the cyclic collector's pauses (``gc.callbacks``, with the thread that triggered
    them), the loop thread's and the whole process's CPU time across each late tick
    (``time.thread_time``/``process_time``: CPU the loop thread spent vs. CPU other threads
    spent, e.g. the writer thread's Python work holding the GIL, vs. neither: the process was
    not running or waited), and stack samples of every thread taken by a watchdog thread
    while the ticker is late (``sys._current_frames``; the watchdog needs the GIL too, so a
    sample shows where each thread last released it). All times ``time.monotonic`` (the
    holder process's clock too)."""

    def __init__(self, threshold_ms: float) -> None:
        self.threshold = threshold_ms
        self.gc: list[tuple[float, float, int, str]] = []
        self.samples: list[tuple[float, dict[str, list[str]]]] = []
        self.stalls: list[dict[str, float]] = []
        self.tick_started = time.monotonic()
        self._gc_start = 0.0
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        self._watchdog.join()
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self.gc.append(
                (self._gc_start, time.monotonic(), info["generation"],
                 threading.current_thread().name)
            )  # fmt: skip

    def _watch(self) -> None:
        late = self.threshold / 1000.0 * 0.5
        me = threading.get_ident()
        while not self._stop.is_set():
            time.sleep(0.0005)
            now = time.monotonic()
            if now - self.tick_started - 0.001 < late:
                continue
            names = {t.ident: t.name for t in threading.enumerate()}
            stacks = {
                names.get(ident, str(ident)): _stack(frame)
                for ident, frame in sys._current_frames().items()
                if ident != me
            }
            self.samples.append((now, stacks))

    def writer_clock(self) -> Callable[[], float]:
        """The CPU clock of the guard's writer thread (0 until it exists)."""
        for thread in threading.enumerate():
            if thread.name.startswith("toolguard-writer_") and thread.ident is not None:
                clock_id = time.pthread_getcpuclockid(thread.ident)
                return lambda: time.clock_gettime(clock_id)
        return lambda: 0.0

    def tick(self, start: float, end: float, cpu: dict[str, float]) -> None:
        """One late tick: its span and the CPU seconds each thread spent during it."""
        self.stalls.append({"start": start + 0.001, "end": end, **cpu})

    def report(self, bursts: list[tuple[float, float]]) -> dict[str, Any]:
        """Each stall's lateness split into: the collector's pauses (on the loop thread or
        another), the loop thread's CPU (its Python work: by stack samples, whose), the writer
        thread's CPU (the guard's store work; it holds the GIL in its Python parts), other
        threads' CPU, and the rest: the process was not running (preempted by other processes
        on a loaded machine) or every thread waited."""
        totals = dict.fromkeys(
            ("late", "gc_on_loop", "gc_elsewhere", "loop_cpu", "writer_cpu", "other_cpu",
             "not_running"), 0.0,
        )  # fmt: skip
        loop_kinds_all: dict[str, int] = {}
        loop_toolguard: dict[str, int] = {}  # where the loop thread was in toolguard's code
        details = []
        for stall in self.stalls:
            lo, hi = stall["start"], stall["end"]
            late = (hi - lo) * 1000.0
            gc_loop = gc_else = 0.0
            gens = set()
            for s, e, g, thread in self.gc:
                overlap = max(0.0, min(hi, e) - max(lo, s)) * 1000.0
                if overlap > 0:
                    gens.add(g)
                    if thread == "MainThread":
                        gc_loop += overlap
                    else:
                        gc_else += overlap
            loop_cpu = stall["loop"] * 1000.0
            writer_cpu = stall["writer"] * 1000.0
            other_cpu = max(0.0, stall["process"] * 1000.0 - loop_cpu - writer_cpu)
            not_running = max(0.0, late - stall["process"] * 1000.0)
            parts = {
                "late": late, "gc_on_loop": gc_loop, "gc_elsewhere": gc_else,
                "loop_cpu": max(0.0, loop_cpu - gc_loop),
                "writer_cpu": max(0.0, writer_cpu - gc_else), "other_cpu": other_cpu,
                "not_running": not_running,
            }  # fmt: skip
            for key, value in parts.items():
                totals[key] += value
            loop_kinds: dict[str, int] = {}
            writer_tops: dict[str, int] = {}
            for t, stacks in self.samples:
                if not lo <= t <= hi:
                    continue
                for name, stack in stacks.items():
                    if name == "MainThread":
                        kind = _kind(stack)
                        loop_kinds[kind] = loop_kinds.get(kind, 0) + 1
                        loop_kinds_all[kind] = loop_kinds_all.get(kind, 0) + 1
                        if kind.startswith("toolguard"):
                            top = " < ".join(stack[:5])
                            loop_toolguard[top] = loop_toolguard.get(top, 0) + 1
                    elif name.startswith("toolguard-writer_") and "_worker" not in stack[0]:
                        top = " < ".join(stack[:3])
                        writer_tops[top] = writer_tops.get(top, 0) + 1
            details.append({
                **{f"{k}_ms": round(v, 2) for k, v in parts.items()},
                "gc_generations": sorted(gens), "holder_burst": any(
                    e > lo and s < hi for s, e in bursts
                ), "loop_samples": loop_kinds,
                "writer_samples": dict(sorted(writer_tops.items(), key=lambda kv: -kv[1])[:3]),
            })  # fmt: skip
        pauses = sorted((e - s) * 1000.0 for s, e, _, _ in self.gc)
        return {
            "threshold_ms": self.threshold,
            "stalls_over_threshold": len(self.stalls),
            "lateness_split_ms": {k: round(v, 1) for k, v in totals.items()},
            "loop_samples": loop_kinds_all,
            "loop_samples_in_toolguard": dict(
                sorted(loop_toolguard.items(), key=lambda kv: -kv[1])[:8]
            ),
            "gc_collections": len(pauses),
            "gc_by_generation": {
                g: sum(1 for _, _, gen, _ in self.gc if gen == g) for g in range(3)
            },
            "gc_pause_max_ms": round(pauses[-1], 2) if pauses else 0.0,
            "gc_pause_total_ms": round(sum(pauses), 1),
            "gc_by_thread": {
                t: sum(1 for *_, th in self.gc if th == t) for t in {th for *_, th in self.gc}
            },
            "worst_stalls": sorted(details, key=lambda d: -d["late_ms"])[:8],
        }


def _stack(frame: Any, depth: int = 12) -> list[str]:
    """Innermost first, each ``package/file.py:function``."""
    out = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        out.append(f"{_package(code.co_filename)}/{Path(code.co_filename).name}:{code.co_name}")
        frame = frame.f_back
    return out


def _package(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "benchmarks" in parts:
        return "benchmark"
    for name in ("toolguard_langchain", "toolguard"):
        if name in parts:
            return name
    return "stdlib"


def _kind(stack: list[str]) -> str:
    """What the loop thread was doing: idle in select, or whose Python work (the innermost
    frame that is not the standard library's)."""
    if stack and stack[0].startswith("stdlib/selectors.py:select"):
        return "idle in select"
    for entry in stack:
        package = entry.split("/", 1)[0]
        if package != "stdlib":
            return package
    return "asyncio/stdlib: " + (stack[0] if stack else "?")


async def _measure(
    guard: tg.Guard,
    runs: int,
    calls: int,
    think: float,
    tracer: Tracer | None = None,
    *,
    bare: bool = False,
    jitter: float = 0.0,
) -> dict[str, Any]:
    tool = kv_get_bare if bare else tg.guard(kv_get, guard)
    on_loop: list[float] = []
    undo = _probe_store(threading.get_ident(), on_loop)
    lateness: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        clock = time.monotonic
        if tracer is None:
            while not done.is_set():
                start = clock()
                await asyncio.sleep(0.001)
                lateness.append((clock() - start - 0.001) * 1000.0)
            return
        threshold = tracer.threshold
        cpu, proc = time.thread_time, time.process_time
        writer = tracer.writer_clock()
        while not done.is_set():
            start = tracer.tick_started = clock()
            c0, p0, w0 = cpu(), proc(), writer()
            await asyncio.sleep(0.001)
            end = clock()
            late = (end - start - 0.001) * 1000.0
            lateness.append(late)
            if late > threshold:
                w1 = writer()
                if w0 == 0.0:  # the writer thread started meanwhile
                    writer = tracer.writer_clock()
                tracer.tick(
                    start, end, {"loop": cpu() - c0, "process": proc() - p0, "writer": w1 - w0}
                )

    pick = random.Random(1).random  # the same spread in every run

    async def run(i: int) -> int:
        async with contextlib.nullcontext() if bare else guard.task("process-job", job_id="42"):
            for _ in range(calls):
                spread = 1.0 + jitter * (2.0 * pick() - 1.0) if jitter else 1.0
                await asyncio.sleep(think * spread / 1000.0)  # the model's turn
                await tool.ainvoke({"key": KEY})
        return calls

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)  # the ticker's baseline
    if tracer is not None:
        tracer.start()
    start = time.perf_counter()
    try:
        made = sum(await asyncio.gather(*(run(i) for i in range(runs))))
    finally:
        undo()
        if tracer is not None:
            tracer.stop()
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
    parser.add_argument(
        "--jitter", type=float, default=0.0, metavar="F",
        help="each model turn lasts think x a uniform factor in [1-F, 1+F] (default 0: every "
        "run in step, the worst case for the loop)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--bare", action="store_true",
        help="the same runs with the tool unguarded (no task, no store work): the agent's own "
        "stalls, the baseline of toolguard's share",
    )  # fmt: skip
    parser.add_argument(
        "--trace", type=float, nargs="?", const=5.0, default=None, metavar="MS",
        help="attribute every stall longer than MS (5): gc, threads' CPU, stack samples",
    )  # fmt: skip
    parser.add_argument(
        "--gc-freeze", action="store_true",
        help="gc.freeze() after start-up (as a server would after importing its modules)",
    )  # fmt: skip
    parser.add_argument(
        "--switch-interval", type=float, default=None, metavar="MS",
        help="sys.setswitchinterval (the GIL's hand-over; Python's default 5 ms)",
    )  # fmt: skip
    parser.add_argument("--holder", nargs=3, metavar=("DB", "STOP", "MS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.holder:
        db, stop, gap = args.holder
        hold(db, args.hold, float(gap), stop)
        return
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000.0)
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
            tracer = None if args.trace is None else Tracer(args.trace)
            if args.gc_freeze:
                gc.collect()
                gc.freeze()
            try:
                report = asyncio.run(
                    _measure(
                        guard,
                        args.runs,
                        args.calls,
                        args.think,
                        tracer,
                        bare=args.bare,
                        jitter=args.jitter,
                    )
                )
            finally:
                stop.touch()
                spans: list[tuple[float, float]] = []
                if holder is not None:
                    out, _ = holder.communicate(timeout=30)
                    held = json.loads(out.strip() or "{}")
                    report["holder_bursts"] = held.get("bursts", 0)
                    spans = held.get("spans", [])
                guard.close()
                if args.gc_freeze:
                    gc.unfreeze()
            if tracer is not None:
                report["trace"] = tracer.report(spans)
            reports.append(report)
            print(json.dumps({k: v for k, v in report.items() if k != "trace"}))
            if tracer is not None:
                print(json.dumps(report["trace"], indent=1))
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
        "jitter": args.jitter,
        "gc_freeze": args.gc_freeze,
        "switch_interval_ms": sys.getswitchinterval() * 1000.0,
        "load": os.getloadavg(),
        "reports": reports,
        "target_stall_max_ms": TARGET_MS,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    worst = [r["stall_max_ms"] for r in reports]
    print(f"worst loop stall (ms) per repeat: {worst}; target <= {TARGET_MS}")


if __name__ == "__main__":
    main()
