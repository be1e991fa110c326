"""Cost of budget checks on a guarded call, and the wait for the database under contention.

Overhead (the default): the same guarded LangChain tool (a ``write`` with a fixed ``cost``, and
the tool reads its credential, so the token is signed) in four variants, at the default
configuration (WAL, ``synchronous=NORMAL``, a real SQLite file and Ed25519 key):

- ``no_budgets``: an intent without ``budget:`` and an identity without ``limits:``;
- ``task_scopes``: the task's ``max_calls``, ``max_cost``, ``per_tool``, ``per_operation``;
- ``identity_scopes``: the identity's ``requests_per_minute``, ``writes_per_minute``,
  ``deletes_per_minute`` (not spent by a write), ``requests_per_day``, ``cost_per_day`` and an
  ``on_anomaly`` rule;
- ``all_scopes``: both; every limit set high enough never to trip.

They run interleaved in one process: every round runs a block of calls of each variant, in a
rotating order, each inside a fresh task, with the real clock. Every call is timed on its own;
the report gives the median and p99 per call and the ratios to ``no_budgets``; the target is
``all_scopes`` at most 1.10x.

Contention (``--contention``): P processes x T threads call through one database file for S
seconds (each thread in its own task; ``--with-budgets``: on one identity with every
per-minute and per-day limit) and the latency of every ``authorize`` (which includes the wait
for the write lock) is recorded: per process the number of calls, p99 and max, and overall
p99, p99.9 and max. Any ``AuditError`` (a wait past ``busy_timeout``) is counted. By default
every thread calls as fast as it can (a closed loop: the throughput, and the latency at
saturation); ``--rate R`` offers R calls/s in all instead (an open loop: each thread's calls
are due at fixed times, and a call's latency counts from when it was due, so a stall also
counts against the calls it delayed), which gives the latency at a given throughput. It uses only
the public API, so the same script measures an older toolguard (``PYTHONPATH=<old tree>``).

    python benchmarks/bench_budget.py [--rounds 30] [--block 200]
    python benchmarks/bench_budget.py --contention [--with-budgets] [--processes 4 --threads 4]
                                      [--rate 2500]

Both write their part of ``benchmarks/results/budget.json``.
"""

import argparse
import contextlib
import gc
import json
import multiprocessing as mp
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.tools import tool

import toolguard as tg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "budget.json"
TARGET = 1.10
ARGS = {"key": "agents:jobs:42:state", "value": "v"}
HIGH = 10**9


@tool("kv_set")
def kv_set(key: str, value: str) -> str:
    """Store a value under a key, presenting the call's credential."""
    token = tg.current_credential().token
    return f"stored {key} ({len(token)})"


IDENTITY_LIMITS = {
    "requests_per_minute": HIGH,
    "writes_per_minute": HIGH,
    "deletes_per_minute": HIGH,
    "requests_per_day": HIGH,
    "cost_per_day": HIGH,
    "on_anomaly": {"revoke_when_rate_exceeds": "5x"},
}
TASK_BUDGET = {
    "max_calls": HIGH,
    "max_cost": HIGH,
    "per_tool": {"kv_set": HIGH},
    "per_operation": {"write": HIGH},
}
VARIANTS = {
    # name: (intent budget, identity limits)
    "no_budgets": ({}, {}),
    "task_scopes": (TASK_BUDGET, {}),
    "identity_scopes": ({}, IDENTITY_LIMITS),
    "all_scopes": (TASK_BUDGET, IDENTITY_LIMITS),
}


def config(workdir: Path) -> dict[str, Any]:
    """One identity and intent per variant; they differ only in their budgets and limits."""
    allow = {"write": ["agents:jobs:*"], "delete": ["agents:jobs:*"]}
    return {
        "store": str(workdir / "audit.db"),
        "issuer": {"key_file": str(workdir / "signing-key.pem")},
        "identities": {
            f"{name}-runner": {"allow": allow, "limits": limits}
            for name, (_, limits) in VARIANTS.items()
        },
        "tools": {"kv_set": {"operation": "write", "resource": "{key}", "cost": 0.001}},
        "intents": {
            f"{name}-job": {
                "identity": f"{name}-runner",
                "tools": ["kv_set"],
                "allow": {"write": ["agents:jobs:{job_id}:*"]},
                "budget": budget,
                "ttl": "24h",
            }
            for name, (budget, _) in VARIANTS.items()
        },
    }


def _stats(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "calls": len(ordered),
        "median_us": round(statistics.median(ordered) / 1000.0, 2),
        "p99_us": round(p99 / 1000.0, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000.0, 2),
    }


