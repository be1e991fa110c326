"""Generate a realistic large audit trail (default 1,000,000 events) for the scale benchmarks.

The rows are what toolguard itself writes: the real schema (``Store``), arguments through the
real ``Redactor``, and the real chain (``toolguard.chain.row_values`` / ``values_hash``), so
``verify`` passes on the result. Traffic is synthetic but shaped like production: 24
identities, 12 tools, tasks of 1 to 12 calls run 8 at a time with their events interleaved,
about 4 % denials and 3 % tool errors, 30 days of history ending now (so ``--since 1h`` finds
the newest tasks), a ``credentials`` row per allowed call, a revocation per task end, and one
signed checkpoint per task end in ``<db>.checkpoints`` (as the library writes them).

Rows are written in big transactions with ``executemany``; the whole run takes well under a
minute on a laptop-class machine for a million events.

    python benchmarks/gen_large_db.py [--events 1000000] [--out benchmarks/.data/large.db]

Writes next to the database: ``signing-key.pem`` (the key the checkpoints are signed with) and
``config.json`` (a guard config on this database and key, with a ``bench`` intent for the
overhead measurement). The data directory holds a ``.gitignore``: never commit it.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from toolguard.chain import GENESIS, HASHED_FIELDS, row_values, values_hash
from toolguard.credentials import new_jti
from toolguard.integrity import sign_checkpoint
from toolguard.keys import KeyRing
from toolguard.redaction import Redactor
from toolguard.store import Store

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / ".data" / "large.db"
DAYS = 30
BATCH = 50_000

IDENTITIES = [f"agent-{name}" for name in (
    "runner", "billing", "support", "etl", "search", "mailer", "reports", "crawler",
    "triage", "ledger", "intake", "audit", "sync", "notify", "pricing", "catalog",
    "fraud", "backfill", "summary", "ops", "sales", "hr", "legal", "infra",
)]  # fmt: skip
TOOLS: list[tuple[str, str, str]] = [
    ("kv_get", "read", "agents:jobs:{job}:{item}"),
    ("kv_set", "write", "agents:jobs:{job}:{item}"),
    ("kv_delete", "delete", "agents:jobs:{job}:{item}"),
    ("http_get", "read", "https://api.internal/v1/{item}"),
    ("http_post", "write", "https://api.internal/v1/{item}"),
    ("sql_query", "read", "db:analytics:{item}"),
    ("sql_exec", "write", "db:orders:{item}"),
    ("send_email", "write", "mailto:user{job}@example.com"),
    ("s3_get", "read", "s3://bucket-{job}/{item}"),
    ("s3_put", "write", "s3://bucket-{job}/{item}"),
    ("search", "read", "index:docs:{item}"),
    ("ticket_create", "write", "tickets:{job}"),
]
INTENTS = [f"intent-{i}" for i in range(10)]
CONCURRENT = 8


def _args(rng: random.Random, tool: str, job: int, item: str) -> dict[str, Any]:
    """Arguments of the size and shape tools really get (some with secrets to redact)."""
    args: dict[str, Any] = {"key": f"agents:jobs:{job}:{item}"}
    if tool in ("kv_set", "http_post", "s3_put", "sql_exec"):
        args["value"] = "payload " * rng.randint(2, 40)
    if tool in ("http_get", "http_post"):
        args["headers"] = {"Accept": "application/json", "Authorization": "Bearer x" * 3}
    if tool == "send_email":
        args.update(to=f"user{job}@example.com", subject="Report", body="Hello " * 20)
    if tool == "sql_query":
        args["sql"] = f"SELECT * FROM orders WHERE job = {job} LIMIT {rng.randint(1, 100)}"
    return args


class Generator:
    """Emits tasks and their events, hashing the chain as it goes."""

    def __init__(self, conn: sqlite3.Connection, keys: KeyRing, seed: int, now: float) -> None:
        self.conn = conn
        self.keys = keys
        self.rng = random.Random(seed)
        self.redactor = Redactor()
        self.now = now
        self.seq = 0
        self.prev = GENESIS
        self.events: list[tuple[Any, ...]] = []
        self.tasks: list[tuple[Any, ...]] = []
        self.credentials: list[tuple[Any, ...]] = []
        self.revocations: list[tuple[Any, ...]] = []
        self.checkpoints: list[str] = []
        self.task_count = 0
        self.insert_event = (
            f"INSERT INTO events ({', '.join(HASHED_FIELDS)}, prev_hash, hash) "
            f"VALUES ({', '.join('?' * (len(HASHED_FIELDS) + 2))})"
        )

    def emit(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event["seq"] = self.seq
        values = row_values(event)
        digest = values_hash(self.prev, values)
        self.events.append((*values, self.prev, digest))
        self.prev = digest
        if len(self.events) >= BATCH:
            self.flush()

    def flush(self) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        conn.executemany(self.insert_event, self.events)
        conn.executemany(
            "INSERT INTO tasks (task_id, parent_id, intent, identity, params, purpose, status,"
            " started_at, ended_at, deadline, tainted) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            self.tasks,
        )
        conn.executemany(
            "INSERT INTO credentials (jti, task_id, identity, tool, operation, issued_at,"
            " expires_at, jit, tally) VALUES (?,?,?,?,?,?,?,?,'j' || ?1)",
            self.credentials,
        )
        conn.executemany(
            "INSERT INTO revocations (scope, value, reason, ts, by) VALUES (?,?,?,?,?)",
            self.revocations,
        )
        conn.execute("COMMIT")
        self.events, self.tasks, self.credentials, self.revocations = [], [], [], []

    def task_steps(self, ts: float) -> Any:
        """A generator of one task's events; yields after each so tasks interleave."""
        rng = self.rng
        identity = rng.choice(IDENTITIES)
        intent = rng.choice(INTENTS)
        job = rng.randint(1, 100_000)
        task_id = uuid.uuid4().hex
        base = {"task_id": task_id, "identity": identity, "intent": intent}
        started = ts
        self.emit(
            {
                **base,
                "ts": ts,
                "kind": "task_start",
                "reason": f"Process job {job}",
                "rule": f"intents.{intent}",
                "args": json.dumps({"job_id": str(job)}),
            }
        )
        ts = yield
        for _ in range(rng.randint(1, 12)):
            tool, operation, template = rng.choice(TOOLS)
            item = f"item{rng.randint(0, 999)}"
            resource = template.format(job=job, item=item)
            args_json, args_sha = self.redactor(_args(rng, tool, job, item))
            cid = uuid.uuid4().hex
            call = {
                **base,
                "tool": tool,
                "operation": operation,
                "resources": json.dumps([resource], separators=(",", ":")),
                "correlation_id": cid,
                "args": args_json,
                "args_sha256": args_sha,
            }
            if rng.random() < 0.04:
                self.emit(
                    {
                        **call,
                        "ts": ts,
                        "kind": "denied",
                        "decision": "deny",
                        "reason": f"'{resource}' is outside the intent's {operation} patterns",
                        "rule": f"intents.{intent}.allow.{operation}",
                    }
                )
                ts = yield
                continue
            jti = new_jti()
            self.emit({**call, "ts": ts, "kind": "request", "decision": "allow",
                       "rule": "allow", "jti": jti})  # fmt: skip
            self.credentials.append((jti, task_id, identity, tool, operation, ts, ts + 300, 1))
            ts = yield
            failed = rng.random() < 0.03
            self.emit(
                {
                    **base,
                    "ts": ts,
                    "kind": "outcome",
                    "tool": tool,
                    "operation": operation,
                    "resources": call["resources"],
                    "jti": jti,
                    "correlation_id": cid,
                    "outcome": "error" if failed else "ok",
                    "error": "TimeoutError: upstream did not answer in 10s" if failed else None,
                    "duration_ms": round(rng.lognormvariate(3.0, 1.0), 3),
                    "cost": 0.01 if tool == "send_email" else None,
                }
            )
            ts = yield
        status = "ok" if rng.random() < 0.95 else "error"
        self.emit(
            {
                **base,
                "ts": ts,
                "kind": "task_end",
                "outcome": status,
                "reason": f"task ended ({status})",
                "rule": "task.end",
                "duration_ms": round((ts - started) * 1000.0, 3),
            }
        )
        self.tasks.append(
            (task_id, None, intent, identity, json.dumps({"job_id": str(job)}),
             f"Process job {job}", status, started, ts, started + 900, 0)
        )  # fmt: skip
        self.revocations.append(("task", task_id, f"task ended ({status})", ts, "task-end"))
        record = sign_checkpoint(self.keys, self.seq, self.prev, ts)
        self.checkpoints.append(json.dumps(record, sort_keys=True, separators=(", ", ": ")))
        self.task_count += 1

    def run(self, total: int) -> None:
        """Interleave ``CONCURRENT`` tasks at a time until ``total`` events are written."""
        rng = self.rng
        step = DAYS * 86400 / total  # seconds between events: the last one lands at "now"
        base = ts = self.now - DAYS * 86400
        active: list[Any] = []
        while self.seq < total or active:
            while self.seq < total and len(active) < CONCURRENT:
                ts = max(ts, base + (self.seq + rng.random()) * step)
                steps = self.task_steps(min(ts, self.now))
                next(steps)
                active.append(steps)
            i = rng.randrange(len(active))
            ts = max(ts, base + (self.seq + rng.random()) * step)
            try:
                active[i].send(min(ts, self.now))
            except StopIteration:
                active.pop(i)
        self.flush()


