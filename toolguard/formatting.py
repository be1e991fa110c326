"""Plain-text formatting shared by the viewer, the exports and incident messages.

Standard library only (no rich), so that the core (``guard.revoke``, ``toolguard.export``)
works without the command line's dependencies; :mod:`toolguard.viewer` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "TIMELINE_HEADERS",
    "WOULD_DENY",
    "event_result",
    "format_cost",
    "format_duration",
    "format_time",
    "plural",
    "revoke_result",
]

TIMELINE_HEADERS = (
    "time", "kind", "tool", "op", "resources", "result", "jti", "duration", "cost", "detail",
)  # fmt: skip
"""The columns of a task's timeline (``audit show``, the HTML export)."""

WOULD_DENY = "would_deny"
"""The ``decision`` of a ``request`` event that ran in shadow mode although the policy or a
budget refused it (its ``reason`` and ``rule`` say why)."""

_PLURALS = {"identity": "identities", "credential id": "credential ids"}


def plural(count: int, word: str) -> str:
    """``1 call``, ``2 calls``, ``1 identity``, ``0 identities``."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {_PLURALS.get(word, word + 's')}"


def format_time(ts: float | None, *, clock_only: bool = False) -> str:
    """A UTC timestamp: ``2026-09-21 13:46:40Z``, or ``13:46:40.123`` with ``clock_only``."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    if clock_only:
        return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_duration(ms: float | None) -> str:
    """``0.09ms``, ``12ms``, ``3.2s``, ``4m05s``, ``2h10m``; ``-`` for None."""
    if ms is None:
        return "-"
    ms = float(ms)
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_cost(cost: float | None) -> str:
    """A cost with up to four decimals (``0.01``); ``-`` for none."""
    if not cost:
        return "-"
    return f"{float(cost):.4f}".rstrip("0").rstrip(".")


def revoke_result(decision: object) -> str:
    """A revocation's result: a broker's failed or impossible revocation must not read as done."""
    if decision == "failed":
        return "revoke failed"
    if decision == "not-revocable":
        return "not revocable"
    return "revoked"


_APPROVAL_RESULTS = {
    "approval_requested": "AWAITING APPROVAL",
    "approved": "approved",
    "rejected": "REJECTED",
    "approval_expired": "EXPIRED",
}


def event_result(row: Mapping[str, Any]) -> tuple[str, str]:
    """The ``result`` and ``detail`` columns of a timeline row (``audit show`` and the HTML
    export): one reading of every kind of event."""
    kind = str(row.get("kind"))
    reason = str(row.get("reason") or "")
    if kind == "request":
        result, detail = str(row.get("result") or "incomplete"), str(row.get("error") or reason)
        if row.get("decision") == WOULD_DENY:  # shadow mode: refused, but it ran
            why = f"would deny: {reason} [{row.get('rule')}]"
            return f"WOULD-DENY ({result})", "; ".join(d for d in (why, row.get("error")) if d)
        return result, detail
    if kind == "denied":
        return "DENIED", f"{row.get('reason')} [{row.get('rule')}]"
    if kind == "task_end":
        return str(row.get("outcome") or "ended"), reason
    if kind == "task_start":
        return "started", reason
    if kind == "task_resume":
        return "resumed", reason
    if kind == "revoke":
        by = f" by {row['by']}" if row.get("by") else ""
        return revoke_result(row.get("decision")), f"{row.get('reason')} [{row.get('rule')}{by}]"
    if kind == "enable":
        return "enabled", f"{row.get('reason')} [{row.get('rule')}]"
    if kind == "acknowledge":
        return "acknowledged", f"{row.get('operation')}: {row.get('reason')}"
    if kind in _APPROVAL_RESULTS:
        return _APPROVAL_RESULTS[kind], f"{reason} [{row.get('rule')}]"
    return str(row.get("outcome") or row.get("decision") or "-"), str(row.get("error") or reason)