def overhead(rounds: int, block: int, workdir: Path) -> dict[str, Any]:
    """The interleaved measurement of the variants."""
    guard = tg.Guard(config(workdir))
    guarded = tg.guard(kv_set, guard)
    samples: dict[str, list[int]] = {name: [] for name in VARIANTS}
    clock = time.perf_counter_ns
    invoke = guarded.invoke

    def run_block(name: str, calls: int) -> None:
        out = samples[name]
        with guard.task(f"{name}-job", job_id="42"):
            for _ in range(calls):
                start = clock()
                invoke(ARGS)
                out.append(clock() - start)

    try:
        for name in samples:  # warm up: imports, schema, key, statement caches
            run_block(name, 100)
            samples[name].clear()
        order = list(samples)
        for r in range(rounds):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                gc.collect()
                run_block(name, block)
        events = guard.audit.head_seq()
        log_rows = guard.store.query(
            "SELECT COUNT(*) AS n FROM credentials WHERE identity = ? AND tally > 't'",
            ("all_scopes-runner",),
        )[0]["n"]
    finally:
        guard.close()
    stats = {name: _stats(s) for name, s in samples.items()}
    base = stats["no_budgets"]
    ratios = {
        name: {
            "median": round(s["median_us"] / base["median_us"], 3),
            "p99": round(s["p99_us"] / base["p99_us"], 3),
            "added_median_us": round(s["median_us"] - base["median_us"], 2),
        }
        for name, s in stats.items()
        if name != "no_budgets"
    }
    return {
        "rounds": rounds,
        "block": block,
        "audit_events_at_end": events,
        "admission_log_rows_at_end": log_rows,
        "variants": stats,
        "ratios_to_no_budgets": ratios,
        "target": TARGET,
        "meets_target": ratios["all_scopes"]["median"] <= TARGET,
    }


# -- contention ------------------------------------------------------------------------------


def _contention_config(workdir: Path) -> dict[str, Any]:
    cfg = config(workdir)
    cfg["identities"]["identity_scopes-runner"]["limits"].pop("on_anomaly")
    return cfg


def _hammer(
    workdir: str,
    intent: str,
    threads: int,
    seconds: float,
    rate: float,
    start: Any,
    out: Any,
    baseline: bool = False,
) -> None:
    guard = None if baseline else tg.Guard(_contention_config(Path(workdir)))
    if guard is not None:
        guard.store.open()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        mine: list[float] = []
        failed = 0
        with contextlib.ExitStack() as stack:
            if guard is not None:
                stack.enter_context(guard.task(intent, job_id="42"))
            else:
                db = sqlite3.connect(str(Path(workdir) / "baseline.db"), isolation_level=None)
                stack.callback(db.close)
                db.execute("PRAGMA busy_timeout=5000")
                db.execute("PRAGMA synchronous=NORMAL")
            begin = time.perf_counter()
            stop = begin + seconds
            period = 1.0 / rate if rate else 0.0
            n = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                if period:  # open loop: call n is due at begin + n * period, late or not
                    due = begin + n * period
                    n += 1
                    if due > t0:
                        time.sleep(due - t0)
                    t0 = due
                if guard is None:  # the storage alone: one write transaction, no toolguard
                    db.execute("BEGIN IMMEDIATE")
                    db.execute(_BASELINE_INSERT, (t0, "x" * 400, "y" * 40))
                    db.execute("COMMIT")
                    mine.append(time.perf_counter() - t0)
                    continue
                try:
                    permit = guard.authorize("kv_set", ARGS)
                except tg.AuditError:
                    failed += 1
                    continue
                mine.append(time.perf_counter() - t0)
                guard.finish(permit)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    start.wait()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if guard is not None:
        guard.close()
    out.put((latencies, errors[0]))


_BASELINE_INSERT = "INSERT INTO t (ts, a, b) VALUES (?, ?, ?)"


