"""The PostgreSQL store: per-call overhead beside SQLite's, and fleet throughput.

- ``overhead``: a bare LangChain tool against the same tool guarded with the store on SQLite
  (a file, WAL) and on a local PostgreSQL (one database; over TCP, and with the script's own
  cluster also over its Unix socket, as a guard on the server's host connects), median and
  p99 per call, the client's CPU per call (``time.process_time``: stable on a shared machine,
  unlike wall time), and for PostgreSQL the round trips per call and how long the writer lock
  is held per call;
- ``fleet``: 1, 2, 4 and 8 writer processes (each its own guard, as hosts are), each calling a
  guarded tool in a loop for ``--seconds`` with identity limits (``requests_per_minute``,
  ``requests_per_day``) set high enough never to trip, so every call spends exact budgets:
  guarded calls/s of the fleet, p50/p99 latency of one call.

The server: ``--url`` (or ``$TOOLGUARD_BENCH_PG``), else a throwaway cluster started with the
machine's PostgreSQL binaries (``fsync=off``: the commit rate of a server whose WAL sits on
fast storage; say which in a report).

    python benchmarks/bench_postgres.py [--url URL] [--calls 2000] [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from langchain_core.tools import tool

import toolguard as tg

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "postgres.json"
KEY = "agents:jobs:42:input"


@tool("kv_get")
def kv_get(key: str) -> str:
    """Read the value stored under a key."""
    return f"value of {key}"


def _config(workdir: Path, store: str, name: str) -> dict[str, Any]:
    return {
        "store": store,
        "checkpoints": str(workdir / f"{name}.checkpoints"),
        "issuer": {"name": "bench", "audience": "kv", "key_file": str(workdir / "key.pem")},
        "identities": {
            "bench": {
                "allow": {"read": ["agents:*"]},
                "limits": {"requests_per_minute": 10**9, "requests_per_day": 10**9},
            }
        },
        "tools": {"kv_get": {"operation": "read", "resource": "{key}"}},
        "intents": {
            "read-job": {
                "identity": "bench",
                "tools": ["kv_get"],
                "allow": {"read": ["agents:*"]},
                "ttl": "1h",
            }
        },
    }


def _start_cluster() -> tuple[str, Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("no PostgreSQL binaries: pass --url or set TOOLGUARD_BENCH_PG")
    bindir = Path(found[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="toolguard-bench-pg-"))
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data / "d"), "-A", "trust",
                    "-U", "postgres", "--no-sync"], check=True, capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data / "d"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
                    " -c max_connections=200", "-l", str(data / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", data


def _stop_cluster(data: Path) -> None:
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data / "d"), "-m", "immediate",
                    "stop"], capture_output=True)  # fmt: skip
    shutil.rmtree(data, ignore_errors=True)


def _new_db(base: str) -> str:
    name = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return base.rsplit("/", 1)[0] + "/" + name


def _drop_db(base: str, url: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")  # type: ignore[arg-type]


def _pcts(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p50_us": round(statistics.median(times) * 1e6, 1),
        "p99_us": round(times[int(len(times) * 0.99) - 1] * 1e6, 1),
    }


def _socket_url(base: str, data: Path) -> str:
    """The script's own cluster through its Unix socket (in ``data``) instead of TCP."""
    port = base.rsplit(":", 1)[1].split("/", 1)[0]
    return f"postgresql://postgres@{quote(str(data), safe='')}:{port}/postgres"


