"""The SQLite store: one database file in WAL mode (the embedded default)."""

from .core import Denial, PendingOutcome, Store
from .maintenance import PruneResult, prune
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Denial",
    "PendingOutcome",
    "PruneResult",
    "Store",
    "prune",
]
