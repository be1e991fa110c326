"""Integrity of the trail: signed checkpoints of the chain head, and verification.

Checkpoints are JSON lines appended to a file outside the database (default
``<db>.checkpoints``)::

    {"seq": 41, "hash": "<hex>", "ts": 1763777898.1, "kid": "<kid>", "alg": "EdDSA",
     "sig": "<base64url signature over canonical JSON of {hash, seq, ts}>"}

``verify`` recomputes every hash from the first kept event (or the last prune's recorded head),
then checks each checkpoint against the database: a checkpoint past the last event means the
tail was truncated; a checkpoint whose hash differs from the event at its ``seq`` means the
chain was rewritten. Events after the last checkpoint are reported as not yet anchored.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chain import GENESIS, HASHED_FIELDS, event_hash
from .errors import AuditError
from .keys import KeyRing, PublicKeySource, b64url_decode, b64url_encode, verify_signature
from .store import Store

__all__ = ["Damage", "Integrity", "VerifyReport", "sign_checkpoint"]


@dataclass(frozen=True, slots=True)
class Damage:
    """One finding of ``verify``: the first bad ``seq`` and what happened there."""

    seq: int
    kind: str
    """``modified``, ``deleted``, ``reordered``, ``truncated``, ``rewritten``, ``bad-signature``."""
    detail: str


@dataclass(slots=True)
class VerifyReport:
    """The result of :meth:`AuditLog.verify`."""

    checked: int = 0
    head_seq: int = 0
    checkpoints: int = 0
    anchored_seq: int = 0
    unanchored: int = 0
    signatures_checked: bool = True
    damage: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "checkpoints": self.checkpoints,
            "anchored_seq": self.anchored_seq,
            "unanchored": self.unanchored,
            "signatures_checked": self.signatures_checked,
            "damage": [{"seq": d.seq, "kind": d.kind, "detail": d.detail} for d in self.damage],
            "notes": list(self.notes),
        }


def _checkpoint_payload(seq: int, digest: str, ts: float) -> bytes:
    return json.dumps(
        {"hash": digest, "seq": seq, "ts": ts}, sort_keys=True, separators=(",", ":")
    ).encode()


def sign_checkpoint(keys: KeyRing, seq: int, digest: str, ts: float) -> dict[str, Any]:
    """A signed checkpoint record of the chain head ``(seq, digest)``."""
    active = keys.active
    return {
        "seq": seq,
        "hash": digest,
        "ts": ts,
        "kid": active.kid,
        "alg": active.algorithm,
        "sig": b64url_encode(active.sign(_checkpoint_payload(seq, digest, ts))),
    }


class Integrity:
    """Checkpoints and verification of one store's trail."""

    def __init__(
        self,
        store: Store,
        *,
        keys: KeyRing | PublicKeySource | None = None,
        checkpoints: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.checkpoints_path = (
            Path(checkpoints) if checkpoints is not None else Path(str(store.path) + ".checkpoints")
        )
        self._lock = threading.Lock()

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, *, now: float | None = None) -> dict[str, Any] | None:
        """Append a signed checkpoint of the current chain head; None on an empty trail."""
        if not isinstance(self.keys, KeyRing):
            raise AuditError("writing checkpoints needs the issuer's signing key")
        self.store.flush()
        row = self.store.query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        if not row:
            return None
        ts = now if now is not None else self.store.clock()
        record = sign_checkpoint(self.keys, int(row[0]["seq"]), str(row[0]["hash"]), ts)
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            try:
                self.checkpoints_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.checkpoints_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                    if self.store.durability == "full":
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise AuditError(
                    f"cannot write the checkpoint file {self.checkpoints_path}: {exc.strerror}"
                ) from exc
        return record

    def read_checkpoints(self) -> list[dict[str, Any]]:
        """The checkpoint records (an unreadable line is reported by verify)."""
        if not self.checkpoints_path.exists():
            return []
        out = []
        for i, line in enumerate(self.checkpoints_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                record = {"_bad_line": i}
            out.append(record)
        return out

    # -- verify -------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute the chain and check it against the signed checkpoints."""
        report = VerifyReport()
        prune = self.store.query(
            "SELECT before_seq, head_hash FROM prunes ORDER BY id DESC LIMIT 1"
        )
        expected_seq, prev = (
            (int(prune[0]["before_seq"]), str(prune[0]["head_hash"])) if prune else (1, GENESIS)
        )
        if prune:
            report.notes.append(
                f"events before seq {expected_seq} were pruned; verified from there"
            )
        hashes: dict[int, str] = {}
        checkpoints = self.read_checkpoints()
        wanted = {int(c["seq"]) for c in checkpoints if isinstance(c.get("seq"), int)}
        columns = (*HASHED_FIELDS, "prev_hash", "hash")
        sql = f"SELECT {', '.join(columns)} FROM events ORDER BY seq"
        first_bad: Damage | None = None
        for values in self.store.iter_query(sql):
            row = dict(zip(columns, values))
            seq = int(row["seq"])
            report.checked += 1
            if first_bad is None:
                if event_hash(row["prev_hash"], row) != row["hash"]:
                    first_bad = Damage(seq, "modified", f"event {seq} does not match its hash")
                elif seq < expected_seq:
                    first_bad = Damage(seq, "reordered", f"event {seq} appears out of order")
                elif row["prev_hash"] != prev:
                    kind = "deleted" if seq > expected_seq else "reordered"
                    first_bad = Damage(
                        seq,
                        kind,
                        f"event {seq} does not follow the event before it"
                        + (
                            f" (events {expected_seq}..{seq - 1} are missing)"
                            if seq > expected_seq
                            else ""
                        ),
                    )
            prev = row["hash"]
            expected_seq = seq + 1
            report.head_seq = seq
            if seq in wanted:
                hashes[seq] = row["hash"]
        if first_bad is not None:
            report.damage.append(first_bad)
        self._check_checkpoints(report, checkpoints, hashes)
        report.unanchored = max(0, report.head_seq - report.anchored_seq)
        return report

    def _check_checkpoints(
        self, report: VerifyReport, checkpoints: list[dict[str, Any]], hashes: dict[int, str]
    ) -> None:
        keys = self.keys.public_keys() if self.keys is not None else None
        if keys is None:
            report.signatures_checked = False
            report.notes.append("no public keys given: checkpoint signatures were not checked")
        for record in checkpoints:
            report.checkpoints += 1
            if "_bad_line" in record:
                report.damage.append(
                    Damage(0, "rewritten", f"checkpoint line {record['_bad_line']} is unreadable")
                )
                continue
            try:
                seq, digest, ts = int(record["seq"]), str(record["hash"]), float(record["ts"])
            except (KeyError, TypeError, ValueError):
                report.damage.append(Damage(0, "rewritten", "a checkpoint record is malformed"))
                continue
            if keys is not None:
                entry = keys.get(str(record.get("kid")))
                try:
                    good = entry is not None and verify_signature(
                        entry[0],
                        entry[1],
                        b64url_decode(str(record.get("sig"))),
                        _checkpoint_payload(seq, digest, ts),
                    )
                except Exception:  # a garbled signature is a bad signature
                    good = False
                if not good:
                    report.damage.append(
                        Damage(
                            seq,
                            "bad-signature",
                            f"checkpoint at seq {seq} has no valid signature"
                            " from the issuer's keys",
                        )
                    )
                    continue
            if seq > report.head_seq:
                report.damage.append(
                    Damage(
                        report.head_seq + 1,
                        "truncated",
                        f"checkpoint at seq {seq} is past the last event ({report.head_seq}):"
                        " the tail of the trail was removed",
                    )
                )
            elif seq in hashes and hashes[seq] != digest:
                report.damage.append(
                    Damage(
                        seq,
                        "rewritten",
                        f"event {seq} differs from the signed checkpoint: the chain was rewritten",
                    )
                )
            elif seq not in hashes:
                if seq >= (report.head_seq - report.checked + 1):
                    report.damage.append(
                        Damage(seq, "deleted", f"the event of checkpoint {seq} is missing")
                    )
                continue
            else:
                report.anchored_seq = max(report.anchored_seq, seq)
