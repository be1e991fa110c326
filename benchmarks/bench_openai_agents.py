"""Per-tool-call overhead of ``toolguard_openai_agents`` inside an OpenAI Agents SDK run.

The same agent (the SDK's ``ScriptedModel``, a trivial ``@function_tool``) runs with and
without the guard, interleaved round by round, in the SDK's own run loop (``Runner.run``).
Each run makes ``K`` sequential tool calls (one per model turn) and then answers. Fitting run
time against ``K`` (``K = 1`` and ``K = KMAX``) separates

- the per-tool-call cost (the slope): a model turn, the SDK's tool machinery and the tool, and
  for the guarded agent the check, the audit transaction and the credential of each call;
- the per-run cost (the intercept): for ``GuardedRunner``, the task start and end (two
  transactions, the revocation and a signed checkpoint).

Variants: ``bare`` (unguarded tools, ``Runner.run``), ``guarded`` (``guard_tools`` +
``GuardedRunner``), ``guarded_task`` (``guard_tools`` with ``Runner.run`` inside
``async with guard.task(...)``: no handoff hooks). Every reported number is the median over
rounds of that round's estimate; ``toolguard_own_work_per_call_us`` is ``authorize`` + ``finish``
alone (the check, the audit transaction, the credential), and ``load_average`` says how busy
the machine was (the numbers are only as quiet as it).

Run: ``python benchmarks/bench_openai_agents.py [--rounds 15] [--runs 5] [--kmax 10]
[--out PATH]`` (needs ``toolguard-openai-agents`` installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents import __version__ as agents_version
from agents.testing import ScriptedModel, assistant_message, function_call
from toolguard_openai_agents import GuardedRunner, guard_tools

import toolguard as tg

HERE = Path(__file__).resolve().parent
os.environ.setdefault("OPENAI_API_KEY", "sk-offline-benchmark")  # never used: no network
set_tracing_disabled(True)

CONFIG: dict[str, Any] = {
    "issuer": {"name": "bench", "audience": "kv-service"},
    "identities": {"agent-runner": {"allow": {"read": ["agents:*"]}}},
    "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
    "intents": {
        "process-job": {
            "identity": "agent-runner",
            "tools": ["kv_get"],
            "allow": {"read": ["agents:jobs:{job_id}:*"]},
            "budget": {"max_calls": 100000},
            "ttl": "1h",
        }
    },
}


@function_tool
def kv_get(key: str) -> str:
    """Read a key."""
    return "value"


def _steps(k: int) -> list[Any]:
    calls = [
        [function_call("kv_get", {"key": f"agents:jobs:42:{i}"}, call_id=f"c{i}")] for i in range(k)
    ]
    return [*calls, [assistant_message("done")]]


def _agent(tools: list[Any], k: int) -> Agent[Any]:
    return Agent(name="bench", tools=tools, model=ScriptedModel(_steps(k)))


async def _time(run: Callable[[int], Awaitable[Any]], k: int, runs: int) -> float:
    """Median seconds of one run with ``k`` tool calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await run(k)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def main(rounds: int, runs: int, kmax: int) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="toolguard-bench-oa-")
    guard = tg.Guard(
        {**CONFIG, "store": f"{workdir}/audit.db",
         "issuer": {**CONFIG["issuer"], "key_file": f"{workdir}/key.pem"}}
    )  # fmt: skip
    guarded_tools = guard_tools([kv_get], guard)
    runner = GuardedRunner(guard, "process-job", params={"job_id": "42"})

    async def bare(k: int) -> Any:
        return await Runner.run(_agent([kv_get], k), "go", max_turns=k + 2)

    async def guarded(k: int) -> Any:
        return await runner.run(_agent(guarded_tools, k), "go", max_turns=k + 2)

    async def guarded_task(k: int) -> Any:
        async with guard.task("process-job", job_id="42"):
            return await Runner.run(_agent(guarded_tools, k), "go", max_turns=k + 2)

    variants: dict[str, Callable[[int], Awaitable[Any]]] = {
        "bare": bare, "guarded": guarded, "guarded_task": guarded_task,
    }  # fmt: skip
    for run in variants.values():  # warm up
        await run(2)
    slopes: dict[str, list[float]] = {name: [] for name in variants}
    intercepts: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            one = await _time(variants[name], 1, runs)
            many = await _time(variants[name], kmax, runs)
            slope = (many - one) / (kmax - 1)
            slopes[name].append(slope)
            intercepts[name].append(one - slope)
    own = []  # toolguard's own work per call: authorize + finish, outside any framework
    async with guard.task("process-job", job_id="42"):
        for i in range(rounds * 20):
            start = time.perf_counter()
            permit = guard.authorize(
                "kv_get", {"key": f"agents:jobs:42:{i}"}, correlation_id=f"o{i}"
            )
            guard.finish(permit)
            own.append(time.perf_counter() - start)
    guard.close()
    med = {n: statistics.median(v) * 1e6 for n, v in slopes.items()}
    inter = {n: statistics.median(v) * 1e6 for n, v in intercepts.items()}
    over = {n: statistics.median(a - b for a, b in zip(slopes[n], slopes["bare"])) * 1e6
            for n in ("guarded", "guarded_task")}  # fmt: skip
    return {
        "benchmark": "bench_openai_agents",
        "python": platform.python_version(),
        "openai_agents": agents_version,
        "rounds": rounds,
        "runs": runs,
        "kmax": kmax,
        "per_call_us": {n: round(v, 1) for n, v in med.items()},
        "per_run_us": {n: round(v, 1) for n, v in inter.items()},
        "overhead_per_call_us": {n: round(v, 1) for n, v in over.items()},
        "overhead_per_call_ratio": {n: round(v / med["bare"], 3) for n, v in over.items()},
        "toolguard_own_work_per_call_us": round(statistics.median(own) * 1e6, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kmax", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "openai_agents.json")
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds, args.runs, args.kmax))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