def overhead(base: str, workdir: Path, calls: int, socket: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    bare = []
    for _ in range(calls):
        t = time.perf_counter()
        kv_get.invoke({"key": KEY})
        bare.append(time.perf_counter() - t)
    out["bare"] = _pcts(bare)
    stores = [("sqlite", str(workdir / "o.db")), ("postgres", _new_db(base))]
    if socket:
        stores.append(("postgres_unix_socket", _new_db(socket)))
    for name, store in stores:
        guard = tg.Guard(_config(workdir, store, f"overhead-{name}"))
        guarded = tg.guard(kv_get, guard)
        times = []
        with guard.task("read-job"):
            for _ in range(50):  # warm: connections, prepared statements
                result = guarded.invoke({"key": KEY})
                assert result == f"value of {KEY}", f"the benchmark's call is refused: {result}"
            writer = getattr(guard.store, "_writer", None)
            conn = writer[1] if writer else None
            trips = getattr(conn, "round_trips", 0)
            holds = []
            cpu = time.process_time()
            for _ in range(calls):
                h = getattr(conn, "lock_seconds", 0.0)
                t = time.perf_counter()
                guarded.invoke({"key": KEY})
                times.append(time.perf_counter() - t)
                holds.append(getattr(conn, "lock_seconds", 0.0) - h)
            cpu = time.process_time() - cpu
        guard.close()
        if name != "sqlite":
            _drop_db(base, store)
        out[name] = _pcts(times)
        out[name]["client_cpu_us"] = round(cpu / calls * 1e6, 1)
        if conn is not None and hasattr(conn, "round_trips"):
            out[name]["round_trips_per_call"] = round((conn.round_trips - trips) / calls, 2)
            if hasattr(conn, "lock_seconds"):  # from the request taking it to the COMMIT's reply
                out[name]["lock_held_p50_us"] = round(statistics.median(holds) * 1e6, 1)
    for name, _ in stores:
        out[name]["overhead_p50_us"] = round(out[name]["p50_us"] - out["bare"]["p50_us"], 1)
    return out


def _writer(
    url: str, workdir: str, name: str, seconds: float, ready: Any, go: Any, out: Any
) -> None:
    guard = tg.Guard(_config(Path(workdir), url, name))
    guarded = tg.guard(kv_get, guard)
    times: list[float] = []
    errors = 0
    with guard.task("read-job"):
        result = guarded.invoke({"key": KEY})  # connected before the clock starts
        assert result == f"value of {KEY}", f"the benchmark's call is refused: {result}"
        writer = guard.store._writer[1]  # type: ignore[index]
        ready.put(name)
        go.wait()
        held = getattr(writer, "lock_seconds", 0.0)
        end = time.time() + seconds
        while (t := time.perf_counter()) and time.time() < end:
            try:
                if guarded.invoke({"key": KEY}) != f"value of {KEY}":
                    errors += 1  # refused: must not happen (limits are set not to trip)
            except tg.AuditError:
                errors += 1
            times.append(time.perf_counter() - t)
        held = getattr(writer, "lock_seconds", 0.0) - held
    guard.close()
    out.put((times, errors, held))


def fleet(base: str, workdir: Path, seconds: float, writers: list[int]) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in writers:
        url = _new_db(base)
        setup = tg.Guard(_config(workdir, url, "setup"))
        setup.store.open()  # the schema and the key before the writers start
        setup.close()
        out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(
                target=_writer, args=(url, str(workdir), f"w{n}-{i}", seconds, ready, go, out)
            )
            for i in range(n)
        ]
        for p in procs:
            p.start()
        for _ in procs:  # every writer connected and warm
            ready.get(timeout=120)
        go.set()
        results = [out.get(timeout=seconds + 120) for _ in procs]
        for p in procs:
            p.join()
        _drop_db(base, url)  # no autovacuum of it during the next run
        times = [t for r in results for t in r[0]]
        rows.append({
            "writers": n,
            "calls_per_s": round(len(times) / seconds),
            **_pcts(times),
            # from the request taking the writer lock to the COMMIT's reply: the hold, plus
            # the wait for the lock when writers contend
            "lock_wait_and_hold_us": round(sum(r[2] for r in results) / len(times) * 1e6, 1),
            "errors": sum(r[1] for r in results),
        })  # fmt: skip
        print(f"  {n} writers: {rows[-1]}", flush=True)
    return rows


def _spread(values: list[float]) -> str:
    """``median [min-max]`` of one figure over the runs."""
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def summary(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Medians and ranges over the runs: the per-call overhead of each store (and its ratio
    to SQLite's) and each fleet size's calls/s and p99."""
    out: dict[str, str] = {}
    for name in runs[0]["overhead"]:
        if name == "bare":
            continue
        added = [r["overhead"][name]["overhead_p50_us"] for r in runs]
        out[f"{name} added per call, µs"] = _spread(added)
        if name != "sqlite":
            ratios = [
                r["overhead"][name]["overhead_p50_us"] / r["overhead"]["sqlite"]["overhead_p50_us"]
                for r in runs
            ]
            out[f"{name} / sqlite"] = (
                f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
            )
    for i, row in enumerate(runs[0]["fleet"]):
        n = row["writers"]
        out[f"{n} writers, calls/s"] = _spread([r["fleet"][i]["calls_per_s"] for r in runs])
        out[f"{n} writers, p99 µs"] = _spread([r["fleet"][i]["p99_us"] for r in runs])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TOOLGUARD_BENCH_PG"))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", default="1,2,4,8")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of the whole benchmark; medians and ranges"
    )
    args = parser.parse_args()
    cluster = None
    base = args.url
    socket = ""
    if not base:
        base, cluster = _start_cluster()
        socket = _socket_url(base, cluster)
    runs: list[dict[str, Any]] = []
    try:
        with psycopg.connect(base) as conn:
            server = {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit")
            }
        for run in range(1, args.repeat + 1):
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"run {run} of {args.repeat}, server: {server}, load: {load}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:  # checkpoint files of its own
                workdir = Path(tmp)
                print("per call (µs):", flush=True)
                over = overhead(base, workdir, args.calls, socket)
                for name, row in over.items():
                    print(f"  {name}: {row}")
                print("fleet:", flush=True)
                writers = [int(w) for w in args.writers.split(",")]
                rows = fleet(base, workdir, args.seconds, writers)
            runs.append({"load_average": load, "overhead": over, "fleet": rows})
    finally:
        if cluster is not None:
            _stop_cluster(cluster)
    result: dict[str, Any] = {"server": server, "runs": runs}
    if len(runs) > 1:
        result["summary"] = summary(runs)
        print("over the runs, median [min-max]:")
        for key, value in result["summary"].items():
            print(f"  {key}: {value}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
