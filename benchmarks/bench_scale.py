"""The audit trail at scale: queries, verify, and the guarded call at 0 and at 1,000,000 events.

Runs on the trail made by ``gen_large_db.py`` (generated first if missing) and measures:

- ``show``: ``AuditLog.timeline(task_id)`` (what ``toolguard audit show TASK_ID`` prints) for
  random tasks, and ``events(task_id=...)``; median of ``--runs`` runs, each a different task;
- ``tasks --since 1h``: ``AuditLog.tasks(since=now - 3600)``; median of ``--runs`` runs;
- the same two through the real command line (``python -m toolguard audit ...``), end to end
  (interpreter start and imports included), median of ``--cli-runs`` runs;
- ``verify``: ``AuditLog.verify()`` over the whole trail (signatures included), events/s;
- the guarded call (a tool that reads its credential, default configuration) on a fresh trail
  and on the large one, interleaved: ``--rounds`` rounds of ``--block`` calls on each, in a
  rotating order, every call timed on its own; medians and their ratio. A bare ``@tool``
  ``invoke`` is timed alongside for reference.

Targets (issue 4): ``show`` and ``tasks --since 1h`` under 200 ms, ``verify`` at least 100,000
events/s, and the guarded call flat (ratio close to 1).

    python benchmarks/gen_large_db.py                  # once: ~1 min, ~600 MB in benchmarks/.data
    python benchmarks/bench_scale.py [--runs 15] [--rounds 20] [--block 200] [--cli-runs 5]

Writes ``benchmarks/results/scale.json`` and prints a Markdown table. The large trail grows by
``rounds * block`` events (plus their task events) each run; regenerate it to start afresh.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, tool

import toolguard as tg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
DATA = HERE / ".data" / "large.db"
TARGET_QUERY_MS = 200.0
TARGET_VERIFY_EPS = 100_000
KEY = "agents:jobs:1:item"


@tool("kv_get")
def kv_get(key: str) -> str:
    """Read the value stored under a key, presenting the call's credential."""
    token = tg.current_credential().token
    return f"value of {key} ({len(token)})"


@tool("kv_get")
def kv_get_bare(key: str) -> str:
    """Read the value stored under a key."""
    return f"value of {key} (0)"


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def queries(guard: tg.Guard, runs: int) -> dict[str, Any]:
    audit = guard.audit
    task_ids = [r["task_id"] for r in guard.store.query(
        "SELECT task_id FROM tasks ORDER BY random() LIMIT ?", (runs * 2,)
    )]  # fmt: skip
    timeline = [_time(partial(audit.timeline, t)) for t in task_ids[:runs]]
    events = [_time(partial(audit.events, task_id=t)) for t in task_ids[runs:]]
    since: list[float] = []
    found = 0
    for _ in range(runs):
        start = time.perf_counter()
        rows = audit.tasks(since=time.time() - 3600)
        since.append(time.perf_counter() - start)
        found = len(rows)
    return {
        "show_timeline_ms": {"median": _median_ms(timeline), "max": round(max(timeline) * 1e3, 2)},
        "events_by_task_ms": {"median": _median_ms(events), "max": round(max(events) * 1e3, 2)},
        "tasks_since_1h_ms": {"median": _median_ms(since), "max": round(max(since) * 1e3, 2)},
        "tasks_since_1h_rows": found,
        "runs": runs,
    }


def cli(db: Path, task_id: str, runs: int) -> dict[str, Any]:
    """The command line end to end (a fresh interpreter each run)."""
    out: dict[str, Any] = {}
    commands = {
        "show": ["audit", "show", task_id, "--db", str(db), "--json"],
        "tasks_since_1h": ["audit", "tasks", "--since", "1h", "--db", str(db), "--json"],
        "python_startup_only": None,
    }
    for name, args in commands.items():
        argv = [sys.executable, "-c", "import toolguard"] if args is None else [
            sys.executable, "-m", "toolguard", *args
        ]  # fmt: skip
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, check=False)
            samples.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
        out[f"{name}_ms"] = _median_ms(samples)
    return out


def verify(guard: tg.Guard) -> dict[str, Any]:
    report = guard.audit.verify()
    if not report.ok:
        raise RuntimeError(f"the generated trail does not verify: {report.damage[:3]}")
    return {
        "events": report.checked,
        "seconds": round(report.seconds, 2),
        "events_per_second": round(report.events_per_second),
        "checkpoints": report.checkpoints,
        "signatures_verified": report.signatures_verified,
        "anchored_seq": report.anchored_seq,
    }


class Variant:
    def __init__(self, name: str, tool_: BaseTool, guard: tg.Guard | None) -> None:
        self.name, self.tool, self.guard = name, tool_, guard
        self.samples: list[int] = []

    def block(self, calls: int) -> None:
        invoke, samples, clock = self.tool.invoke, self.samples, time.perf_counter_ns
        args = {"key": KEY}
        if self.guard is None:
            for _ in range(calls):
                start = clock()
                invoke(args)
                samples.append(clock() - start)
            return
        with self.guard.task("bench", job_id="1"):
            for _ in range(calls):
                start = clock()
                invoke(args)
                samples.append(clock() - start)


