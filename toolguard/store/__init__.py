"""The store: the only package that speaks SQL (schema, transactions, budgets, queries).

Two backends behind one typed interface (:mod:`toolguard.store.protocol`:
:class:`StoreProtocol`, its read side :class:`StoreReader`, :class:`RevocationChecks`): SQLite
(:mod:`toolguard.store.sqlite`, the embedded default, :class:`Store`) and PostgreSQL
(:mod:`toolguard.store.postgres`, for fleets; ``pip install "agent-toolguard[postgres]"``).
:func:`open_store` opens the one a location names (:func:`parse_store`). Events go in as
:class:`~toolguard.chain.Event` records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..location import DEFAULT_DB, StoreLocation, parse_store, redact_url
from .protocol import (
    Denial,
    PendingOutcome,
    RevocationChecks,
    StoreProtocol,
    StoreReader,
    TrailReads,
)
from .revocations import StoreRevocations
from .sqlite.core import Store
from .sqlite.maintenance import PruneResult, prune
from .sqlite.schema import SCHEMA_VERSION

__all__ = [
    "DEFAULT_DB",
    "SCHEMA_VERSION",
    "Denial",
    "PendingOutcome",
    "PruneResult",
    "RevocationChecks",
    "Store",
    "StoreLocation",
    "StoreProtocol",
    "StoreReader",
    "StoreRevocations",
    "TrailReads",
    "open_store",
    "parse_store",
    "prune",
    "redact_url",
]


def open_store(
    location: StoreLocation | str | os.PathLike[str],
    *,
    durability: str = "normal",
    busy_timeout: float = 5.0,
    clock: Callable[[], float] = time.time,
    readonly: bool = False,
    pool_size: int = 4,
) -> StoreProtocol:
    """The store at ``location`` (not opened yet: it connects on first use).

    A PostgreSQL location needs the ``postgres`` extra: without psycopg this raises
    :class:`~toolguard.errors.MissingDependency` naming ``pip install
    "agent-toolguard[postgres]"``.
    """
    if not isinstance(location, StoreLocation):
        location = parse_store(location)
    if location.backend == "sqlite":
        assert location.path is not None  # parse_store sets it for SQLite
        return Store(
            Path(location.path),
            durability=durability,
            busy_timeout=busy_timeout,
            clock=clock,
            readonly=readonly,
        )
    from .postgres import PostgresStore  # psycopg only for a PostgreSQL store

    return PostgresStore(
        location,
        durability=durability,
        busy_timeout=busy_timeout,
        clock=clock,
        readonly=readonly,
        pool_size=pool_size,
    )
