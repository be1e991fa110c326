"""Budget counters in SQL: check every spend of a call, then spend it (same transaction)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from ..budget import ROLLING_WINDOW, Spend, day_key, seconds_to_midnight
from ..errors import BudgetExceeded

__all__ = ["check_budgets", "spend_budget"]


def check_budgets(
    conn: sqlite3.Connection, spends: Sequence[Spend], now: float, event: Mapping[str, Any]
) -> BudgetExceeded | None:
    for spend in spends:
        retry_after: float | None
        if spend.kind == "rolling":
            used, oldest = conn.execute(
                "SELECT COALESCE(SUM(amount), 0), MIN(ts) FROM rate_events"
                " WHERE scope = ? AND ts > ?",
                (spend.scope, now - ROLLING_WINDOW),
            ).fetchone()
            retry_after = max(0.0, (oldest or now) + ROLLING_WINDOW - now)
        else:
            period = day_key(now) if spend.kind == "day" else ""
            row = conn.execute(
                "SELECT used FROM budgets WHERE scope = ? AND period = ?",
                (spend.scope, period),
            ).fetchone()
            used = row[0] if row else 0.0
            retry_after = seconds_to_midnight(now) if spend.kind == "day" else None
        if used + spend.amount > spend.limit + 1e-9 or (spend.amount == 0 and used > spend.limit):
            return BudgetExceeded(
                scope=spend.label,
                limit=spend.limit,
                used=float(used),
                retry_after=retry_after,
                tool=event.get("tool"),
                task_id=event.get("task_id"),
            )
    return None


def spend_budget(conn: sqlite3.Connection, spend: Spend, now: float) -> None:
    if spend.amount == 0:
        return
    if spend.kind == "rolling":
        conn.execute(
            "DELETE FROM rate_events WHERE scope = ? AND ts <= ?",
            (spend.scope, now - ROLLING_WINDOW),
        )
        conn.execute(
            "INSERT INTO rate_events (scope, ts, amount) VALUES (?, ?, ?)",
            (spend.scope, now, spend.amount),
        )
        return
    period = day_key(now) if spend.kind == "day" else ""
    conn.execute(
        "INSERT INTO budgets (scope, period, used) VALUES (?, ?, ?) "
        "ON CONFLICT(scope, period) DO UPDATE SET used = used + excluded.used",
        (spend.scope, period, spend.amount),
    )
