"""Integrity of the trail: signed checkpoints of the chain head, and verification.

Checkpoints are JSON lines appended to a file outside the database (default
``<db>.checkpoints``; ship it elsewhere for stronger guarantees)::

    {"alg": "EdDSA", "hash": "<hex>", "kid": "<kid>", "seq": 41, "sig": "<base64url>",
     "ts": 1763777898.1, "type": "checkpoint", "v": 1}

``sig`` is the issuer key's signature over the canonical JSON (sorted keys, no spaces, ASCII) of
every other member of the record. A prune is authorized by a record of ``"type": "prune"`` with
``before_seq`` and ``head_hash`` (the hash of the last pruned event) instead of ``seq``/``hash``.

:meth:`Integrity.verify` reads the checkpoint file, then, inside one read snapshot of the
database, recomputes every hash from the first kept event and checks every link. It reports
each break with the first bad ``seq`` and its kind:

``modified``
    an event's columns no longer match its hash, or an event was changed and re-hashed so
    that the next event no longer follows it;
``deleted``
    events are missing from the middle (a gap the next event's ``prev_hash`` does not bridge),
    or events were pruned without a signed prune record;
``reordered``
    an authentic event sits at another ``seq`` than the one it was hashed with;
``truncated``
    a signed checkpoint is past the last event: the tail was removed;
``rewritten``
    the chain is internally consistent (every hash recomputed) but differs from a signed
    checkpoint;
``bad-signature``
    a checkpoint record is unreadable or its signature is not valid for the issuer's keys.

Events after the newest matching signed checkpoint are *not anchored*: an attacker with write
access could cut or rewrite them undetected, and the report says how many there are.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chain import DAMAGE_KINDS, GENESIS, HASHED_FIELDS, ChainScan, Damage
from .errors import AuditError
from .keys import KeyRing, PublicKeySource, b64url_decode, b64url_encode, verify_signature
from .store import Store

__all__ = [
    "DAMAGE_KINDS",
    "CHECKPOINT_VERSION",
    "Damage",
    "Integrity",
    "VerifyReport",
    "checkpoint_payload",
    "sign_checkpoint",
    "sign_prune",
]

CHECKPOINT_VERSION = 1
"""The ``v`` member of the checkpoint records this module writes and reads."""

_SELECT_EVENTS = f"SELECT {', '.join(HASHED_FIELDS)}, prev_hash, hash FROM events"


@dataclass(slots=True)
class VerifyReport:
    """The result of :meth:`Integrity.verify`; ``ok`` is false on any damage."""

    checked: int = 0
    """How many events were recomputed."""
    first_seq: int = 0
    """The ``seq`` the verified range starts at (1, or the first kept after a prune)."""
    head_seq: int = 0
    """The last event's ``seq`` (0 on an empty trail)."""
    checkpoints: int = 0
    """Checkpoint records read from the checkpoint file."""
    signatures_verified: int = 0
    """Checkpoint signatures checked (the anchor and every checkpoint that disagrees)."""
    anchored_seq: int = 0
    """The newest signed checkpoint that matches the chain: events up to it are anchored."""
    unanchored: int = 0
    """Events after ``anchored_seq``: truncating or rewriting them would not be detected."""
    signatures_checked: bool = True
    """False when no public keys were given: checkpoints were compared but not authenticated."""
    seconds: float = 0.0
    """Wall time of the verification."""
    checkpoint_file: str = ""
    damage: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No damage found (unanchored events are reported in ``notes``, not as damage)."""
        return not self.damage

    @property
    def first(self) -> Damage | None:
        """The damage with the lowest ``seq`` (the first bad event), if any."""
        return self.damage[0] if self.damage else None

    @property
    def exit_code(self) -> int:
        """The exit status of ``toolguard audit verify``: 0 clean, 1 damaged."""
        return 0 if self.ok else 1

    @property
    def events_per_second(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for a terminal: what was checked and the verdict."""
        span = f" (seq {self.first_seq}..{self.head_seq})" if self.checked else ""
        anchor = (
            f"anchored up to seq {self.anchored_seq}, {self.unanchored} not anchored"
            if self.anchored_seq
            else f"no matching signed checkpoint, {self.unanchored} not anchored"
        )
        if self.ok:
            verdict = "OK"
        else:
            first = self.damage[0]
            where = f"seq {first.seq}" if first.seq else "the checkpoint file"
            verdict = f"DAMAGED: {first.kind} at {where}"
            if len(self.damage) > 1:
                verdict += f" (+{len(self.damage) - 1} more)"
        return f"checked {self.checked} events{span} in {self.seconds:.2f}s; {anchor}; {verdict}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``toolguard audit verify --json``)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "head_seq": self.head_seq,
            "checkpoints": self.checkpoints,
            "signatures_verified": self.signatures_verified,
            "anchored_seq": self.anchored_seq,
            "unanchored": self.unanchored,
            "signatures_checked": self.signatures_checked,
            "seconds": round(self.seconds, 4),
            "checkpoint_file": self.checkpoint_file,
            "damage": [d.to_dict() for d in self.damage],
            "notes": list(self.notes),
        }


