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

Continuity: a guard refuses to start (:func:`guard_keys`, :meth:`Integrity.check_continuity`)
when its trail is behind the newest signed checkpoint (a lost WAL tail, a removed tail, a
replaced database) or that checkpoint is not signed by one of its keys (a lost or replaced
signing key), until an operator acknowledges it (``toolguard audit acknowledge``,
:meth:`Integrity.acknowledge`): that appends an ``acknowledge`` event and a signed ``gap``
record (``"type": "gap"``, the new head's ``seq``/``hash``, ``trail_end``, what was
acknowledged, by whom and why), and ``verify`` then reports the older checkpoints it covers as
an acknowledged gap (a note), not as damage.

Events after the newest matching signed checkpoint are *not anchored*: an attacker with write
access could cut or rewrite them undetected, and the report says how many there are.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chain import DAMAGE_KINDS, GENESIS, ChainScan, Damage, Event
from .errors import AuditError
from .formatting import plural
from .keys import KeyRing, PublicKeySource, b64url_decode, b64url_encode, verify_signature
from .store import StoreProtocol, TrailReads

if TYPE_CHECKING:
    from .config import GuardConfig

__all__ = [
    "DAMAGE_KINDS",
    "CHECKPOINT_VERSION",
    "GAP_KINDS",
    "ContinuityProblem",
    "Damage",
    "Integrity",
    "VerifyReport",
    "checkpoint_payload",
    "existing_trail",
    "guard_keys",
    "sign_checkpoint",
    "sign_gap",
    "sign_prune",
]

GAP_KINDS: tuple[str, ...] = ("truncated", "key-change")
"""What ``toolguard audit acknowledge`` can acknowledge: a trail behind its newest signed
checkpoint (``--truncated``), and checkpoints signed by a key the guard does not hold
(``--key-change``)."""

_MAX_ACK_TEXT = 500
_TAIL_CHUNK = 16 * 1024

CHECKPOINT_VERSION = 1
"""The ``v`` member of the checkpoint records this module writes and reads."""

_LISTED_LINES = 10
"""Unreadable or incomplete checkpoint lines listed one by one; the rest are counted."""


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
        checked = plural(self.checked, "event")
        return f"checked {checked}{span} in {self.seconds:.2f}s; {anchor}; {verdict}"

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


def sign_gap(
    keys: KeyRing,
    seq: int,
    digest: str,
    ts: float,
    *,
    acknowledged: list[str],
    trail_end: int,
    by: str,
    reason: str,
    covers: Mapping[str, Any],
) -> dict[str, Any]:
    """A signed ``gap`` record: an operator acknowledged ``acknowledged`` (see
    :data:`GAP_KINDS`) when the trail ended at ``trail_end``; ``(seq, digest)`` is the head
    after the ``acknowledge`` event; ``covers`` the newest checkpoint it was behind."""
    return _signed(
        keys,
        {
            "type": "gap",
            "seq": seq,
            "hash": digest,
            "ts": ts,
            "acknowledged": list(acknowledged),
            "trail_end": trail_end,
            "by": by,
            "reason": reason,
            "covers": dict(covers),
        },
    )


