"""Per-tool-call overhead of ``toolguard_pydantic_ai`` inside a PydanticAI agent run.

The same agent (PydanticAI's ``FunctionModel`` scripted, a trivial tool in a
``FunctionToolset``) runs with and without the guard, interleaved round by round, in
PydanticAI's own run loop (``Agent.run``). Each run makes ``K`` sequential tool calls (one per
model turn) and then answers. Fitting run time against ``K`` (``K = 1`` and ``K = KMAX``)
separates

- the per-tool-call cost (the slope): a model turn, PydanticAI's tool machinery and the tool,
  and for the guarded agent the check, the audit transaction and the credential of each call;
- the per-run cost (the intercept): for ``GuardedAgent``, the task start and end (two
  transactions, the revocation and a signed checkpoint).

Variants: ``bare`` (the toolset unguarded, ``Agent.run``), ``guarded`` (``guard_toolset`` +
``GuardedAgent``), ``guarded_task`` (``guard_toolset`` with ``Agent.run`` inside
``async with guard.task(...)``). Every reported number is the median over rounds of that
round's estimate; ``toolguard_own_work_per_call_us`` is ``authorize`` + ``finish`` alone (the
check, the audit transaction, the credential), and ``load_average`` says how busy the machine
was (the numbers are only as quiet as it).

Run: ``python benchmarks/bench_pydantic_ai.py [--rounds 15] [--runs 5] [--kmax 10]
[--out PATH]`` (needs ``toolguard-pydantic-ai`` installed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic_ai.models
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset
from toolguard_pydantic_ai import GuardedAgent, guard_toolset

import toolguard as tg

HERE = Path(__file__).resolve().parent
pydantic_ai.models.ALLOW_MODEL_REQUESTS = False  # the scripted model only: no network

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


def kv_get(key: str) -> str:
    """Read a key."""
    return "value"


def _model(k: int) -> FunctionModel:
    """``k`` turns of one tool call each, then an answer."""
    turn = [0]

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        i = turn[0]
        turn[0] += 1
        if i < k:
            call = ToolCallPart("kv_get", {"key": f"agents:jobs:42:{i}"}, tool_call_id=f"c{i}")
            return ModelResponse(parts=[call])
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


async def _time(run: Callable[[int], Awaitable[Any]], k: int, runs: int) -> float:
    """Median seconds of one run with ``k`` tool calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await run(k)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def main(rounds: int, runs: int, kmax: int) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="toolguard-bench-pyd-")
    guard = tg.Guard(
        {**CONFIG, "store": f"{workdir}/audit.db",
         "issuer": {**CONFIG["issuer"], "key_file": f"{workdir}/key.pem"}}
    )  # fmt: skip
    bare_agent = Agent(toolsets=[FunctionToolset([kv_get])])
    guarded_toolset = guard_toolset([kv_get], guard)
    task_agent = Agent(toolsets=[guarded_toolset])
    guarded_agent = GuardedAgent(task_agent, guard, "process-job", params={"job_id": "42"})

    async def bare(k: int) -> Any:
        return await bare_agent.run("go", model=_model(k))

    async def guarded(k: int) -> Any:
        return await guarded_agent.run("go", model=_model(k))

    async def guarded_task(k: int) -> Any:
        async with guard.task("process-job", job_id="42"):
            return await task_agent.run("go", model=_model(k))

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
        "benchmark": "bench_pydantic_ai",
        "python": platform.python_version(),
        "pydantic_ai_slim": importlib.metadata.version("pydantic-ai-slim"),
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
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pydantic_ai.json")
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds, args.runs, args.kmax))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
