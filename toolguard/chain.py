"""The audit hash chain, pure: the exact columns and JSON form anyone can re-verify.

Every event commits to the one before it::

    hash = sha256_hex(utf8(prev_hash + canonical_json(row)))
    canonical_json(row) = json.dumps([row[c] for c in HASHED_FIELDS],
                                     separators=(",", ":"), ensure_ascii=False)

``row`` holds the 20 columns of :data:`HASHED_FIELDS` as SQLite returns them (``seq`` an int;
``ts``, ``duration_ms`` and ``cost`` floats or null; every other column text or null), so
``seq`` is covered and moving an event breaks its hash. The first event's ``prev_hash`` is
:data:`GENESIS` (64 zeros), or the head hash recorded by the last prune. A JSON *array* in a
fixed column order is used rather than an object: it is unambiguous, and it is about twice as
fast to encode, which is what lets ``verify`` check a million events in a few seconds.

:class:`Event` is an event as it is appended: exactly the hashed columns but ``seq`` (the store
numbers it), a typed record, so a misspelt column is a ``TypeError`` (and a mypy error), never a
NULL in the hash. :func:`event_values` (and :func:`row_values`, for a mapping such as a row read
back) normalizes an event before it is hashed and written, exactly as SQLite would store it
(``-0.0`` -> ``0.0``, NaN -> null, an int in a REAL column -> float, an int in a TEXT column ->
its decimal text), so the hash computed on write is the hash recomputed on read.
:func:`event_values` also escapes in every text column what no store can hold (U+0000, which
PostgreSQL refuses, and lone surrogates, which are not UTF-8; :func:`toolguard.text.storable`),
so both backends record and hash the same text (:func:`row_values` does not: it takes what is
stored, as it is).

:class:`ChainScan` walks a stored chain in ``seq`` order (the fast path of
:meth:`toolguard.integrity.Integrity.verify`) and classifies every break as a :class:`Damage`:
``modified``, ``deleted`` or ``reordered`` (the checkpoint kinds, ``truncated``, ``rewritten``
and ``bad-signature``, are found by :mod:`toolguard.integrity`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from .text import storable

__all__ = [
    "DAMAGE_KINDS",
    "EVENT_FIELDS",
    "GENESIS",
    "HASHED_FIELDS",
    "REAL_FIELDS",
    "ChainScan",
    "Damage",
    "Event",
    "canonical_json",
    "encode_values",
    "event_hash",
    "event_values",
    "row_values",
    "values_hash",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event of a trail that was never pruned."""

HASHED_FIELDS: tuple[str, ...] = (
    "seq",
    "ts",
    "task_id",
    "identity",
    "intent",
    "kind",
    "tool",
    "operation",
    "resources",
    "decision",
    "reason",
    "rule",
    "jti",
    "correlation_id",
    "args",
    "args_sha256",
    "outcome",
    "error",
    "duration_ms",
    "cost",
)
"""The columns of an event that the hash covers, in the order of the canonical JSON array."""

REAL_FIELDS: tuple[str, ...] = ("ts", "duration_ms", "cost")
"""The hashed columns stored as SQLite REAL (floats); ``seq`` is an INTEGER; the rest TEXT."""

EVENT_FIELDS: tuple[str, ...] = (*HASHED_FIELDS, "prev_hash", "hash")
"""Every column of an event row."""


class Event(NamedTuple):
    """One audit event as it is appended to the trail: exactly the hashed columns
    (:data:`HASHED_FIELDS`) but ``seq``, which the store assigns when it appends the event.

    Built with keywords (``Event(ts=now, kind="denied", task_id=..., reason=...)``): a
    misspelt column is a ``TypeError`` (and a mypy error), never a column hashed as NULL.
    Immutable: a variant is ``event._replace(kind="denied", ...)``. ``ts`` and ``kind`` come
    first (every event has them); the rest is in the hash's order. A ``NamedTuple`` rather
    than a frozen dataclass because it is built twice on every guarded call: it costs what
    the dict it replaces cost (a frozen dataclass of 19 fields costs about three times as
    much), and its values are read in one C call (:func:`event_values`).
    """

    ts: float
    kind: str
    task_id: str | None = None
    identity: str | None = None
    intent: str | None = None
    tool: str | None = None
    operation: str | None = None
    resources: str | None = None
    """The call's resources, a JSON array (as text)."""
    decision: str | None = None
    reason: str | None = None
    rule: str | None = None
    jti: str | None = None
    correlation_id: str | None = None
    args: str | None = None
    """The call's arguments, redacted, as JSON text."""
    args_sha256: str | None = None
    outcome: str | None = None
    error: str | None = None
    duration_ms: float | None = None
    cost: float | None = None