def generate(out: Path, events: int, seed: int) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    ignore = out.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated benchmark data: never commit\n*\n")
    for suffix in ("", "-wal", "-shm", ".checkpoints"):
        Path(str(out) + suffix).unlink(missing_ok=True)
    key_file = out.parent / "signing-key.pem"
    keys = KeyRing.load(key_file)
    Store(out).open().close()  # the real schema
    started = time.perf_counter()
    conn = sqlite3.connect(out, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    gen = Generator(conn, keys, seed, time.time())
    gen.run(events)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    Path(str(out) + ".checkpoints").write_text("\n".join(gen.checkpoints) + "\n")
    seconds = time.perf_counter() - started
    config = {
        "store": str(out),
        "issuer": {"key_file": str(key_file)},
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
    (out.parent / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {
        "events": gen.seq,
        "tasks": gen.task_count,
        "checkpoints": len(gen.checkpoints),
        "seconds": round(seconds, 1),
        "db_bytes": out.stat().st_size,
        "db": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1)
    ns = parser.parse_args()
    info = generate(ns.out, ns.events, ns.seed)
    print(
        f"wrote {info['events']:,} events, {info['tasks']:,} tasks, {info['checkpoints']:,} "
        f"checkpoints to {info['db']} ({info['db_bytes'] / 1e6:.0f} MB) in {info['seconds']}s"
    )


if __name__ == "__main__":
    main()
