"""The ``toolguard`` command: audit viewer, revocation, keys and config checks.

One click group, :func:`main`, with shared option decorators (:func:`db_options`,
:func:`filter_options`, :func:`json_option`). Rendering lives in :mod:`toolguard.viewer` and
:mod:`toolguard.export`; queries in :mod:`toolguard.audit`. Library errors become a one-line
``Error: ...`` and exit code 2; findings (``audit verify`` found tampering, ``check`` found
problems) exit with 1; usage errors exit with 2, as click does.

The config is ``--config FILE``, else ``$TOOLGUARD_CONFIG``, else ``./toolguard.yaml`` when the
current folder has one (``--db`` or ``--key-file`` alone turn the search off). The database is
``--db PATH``, else the config's ``store``, else ``$TOOLGUARD_DB``, else
``./.toolguard/audit.db``. Readers open it read-only and never create it.

Layout: :mod:`toolguard.cli._base` holds the group, :class:`CliContext`, errors, option
decorators and shared helpers; :mod:`toolguard.cli.audit` the ``audit`` subcommands;
:mod:`toolguard.cli.admin` ``revoke``, ``enable``, ``keys`` and ``check``. Importing this
package registers every command on :func:`main`.
"""

from __future__ import annotations

from .._extras import CLI, raise_if_missing

try:  # agent-toolguard-core alone has no click and rich: say what to install (toolguard/_extras.py)
    from . import admin, approvals, audit, match  # noqa: F401  (importing them registers their commands)
    from ._base import (
        EXIT_ERROR,
        EXIT_FINDINGS,
        CliContext,
        CliError,
        db_options,
        filter_options,
        json_option,
        main,
        parse_when,
        resolve_db,
    )
except ImportError as exc:
    raise_if_missing(CLI, exc)
    raise

__all__ = [
    "EXIT_ERROR",
    "EXIT_FINDINGS",
    "CliContext",
    "CliError",
    "db_options",
    "filter_options",
    "json_option",
    "main",
    "parse_when",
    "resolve_db",
]