def _baseline_db(workdir: Path) -> sqlite3.Connection:
    """``--sqlite-baseline``: a table written about as much per transaction as a guarded
    call writes (a row with two indexes: ~5 WAL pages), in WAL mode as the store."""
    db = sqlite3.connect(str(workdir / "baseline.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, ts REAL, a TEXT, b TEXT)")
    db.execute("CREATE INDEX t_ts ON t (ts)")
    db.execute("CREATE INDEX t_b ON t (b, id)")
    return db


def contention(
    processes: int,
    threads: int,
    seconds: float,
    workdir: Path,
    *,
    budgets: bool,
    rate: float = 0.0,
    baseline: bool = False,
) -> dict[str, Any]:
    """P processes x T threads on one database; latency of every authorize, per process."""
    holder: Any = (  # the schema (and key), held open
        _baseline_db(workdir) if baseline else tg.Guard(_contention_config(workdir)).store.open()
    )
    intent = "identity_scopes-job" if budgets else "no_budgets-job"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_hammer,
            args=(
                str(workdir),
                intent,
                threads,
                seconds,
                rate / (processes * threads),
                start,
                out,
                baseline,
            ),
        )
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every process import toolguard before the start signal
    start.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    holder.close()

    def ms(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000.0, 2)

    per_process = []
    for latencies, errors in results:
        ordered = sorted(latencies)
        per_process.append(
            {
                "calls": len(ordered),
                "audit_errors": errors,
                "p50_ms": ms(ordered, 0.5),
                "p99_ms": ms(ordered, 0.99),
                "max_ms": round(ordered[-1] * 1000.0, 1),
            }
        )
    everything = sorted(x for latencies, _ in results for x in latencies)
    return {
        "processes": processes,
        "threads": threads,
        "seconds": seconds,
        "budgets": budgets,
        "offered_rate": rate or None,
        "sqlite_baseline": baseline,
        "calls": len(everything),
        "calls_per_second": round(len(everything) / seconds),
        "audit_errors": sum(e for _, e in results),
        "p99_ms": ms(everything, 0.99),
        "p999_ms": ms(everything, 0.999),
        "max_ms": round(everything[-1] * 1000.0, 1),
        "per_process": per_process,
    }


def _environment() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        load = "?"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu,
        "load_average_1m_at_end": load,
        "toolguard": tg.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (30)")
    parser.add_argument("--block", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--contention", action="store_true", help="measure the lock wait")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many calls/s in all (open loop; latency counted from each call's due "
        "time); default: every thread calls as fast as it can",
    )
    parser.add_argument(
        "--sqlite-baseline",
        action="store_true",
        help="the same processes and pacing, each call one bare SQLite write transaction "
        "(no toolguard): what the file system alone gives",
    )
    parser.add_argument(
        "--with-budgets",
        action="store_true",
        help="contention on an identity with every per-minute and per-day limit (default: none)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {}
    if args.output.exists():
        report = json.loads(args.output.read_text(encoding="utf-8"))
    report["benchmark"] = "budget"
    with tempfile.TemporaryDirectory(prefix="toolguard-bench-") as tmp:
        if args.contention:
            result = contention(
                args.processes,
                args.threads,
                args.seconds,
                Path(tmp),
                budgets=args.with_budgets,
                rate=args.rate,
                baseline=args.sqlite_baseline,
            )
            result.update(_environment())
            key = "contention_budgets" if args.with_budgets else "contention"
            key = "contention_sqlite_baseline" if args.sqlite_baseline else key
            report[key + (f"_rate_{args.rate:g}" if args.rate else "")] = result
            print(
                f"{args.processes} processes x {args.threads} threads, {args.seconds:g}s: "
                f"{result['calls']} calls ({result['calls_per_second']}/s"
                + (f", {args.rate:g}/s offered" if args.rate else "")
                + f"), {result['audit_errors']} AuditError; authorize "
                f"latency p99 {result['p99_ms']} ms, p99.9 {result['p999_ms']} ms, "
                f"max {result['max_ms']} ms"
            )
            for i, p in enumerate(result["per_process"]):
                print(f"  process {i}: {p}")
        else:
            result = overhead(args.rounds, args.block, Path(tmp))
            result.update(_environment())
            report["overhead"] = result
            print("| variant | median µs | p99 µs | median ratio | p99 ratio | added (median) |")
            print("|---|---:|---:|---:|---:|---:|")
            for name, s in result["variants"].items():
                r = result["ratios_to_no_budgets"].get(
                    name, {"median": 1.0, "p99": 1.0, "added_median_us": 0.0}
                )
                print(
                    f"| `{name}` | {s['median_us']:.1f} | {s['p99_us']:.1f} | "
                    f"{r['median']:.3f}x | {r['p99']:.3f}x | {r['added_median_us']:+.1f} µs |"
                )
            ratio = result["ratios_to_no_budgets"]["all_scopes"]
            verdict = "meets" if result["meets_target"] else "misses"
            print(
                f"\nall_scopes / no_budgets = {ratio['median']:.3f}x at the median "
                f"({ratio['p99']:.3f}x at p99): {verdict} the {TARGET:.2f}x target."
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"Written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
