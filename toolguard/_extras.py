"""The parts of toolguard that need more than ``agent-toolguard-core``, and the error that says
how to get them.

``pip install agent-toolguard-core`` (what ``toolguard-starlette`` depends on) brings the guard,
the store, credentials and the verifier: pydantic, cryptography, PyYAML, httpx and tenacity.
LangChain tools and the ``toolguard`` command need the extras below; ``pip install
agent-toolguard`` (the guard with LangChain and the command) brings both. Each module that
imports an extra's package catches its absence and raises :func:`raise_if_missing`'s error
(``tests/test_packaging.py`` checks that the extras here are those of the core's
pyproject.toml, and that every module either imports without them or raises this error).
"""

from __future__ import annotations

from .errors import MissingDependency

__all__ = ["CLI", "EXTRAS", "LANGCHAIN", "POSTGRES", "raise_if_missing"]

EXTRAS: dict[str, dict[str, str]] = {
    "langchain": {"langchain_core": "langchain-core"},
    "cli": {"click": "click", "rich": "rich"},
    "postgres": {"psycopg": "psycopg", "psycopg_pool": "psycopg-pool"},
}
"""Extra of ``agent-toolguard-core`` -> {top-level module: the distribution that provides it}."""

LANGCHAIN = ("toolguard's LangChain support (tg.guard, guard.wrap, toolguard.tools)", "langchain")
CLI = ("the toolguard command (toolguard.cli, toolguard.viewer)", "cli")
POSTGRES = ("a PostgreSQL store (store: postgresql://...; toolguard.store.postgres)", "postgres")
"""(the feature, its extra): the first argument of :func:`raise_if_missing`."""


def raise_if_missing(feature: tuple[str, str], exc: ImportError) -> None:
    """Raise :class:`MissingDependency` (from ``exc``) naming ``feature`` and what to install
    when ``exc`` says that one of its extra's packages is not installed at all; return
    otherwise, for the caller to re-raise ``exc`` (a package that is installed but broken, or
    a name that moved, is not a missing extra).
    """
    what, extra = feature
    modules = EXTRAS[extra]
    if not isinstance(exc, ModuleNotFoundError) or exc.name not in modules:
        return
    wanted = " and ".join(sorted(set(modules.values())))
    if extra == "postgres":
        raise MissingDependency(
            f"{what} needs {wanted}; {exc.name!r} is not installed. Install them with "
            f'`pip install "agent-toolguard[postgres]"` (or '
            f"`pip install 'agent-toolguard-core[postgres]'`), or use a SQLite store (a path)",
            name=exc.name,
            extra=extra,
        ) from exc
    raise MissingDependency(
        f"{what} needs {wanted}; {exc.name!r} is not installed (agent-toolguard-core alone "
        f"leaves out {wanted}). Install the full toolguard with `pip install agent-toolguard` "
        f"(the guard, LangChain tools and the toolguard command), or just this part with "
        f"`pip install 'agent-toolguard-core[{extra}]'`",
        name=exc.name,
        extra=extra,
    ) from exc