@dataclass(frozen=True, slots=True)
class ContinuityProblem:
    """Why a guard must not continue a trail (see :meth:`Integrity.continuity_problems`)."""

    kind: str
    """One of :data:`GAP_KINDS`."""
    message: str
    seq: int
    """The ``seq`` of the newest signed checkpoint."""
    digest: str
    kid: str
    trail_end: int
    """The trail's last ``seq``."""


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
        store: StoreProtocol,
        *,
        keys: KeyRing | PublicKeySource | None = None,
        checkpoints: str | os.PathLike[str] | None = None,
        also_checkpoints: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        """``checkpoints`` is the file this process writes (and reads); ``also_checkpoints``
        are more files :meth:`verify` reads: those of the other hosts writing to the same
        PostgreSQL store (every guard writes its checkpoints to its own file)."""
        self.store = store
        self.keys = keys
        self.checkpoints_path = (
            Path(checkpoints) if checkpoints is not None else store.default_checkpoints()
        )
        self.also_checkpoints = [Path(p) for p in also_checkpoints]
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
        head = self.store.head()
        if head is None:
            return None
        seq, digest = head
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
                    written = os.write(fd, line)
                    if written != len(line):
                        # One write() per line keeps concurrent appenders' lines whole; a short
                        # write (a full disk) leaves a torn prefix that verify ignores and the
                        # next line starts after. Writing the rest later could interleave with
                        # another process's line, so the checkpoint counts as not written.
                        raise AuditError(
                            f"cannot write the checkpoint file {path}: only {written} of "
                            f"{len(line)} bytes were written (is the disk full?); free space "
                            "and write a checkpoint again (`guard.audit.checkpoint()`)"
                        )
                    if self.store.durability == "full":
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise AuditError(
                    f"cannot write the checkpoint file {path}: {exc.strerror}; check that its "
                    "directory exists and is writable, and that the disk is not full"
                ) from exc

    # -- continuity ---------------------------------------------------------------------------

    def _verification_keys(self) -> Mapping[str, tuple[str, Any]] | None:
        if self.keys is None:
            return None
        if isinstance(self.keys, KeyRing):
            return self.keys.history_keys()
        return self.keys.public_keys()

    def _tail_records(self) -> tuple[_Record | None, _Record | None]:
        """The newest readable record of the checkpoint file, and its newest checkpoint or gap
        record, read from the end (start-up reads a few KiB, not the whole file)."""
        path = self.checkpoints_path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise AuditError(f"cannot read the checkpoint file {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            chunk = _TAIL_CHUNK
            while True:
                start = max(0, size - chunk)
                lines = os.pread(fd, size - start, start).split(b"\n")
                if start:
                    lines = lines[1:]  # the first line of the window may be cut
                newest: _Record | None = None
                for raw in reversed(lines):
                    line = raw.strip()
                    if not line:
                        continue
                    record = _parse_record(0, line.decode("utf-8", "replace"))
                    if record is None:
                        continue  # a torn or garbled line: verify reports it
                    if newest is None:
                        newest = record
                    if record.type in ("checkpoint", "gap"):
                        return newest, record
                if not start:
                    return newest, None
                chunk *= 4
        except OSError as exc:
            raise AuditError(f"cannot read the checkpoint file {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def _stored(self, seq: int) -> tuple[str | None, int, int]:
        """The stored hash at ``seq`` (None if there is none), the first kept ``seq`` and the
        head ``seq`` (a prune's cut counts: its ``head_hash`` is the hash of ``before_seq - 1``)."""
        path = self.store.path
        if str(path) != ":memory:" and not path.exists():
            return None, 0, 0
        with self.store.read_trail(snapshot=False) as trail:
            row, first, last = trail.stored_at(seq)
            cut = trail.last_prune()
        found = row[0] if row is not None and isinstance(row[0], str) else None
        if row is not None and found is None:
            found = repr(row[0])  # a foreign value: it differs
        first, last = int(first or 0), int(last or 0)
        if cut is not None and cut[0] is not None:
            first = cut[0] if not first else min(first, cut[0])
            last = max(last, cut[0] - 1)
            if row is None and seq == cut[0] - 1:
                found = cut[1]
        return found, first, last

    def continuity_problems(self) -> list[ContinuityProblem]:
        """Why the trail cannot be continued as it is: empty when it can.

        Reads only the end of the checkpoint file and one indexed row: the newest signed
        checkpoint must be signed by one of our keys (active, retired or archived) and the
        database must still hold the event it covers, with the same hash.
        """
        newest, anchor = self._tail_records()  # the file first: it never runs ahead of the db
        if newest is None:
            return []
        keys = self._verification_keys() or {}
        cp = self.checkpoints_path
        problems: list[ContinuityProblem] = []
        target = anchor or newest
        stored, first, last = self._stored(target.seq) if anchor is not None else (None, 0, 0)
        for record in {id(r): r for r in (newest, anchor) if r is not None}.values():
            kid = str(record.raw.get("kid"))
            entry = keys.get(kid)
            if entry is None:
                active = self.keys.active.kid if isinstance(self.keys, KeyRing) else "none"
                problems.append(
                    ContinuityProblem(
                        "key-change",
                        f"the newest {record.type} record of the checkpoint file {cp} is signed "
                        f"by key {kid[:64]!r}, which this guard does not hold (its active key "
                        f"is {active}): the signing key was lost or replaced. Restore the key file "
                        "from a backup, or acknowledge the change with `toolguard audit "
                        "acknowledge --key-change --by NAME --reason TEXT`",
                        target.seq,
                        target.digest,
                        kid,
                        last,
                    )
                )
                break
            if not _signature_ok(record, entry):
                problems.append(
                    ContinuityProblem(
                        "key-change",
                        f"the newest {record.type} record of the checkpoint file {cp} (seq "
                        f"{record.seq}) has no valid signature from key {kid[:64]!r}: it was "
                        "forged or altered. Investigate with `toolguard audit verify`; to "
                        "continue the trail anyway, acknowledge it with `toolguard audit "
                        "acknowledge --key-change --by NAME --reason TEXT`",
                        target.seq,
                        target.digest,
                        kid,
                        last,
                    )
                )
                break
        if anchor is not None and stored != anchor.digest:
            pruned = stored is None and first and anchor.seq < first
            if not pruned:
                when = _when(anchor.raw.get("ts"))
                if last < anchor.seq:
                    what = (
                        f"the audit trail {self.store.path} ends at seq {last} but the "
                        f"checkpoint signed at {when} covers seq {anchor.seq} ({cp}): events "
                        f"{last + 1}..{anchor.seq} were lost (a power cut with durability: "
                        "normal loses the newest commits) or removed"
                    )
                else:
                    what = (
                        f"the event at seq {anchor.seq} of the audit trail {self.store.path} "
                        + ("is missing" if stored is None else "differs from the one")
                        + f" the checkpoint signed at {when} covers ({cp}): the trail was "
                        "cut and continued, replaced, or rewritten"
                    )
                problems.append(
                    ContinuityProblem(
                        "truncated",
                        what + ". Nothing runs on it until this is resolved: restore the "
                        "database from a backup, or investigate (`toolguard audit verify`) and "
                        "acknowledge the gap with `toolguard audit acknowledge --truncated "
                        "--by NAME --reason TEXT`",
                        anchor.seq,
                        anchor.digest,
                        str(anchor.raw.get("kid")),
                        last,
                    )
                )
        return problems

    def check_continuity(self) -> None:
        """Raise :class:`AuditError` (every problem, each with its fix) when the trail cannot
        be continued: a guard calls this at start-up and refuses to run."""
        problems = self.continuity_problems()
        if problems:
            raise AuditError("; and ".join(p.message for p in problems))

    def acknowledge(
        self,
        acknowledged: list[str] | tuple[str, ...],
        *,
        by: str,
        reason: str,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Accept the current problems (an explicit operator decision): append an
        ``acknowledge`` event to the trail and a signed ``gap`` record of the new head.

        ``acknowledged`` must name every current problem's kind (:data:`GAP_KINDS`); raises
        :class:`AuditError` when there is nothing to acknowledge or a kind is missing.
        """
        keys = self._signing_keys("acknowledging a gap")
        unknown = sorted(set(acknowledged) - set(GAP_KINDS))
        if unknown:
            raise AuditError(f"cannot acknowledge {unknown}: use {', '.join(GAP_KINDS)}")
        by, reason = _ack_text(by, "by"), _ack_text(reason, "reason")
        problems = self.continuity_problems()
        if not problems:
            raise AuditError(
                f"nothing to acknowledge: the trail {self.store.path} continues its newest "
                f"signed checkpoint in {self.checkpoints_path}"
            )
        missing = sorted({p.kind for p in problems} - set(acknowledged))
        if missing:
            raise AuditError(
                "; and ".join(p.message for p in problems if p.kind in missing)
                + f" (not acknowledged: add {' '.join('--' + k for k in missing)})"
            )
        kinds = sorted({p.kind for p in problems})
        first = problems[0]
        ts = now if now is not None else self.store.clock()
        self.store.append(
            Event(
                ts=ts,
                kind="acknowledge",
                decision="acknowledge",
                operation=",".join(kinds),
                reason=f"acknowledged by {by}: {reason}",
                rule="audit.acknowledge",
            )
        )
        self.store.flush()
        head = self.store.head()
        assert head is not None  # the acknowledge event was just appended
        seq, digest = head
        record = sign_gap(
            keys,
            seq,
            digest,
            ts,
            acknowledged=kinds,
            trail_end=first.trail_end,
            by=by,
            reason=reason,
            covers={"seq": first.seq, "hash": first.digest, "kid": first.kid},
        )
        self._append_line(record)
        self._last = None
        return dict(record)

    # -- reading ------------------------------------------------------------------------------

    def read_checkpoints(self) -> list[dict[str, Any]]:
        """The checkpoint records as dicts (unreadable lines are skipped; verify reports them)."""
        records, _bad, _torn = self._read_records()
        return [r.raw for r in records]

    def _read_records(self) -> tuple[list[_Record], list[str], list[str]]:
        """Parsed records, and where the unreadable and the incomplete (torn) lines are
        (``line N of FILE``).

        A line that starts with ``{`` but does not end with ``}`` is the prefix of a record cut
        by a crash; any other unreadable line was edited (or the file is not a checkpoint file).
        """
        records: list[_Record] = []
        bad: list[str] = []
        torn: list[str] = []
        for path in (self.checkpoints_path, *self.also_checkpoints):
            self._read_file(path, records, bad, torn)
        if self.also_checkpoints:  # several hosts' checkpoints of one chain, in chain order
            records.sort(key=lambda r: r.seq)
        return records, bad, torn

    def _read_file(
        self, path: Path, records: list[_Record], bad: list[str], torn: list[str]
    ) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AuditError(f"cannot read the checkpoint file {path}: {exc.strerror}") from exc
        text = data.decode("utf-8", "replace")
        for number, raw_line in enumerate(text.split("\n"), 1):
            line = raw_line.strip()
            if not line:
                continue
            record = _parse_record(number, line)
            if record is not None:
                records.append(record)
            elif line.startswith("{") and not line.endswith("}"):
                torn.append(f"line {number} of {path}")  # a crash in the middle of a write
            else:  # an edit, or not a checkpoint file at all (the database, a typo)
                bad.append(f"line {number} of {path}")

    # -- verify -------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute the chain and check it against the signed checkpoints."""
        started = time.perf_counter()
        report = VerifyReport(
            checkpoint_file=", ".join(map(str, (self.checkpoints_path, *self.also_checkpoints)))
        )
        # The checkpoint file is read before the database snapshot: every checkpoint in it was
        # written after its head was committed, so none can be ahead of the snapshot.
        records, bad_lines, torn = self._read_records()
        report.checkpoints = len(records)
        keys = self._verification_keys()
        if keys is None:
            report.signatures_checked = False
            report.notes.append(
                "no public keys were given: checkpoint signatures were not checked; pass the "
                "issuer's keys (config or --jwks) to authenticate them"
            )
        checker = _SignatureChecker(keys, report)
        wanted = {r.seq for r in records if r.type in _ANCHORS}
        with self.store.read_trail() as trail:  # one snapshot: the scan and its side queries
            prune = trail.last_prune()
            if prune is not None and prune[0] is None:
                prune = None
                report.damage.append(
                    Damage(
                        1,
                        "deleted",
                        "the newest row of the prunes table is unreadable (not a seq and a "
                        "hash): it was edited; the chain was verified from seq 1",
                    )
                )
            if prune is not None:
                start_seq, start_hash = int(prune[0] or 1), prune[1]
            else:
                start_seq, start_hash = 1, GENESIS
            report.first_seq = start_seq
            scan = ChainScan(start_seq, start_hash, wanted)
            scan.run(trail.events())
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
                report.unanchored = trail.count_after(report.anchored_seq)
            self._anchor_notes(report, trail)
        for where in bad_lines[:_LISTED_LINES]:
            report.damage.append(
                Damage(0, "bad-signature", f"{where} is not a readable checkpoint record")
            )
        if len(bad_lines) > _LISTED_LINES:
            report.notes.append(
                f"{len(bad_lines) - _LISTED_LINES} further unreadable checkpoint lines were "
                "not listed"
            )
        if torn:
            shown = "; ".join(torn[:_LISTED_LINES])
            more = f" (and {len(torn) - _LISTED_LINES} more)" if len(torn) > _LISTED_LINES else ""
            report.notes.append(
                f"incomplete checkpoint lines (a crash while writing them?) were ignored: "
                f"{shown}{more}"
            )
        report.damage.sort(key=lambda d: (d.seq == 0, d.seq))
        report.seconds = time.perf_counter() - started
        return report

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
            if record.type not in _ANCHORS:
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
        gaps = [r for r in records if r.type == "gap" and _authentic(checker, r)]
        excused: dict[int, list[_Record]] = {}  # gap line -> the checkpoints it acknowledged

        def acknowledged(record: _Record) -> bool:
            for gap in gaps:
                if (
                    gap.line > record.line
                    and record.seq > gap.raw["trail_end"]
                    and "truncated" in gap.raw["acknowledged"]
                ):
                    excused.setdefault(gap.line, []).append(record)
                    return True
            return False

        disagree = [r for r in disagree if not acknowledged(r)]
        past_head = [r for r in past_head if not acknowledged(r)]
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
        for gap in gaps:
            covered = excused.get(gap.line, [])
            when = _when(gap.raw.get("ts"))
            who = (
                f"by {str(gap.raw.get('by'))[:100]} at {when} ({str(gap.raw.get('reason'))[:200]})"
            )
            if covered:
                top = max(r.seq for r in covered)
                report.notes.append(
                    f"acknowledged gap: the trail ended at seq {gap.raw['trail_end']} although "
                    f"a checkpoint signed before it covered seq {top}; the loss was acknowledged "
                    f"{who} (line {gap.line} of the checkpoint file); {len(covered)} older "
                    f"checkpoint{'s' if len(covered) != 1 else ''} past that point "
                    f"{'were' if len(covered) != 1 else 'was'} not counted as damage"
                )
            if "key-change" in gap.raw["acknowledged"]:
                report.notes.append(
                    f"acknowledged key change {who}: checkpoints signed before line {gap.line} "
                    "by a key that is not given here were not checked"
                )
        unknown = sorted({str(r.raw.get("kid")) for r in records if r.unknown_key})
        if unknown:
            report.notes.append(
                f"checkpoints signed by keys not among the given ones were ignored (kid "
                f"{', '.join(unknown)}); pass the retired public keys (--jwks) to use them"
            )

    def _anchor_notes(self, report: VerifyReport, trail: TrailReads) -> None:
        if not report.checked:
            return
        if not self.checkpoints_path.exists():
            report.notes.append(
                f"the checkpoint file {self.checkpoints_path} does not exist: the trail is not "
                f"anchored ({plural(report.unanchored, 'event')}); a removed tail or a rewritten "
                "chain cannot be detected"
            )
        elif report.unanchored:
            contradicted = any(d.kind in ("rewritten", "truncated") for d in report.damage)
            ends = 0 if contradicted else trail.count_after(report.anchored_seq, task_ends=True)
            message = (
                f"{plural(report.unanchored, 'event')} after seq {report.anchored_seq}"
                f" {'is' if report.unanchored == 1 else 'are'} not anchored "
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
        good = _signature_ok(record, entry)
        record.valid = good
        if not good and record.line not in self.reported:
            self.reported.add(record.line)
            what = {"prune": "prune record", "gap": "gap record"}.get(record.type, "checkpoint")
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


def _signature_ok(record: _Record, entry: tuple[str, Any]) -> bool:
    try:
        return record.raw.get("alg") == entry[0] and verify_signature(
            entry[0],
            entry[1],
            b64url_decode(str(record.raw.get("sig"))),
            checkpoint_payload(record.raw),
        )
    except Exception:  # a garbled signature is a bad signature
        return False


def _when(ts: object) -> str:
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 <= ts < 253402300800:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return "an unknown time"


def _ack_text(value: str, name: str) -> str:
    text = " ".join(str(value).split())
    if not text or not text.isprintable():
        raise AuditError(f"acknowledging needs a non-empty, printable --{name}")
    return text[:_MAX_ACK_TEXT]


def existing_trail(store: StoreProtocol, checkpoints: str | os.PathLike[str]) -> str | None:
    """A description of the audit trail already at ``store``/``checkpoints`` (a non-empty
    checkpoint file, or events in the database), or None when there is none."""
    try:
        size = os.stat(checkpoints).st_size
    except OSError:
        size = 0
    if size:
        return f"the checkpoint file {os.fspath(checkpoints)} ({size} bytes)"
    path = store.path
    if not path.is_file():  # none yet (or not a database: the store reports that on use)
        return None
    try:
        head = store.head()
    except AuditError:
        # an unreadable database fails every guarded call on its own (AuditError, nothing
        # runs); a key created now is refused later by the checkpoints it did not sign
        return None
    return f"the audit trail {path}" if head is not None else None


def guard_keys(config: GuardConfig, store: StoreProtocol) -> KeyRing:
    """The issuer keys of a guard starting on ``store``, after checking that it may continue
    the trail (see :meth:`Integrity.check_continuity`): raises :class:`AuditError` when the
    trail is behind its newest signed checkpoint, that checkpoint is signed by a key the guard
    does not hold, or the key file is missing next to an existing trail."""
    issuer = config.issuer
    checkpoints = config.checkpoints_path
    if issuer.key:
        keys = KeyRing.from_pem(issuer.key.get_secret_value())
    else:
        path = config.resolve_path(issuer.key_file)
        if not os.path.lexists(path):
            trail = existing_trail(store, checkpoints)
            if trail:
                raise AuditError(
                    f"the signing key file {path} does not exist, but {trail} already exists "
                    "and was signed with a key: a new key is never created silently next to "
                    "an existing trail (its checkpoints could no longer be checked). Restore "
                    "the key file from a backup; or create a new key with `toolguard keys "
                    "create` and acknowledge the change with `toolguard audit acknowledge "
                    "--key-change --by NAME --reason TEXT`"
                )
        keys = KeyRing.load(path, algorithm=issuer.algorithm)
    Integrity(store, keys=keys, checkpoints=checkpoints).check_continuity()
    return keys


_decode = json.JSONDecoder().raw_decode
_ANCHORS = ("checkpoint", "gap")


def _parse_record(number: int, line: str) -> _Record | None:
    try:
        raw, end = _decode(line)
    except (ValueError, RecursionError):
        return None
    if end != len(line) or type(raw) is not dict or raw.get("v") != CHECKPOINT_VERSION:
        return None
    kind = raw.get("type", "checkpoint")
    seq_key, hash_key = ("before_seq", "head_hash") if kind == "prune" else ("seq", "hash")
    seq, digest = raw.get(seq_key), raw.get(hash_key)
    if (
        kind not in ("checkpoint", "prune", "gap")
        or type(seq) is not int
        or not -(2**63) <= seq < 2**63  # what SQLite can hold (and be asked about)
        or not isinstance(digest, str)
        or not isinstance(raw.get("sig"), str)
    ):
        return None
    if kind == "gap":
        acknowledged = raw.get("acknowledged")
        if (
            type(raw.get("trail_end")) is not int
            or not isinstance(acknowledged, list)
            or not all(isinstance(a, str) for a in acknowledged)
        ):
            return None
    return _Record(number, kind, seq, digest, raw)
