"""Where a store lives: a SQLite file or a PostgreSQL server, from one string.

One parser for every place a store is named (the config's ``store``, ``$TOOLGUARD_DB``, every
CLI ``--db``, ``verifier_from(store=...)``):

- ``postgresql://user:password@host:port/db`` (or ``postgres://``) selects PostgreSQL;
- a path, ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` selects SQLite;
- any other ``scheme://`` (and a ``postgresql:``/``sqlite:`` prefix without ``//``) is a
  :class:`ConfigError`: it would otherwise become a SQLite *file* named after the URL.

A PostgreSQL location never shows its password: ``str``, ``repr`` and every error message use
:attr:`StoreLocation.display`, where the password (in the URL or its ``password=`` parameter)
reads ``***``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

__all__ = [
    "DEFAULT_DB",
    "POSTGRES_SCHEMES",
    "StoreLocation",
    "parse_store",
    "redact_url",
]

DEFAULT_DB = Path(".toolguard/audit.db")
"""The SQLite store when none is named (``--db``, the config's ``store``, ``$TOOLGUARD_DB``)."""

POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_KNOWN_PREFIX = re.compile(r"^(postgresql|postgres|sqlite):", re.IGNORECASE)
_SUPPORTED = (
    "use a file path, sqlite:///relative/path, sqlite:////absolute/path or "
    "postgresql://user:password@host:port/dbname"
)


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@`` and a ``password=`` query parameter)
    replaced by ``***``; text that is not a URL comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query and "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """A parsed store: ``backend`` is ``"sqlite"`` (with :attr:`path`) or ``"postgresql"``
    (with :attr:`url`, which holds the password: never print it, print :attr:`display`)."""

    backend: Literal["sqlite", "postgresql"]
    path: Path | None = None
    url: str = field(default="", repr=False)

    @property
    def display(self) -> str:
        """The location for messages: the SQLite path, or the URL without its password."""
        if self.backend == "sqlite":
            return str(self.path)
        return redact_url(self.url)

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"

    def default_checkpoints(self, base: Path | None = None) -> Path:
        """Where this store's signed checkpoints go when no ``checkpoints:`` is configured:
        ``<database file>.checkpoints`` for SQLite; for PostgreSQL a file of this host, under
        ``base`` (the config's folder, else the current one), named after the server and the
        database (``.toolguard/<host>-<port>-<db>-<digest>.checkpoints``)."""
        if self.backend == "sqlite":
            return Path(str(self.path) + ".checkpoints")
        parts = urlsplit(self.url)
        host = parts.hostname or "local"
        port = str(parts.port or 5432)
        db = unquote(parts.path.lstrip("/")) or "postgres"
        digest = hashlib.sha256(redact_url(self.url).encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{host}-{port}-{db}-{digest}")
        return (base or Path(".")) / ".toolguard" / f"{name}.checkpoints"

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"StoreLocation({self.backend!r}, {self.display!r})"


def parse_store(value: str | os.PathLike[str], *, base: Path | str | None = None) -> StoreLocation:
    """The store ``value`` names (see the module's docstring); a relative SQLite path resolves
    against ``base`` when given. Raises :class:`ConfigError` for an unsupported scheme or a
    malformed URL, without the password in the message."""
    if isinstance(value, os.PathLike):
        return StoreLocation("sqlite", path=_resolve(Path(os.fspath(value)), base))
    if not isinstance(value, str):
        raise ConfigError(f"a store is a path or a URL, not {type(value).__name__}; {_SUPPORTED}")
    text = value.strip()
    if not text:
        raise ConfigError(f"the store is empty; {_SUPPORTED}")
    match = _SCHEME.match(text)
    if match is None:
        if _KNOWN_PREFIX.match(text):
            scheme = text.split(":", 1)[0]
            raise ConfigError(
                f"the store starts with {scheme + ':'!r} like a URL but lacks '//' after its "
                f"scheme; {_SUPPORTED}"
            )
        return StoreLocation("sqlite", path=_resolve(Path(os.path.expanduser(text)), base))
    scheme = match.group(1).lower()
    if scheme in POSTGRES_SCHEMES:
        return StoreLocation("postgresql", url=_checked_postgres(text))
    if scheme == "sqlite":
        rest = text[len(match.group(0)) :]
        # sqlite:///relative/path -> rest "/relative/path"; sqlite:////abs -> "//abs"
        if not rest.startswith("/"):
            raise ConfigError(
                f"the store {text!r} names a host; SQLite stores are local files: "
                "sqlite:///relative/path or sqlite:////absolute/path"
            )
        path = rest[1:].split("?", 1)[0]
        if not path:
            raise ConfigError(
                f"the store {text!r} names no file; write sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        return StoreLocation("sqlite", path=_resolve(Path(unquote(path)), base))
    raise ConfigError(
        f"the store {redact_url(text)!r} uses the scheme {scheme!r}, which toolguard does not "
        f"support; {_SUPPORTED}"
    )


def _resolve(path: Path, base: Path | str | None) -> Path:
    if base is not None and not path.is_absolute():
        return Path(base) / path
    return path


def _checked_postgres(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(
            f"the PostgreSQL store {redact_url(url)!r} is not a valid URL ({exc}); write "
            "postgresql://user:password@host:port/dbname"
        ) from None
    if parts.fragment:
        raise ConfigError(
            f"the PostgreSQL store {redact_url(url)!r} has a '#' part; percent-encode '#' in "
            "the password as %23"
        )
    return url