_EVENT_ORDER = itemgetter(*(Event._fields.index(name) for name in HASHED_FIELDS[1:]))
"""An event's values in :data:`HASHED_FIELDS` order (without ``seq``)."""

if {"seq", *Event._fields} != set(HASHED_FIELDS) or len(Event._fields) != len(HASHED_FIELDS) - 1:
    raise AssertionError("Event must hold exactly the hashed columns but seq")  # pragma: no cover

_SEQ = HASHED_FIELDS.index("seq")
_REAL_INDEX = tuple(HASHED_FIELDS.index(name) for name in REAL_FIELDS)
_TEXT_INDEX = tuple(
    i for i, name in enumerate(HASHED_FIELDS) if name != "seq" and name not in REAL_FIELDS
)


def _make_encoder() -> Callable[[Any], str]:
    """A compact JSON encoder built once (the C encoder when the interpreter has it)."""
    reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    try:
        from json.encoder import c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - interpreters without the C accelerator
        c_make_encoder = None
    if c_make_encoder is None:  # pragma: no cover
        return reference
    try:
        from json.encoder import c_encode_basestring  # type: ignore[attr-defined]

        make = c_make_encoder(None, None, c_encode_basestring, None, ":", ",", False, False, True)
    except Exception:  # pragma: no cover - a different C signature: use the public encoder
        return reference

    def encode(values: Any) -> str:
        return "".join(make(values, 0))

    sample = (1, 1790000000.25, 'é"\\\n', None, -0.5, float("inf"), '["a"]')
    if encode(sample) != reference(sample):  # pragma: no cover - never trust a private API
        return reference
    return encode


_encode = _make_encoder()
_sha256 = hashlib.sha256

encode_values: Callable[[Any], str] = _encode
"""``json.dumps(values, separators=(",", ":"), ensure_ascii=False)``, with a prebuilt encoder."""


def _real(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):  # bool is an int: True -> 1.0, as SQLite stores it
        number = float(value) + 0.0  # -0.0 -> 0.0, as SQLite stores it
        return None if math.isnan(number) else number  # SQLite stores NaN as NULL
    raise TypeError(f"audit column {name!r} must be a number or None, not {type(value).__name__}")


def _text(name: str, value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # SQLite stores an integer bound to a TEXT column as its digits
        return str(int(value))
    raise TypeError(f"audit column {name!r} must be text or None, not {type(value).__name__}")


def row_values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The hashed columns of an event row, in :data:`HASHED_FIELDS` order, normalized to
    exactly what SQLite stores and returns (a missing column is null)."""
    get = row.get
    return _normalized([get(name) for name in HASHED_FIELDS])


def event_values(seq: int, event: Event) -> tuple[Any, ...]:
    """The hashed columns of ``event`` appended as ``seq``, in :data:`HASHED_FIELDS` order,
    normalized to exactly what SQLite stores and returns (write these values, and hash them):
    the same values :func:`row_values` gives for the same columns, with U+0000 and lone
    surrogates escaped (:func:`toolguard.text.storable`): no store can hold them."""
    if type(event) is not Event:
        raise TypeError(f"an audit event must be an Event, not {type(event).__name__}")
    return _normalized([seq, *_EVENT_ORDER(event)], escape=True)


def _normalized(values: list[Any], escape: bool = False) -> tuple[Any, ...]:
    seq = values[_SEQ]
    if type(seq) is not int:
        if seq is None or not isinstance(seq, int):
            raise TypeError(f"audit column 'seq' must be an int, not {type(seq).__name__}")
        values[_SEQ] = int(seq)
    for i in _REAL_INDEX:
        v = values[i]
        if v is not None and (type(v) is not float or v != v or v == 0.0):
            values[i] = _real(HASHED_FIELDS[i], v)
    for i in _TEXT_INDEX:
        v = values[i]
        if v is None:
            continue
        if type(v) is not str:
            v = values[i] = str(_text(HASHED_FIELDS[i], v))  # not None: v is not
        if escape and ("\x00" in v or not v.isascii()):  # NUL, lone surrogates: no store
            values[i] = storable(v)
    return tuple(values)


def canonical_json(row: Mapping[str, Any]) -> str:
    """The canonical JSON of an event's hashed columns (a JSON array, see the module doc)."""
    return _encode(row_values(row))


def values_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """The chain hash of already-normalized values (as :func:`row_values` or SQLite return
    them) following ``prev_hash``. The fast path of ``verify``."""
    return _sha256((prev_hash + _encode(values)).encode("utf-8")).hexdigest()


def event_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The chain hash of an event following ``prev_hash`` (normalizes the row first)."""
    return values_hash(prev_hash, row_values(row))


# -- verification of a stored chain --------------------------------------------------------------

DAMAGE_KINDS: tuple[str, ...] = (
    "modified",
    "deleted",
    "reordered",
    "truncated",
    "rewritten",
    "bad-signature",
)
"""Every ``Damage.kind`` that :meth:`Integrity.verify` reports."""

_MAX_DAMAGE = 100
_MOVE_WINDOW = 64
_MAX_MOVE_SEARCHES = 200
_N = len(HASHED_FIELDS)


@dataclass(frozen=True, slots=True)
class Damage:
    """One finding of ``verify``: the first bad ``seq`` and what happened there.

    ``seq`` is 0 when no event can be named (an unreadable checkpoint line).
    """

    seq: int
    kind: str
    """One of :data:`DAMAGE_KINDS`."""
    detail: str
    last_seq: int | None = None
    """The last bad ``seq`` when the finding covers a range (``None``: just ``seq``)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "seq": self.seq,
            "last_seq": self.last_seq,
            "kind": self.kind,
            "detail": self.detail,
        }


