"""Overhead of a guarded call next to the bare LangChain tool (``make bench``).

Measures, per call, a bare ``@tool`` ``invoke`` against the same tool guarded by toolguard, at
the default configuration (WAL, ``synchronous=NORMAL``, a real SQLite file and a real Ed25519
key in a temporary directory). Variants:

- ``bare``: the plain tool, ``tool.invoke({"key": ...})``;
- ``guarded``: the same tool guarded; it does not read its credential (the token is never
  signed);
- ``guarded_token``: guarded, and the tool reads ``tg.current_credential().token`` (signs it):
  this is the case docs/architecture.md ("Performance budget") sets the 1.5x target for;
- ``guarded_budget``: as ``guarded_token``, with a task budget (``max_calls``) and identity
  limits (``requests_per_minute``, ``requests_per_day``) set high enough never to trip: the
  cost of spending budgets.

The variants run interleaved in one process: each round runs a block of calls of every variant
(in a rotating order), inside a fresh task for the guarded ones, so drift (CPU frequency, cache,
the growing audit trail) hits all of them alike. Every call is timed on its own; the report
gives the median and p99 per call and their ratios to ``bare``, prints a Markdown table, and
writes ``benchmarks/results/overhead.json``.

    python benchmarks/bench_overhead.py [--rounds 40] [--block 200] [--profile] [--breakdown]

``--profile`` also runs cProfile over guarded calls and prints the top costs; ``--breakdown``
times the parts of a guarded call (authorize + finish, signing, the wrapped tool's ``_run``).
"""

import argparse
import cProfile
import gc
import io
import json
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import langchain_core
from langchain_core.tools import BaseTool, tool

import toolguard as tg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "overhead.json"
TARGET = 1.5
KEY = "agents:jobs:42:input"
ARGS = {"key": KEY}


@tool("kv_get")
def kv_get(key: str) -> str:
    """Read the value stored under a key."""
    return f"value of {key}"


@tool("kv_get")
def kv_get_token(key: str) -> str:
    """Read the value stored under a key, presenting the call's credential."""
    token = tg.current_credential().token
    return f"value of {key} ({len(token)})"


def config(workdir: Path) -> dict[str, Any]:
    """Defaults everywhere, plus the identities, tool rule and intents the calls need."""
    return {
        "store": str(workdir / "audit.db"),
        "issuer": {"key_file": str(workdir / "signing-key.pem")},
        "identities": {
            "agent-runner": {"allow": {"read": ["agents:context:*", "agents:jobs:*"]}},
            "budgeted-runner": {
                "allow": {"read": ["agents:jobs:*"]},
                "limits": {"requests_per_minute": 10**9, "requests_per_day": 10**9},
            },
        },
        "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
        "intents": {
            "process-job": {
                "identity": "agent-runner",
                "tools": ["kv_get"],
                "allow": {"read": ["agents:context:*", "agents:jobs:{job_id}:*"]},
                "ttl": "24h",
            },
            "budgeted-job": {
                "identity": "budgeted-runner",
                "tools": ["kv_get"],
                "allow": {"read": ["agents:jobs:{job_id}:*"]},
                "budget": {"max_calls": 10**9},
                "ttl": "24h",
            },
        },
    }


class Variant:
    """One thing to time: a tool and, for guarded ones, the intent of its tasks."""

    def __init__(
        self, name: str, tool_: BaseTool, guard: tg.Guard | None, intent: str | None
    ) -> None:
        self.name = name
        self.tool = tool_
        self.guard = guard
        self.intent = intent
        self.samples: list[int] = []

    def block(self, calls: int) -> None:
        """Time ``calls`` invocations, inside one task for guarded variants."""
        invoke = self.tool.invoke
        samples = self.samples
        clock = time.perf_counter_ns
        if self.guard is None or self.intent is None:
            for _ in range(calls):
                start = clock()
                invoke(ARGS)
                samples.append(clock() - start)
            return
        with self.guard.task(self.intent, job_id="42"):
            for _ in range(calls):
                start = clock()
                invoke(ARGS)
                samples.append(clock() - start)


def _stats(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "calls": len(ordered),
        "median_us": round(statistics.median(ordered) / 1000.0, 2),
        "p99_us": round(p99 / 1000.0, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000.0, 2),
        "min_us": round(ordered[0] / 1000.0, 2),
    }


