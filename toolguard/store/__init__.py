"""The store: the only package that speaks SQL (schema, transactions, budgets, queries)."""

from .core import Denial, PendingOutcome, Store, loads_list
from .maintenance import PruneResult, prune
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Denial",
    "PendingOutcome",
    "PruneResult",
    "Store",
    "loads_list",
    "prune",
]
