"""Verification cost per token in a downstream service, with and without the revocation check.

Measures ``Verifier.verify`` on real EdDSA credentials:

- ``signature+claims``: a verifier with the issuer's JWKS and no revocation source;
- ``+store``: ``toolguard_starlette.verifier_from(jwks=..., store=...)``, which also asks the
  audit store (read-only SQLite connection) whether the jti, task or identity was revoked;
- ``+store, http``: the same check through ``ToolGuardAuth.check`` on a Starlette request
  object (header parsing, scope mapping), without the HTTP server.

Each store case runs against a store holding ``--revocations`` revocation rows (plus the
events of as many revocations), so the cost of the lookup at scale is visible. The three
variants are interleaved per token (order rotated each round) so machine noise hits them alike.

    python benchmarks/bench_verify.py [--tokens 2000] [--rounds 5] [--revocations 0 20000]

Writes ``benchmarks/results/verify.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
from starlette.requests import Request
from toolguard_starlette import ToolGuardAuth, verifier_from

import toolguard as tg
from toolguard.audit import revoke as record_revocation
from toolguard.credentials import new_jti

RESULTS = Path(__file__).resolve().parent / "results" / "verify.json"
KEY = "agents:jobs:42:state"
ISS = "toolguard-bench"
AUD = "kv-service"


def _config(root: Path) -> dict[str, Any]:
    return {
        "store": str(root / "audit.db"),
        "issuer": {"name": ISS, "audience": AUD, "key_file": str(root / "signing-key.pem")},
        "identities": {"agent-runner": {"owner": "bench", "allow": {"write": ["agents:*"]}}},
        "tools": {"kv_set": {"operation": "write", "resource": "{key}"}},
        "intents": {
            "bench": {
                "identity": "agent-runner",
                "tools": ["kv_set"],
                "allow": {"write": ["agents:*"]},
            }
        },
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(samples_ns: list[int]) -> dict[str, float]:
    us = [s / 1000.0 for s in samples_ns]
    return {
        "median_us": round(statistics.median(us), 2),
        "p99_us": round(_percentile(us, 0.99), 2),
        "mean_us": round(statistics.fmean(us), 2),
        "min_us": round(min(us), 2),
        "n": len(us),
    }


def _request(token: str) -> Request:
    scope = {
        "type": "http",
        "method": "PUT",
        "path": f"/kv/{KEY}",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "path_params": {"key": KEY},
    }
    return Request(scope)


def run_case(tokens: int, rounds: int, revocations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        guard = tg.Guard(_config(root))
        guard.store.open()
        try:
            started = time.perf_counter()
            # earlier incidents: other jtis, tasks, identities (the raw writer: guard.revoke
            # refuses targets the store does not know)
            for i in range(revocations):
                old = f"old-{i}"
                record_revocation(
                    guard.store,
                    jti=old if i % 3 == 0 else None,
                    task_id=old if i % 3 == 1 else None,
                    identity=old if i % 3 == 2 else None,
                    reason="bench",
                    now=time.time(),
                )
            seed_s = time.perf_counter() - started
            now = time.time()
            minted = [
                guard.issuer.mint(
                    jti=new_jti(), task_id=f"task-{i % 50}", identity="agent-runner",
                    intent="bench", tool="kv_set", operation="write", resources=(KEY,), now=now,
                ).token
                for i in range(tokens)
            ]  # fmt: skip
            jwks = guard.keys.jwks()
            plain = tg.Verifier.from_jwks(jwks, issuer=ISS, audience=AUD)
            stored = verifier_from(
                jwks=jwks, store=guard.config.store_path, issuer=ISS, audience=AUD
            )
            auth = ToolGuardAuth(stored)
            variants: dict[str, Callable[[str], object]] = {
                "signature+claims": lambda t: plain.verify(t, operation="write", resource=KEY),
                "+store": lambda t: stored.verify(t, operation="write", resource=KEY),
                "+store, http": lambda t: auth.check(_request(t), "write", KEY),
            }
            names = list(variants)
            for token in minted[:200]:  # warm up: connections, caches
                for fn in variants.values():
                    fn(token)
            samples: dict[str, list[int]] = {name: [] for name in names}
            clock = time.perf_counter_ns
            for round_no in range(rounds):
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for token in minted:
                    for name in order:
                        fn = variants[name]
                        start = clock()
                        fn(token)
                        samples[name].append(clock() - start)
            results = {name: _summary(values) for name, values in samples.items()}
            base = results["signature+claims"]["median_us"]
            return {
                "revocation_rows": revocations,
                "seed_seconds": round(seed_s, 2),
                "variants": results,
                "store_check_median_us": round(results["+store"]["median_us"] - base, 2),
            }
        finally:
            guard.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verification cost per token.")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--revocations", type=int, nargs="+", default=[0, 20000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    cases = [run_case(args.tokens, args.rounds, n) for n in args.revocations]
    report = {
        "benchmark": "verify",
        "command": "python benchmarks/bench_verify.py " + " ".join(argv or sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "sqlite": sqlite3.sqlite_version,
        "cryptography": cryptography.__version__,
        "algorithm": "EdDSA",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'revocations':>11}  {'variant':<18} {'median µs':>10} {'p99 µs':>8} {'mean µs':>8}")
    for case in cases:
        for name, stats in case["variants"].items():
            print(
                f"{case['revocation_rows']:>11}  {name:<18} {stats['median_us']:>10.1f} "
                f"{stats['p99_us']:>8.1f} {stats['mean_us']:>8.1f}"
            )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