def run(rounds: int, block: int, workdir: Path) -> dict[str, Any]:
    """Run the interleaved measurement; returns the report."""
    guard = tg.Guard(config(workdir))
    variants = [
        Variant("bare", kv_get, None, None),
        Variant("guarded", tg.guard(kv_get, guard), guard, "process-job"),
        Variant("guarded_token", tg.guard(kv_get_token, guard), guard, "process-job"),
        Variant("guarded_budget", tg.guard(kv_get_token, guard), guard, "budgeted-job"),
    ]
    try:
        for variant in variants:  # warm up: imports, schema, key, caches
            variant.block(50)
            variant.samples.clear()
        for r in range(rounds):
            shift = r % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                gc.collect()
                variant.block(block)
        events = guard.audit.head_seq()
    finally:
        guard.close()

    stats = {v.name: _stats(v.samples) for v in variants}
    bare = stats["bare"]
    ratios = {
        name: {
            "median": round(s["median_us"] / bare["median_us"], 2),
            "p99": round(s["p99_us"] / bare["p99_us"], 2),
        }
        for name, s in stats.items()
        if name != "bare"
    }
    return {
        "benchmark": "overhead",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu(),
        "langchain_core": langchain_core.__version__,
        "toolguard": tg.__version__,
        "rounds": rounds,
        "block": block,
        "audit_events_at_end": events,
        "variants": stats,
        "ratios_to_bare": ratios,
        "target": TARGET,
        "meets_target": ratios["guarded_token"]["median"] <= TARGET,
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (for benchmarks/README.md)."""
    lines = [
        "| variant | median µs | p99 µs | median ratio | p99 ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in report["variants"].items():
        ratio = report["ratios_to_bare"].get(name, {"median": 1.0, "p99": 1.0})
        lines.append(
            f"| `{name}` | {s['median_us']:.1f} | {s['p99_us']:.1f} | "
            f"{ratio['median']:.2f}x | {ratio['p99']:.2f}x |"
        )
    return "\n".join(lines)


def profile(workdir: Path, calls: int, out: Callable[[str], None]) -> None:
    """cProfile over ``calls`` guarded calls that read their token; prints the top costs."""
    guard = tg.Guard(config(workdir))
    guarded = tg.guard(kv_get_token, guard)
    try:
        with guard.task("process-job", job_id="42"):
            for _ in range(200):
                guarded.invoke(ARGS)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(calls):
                guarded.invoke(ARGS)
            profiler.disable()
    finally:
        guard.close()
    for sort in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats(sort)
        stats.print_stats(25)
        out(f"\n== cProfile of {calls} guarded calls (reads its token), by {sort} ==")
        out(buffer.getvalue().split("\n", 4)[-1].rstrip())


def breakdown(workdir: Path, calls: int, out: Callable[[str], None]) -> None:
    """Median cost of the parts of a guarded call, each timed on its own (interleaved)."""
    guard = tg.Guard(config(workdir))
    guarded = tg.guard(kv_get_token, guard)
    inner = kv_get_token
    clock = time.perf_counter_ns
    parts: dict[str, list[int]] = {
        "bare tool.invoke": [],
        "guarded tool.invoke (reads token)": [],
        "guard.authorize + guard.finish": [],
        "credential.token (sign)": [],
        "wrapped tool._run (direct)": [],
    }
    try:
        with guard.task("process-job", job_id="42"):
            for _ in range(calls):
                start = clock()
                kv_get.invoke(ARGS)
                parts["bare tool.invoke"].append(clock() - start)

                start = clock()
                guarded.invoke(ARGS)
                parts["guarded tool.invoke (reads token)"].append(clock() - start)

                start = clock()
                permit = guard.authorize("kv_get", ARGS)
                guard.finish(permit)
                parts["guard.authorize + guard.finish"].append(clock() - start)

                start = clock()
                _ = permit.credential.token
                parts["credential.token (sign)"].append(clock() - start)

                with permit:
                    start = clock()
                    inner._run(key=KEY, config={})
                    parts["wrapped tool._run (direct)"].append(clock() - start)
    finally:
        guard.close()
    out(f"\n== median cost of the parts of a call ({calls} each, interleaved) ==")
    for name, samples in parts.items():
        out(f"{statistics.median(samples) / 1000.0:9.1f} µs  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (40)")
    parser.add_argument("--block", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the parts of a guarded call"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="toolguard-bench-") as tmp:
        report = run(args.rounds, args.block, Path(tmp) / "run")
        if args.profile:
            profile(Path(tmp) / "profile", 5000, print)
        if args.breakdown:
            breakdown(Path(tmp) / "breakdown", 3000, print)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nOverhead of a guarded call ({report['rounds']} rounds x {report['block']} calls per "
        f"variant, interleaved; Python {report['python']}, langchain-core "
        f"{report['langchain_core']}, {report['processor']}):\n"
    )
    print(markdown(report))
    token = report["ratios_to_bare"]["guarded_token"]["median"]
    verdict = "meets" if report["meets_target"] else "misses"
    print(f"\nguarded_token / bare = {token:.2f}x at the median: {verdict} the {TARGET}x target.")
    print(f"Written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
