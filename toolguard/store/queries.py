"""Read queries of the store (audit views, viewer, verifier). No writes here."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import AuditError

__all__ = ["Queries"]


class Queries:
    """Read-only queries, mixed into :class:`toolguard.store.Store`."""

    path: Path

    @property
    def conn(self) -> sqlite3.Connection:  # pragma: no cover - provided by Store
        raise NotImplementedError

    # -- reads ------------------------------------------------------------------------------

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """Rows of a read query as dicts (for the audit module and the viewer)."""
        try:
            cur = self.conn.execute(sql, params)
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.path}: {exc}") from exc

    def iter_query(
        self, sql: str, params: Sequence[Any] = (), *, batch: int = 5000
    ) -> Iterator[tuple[Any, ...]]:
        """Stream the tuples of a read query (for verify and export at millions of rows)."""
        try:
            cur = self.conn.execute(sql, params)
            while rows := cur.fetchmany(batch):
                yield from rows
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {self.path}: {exc}") from exc

    def task_row(self, task_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return rows[0] if rows else None
