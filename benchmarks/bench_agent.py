"""Per-tool-call overhead of ``GuardMiddleware`` inside a ``create_agent`` run.

The same agent (a scripted chat model, a trivial tool) runs with and without the middleware,
interleaved round by round. Each run makes ``K`` sequential tool calls (one per model turn) and
then answers. Fitting run time against ``K`` (``K = 1`` and ``K = KMAX``) separates

- the per-tool-call cost (the slope): a model turn, the graph steps and the tool call, and for the
  guarded agent the check, the audit transaction and the credential of each call;
- the per-run cost (the intercept): for the guarded agent, the task start and end (two
  transactions, the revocation and a signed checkpoint).

The tool reads its credential (a guarded call signs its token) and the intent has a budget and
its identity limits (issue 15). Target: toolguard's own per-tool-call cost (guarded minus the
pass-through middleware) is at most 10% of the agent's own per-tool-call cost. A variant
with a pass-through ``wrap_tool_call`` middleware shows how much of the
difference is LangChain's own middleware plumbing rather than toolguard's work, and a variant
with ``toolguard.guard()`` tools and no middleware (each run inside a ``guard.task`` block)
shows the guard's cost without that plumbing.

Run: ``python benchmarks/bench_agent.py [--mode sync|async|both] [--rounds 15] [--runs 5]
[--kmax 10] [--out PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from _fake_model import ScriptedChatModel, answer, call, turn  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import AgentMiddleware  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from toolguard_langchain import GuardMiddleware  # noqa: E402

import toolguard as tg  # noqa: E402

USER = {"messages": [{"role": "user", "content": "go"}]}
CONFIG: Any = {"configurable": {"job_id": "42"}}


@tool
def kv_get(key: str) -> str:
    """Read a key (presenting the call's credential when it has one)."""
    try:
        token = tg.current_credential().token  # a guarded call signs its token
    except tg.CredentialError:  # the unguarded variants
        token = ""
    return f"value ({len(token)})"


class PassThrough(AgentMiddleware):
    """A middleware whose wrap_tool_call only calls the handler: LangGraph's own plumbing."""

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(request)

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return await handler(request)


class PassThroughHooks(PassThrough):
    """A pass-through with every hook GuardMiddleware has (the model-call wrapper too, and
    before/after the agent): LangChain's plumbing for the same set of hooks, which in async
    runs includes LangSmith's wrapper's worker-thread hops around each model call."""

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(request)

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return await handler(request)

    def before_agent(self, state: Any, runtime: Any) -> None:
        return None

    async def abefore_agent(self, state: Any, runtime: Any) -> None:
        return None

    def after_agent(self, state: Any, runtime: Any) -> None:
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> None:
        return None


def _config(workdir: Path) -> dict[str, Any]:
    return {
        "store": str(workdir / "audit.db"),
        "issuer": {"name": "bench", "audience": "kv", "key_file": str(workdir / "key.pem")},
        "identities": {
            "runner": {
                "allow": {"read": ["agents:*"]},
                "limits": {"requests_per_minute": 10**9, "requests_per_day": 10**9},
            }
        },
        "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
        "intents": {
            "process-job": {
                "identity": "runner",
                "tools": ["kv_get"],
                "allow": {"read": ["agents:jobs:{job_id}:*"]},
                "budget": {"max_calls": 10**9},
                "ttl": "1h",
            }
        },
    }


def _script(k: int) -> list[Any]:
    return [*(turn(call("kv_get", f"c{i}", key=f"agents:jobs:42:k{i}")) for i in range(k)),
            answer("done")]  # fmt: skip


_timed: contextvars.ContextVar[bool] = contextvars.ContextVar("bench_timed", default=False)


class TimedGuardMiddleware(GuardMiddleware):
    """GuardMiddleware that adds up the time spent in toolguard's own work per call
    (``authorize`` before the tool, ``finish`` after it: both run in the tool's guarded twin,
    so the guard's two methods are timed while a call of this middleware runs)."""

    spent = 0.0
    calls = 0

    def __init__(self, guard: tg.Guard, **kwargs: Any) -> None:
        super().__init__(guard, **kwargs)
        for name in ("authorize", "finish"):
            if not hasattr(getattr(guard, name), "__bench_timed__"):
                setattr(guard, name, _timer(getattr(guard, name)))

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        token = _timed.set(True)
        TimedGuardMiddleware.calls += 1
        try:
            return super().wrap_tool_call(request, handler)
        finally:
            _timed.reset(token)

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        token = _timed.set(True)
        TimedGuardMiddleware.calls += 1
        try:
            return await super().awrap_tool_call(request, handler)
        finally:
            _timed.reset(token)


def _timer(method: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not _timed.get():
            return method(*args, **kwargs)
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            TimedGuardMiddleware.spent += time.perf_counter() - start

    timed.__bench_timed__ = True  # type: ignore[attr-defined]
    return timed


class _TaskPerRun:
    """An agent with ``guard()`` tools, each run inside its own ``guard.task`` block."""

    def __init__(self, guard: tg.Guard, agent: Any) -> None:
        self.guard, self.agent = guard, agent

    def invoke(self, inputs: Any, config: Any) -> Any:
        with self.guard.task("process-job", job_id="42"):
            return self.agent.invoke(inputs, config)

    async def ainvoke(self, inputs: Any, config: Any) -> Any:
        async with self.guard.task("process-job", job_id="42"):
            return await self.agent.ainvoke(inputs, config)


def _agents(guard: tg.Guard, k: int, *, timed: bool = True) -> dict[str, Any]:
    def build(middleware: list[Any], tools: list[Any] | None = None) -> Any:
        model = ScriptedChatModel(script=_script(k), cycle=True)
        return create_agent(model, tools or [kv_get], middleware=middleware)

    middleware = TimedGuardMiddleware if timed else GuardMiddleware
    return {
        "bare": build([]),
        "passthrough": build([PassThrough()]),
        "passthrough_hooks": build([PassThroughHooks()]),
        "guarded": build([middleware(guard, intent="process-job")]),
        "guarded_tools": _TaskPerRun(guard, build([], [tg.guard(kv_get, guard)])),
    }


# -- instruction counts (valgrind), for a machine too busy for wall time ---------------------

VARIANTS = ("bare", "passthrough", "passthrough_hooks", "guarded", "guarded_tools")


def count_runs(variant: str, mode: str, k: int, runs: int) -> None:
    """The process valgrind measures: two warm-up runs of every variant with ``WARM_K`` tool
    calls (the same in every process, whatever ``k``: the difference of two processes is
    then ``runs x (k1 - k2)`` tool calls of ``variant`` and nothing else), then ``runs`` runs of
    ``variant`` with ``k`` tool calls each, the collector off (its passes come at allocation
    counts, not per call)."""
    import gc

    loop = asyncio.new_event_loop() if mode == "async" else None
    with tempfile.TemporaryDirectory(prefix="toolguard-bench-") as tmp:
        guard = tg.Guard(_config(Path(tmp)))
        try:
            for agent in _agents(guard, WARM_K, timed=False).values():
                _time_runs(agent, 2, loop)
            measured = _agents(guard, k, timed=False)[variant]
            gc.collect()
            gc.disable()
            _time_runs(measured, runs, loop)
        finally:
            gc.enable()
            guard.close()
            if loop is not None:
                loop.close()


WARM_K = 3


def _valgrind(
    variant: str, mode: str, k: int, runs: int, workdir: Path, cache: bool
) -> dict[str, int]:
    """Totals of one ``count_runs`` process under callgrind: instructions (``Ir``) and, with
    ``cache`` (callgrind's cache simulation), last-level cache misses (``ILmr``, ``DLmr``,
    ``DLmw``) and first-level data misses (``D1mr``, ``D1mw``)."""
    import re
    import subprocess

    out = workdir / f"cg.{variant}.{mode}.{k}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if cache:
        cmd.append("--cache-sim=yes")
    cmd += [sys.executable, __file__, "--count-run", variant, "--mode", mode,
            "--kmax", str(k), "--runs", str(runs)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    events: list[str] = []
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        match = re.match(r"(?:summary|totals):\s+([\d ]+)", line)
        if match:
            return dict(zip(events, (int(v) for v in match.group(1).split())))
    raise RuntimeError(f"no totals in {out}")


def count(
    modes: list[str], variants: list[str], runs: int, kmax: int, cache: bool
) -> dict[str, Any]:
    """Per tool call, by valgrind: (the ``kmax`` process - the ``k = 1`` process) / (runs x
    (kmax - 1)) for each variant and mode; toolguard's own cost is ``guarded - passthrough``,
    its share that over ``bare`` (the agent's own step)."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tg-cg-agent-") as tmp:
        for mode in modes:
            per_call: dict[str, dict[str, float]] = {}
            for variant in variants:
                high = _valgrind(variant, mode, kmax, runs, Path(tmp), cache)
                low = _valgrind(variant, mode, 1, runs, Path(tmp), cache)
                per_call[variant] = {e: (high[e] - low[e]) / (runs * (kmax - 1)) for e in high}
                print(mode, variant, {e: round(v) for e, v in per_call[variant].items()},
                      flush=True)  # fmt: skip
            result: dict[str, Any] = {
                "per_tool_call": {
                    v: {e: round(n) for e, n in c.items()} for v, c in per_call.items()
                }
            }
            if {"bare", "passthrough", "guarded"} <= set(per_call):
                own = {
                    e: per_call["guarded"][e] - per_call["passthrough"][e] for e in per_call["bare"]
                }
                result["toolguard_own_per_tool_call"] = {e: round(n) for e, n in own.items()}
                result["toolguard_own_ratio_instructions"] = round(
                    own["Ir"] / per_call["bare"]["Ir"], 4
                )
                result["plumbing_per_tool_call"] = {
                    e: round(per_call["passthrough"][e] - per_call["bare"][e]) for e in own
                }
            if {"bare", "passthrough_hooks", "guarded"} <= set(per_call):
                own = {
                    e: per_call["guarded"][e] - per_call["passthrough_hooks"][e]
                    for e in per_call["bare"]
                }
                result["toolguard_own_vs_same_hooks_per_tool_call"] = {
                    e: round(n) for e, n in own.items()
                }
                result["toolguard_own_vs_same_hooks_ratio_instructions"] = round(
                    own["Ir"] / per_call["bare"]["Ir"], 4
                )
            results[mode] = result
    return results


def _time_runs(agent: Any, runs: int, loop: asyncio.AbstractEventLoop | None) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        if loop is None:
            agent.invoke(USER, CONFIG)
        else:
            loop.run_until_complete(agent.ainvoke(USER, CONFIG))
    return (time.perf_counter() - start) / runs


def measure(rounds: int, runs: int, kmax: int, mode: str) -> dict[str, Any]:
    """Interleaved rounds; every estimate is the median over rounds of that round's value."""
    loop = asyncio.new_event_loop() if mode == "async" else None
    variants = ["bare", "passthrough", "guarded", "guarded_tools"]
    per_round: list[dict[tuple[str, int], float]] = []
    with tempfile.TemporaryDirectory(prefix="toolguard-bench-") as tmp:
        guard = tg.Guard(_config(Path(tmp)))
        agents = {k: _agents(guard, k) for k in (1, kmax)}
        for by_variant in agents.values():  # warm up: imports, schema, connections
            for agent in by_variant.values():
                _time_runs(agent, 2, loop)
        TimedGuardMiddleware.spent, TimedGuardMiddleware.calls = 0.0, 0
        for r in range(rounds):
            shift = r % len(variants)  # rotate to spread drift
            order = variants[shift:] + variants[:shift]
            sample: dict[tuple[str, int], float] = {}
            for k in (1, kmax):
                for variant in order:
                    sample[(variant, k)] = _time_runs(agents[k][variant], runs, loop)
            per_round.append(sample)
        guard_work = TimedGuardMiddleware.spent / max(TimedGuardMiddleware.calls, 1)
        connections = len(guard.store._readers) + (guard.store._writer is not None)
        guard.close()
    if loop is not None:
        loop.close()

    def med(fn: Callable[[dict[tuple[str, int], float]], float]) -> float:
        return statistics.median(fn(sample) for sample in per_round)

    def slope(sample: dict[tuple[str, int], float], variant: str) -> float:
        return (sample[(variant, kmax)] - sample[(variant, 1)]) / (kmax - 1)

    def intercept(sample: dict[tuple[str, int], float], variant: str) -> float:
        return sample[(variant, 1)] - slope(sample, variant)

    bare_call = med(lambda s: slope(s, "bare"))
    per_call = med(lambda s: slope(s, "guarded") - slope(s, "bare"))
    us = 1e6
    return {
        "benchmark": f"GuardMiddleware per tool call inside create_agent runs ({mode})",
        "mode": mode,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "runs_per_sample": runs,
        "tool_calls_per_run": [1, kmax],
        "median_run_us": {
            f"{v}_k{k}": round(statistics.median(s[(v, k)] for s in per_round) * us, 1)
            for v in variants
            for k in (1, kmax)
        },
        "agent_per_tool_call_us": round(bare_call * us, 1),
        "middleware_per_tool_call_us": round(per_call * us, 1),
        # issue 15: toolguard's own cost, without LangChain's middleware plumbing
        "toolguard_own_per_tool_call_us": round(
            med(lambda s: slope(s, "guarded") - slope(s, "passthrough")) * us, 1
        ),
        "toolguard_own_ratio_per_tool_call": round(
            med(lambda s: (slope(s, "guarded") - slope(s, "passthrough")) / slope(s, "bare")), 4
        ),
        "langgraph_plumbing_per_tool_call_us": round(
            med(lambda s: slope(s, "passthrough") - slope(s, "bare")) * us, 1
        ),
        "middleware_per_run_us": round(
            med(lambda s: intercept(s, "guarded") - intercept(s, "bare")) * us, 1
        ),
        "overhead_ratio_per_tool_call": round(
            med(lambda s: (slope(s, "guarded") - slope(s, "bare")) / slope(s, "bare")), 4
        ),
        "guarded_tools_per_tool_call_us": round(
            med(lambda s: slope(s, "guarded_tools") - slope(s, "bare")) * us, 1
        ),
        "guarded_tools_overhead_ratio_per_tool_call": round(
            med(lambda s: (slope(s, "guarded_tools") - slope(s, "bare")) / slope(s, "bare")), 4
        ),
        "overhead_ratio_at_kmax_including_task_start_end": round(
            med(lambda s: s[("guarded", kmax)] / s[("bare", kmax)] - 1.0), 4
        ),
        "toolguard_work_per_tool_call_us": round(guard_work * us, 1),
        "toolguard_work_ratio_per_tool_call": round(guard_work / bare_call, 4),
        "sqlite_connections_open": connections,
        "target_ratio_per_tool_call": 0.10,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kmax", type=int, default=10)
    parser.add_argument("--mode", choices=["sync", "async", "both"], default="both")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "agent.json")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count instructions per tool call with valgrind (callgrind) instead of timing",
    )  # fmt: skip
    parser.add_argument(
        "--cache-sim", action="store_true",
        help="with --instructions: callgrind's cache simulation too (cache misses per call)",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--count-run", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_run:
        count_runs(args.count_run, args.mode, args.kmax, args.runs)
        return 0
    if args.instructions:
        modes = ["sync", "async"] if args.mode == "both" else [args.mode]
        report = {
            "benchmark": "GuardMiddleware per tool call inside create_agent runs (callgrind)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "runs": args.runs,
            "tool_calls_per_run": [1, args.kmax],
            "cache_sim": args.cache_sim,
            "modes": count(modes, args.variants, args.runs, args.kmax, args.cache_sim),
            "target_ratio_per_tool_call": 0.10,
        }
        out = (
            args.out
            if args.out != HERE / "results" / "agent.json"
            else (HERE / "results" / "agent_callgrind.json")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    modes = ["sync", "async"] if args.mode == "both" else [args.mode]
    results = {mode: measure(args.rounds, args.runs, args.kmax, mode) for mode in modes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for mode, result in results.items():
        ratio = result["overhead_ratio_per_tool_call"]
        verdict = "ok" if ratio <= result["target_ratio_per_tool_call"] else "over target"
        print(f"{mode}: per-tool-call overhead {ratio:.1%} (target <= 10%): {verdict}")
        tools_ratio = result["guarded_tools_overhead_ratio_per_tool_call"]
        print(f"{mode}: guard() tools, no middleware: {tools_ratio:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
