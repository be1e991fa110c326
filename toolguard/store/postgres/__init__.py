"""The PostgreSQL store, for fleets of guards on many hosts (``store: postgresql://...``).

Needs the ``postgres`` extra (psycopg 3 and psycopg-pool): ``pip install
"agent-toolguard[postgres]"``; without it, importing this package raises
:class:`~toolguard.errors.MissingDependency` saying so (``import toolguard`` never needs it).
"""

from ..._extras import POSTGRES, raise_if_missing

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - tested in a subprocess without psycopg
    raise_if_missing(POSTGRES, exc)
    raise

from .core import PostgresStore

__all__ = ["PostgresStore"]