def overhead(config: dict[str, Any], rounds: int, block: int, workdir: Path) -> dict[str, Any]:
    fresh_cfg = {**config, "store": str(workdir / "fresh.db")}
    large = tg.Guard(config)
    fresh = tg.Guard(fresh_cfg)
    # Diagnostic: the same large trail with a 64 MiB SQLite page cache on this thread's
    # connection (the default is 2 MiB): shows what the residual growth is made of.
    cached = tg.Guard(config)
    cached.store.conn.execute("PRAGMA cache_size = -65536")
    large_start = large.audit.head_seq()
    variants = [
        Variant("bare", kv_get_bare, None),
        Variant("guarded_0", tg.guard(kv_get, fresh), fresh),
        Variant("guarded_1m", tg.guard(kv_get, large), large),
        Variant("guarded_1m_cache64m", tg.guard(kv_get, cached), cached),
    ]
    try:
        for v in variants:
            v.block(50)
            v.samples.clear()
        for r in range(rounds):
            shift = r % len(variants)
            for v in variants[shift:] + variants[:shift]:
                gc.collect()
                v.block(block)
        fresh_end, large_end = fresh.audit.head_seq(), large.audit.head_seq()
    finally:
        fresh.close()
        large.close()
        cached.close()
    stats = {}
    for v in variants:
        ordered = sorted(v.samples)
        stats[v.name] = {
            "calls": len(ordered),
            "median_us": round(statistics.median(ordered) / 1000.0, 1),
            "p90_us": round(ordered[int(0.9 * (len(ordered) - 1))] / 1000.0, 1),
        }
    return {
        "rounds": rounds,
        "block": block,
        "fresh_events": {"start": 0, "end": fresh_end},
        "large_events": {"start": large_start, "end": large_end},
        "variants": stats,
        "ratio_1m_to_0": round(
            stats["guarded_1m"]["median_us"] / stats["guarded_0"]["median_us"], 3
        ),
        "ratio_1m_cache64m_to_0": round(
            stats["guarded_1m_cache64m"]["median_us"] / stats["guarded_0"]["median_us"], 3
        ),
    }


def _table(result: dict[str, Any]) -> str:
    q, c, v, o = result["queries"], result.get("cli", {}), result["verify"], result["overhead"]
    lines = [
        "| measurement | result | target |",
        "|---|---:|---:|",
        f"| `timeline(task_id)` (show), median | {q['show_timeline_ms']['median']} ms | < 200 ms |",
        f"| `events(task_id=...)`, median | {q['events_by_task_ms']['median']} ms | < 200 ms |",
        f"| `tasks(since=1h)`, median ({q['tasks_since_1h_rows']} rows) "
        f"| {q['tasks_since_1h_ms']['median']} ms | < 200 ms |",
    ]
    if c:
        lines += [
            f"| CLI `audit show ID --json`, end to end | {c['show_ms']} ms | — |",
            f"| CLI `audit tasks --since 1h --json`, end to end "
            f"| {c['tasks_since_1h_ms']} ms | — |",
            f"| `python -c 'import toolguard'` alone | {c['python_startup_only_ms']} ms | — |",
        ]
    lines += [
        f"| `verify` ({v['events']:,} events) | {v['events_per_second']:,} events/s "
        f"({v['seconds']} s) | ≥ 100,000 events/s |",
        f"| guarded call at 0 events, median | {o['variants']['guarded_0']['median_us']} µs | — |",
        f"| guarded call at {o['large_events']['start']:,} events, median "
        f"| {o['variants']['guarded_1m']['median_us']} µs | — |",
        f"| ratio 1M / 0 | {o['ratio_1m_to_0']}x | ≈ 1 |",
        f"| same at 1M with a 64 MiB page cache, median "
        f"| {o['variants']['guarded_1m_cache64m']['median_us']} µs "
        f"({o['ratio_1m_cache64m_to_0']}x) | — |",
        f"| bare `@tool` invoke, median | {o['variants']['bare']['median_us']} µs | — |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=DATA)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--no-cli", action="store_true")
    ns = parser.parse_args()
    if not ns.db.exists():
        sys.path.insert(0, str(HERE))
        from gen_large_db import generate

        print(generate(ns.db, 1_000_000, 1))
    config = json.loads((ns.db.parent / "config.json").read_text())
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "scale",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "db_bytes": ns.db.stat().st_size,
    }
    guard = tg.Guard(config)
    try:
        result["events_at_start"] = guard.audit.head_seq()
        result["queries"] = queries(guard, ns.runs)
        some_task = guard.store.query("SELECT task_id FROM tasks LIMIT 1 OFFSET 5000")[0]["task_id"]
        result["verify"] = verify(guard)
    finally:
        guard.close()
    if not ns.no_cli:
        result["cli"] = cli(ns.db, some_task, ns.cli_runs)
    with tempfile.TemporaryDirectory() as tmp:
        result["overhead"] = overhead(config, ns.rounds, ns.block, Path(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    q, v = result["queries"], result["verify"]
    result["meets_targets"] = {
        "show_under_200ms": q["show_timeline_ms"]["median"] < TARGET_QUERY_MS,
        "tasks_since_1h_under_200ms": q["tasks_since_1h_ms"]["median"] < TARGET_QUERY_MS,
        "verify_100k_per_s": v["events_per_second"] >= TARGET_VERIFY_EPS,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(result))
    print(f"\nload average {result['load_average_at_start']} -> {result['load_average_at_end']};"
          f" {result['seconds']} s; wrote {RESULTS}")  # fmt: skip


if __name__ == "__main__":
    main()
