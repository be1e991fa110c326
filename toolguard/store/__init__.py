"""The store: the only package that speaks SQL (schema, transactions, budgets, queries)."""

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
