"""The audit hash chain, pure: the exact columns and JSON form anyone can re-verify.

``hash = sha256_hex(prev_hash + canonical_json(row))`` where ``row`` holds the columns in
:data:`HASHED_FIELDS` (``seq`` included, so reordering breaks the chain) and ``canonical_json``
is ``json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as
UTF-8. The first event's ``prev_hash`` is :data:`GENESIS` (64 zeros), or the head hash recorded
by the last prune.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["EVENT_FIELDS", "GENESIS", "HASHED_FIELDS", "canonical_json", "event_hash"]

GENESIS = "0" * 64

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
"""The columns of an event that the hash covers, in the order of the table."""

EVENT_FIELDS: tuple[str, ...] = (*HASHED_FIELDS, "prev_hash", "hash")

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_json(row: Mapping[str, Any]) -> str:
    """The canonical JSON of an event's hashed columns."""
    return _dumps({k: row.get(k) for k in HASHED_FIELDS})


def event_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The chain hash of an event following ``prev_hash``."""
    return hashlib.sha256((prev_hash + canonical_json(row)).encode("utf-8")).hexdigest()
