"""The HTTP revocation feed (toolguard_starlette.feed): size and cost of the signed list, and
how long a revocation takes to reach a remote verifier.

    .venv/bin/python benchmarks/bench_feed.py [--sizes 1000 10000 100000] [--revocations 20]

Part 1, per store size (N task revocations): the list's bytes, the server's cost of a poll
when the store changed (re-read + sign), when it did not (cached content, fresh signature),
and of a 304; the client's cost of verifying and parsing the list.
Part 2: a real uvicorn feed on 127.0.0.1 and a ``verifier_from(feed=...)`` with the default
bounds; each revocation is timed from ``guard.revoke`` returning to the first rejection.
Writes ``benchmarks/results/feed.json``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.testclient import TestClient
from toolguard_starlette import revocation_app, verifier_from
from toolguard_starlette.feed import RevocationFeed, _Publisher

import toolguard as tg
from toolguard.audit import revoke as record_revocation
from toolguard.credentials import new_jti
from toolguard.store import Store

RESULTS = Path(__file__).resolve().parent / "results" / "feed.json"
ISS, AUD = "toolguard-bench", "kv-service"


def _config(tmp: Path) -> dict[str, Any]:
    return {
        "store": str(tmp / "audit.db"),
        "issuer": {"name": ISS, "audience": AUD, "key_file": str(tmp / "key.pem")},
        "identities": {"runner": {"allow": {"write": ["kv:*"]}}},
        "tools": {"kv_set": {"operation": "write", "resource": "{key}"}},
        "intents": {"job": {"identity": "runner", "tools": ["kv_set"]}},
    }


def _median_us(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def bench_sizes(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            guard = tg.Guard(_config(Path(tmp)))
            guard.store.open()
            conn = guard.store.conn  # bulk rows: the feed only reads them
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO revocations (scope, value, reason, ts, by) VALUES (?, ?, ?, ?, ?)",
                (("task", f"task-{i:08d}", "bench", time.time(), "bench") for i in range(n)),
            )
            conn.execute("COMMIT")
            store = Store(Path(tmp) / "audit.db", readonly=True)
            publisher = _Publisher(store, guard.keys, ISS, time.time)
            snap = publisher.snapshot()
            body = publisher.sign(snap)
            rounds = 5 if n >= 100_000 else 20

            def changed(publisher: _Publisher = publisher) -> None:
                publisher._snapshot = None  # as after a new revocation: read and build again
                publisher.sign(publisher.snapshot())

            def unchanged_200(publisher: _Publisher = publisher) -> None:
                publisher.sign(publisher.snapshot())

            unchanged = _median_us(unchanged_200, rounds)
            with TestClient(revocation_app(store=store, keys=guard.keys, issuer=ISS)) as client:
                etag = client.get("/revocations").headers["etag"]
                conditional = {"If-None-Match": etag}
                not_modified = _median_us(
                    lambda c=client, h=conditional: c.get("/revocations", headers=h), rounds
                )
            with RevocationFeed(
                "http://127.0.0.1:1/r", keys=guard.keys, issuer=ISS, start=False
            ) as feed:
                parse = _median_us(lambda f=feed, b=body: f._parse(b, time.time()), rounds)
            rows.append(
                {
                    "revocations": n,
                    "list_bytes": len(body),
                    "server_changed_us": round(_median_us(changed, rounds)),
                    "server_unchanged_200_us": round(unchanged),
                    "server_304_us_testclient": round(not_modified),
                    "client_verify_parse_us": round(parse),
                }
            )
            guard.close()
            print(rows[-1])
    return rows


def bench_delay(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        guard = tg.Guard(_config(Path(tmp)))
        guard.store.open()
        app = revocation_app(store=Path(tmp) / "audit.db", keys=guard.keys, issuer=ISS)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/revocations"
        verifier = verifier_from(jwks=guard.keys.jwks(), feed=url, issuer=ISS, audience=AUD)
        delays = []
        for i in range(count):
            token = guard.issuer.mint(
                jti=new_jti(), task_id=f"t-{i}", identity="runner", intent="job", tool="kv_set",
                operation="write", resources=("kv:a",), now=time.time(),
            ).token  # fmt: skip
            while True:  # until the feed has a list
                try:
                    verifier.verify(token)
                    break
                except tg.CredentialError:
                    time.sleep(0.01)
            record_revocation(guard.store, task_id=f"t-{i}", now=time.time())
            start = time.monotonic()
            while True:
                try:
                    verifier.verify(token)
                except tg.CredentialRevoked:
                    break
                time.sleep(0.002)
            delays.append(time.monotonic() - start)
        verifier.revocations.close()  # type: ignore[union-attr]
        server.should_exit = True
        thread.join()
        guard.close()
    result = {
        "revocations": count,
        "p50_s": round(statistics.median(delays), 3),
        "max_s": round(max(delays), 3),
        "bound_s": 1.0,
    }
    print(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--revocations", type=int, default=20)
    args = parser.parse_args()
    result = {"sizes": bench_sizes(args.sizes), "delay": bench_delay(args.revocations)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
