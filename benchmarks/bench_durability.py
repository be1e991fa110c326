"""The cost of ``durability: full`` next to the default ``normal``.

``normal`` runs SQLite with ``synchronous=NORMAL`` in WAL mode: a commit is durable against a
process crash (it is in the OS page cache) but the last commits can be lost to a power cut or
kernel crash. ``full`` sets ``synchronous=FULL`` (every commit waits for an fsync of the WAL)
and fsyncs the checkpoint file at each task end: nothing committed is lost to a power cut.

Two guards, one per mode, on files on the same disk (``benchmarks/.data``, not a tmpfs), run
interleaved: ``--rounds`` rounds, each a task of ``--block`` guarded calls on each guard in a
rotating order. Every call is timed on its own, and so is every task end (``task_end``
commit, revocation and signed checkpoint). A tool that reads its credential, as the overhead
target is stated for.

    python benchmarks/bench_durability.py [--rounds 20] [--block 100]

Writes ``benchmarks/results/durability.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.tools import tool

import toolguard as tg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "durability.json"
KEY = "agents:jobs:1:item"


@tool("kv_get")
def kv_get(key: str) -> str:
    """Read the value stored under a key, presenting the call's credential."""
    return f"value of {key} ({len(tg.current_credential().token)})"


def _config(root: Path, durability: str) -> dict[str, Any]:
    return {
        "store": str(root / f"{durability}.db"),
        "durability": durability,
        "issuer": {"key_file": str(root / "signing-key.pem")},
        "identities": {"bench-runner": {"allow": {"read": ["agents:jobs:*"]}}},
        "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
        "intents": {
            "bench": {
                "identity": "bench-runner",
                "tools": ["kv_get"],
                "allow": {"read": ["agents:jobs:{job_id}:*"]},
                "ttl": "24h",
            }
        },
    }


class Mode:
    def __init__(self, name: str, guard: tg.Guard) -> None:
        self.name, self.guard = name, guard
        self.tool = tg.guard(kv_get, guard)
        self.calls: list[int] = []
        self.ends: list[int] = []

    def block(self, calls: int) -> None:
        invoke, clock, args = self.tool.invoke, time.perf_counter_ns, {"key": KEY}
        task = self.guard.task("bench", job_id="1")
        task.__enter__()
        try:
            for _ in range(calls):
                start = clock()
                invoke(args)
                self.calls.append(clock() - start)
        finally:
            start = clock()
            task.__exit__(None, None, None)
            self.ends.append(clock() - start)


def _stats(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_us": round(statistics.median(ordered) / 1000.0, 1),
        "p90_us": round(ordered[int(0.9 * (len(ordered) - 1))] / 1000.0, 1),
        "mean_us": round(statistics.fmean(ordered) / 1000.0, 1),
    }


def _filesystem(path: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "-T", str(path)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return out[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=100)
    ns = parser.parse_args()
    data = HERE / ".data"
    data.mkdir(exist_ok=True)
    if not (data / ".gitignore").exists():
        (data / ".gitignore").write_text("# generated benchmark data: never commit\n*\n")
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        root = Path(tmp)
        modes = [Mode(m, tg.Guard(_config(root, m))) for m in ("normal", "full")]
        try:
            for mode in modes:
                mode.block(20)
                mode.calls.clear()
                mode.ends.clear()
            for r in range(ns.rounds):
                shift = r % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    gc.collect()
                    mode.block(ns.block)
            pragmas = {
                m.name: m.guard.store.conn.execute("PRAGMA synchronous").fetchone()[0]
                for m in modes
            }
        finally:
            for mode in modes:
                mode.guard.close()
        fs = _filesystem(root)
    result: dict[str, Any] = {
        "benchmark": "durability",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "filesystem": fs,
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "rounds": ns.rounds,
        "block": ns.block,
        "synchronous_pragma": pragmas,
        "call": {m.name: _stats(m.calls) for m in modes},
        "task_end": {m.name: _stats(m.ends) for m in modes},
        "seconds": round(time.perf_counter() - started, 1),
    }
    call, end = result["call"], result["task_end"]
    result["call_ratio_full_to_normal"] = round(
        call["full"]["median_us"] / call["normal"]["median_us"], 2
    )
    result["task_end_ratio_full_to_normal"] = round(
        end["full"]["median_us"] / end["normal"]["median_us"], 2
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| mode | call median µs | call p90 µs | task end median µs | task end p90 µs |")
    print("|---|---:|---:|---:|---:|")
    for name in ("normal", "full"):
        c, e = call[name], end[name]
        print(f"| `{name}` | {c['median_us']} | {c['p90_us']} | {e['median_us']} | {e['p90_us']} |")
    print(
        f"\nfull/normal: call {result['call_ratio_full_to_normal']}x, task end "
        f"{result['task_end_ratio_full_to_normal']}x; filesystem {fs}; load {load_start}; "
        f"wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
