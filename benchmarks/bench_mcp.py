"""Per-tool-call overhead of ``toolguard-mcp``: the same ``tools/call`` through the proxy and
straight to the upstream server, with the official ``mcp`` SDK client, over stdio.

The upstream is ``examples/mcp_upstream_server.py``, started with ``--no-verify`` for both
variants so that what differs is the proxy alone: its extra stdio hop (JSON-RPC decoded and
encoded once more by the SDK on both of its sides) and toolguard's work per call (the check,
the audit transaction, the credential, the scrub of the result). ``guarded_verified`` also lets
the upstream verify every credential (signature and revocation lookup), as a real one should.

Rounds interleave the variants; each round times ``--calls`` sequential ``kv_get`` calls per
variant; the reported numbers are medians over rounds of the mean time per call.

Run: ``python benchmarks/bench_mcp.py [--rounds 7] [--calls 200] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UPSTREAM = ROOT / "examples" / "mcp_upstream_server.py"

CONFIG: dict[str, Any] = {
    "store": "audit.db",
    "issuer": {"name": "bench", "audience": "kv-service", "key_file": "key.pem"},
    "identities": {"agent-runner": {"allow": {"read": ["agents:*"]}}},
    "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
    "intents": {
        "process-job": {
            "identity": "agent-runner",
            "tools": ["kv_get"],
            "allow": {"read": ["agents:jobs:{job_id}:*"]},
            "budget": {"max_calls": 1000000},
            "ttl": "1h",
        }
    },
}


def _env() -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "integrations" / "mcp"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _params(config: Path, variant: str) -> StdioServerParameters:
    upstream = [str(UPSTREAM), "--config", str(config)]
    if variant != "guarded_verified":
        upstream.append("--no-verify")
    if variant == "direct":
        return StdioServerParameters(command=sys.executable, args=upstream, env=_env())
    proxy = ["-m", "toolguard_mcp", "proxy", "--config", str(config), "--intent", "process-job"]
    return StdioServerParameters(
        command=sys.executable,
        args=[*proxy, "--param", "job_id=42", "--", sys.executable, *upstream],
        env=_env(),
    )


@asynccontextmanager
async def _session(config: Path, variant: str) -> AsyncIterator[ClientSession]:
    async with stdio_client(_params(config, variant)) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def _time_calls(session: ClientSession, calls: int) -> float:
    args = {"key": "agents:jobs:42:state"}
    for _ in range(10):  # warm-up
        await session.call_tool("kv_get", args)
    start = time.perf_counter()
    for _ in range(calls):
        result = await session.call_tool("kv_get", args)
        assert not result.isError, result
    return (time.perf_counter() - start) / calls * 1e6


async def run(rounds: int, calls: int) -> dict[str, Any]:
    variants = ("direct", "guarded", "guarded_verified")
    samples: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="toolguard-bench-") as tmp:
        config = Path(tmp) / "toolguard.yaml"
        config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
        for _ in range(rounds):
            for variant in variants:
                async with _session(config, variant) as session:
                    samples[variant].append(await _time_calls(session, calls))
    med = {v: statistics.median(s) for v, s in samples.items()}
    from importlib.metadata import version

    return {
        "benchmark": "bench_mcp",
        "rounds": rounds,
        "calls_per_round": calls,
        "per_call_us": {v: round(m, 1) for v, m in med.items()},
        "overhead_per_call_us": round(med["guarded"] - med["direct"], 1),
        "overhead_with_upstream_verification_us": round(med["guarded_verified"] - med["direct"], 1),
        "samples_us": {v: [round(x, 1) for x in s] for v, s in samples.items()},
        "mcp": version("mcp"),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "mcp.json")
    args = parser.parse_args()
    result = anyio.run(run, args.rounds, args.calls)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "samples_us"}, indent=2))


if __name__ == "__main__":
    main()
