"""Instructions per guarded call, counted by valgrind's callgrind (repeatable on a busy machine).

Wall time on a shared machine moves by tens of percent from one run to the next; instruction
counts move by well under one percent. This script runs ``--calls`` calls of one variant of
``bench_overhead.py`` (same config, same tools) after a warm-up; run it under callgrind twice,
with ``--calls N`` and ``--calls 0``, and the difference divided by N is the cost of one call:

    python benchmarks/callgrind_call.py --measure            # runs valgrind itself: every variant
    python benchmarks/callgrind_call.py --measure --variants guarded_token --calls 400
    valgrind --tool=callgrind --callgrind-out-file=cg.out python benchmarks/callgrind_call.py \\
        --variant guarded_token --calls 400 && callgrind_annotate cg.out | head -60

``--measure`` prints the instructions per call of each variant and its ratio to ``bare`` and
writes ``benchmarks/results/callgrind.json``. Instructions are not time (a ``COMMIT``'s write
and a device flush cost few instructions and much time; cache misses cost time, not
instructions): use them to decide between two versions of the code, and wall-clock ratios
(``bench_overhead.py``) for the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "callgrind.json"
VARIANTS = ("bare", "guarded", "guarded_token", "guarded_budget")


def run_calls(variant: str, calls: int, warmup: int) -> None:
    """Warm up, then make ``calls`` calls of ``variant`` (inside one task when guarded)."""
    sys.path.insert(0, str(HERE))
    import bench_overhead as bo

    import toolguard as tg

    with tempfile.TemporaryDirectory(prefix="tg-cg-") as tmp:
        guard = tg.Guard(bo.config(Path(tmp)))
        tools = {
            "bare": (bo.kv_get, None),
            "guarded": (tg.guard(bo.kv_get, guard), "process-job"),
            "guarded_token": (tg.guard(bo.kv_get_token, guard), "process-job"),
            "guarded_budget": (tg.guard(bo.kv_get_token, guard), "budgeted-job"),
        }
        tool, intent = tools[variant]
        try:
            for t, i in tools.values():  # the same warm-up whatever the variant
                if i is None:
                    for _ in range(warmup):
                        t.invoke(bo.ARGS)
                else:
                    with guard.task(i, job_id="42"):
                        for _ in range(warmup):
                            t.invoke(bo.ARGS)
            # the collector's passes come at allocation counts, not per call: off while measured
            gc.collect()
            gc.disable()
            if intent is None:
                for _ in range(calls):
                    tool.invoke(bo.ARGS)
            else:
                with guard.task(intent, job_id="42"):
                    for _ in range(calls):
                        tool.invoke(bo.ARGS)
        finally:
            gc.enable()
            guard.close()


def _instructions(
    variant: str, calls: int, warmup: int, workdir: Path, cache: bool = False
) -> dict[str, int]:
    """The totals of one run under callgrind: ``Ir`` (instructions) and, with ``cache``
    (callgrind's cache simulation), the simulated cache misses (``D1mr``, ``DLmr``, ...)."""
    out = workdir / f"cg.{variant}.{calls}.out"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         *(["--cache-sim=yes"] if cache else []), sys.executable,
         __file__, "--variant", variant, "--calls", str(calls), "--warmup", str(warmup)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    events: list[str] = ["Ir"]
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        match = re.match(r"(?:summary|totals):\s+([\d ]+)", line)
        if match:
            return dict(zip(events, (int(v) for v in match.group(1).split())))
    raise RuntimeError(f"no instruction total in {out}")


def measure(variants: list[str], calls: int, warmup: int, cache: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tg-cgout-") as tmp:
        workdir = Path(tmp)
        per_call: dict[str, float] = {}
        misses: dict[str, dict[str, float]] = {}
        for variant in variants:
            base = _instructions(variant, 0, warmup, workdir, cache)
            total = _instructions(variant, calls, warmup, workdir, cache)
            per_call[variant] = (total["Ir"] - base["Ir"]) / calls
            misses[variant] = {e: (total[e] - base[e]) / calls for e in total if e != "Ir"}
            print(f"{variant}: {per_call[variant]:,.0f} instructions per call", flush=True)
            if cache:
                print(f"  {variant}: { ({e: round(v) for e, v in misses[variant].items()}) }")
    bare = per_call.get("bare")
    cache_report = (
        {
            "cache_misses_per_call": {
                v: {e: round(n) for e, n in m.items()} for v, m in misses.items()
            }
        }
        if cache
        else {}
    )
    return {
        **cache_report,
        "benchmark": "callgrind",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": sys.version.split()[0],
        "calls": calls,
        "warmup": warmup,
        "instructions_per_call": {k: round(v) for k, v in per_call.items()},
        "ratio_to_bare": {k: round(v / bare, 3) for k, v in per_call.items()} if bare else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="guarded_token")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--measure", action="store_true", help="run valgrind for --variants")
    parser.add_argument(
        "--cache-sim", action="store_true", help="also simulated cache misses per call"
    )
    args = parser.parse_args()
    if not args.measure:
        run_calls(args.variant, args.calls, args.warmup)
        return
    report = measure(args.variants, args.calls, args.warmup, args.cache_sim)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_to_bare"]))


if __name__ == "__main__":
    main()