class ChainScan:
    """One pass over the events in ``seq`` order: the fast check, and the diagnosis of breaks.

    Feed :meth:`run` rows of ``(*HASHED_FIELDS, prev_hash, hash)`` ordered by ``seq``; it
    leaves ``checked``, ``head_seq``, ``damage`` (each break, classified) and ``hashes`` (the
    stored hash at every ``seq`` in ``wanted``, for the checkpoint comparison).
    """

    def __init__(self, start_seq: int, start_hash: str, wanted: set[int]) -> None:
        self.expected = start_seq
        self.prev = start_hash
        self.wanted = wanted
        self.hashes: dict[int, str] = {}
        self.checked = 0
        self.head_seq = 0
        self.damage: list[Damage] = []
        self.more_damage = 0
        self._flagged_prev = False
        """Whether the previous row was itself reported (a link break after it is explained)."""
        self._block: set[str] = set()
        """Stored hashes of the current run of moved events."""
        self._moved_searches = 0
        self._suspects: list[tuple[int, tuple[Any, ...], Any, Any]] = []
        """Modified rows kept for the search for far moves: (seq, values, prev_hash, hash)."""

    def run(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Check every row; classify each break (bounded work per break)."""
        n = _N
        wanted = self.wanted
        hashes = self.hashes
        encode = encode_values
        sha256 = hashlib.sha256
        expected, prev = self.expected, self.prev
        checked = 0
        seq = self.head_seq
        for row in rows:
            checked += 1
            seq = row[0]
            stored_prev = row[n]
            stored = row[n + 1]
            try:
                good = (
                    seq == expected
                    and stored_prev == prev
                    and sha256((stored_prev + encode(row[:n])).encode()).hexdigest() == stored
                )
            except (TypeError, ValueError, UnicodeError):  # foreign values written behind our back
                good = False
            if good:
                self._flagged_prev = False
            else:
                self.expected, self.prev = expected, prev
                self._diagnose(seq, row[:n], stored_prev, stored, first=checked == 1)
            if seq in wanted:
                hashes[seq] = stored
            prev = stored
            expected = seq + 1
        self.checked = checked
        self.head_seq = seq
        self._resolve_far_moves()

    # -- diagnosis (the slow path, only at breaks) -----------------------------------------------

    def _diagnose(
        self, seq: int, values: tuple[Any, ...], stored_prev: Any, stored: Any, *, first: bool
    ) -> None:
        expected, prev = self.expected, self.prev
        if not _hash_matches(stored_prev, values, stored):
            original = self._original_seq(seq, values, stored_prev, stored)
            if original is not None:
                self._block.add(str(stored))
                self._add(seq, "reordered", f"event {seq} holds the event hashed as seq {original}")
            else:
                if len(self._suspects) < _MAX_MOVE_SEARCHES:
                    self._suspects.append((seq, values, stored_prev, stored))
                self._add(seq, "modified", f"event {seq} does not match its hash")
            return
        if stored_prev in self._block:  # follows an event that was moved: part of that damage
            self._flagged_prev = True
            return
        self._block.clear()
        if seq > expected:
            self._add(
                expected,
                "deleted",
                f"events {expected}..{seq - 1} are missing: event {seq} does not follow "
                + (f"event {expected - 1}" if not first else "the start of the trail"),
                last_seq=seq - 1,
                merge=False,
            )
            return
        if self._flagged_prev:  # the previous event was reported: this link break is explained
            self._flagged_prev = False
            return
        if first or seq < expected:
            where = "the genesis hash" if prev == GENESIS else "the last prune's head hash"
            self._add(
                seq,
                "modified",
                f"event {seq} does not follow the start of the trail ({where})"
                + (f"; the trail starts at seq {expected}" if seq < expected else ""),
            )
            return
        self._add(
            seq - 1,
            "modified",
            f"event {seq - 1} was changed and its hash recomputed: event {seq} still commits "
            "to the original",
        )
        self._flagged_prev = False

    def _original_seq(
        self, seq: int, values: tuple[Any, ...], stored_prev: Any, stored: Any
    ) -> int | None:
        """The ``seq`` this event was hashed with, when it is nearby (a move or a swap)."""
        if self._moved_searches >= _MAX_MOVE_SEARCHES:
            return None
        self._moved_searches += 1
        rest = values[1:]
        for distance in range(1, _MOVE_WINDOW + 1):
            for candidate in (seq - distance, seq + distance):
                if _hash_matches(stored_prev, (candidate, *rest), stored):
                    return candidate
        return None

    def _add(
        self, seq: int, kind: str, detail: str, *, last_seq: int | None = None, merge: bool = True
    ) -> None:
        self._flagged_prev = True
        if merge and self.damage:
            last = self.damage[-1]
            end = last.last_seq if last.last_seq is not None else last.seq
            if last.kind == kind and seq == end + 1:
                self.damage[-1] = Damage(
                    last.seq, kind, _range_detail(kind, last.seq, seq), last_seq=seq
                )
                return
        if len(self.damage) >= _MAX_DAMAGE:
            self.more_damage += 1
            return
        self.damage.append(Damage(seq, kind, detail, last_seq=last_seq))

    def _resolve_far_moves(self) -> None:
        """A modified event that verifies under a missing ``seq`` was moved there, not edited."""
        gaps = [d for d in self.damage if d.kind == "deleted" and d.last_seq is not None]
        if not gaps or not self._suspects:
            return
        budget = 20_000
        for seq, values, stored_prev, stored in self._suspects:
            rest = values[1:]
            for gap in gaps:
                end = gap.last_seq if gap.last_seq is not None else gap.seq
                for candidate in range(gap.seq, end + 1):
                    budget -= 1
                    if budget < 0:
                        return
                    if _hash_matches(stored_prev, (candidate, *rest), stored):
                        self._reclassify(seq, candidate)
                        break

    def _reclassify(self, seq: int, original: int) -> None:
        out: list[Damage] = []
        for d in self.damage:
            end = d.last_seq if d.last_seq is not None else d.seq
            if d.kind == "modified" and d.seq == seq and end == seq:
                continue
            if d.kind == "deleted" and d.seq <= original <= end:
                out.append(
                    Damage(
                        d.seq,
                        "reordered",
                        f"event {original} was moved to seq {seq}"
                        + (f"; events {d.seq}..{end} are missing from here" if end > d.seq else ""),
                        last_seq=d.last_seq,
                    )
                )
                continue
            out.append(d)
        self.damage = out


def _hash_matches(stored_prev: Any, values: tuple[Any, ...], stored: Any) -> bool:
    """Whether the row hashes to its stored hash; False for any foreign value."""
    if not isinstance(stored_prev, str) or not isinstance(stored, str):
        return False
    try:
        return values_hash(stored_prev, values) == stored
    except (TypeError, ValueError, UnicodeError):
        return False


def _range_detail(kind: str, first: int, last: int) -> str:
    if kind == "reordered":
        return f"events {first}..{last} are out of order: they were hashed at other positions"
    return f"events {first}..{last} do not match their hashes"