# -- checkpoint records ----------------------------------------------------------------------


def checkpoint_payload(record: Mapping[str, Any]) -> bytes:
    """The bytes a checkpoint's ``sig`` covers: canonical JSON of every member but ``sig``."""
    body = {k: v for k, v in record.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _signed(keys: KeyRing, body: dict[str, Any]) -> dict[str, Any]:
    active = keys.active
    body = {"v": CHECKPOINT_VERSION, **body, "kid": active.kid, "alg": active.algorithm}
    body["sig"] = b64url_encode(active.sign(checkpoint_payload(body)))
    return body


def sign_checkpoint(keys: KeyRing, seq: int, digest: str, ts: float) -> dict[str, Any]:
    """A signed checkpoint record of the chain head ``(seq, digest)``."""
    return _signed(keys, {"type": "checkpoint", "seq": seq, "hash": digest, "ts": ts})


def sign_prune(keys: KeyRing, before_seq: int, head_hash: str, ts: float) -> dict[str, Any]:
    """A signed record authorizing the removal of events before ``before_seq``, whose last
    removed event has hash ``head_hash``."""
    return _signed(
        keys, {"type": "prune", "before_seq": before_seq, "head_hash": head_hash, "ts": ts}
    )


@dataclass(slots=True)
class _Record:
    """A parsed checkpoint line."""

    line: int
    type: str
    seq: int
    digest: str
    raw: dict[str, Any]
    valid: bool | None = None
    """Signature: True valid, False invalid, None not checked yet or unknown key."""
    unknown_key: bool = False


class Integrity:
    """Checkpoints and verification of one store's trail.

    ``keys``: the issuer's :class:`KeyRing` (needed to write checkpoints) or any
    :class:`PublicKeySource` (enough to verify, e.g. ``PublicKeys.from_jwks(...)``).
    """

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
        self._last: dict[str, Any] | None = None

    # -- writing ------------------------------------------------------------------------------

    def checkpoint(self, *, now: float | None = None) -> dict[str, Any] | None:
        """Append a signed checkpoint of the current chain head; None on an empty trail.

        Queued outcomes are committed first. When the head has not moved since this object's
        last checkpoint, that record is returned and nothing is written.
        """
        keys = self._signing_keys("writing checkpoints")
        self.store.flush()
        row = self.store.query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        if not row:
            return None
        seq, digest = int(row[0]["seq"]), str(row[0]["hash"])
        last = self._last
        if last is not None and last["seq"] == seq and last["hash"] == digest:
            return dict(last)
        ts = now if now is not None else self.store.clock()
        record = sign_checkpoint(keys, seq, digest, ts)
        self._append_line(record)
        self._last = record
        return dict(record)

    def anchor_prune(
        self, before_seq: int, head_hash: str, *, now: float | None = None
    ) -> dict[str, Any]:
        """Append a signed prune record *before* events below ``before_seq`` are deleted.

        ``verify`` accepts a prune recorded in the database only when a signed record with the
        same ``before_seq`` and ``head_hash`` exists; otherwise the removal is reported as
        ``deleted``.
        """
        keys = self._signing_keys("authorizing a prune")
        ts = now if now is not None else self.store.clock()
        record = sign_prune(keys, int(before_seq), str(head_hash), ts)
        self._append_line(record)
        return dict(record)

    def _signing_keys(self, what: str) -> KeyRing:
        if not isinstance(self.keys, KeyRing):
            raise AuditError(
                f"{what} needs the issuer's signing key; build the Integrity (or the Guard) "
                "with the issuer's KeyRing"
            )
        return self.keys

    def _append_line(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, separators=(", ", ": ")) + "\n").encode()
        path = self.checkpoints_path
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # a torn line from a crash: start a fresh one
                    os.write(fd, line)
                    if self.store.durability == "full":
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise AuditError(
                    f"cannot write the checkpoint file {path}: {exc.strerror}; check that its "
                    "directory exists and is writable"
                ) from exc

    # -- reading ------------------------------------------------------------------------------

    def read_checkpoints(self) -> list[dict[str, Any]]:
        """The checkpoint records as dicts (unreadable lines are skipped; verify reports them)."""
        records, _bad, _torn = self._read_records()
        return [r.raw for r in records]

    def _read_records(self) -> tuple[list[_Record], list[int], list[int]]:
        """Parsed records, and the numbers of unreadable and of incomplete (torn) lines.

        A line that does not end with ``}`` is the prefix of a record cut by a crash; any other
        unreadable line was edited.
        """
        try:
            data = self.checkpoints_path.read_bytes()
        except FileNotFoundError:
            return [], [], []
        except OSError as exc:
            raise AuditError(
                f"cannot read the checkpoint file {self.checkpoints_path}: {exc.strerror}"
            ) from exc
        records: list[_Record] = []
        bad: list[int] = []
        torn: list[int] = []
        text = data.decode("utf-8", "replace")
        for number, raw_line in enumerate(text.split("\n"), 1):
            line = raw_line.strip()
            if not line:
                continue
            record = _parse_record(number, line)
            if record is not None:
                records.append(record)
            elif line.endswith("}"):
                bad.append(number)
            else:  # a prefix of a record: a crash in the middle of a write, not an edit
                torn.append(number)
        return records, bad, torn

    # -- verify -------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute the chain and check it against the signed checkpoints."""
        started = time.perf_counter()
        report = VerifyReport(checkpoint_file=str(self.checkpoints_path))
        # The checkpoint file is read before the database snapshot: every checkpoint in it was
        # written after its head was committed, so none can be ahead of the snapshot.
        records, bad_lines, torn = self._read_records()
        report.checkpoints = len(records)
        keys = self.keys.public_keys() if self.keys is not None else None
        if keys is None:
            report.signatures_checked = False
            report.notes.append(
                "no public keys were given: checkpoint signatures were not checked; pass the "
                "issuer's keys (config or --jwks) to authenticate them"
            )
        checker = _SignatureChecker(keys, report)
        wanted = {r.seq for r in records if r.type == "checkpoint"}
        with self._snapshot() as conn:
            prune = conn.execute(
                "SELECT before_seq, head_hash FROM prunes ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if prune is not None:
                start_seq, start_hash = int(prune[0]), str(prune[1])
            else:
                start_seq, start_hash = 1, GENESIS
            report.first_seq = start_seq
            scan = ChainScan(start_seq, start_hash, wanted)
            scan.run(conn.execute(f"{_SELECT_EVENTS} ORDER BY seq"))
            report.checked = scan.checked
            report.head_seq = scan.head_seq if scan.checked else start_seq - 1
            report.damage.extend(scan.damage)
            if scan.more_damage:
                report.notes.append(
                    f"{scan.more_damage} further breaks of the chain were not listed"
                )
            if prune is not None:
                self._check_prune(report, records, checker, start_seq, start_hash)
            self._check_checkpoints(report, records, checker, scan.hashes, start_seq, start_hash)
            if report.checked:
                report.unanchored = conn.execute(
                    "SELECT COUNT(*) FROM events WHERE seq > ?", (report.anchored_seq,)
                ).fetchone()[0]
            self._anchor_notes(report, conn)
        for number in bad_lines:
            report.damage.append(
                Damage(
                    0,
                    "bad-signature",
                    f"line {number} of the checkpoint file is not a readable checkpoint record",
                )
            )
        if torn:
            report.notes.append(
                f"line {', '.join(map(str, torn))} of the checkpoint file is incomplete (a crash "
                "while writing it?) and was ignored"
            )
        report.damage.sort(key=lambda d: (d.seq == 0, d.seq))
        report.seconds = time.perf_counter() - started
        return report

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction, so the scan and its side queries see the same trail."""
        conn = self.store.conn
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.store.path}: {exc}") from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.store.path}: {exc}") from exc
        finally:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - nothing to undo in a read transaction
                pass

    def _check_prune(
        self,
        report: VerifyReport,
        records: list[_Record],
        checker: _SignatureChecker,
        start_seq: int,
        start_hash: str,
    ) -> None:
        report.notes.append(f"events before seq {start_seq} were pruned; verified from there")
        candidates = [
            r
            for r in records
            if r.type == "prune" and r.seq == start_seq and r.digest == start_hash
        ]
        if any(checker.check(r) is not False for r in candidates):
            return
        report.damage.append(
            Damage(
                1,
                "deleted",
                f"events before seq {start_seq} are gone and no signed prune record in the "
                "checkpoint file authorizes their removal",
                last_seq=start_seq - 1,
            )
        )

    def _check_checkpoints(
        self,
        report: VerifyReport,
        records: list[_Record],
        checker: _SignatureChecker,
        hashes: dict[int, str],
        start_seq: int,
        start_hash: str,
    ) -> None:
        head = report.head_seq
        matching: list[_Record] = []
        disagree: list[_Record] = []
        past_head: list[_Record] = []
        seen: set[tuple[int, str, str]] = set()
        for record in records:
            if record.type != "checkpoint":
                continue
            key = (record.seq, record.digest, str(record.raw.get("sig")))
            if key in seen:
                continue
            seen.add(key)
            if record.seq < start_seq:
                if record.seq == start_seq - 1 and record.digest != start_hash:
                    disagree.append(record)  # the pruned head differs from what was signed
                continue
            if record.seq > head:
                past_head.append(record)
            elif record.seq in hashes:
                (matching if hashes[record.seq] == record.digest else disagree).append(record)
            # else: the event is missing; the chain scan reports the gap
        # The anchor: the newest matching checkpoint with a valid signature. Matching ones
        # below it add nothing (the chain links them), so their signatures are not checked.
        matching.sort(key=lambda r: r.seq, reverse=True)
        for record in matching:
            if checker.check(record) is not False and not record.unknown_key:
                report.anchored_seq = record.seq
                break
        lower_matching = sorted(r.seq for r in matching)
        genuine_disagree = [r for r in disagree if _authentic(checker, r)]
        if genuine_disagree:
            first = min(genuine_disagree, key=lambda r: r.seq)
            good_below = [s for s in lower_matching if s < first.seq]
            begin = good_below[-1] + 1 if good_below else min(first.seq, start_seq)
            others = len(genuine_disagree) - 1
            after = f" (the last matching checkpoint is at seq {begin - 1})" if good_below else ""
            report.damage.append(
                Damage(
                    begin,
                    "rewritten",
                    f"the chain differs from the signed checkpoint at seq {first.seq}: events in "
                    f"{begin}..{first.seq} were changed and every later hash recomputed"
                    + after
                    + (f"; {others} later checkpoints disagree too" if others else ""),
                    last_seq=first.seq,
                )
            )
        genuine_past = [r for r in past_head if _authentic(checker, r)]
        if genuine_past:
            top = max(r.seq for r in genuine_past)
            report.damage.append(
                Damage(
                    head + 1,
                    "truncated",
                    f"a signed checkpoint is at seq {top} but the last event is {head}: events "
                    f"{head + 1}..{top} (at least) were removed from the tail",
                    last_seq=top,
                )
            )
        unknown = sorted({str(r.raw.get("kid")) for r in records if r.unknown_key})
        if unknown:
            report.notes.append(
                f"checkpoints signed by keys not among the given ones were ignored (kid "
                f"{', '.join(unknown)}); pass the retired public keys (--jwks) to use them"
            )

    def _anchor_notes(self, report: VerifyReport, conn: sqlite3.Connection) -> None:
        if not report.checked:
            return
        if not self.checkpoints_path.exists():
            report.notes.append(
                f"the checkpoint file {self.checkpoints_path} does not exist: the trail is not "
                f"anchored ({report.unanchored} events); a removed tail or a rewritten chain "
                "cannot be detected"
            )
        elif report.unanchored:
            contradicted = any(d.kind in ("rewritten", "truncated") for d in report.damage)
            ends = (
                0
                if contradicted
                else conn.execute(
                    "SELECT COUNT(*) FROM events WHERE kind = 'task_end' AND seq > ?",
                    (report.anchored_seq,),
                ).fetchone()[0]
            )
            message = (
                f"{report.unanchored} events after seq {report.anchored_seq} are not anchored "
                "by a signed checkpoint"
            )
            if ends:
                message += (
                    f"; {ends} tasks ended after it, and each task end normally writes one: the "
                    "checkpoint file may have been cut, or a process died before writing it"
                )
            report.notes.append(message)


class _SignatureChecker:
    """Checks (and caches) checkpoint signatures against a ``kid -> (alg, key)`` map."""

    def __init__(self, keys: Mapping[str, tuple[str, Any]] | None, report: VerifyReport) -> None:
        self.keys = keys
        self.report = report
        self.reported: set[int] = set()

    def check(self, record: _Record) -> bool | None:
        """True valid, False invalid (reported as damage), None when it cannot be checked."""
        if record.valid is not None:
            return record.valid
        if self.keys is None:
            return None
        entry = self.keys.get(str(record.raw.get("kid")))
        if entry is None:
            record.unknown_key = True
            return None
        self.report.signatures_verified += 1
        try:
            good = record.raw.get("alg") == entry[0] and verify_signature(
                entry[0],
                entry[1],
                b64url_decode(str(record.raw.get("sig"))),
                checkpoint_payload(record.raw),
            )
        except Exception:  # a garbled signature is a bad signature
            good = False
        record.valid = good
        if not good and record.line not in self.reported:
            self.reported.add(record.line)
            what = "prune record" if record.type == "prune" else "checkpoint"
            self.report.damage.append(
                Damage(
                    record.seq,
                    "bad-signature",
                    f"the {what} at seq {record.seq} (line {record.line} of the checkpoint "
                    "file) has no valid signature from the issuer's keys: it was forged or "
                    "altered",
                )
            )
        return good


def _authentic(checker: _SignatureChecker, record: _Record) -> bool:
    """Whether a checkpoint that disagrees with the database may be trusted as evidence."""
    result = checker.check(record)
    return result is True or (result is None and checker.keys is None)


_decode = json.JSONDecoder().raw_decode


def _parse_record(number: int, line: str) -> _Record | None:
    try:
        raw, end = _decode(line)
    except ValueError:
        return None
    if end != len(line) or type(raw) is not dict or raw.get("v") != CHECKPOINT_VERSION:
        return None
    kind = raw.get("type", "checkpoint")
    seq_key, hash_key = ("before_seq", "head_hash") if kind == "prune" else ("seq", "hash")
    seq, digest = raw.get(seq_key), raw.get(hash_key)
    if (
        kind not in ("checkpoint", "prune")
        or type(seq) is not int
        or not isinstance(digest, str)
        or not isinstance(raw.get("sig"), str)
    ):
        return None
    return _Record(number, kind, seq, digest, raw)
