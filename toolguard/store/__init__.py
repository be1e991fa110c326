"""The store: the only package that speaks SQL (schema, transactions, budgets, queries)."""

from .sqlite.core import Denial, PendingOutcome, Store
from .sqlite.maintenance import PruneResult, prune
from .sqlite.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Denial",
    "PendingOutcome",
    "PruneResult",
    "Store",
    "prune",
]
