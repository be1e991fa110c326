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
    "MAX_URL_CHARS",
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
MAX_URL_CHARS = 4096
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONNINFO = re.compile(
    r"(?:^|\s)(?:host|hostaddr|port|dbname|user|password|passfile|sslmode|service|options|"
    r"connect_timeout|application_name)\s*=",
    re.IGNORECASE,
)
_SUPPORTED = (
    "use a file path, sqlite:///relative/path, sqlite:////absolute/path or "
    "postgresql://user:password@host:port/dbname"
)


def redact_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the password of ``user:password@``, and
    every query parameter whose (percent-decoded) name contains ``password`` (``password=``,
    ``sslpassword=``). Text that is not a URL comes back unchanged.

    When the authority cannot be told apart with certainty (a ``/``, ``?``, ``#`` or ``@``
    left un-encoded in the password, a malformed URL), everything between ``//`` and the last
    ``@`` reads ``***``: too much hidden rather than a password shown."""
    match = _SCHEME.match(url)
    if match is None:
        return url
    rest = url[len(match.group(0)) :]
    try:
        parts = urlsplit(url)
        for host in parts.netloc.rpartition("@")[2].split(","):  # a bad port: maybe a password
            urlsplit(f"//{host}").port  # noqa: B018
    except ValueError:
        return _redact_all_userinfo(match.group(0), rest)
    netloc = parts.netloc
    if "@" not in netloc and "@" in rest:
        return _redact_all_userinfo(match.group(0), rest)
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any("password" in k.lower() for k, _ in pairs):
            query = urlencode(
                [(k, "***" if "password" in k.lower() else v) for k, v in pairs], safe="*"
            )
    fragment = "***" if parts.fragment else ""
    shown = urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    if not netloc:  # postgresql:///db?host=/run/postgresql: keep the empty authority
        shown = f"{parts.scheme}://{shown[len(parts.scheme) + 1 :]}"
    return shown


def _redact_all_userinfo(prefix: str, rest: str) -> str:
    if "@" not in rest:
        return prefix + rest if ":" not in rest else prefix + "***"
    return prefix + "***@" + rest.rpartition("@")[2]


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
        first = urlsplit("//" + parts.netloc.rpartition("@")[2].split(",")[0])
        host = first.hostname or "local"
        port = str(first.port or 5432)
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
    if "\x00" in text:
        raise ConfigError(f"the store holds a NUL character; {_SUPPORTED}")
    match = _SCHEME.match(text)
    if match is None:
        if _KNOWN_PREFIX.match(text):
            scheme = text.split(":", 1)[0]
            raise ConfigError(
                f"the store starts with {scheme + ':'!r} like a URL but lacks '//' after its "
                f"scheme; {_SUPPORTED}"
            )
        if _looks_like_conninfo(text):  # never a SQLite file named after a password
            raise ConfigError(
                "the store looks like a PostgreSQL key=value connection string "
                "(host=... dbname=...), which toolguard does not read; write it as a URL: "
                "postgresql://user:password@host:port/dbname (a path with '=' in a name: "
                "write ./ before it)"
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
    """``url`` if libpq will read it as the URL shown; else a :class:`ConfigError` that
    quotes neither the password nor the parser's own words (they may quote it)."""
    shown = redact_url(url)
    fix = "write postgresql://user:password@host:port/dbname"
    if len(url) > MAX_URL_CHARS:
        raise ConfigError(f"the PostgreSQL store is longer than {MAX_URL_CHARS} characters; {fix}")
    if not url.isprintable() or " " in url:
        raise ConfigError(
            "the PostgreSQL store holds spaces, control or invisible characters; "
            f"percent-encode them (%20 for a space) or remove them; {fix}"
        )
    if _BAD_ESCAPE.search(url):
        raise ConfigError(
            f"the PostgreSQL store {shown!r} has a '%' that is not followed by two hex "
            "digits; percent-encode '%' in the password as %25"
        )
    if "%00" in url:
        raise ConfigError(f"the PostgreSQL store {shown!r} holds %00 (a NUL character); {fix}")
    try:
        parts = urlsplit(url)
        for host in parts.netloc.rpartition("@")[2].split(","):  # libpq: host1:p1,host2:p2
            urlsplit(f"//{host}").port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError(
            f"the PostgreSQL store {shown!r} is not a valid URL (its host or port cannot be "
            "read); percent-encode '/', '?', '#', '@' and ':' in the user name and password; "
            f"{fix}"
        ) from None
    rest = url.split("//", 1)[1]
    if "@" not in parts.netloc and "@" in rest:
        raise ConfigError(
            f"the PostgreSQL store {shown!r} has an '@' after its host; percent-encode "
            "'/', '?', '#' and '@' in the user name and password (%2F, %3F, %23, %40)"
        )
    if parts.fragment or "#" in url:
        raise ConfigError(
            f"the PostgreSQL store {shown!r} has a '#' part; percent-encode '#' in "
            "the password as %23"
        )
    return url


def _looks_like_conninfo(text: str) -> bool:
    return _CONNINFO.search(text) is not None
