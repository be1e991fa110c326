"""The ``toolguard`` group and what its commands share.

:func:`main` (the click group), :class:`CliContext` (clock, sleep and colour, replaceable in
tests), :class:`CliError` and the exit codes, the ``--since``/``--until`` parameter types, the
shared option decorators (:func:`db_options`, :func:`filter_options`, :func:`json_option`) and
the helpers that open the audit database read-only. The commands live in
:mod:`toolguard.cli.audit` and :mod:`toolguard.cli.admin`; import :mod:`toolguard.cli` to get
``main`` with every command registered.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ..config import GuardConfig

from .. import __version__
from ..audit import AuditLog
from ..durations import parse_duration
from ..errors import AuditError, ConfigError, ToolGuardError
from ..keys import KeyRing, PublicKeys
from ..store import DEFAULT_DB, StoreLocation, StoreProtocol, open_store, parse_store
from ..text import printable
from ..viewer import Viewer

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "DEFAULT_DB",
    "DURATION",
    "EXIT_ERROR",
    "EXIT_FINDINGS",
    "WHEN",
    "CliContext",
    "CliError",
    "Duration",
    "When",
    "db_option",
    "db_options",
    "filter_options",
    "find_config",
    "json_option",
    "main",
    "parse_when",
    "resolve_db",
]

EXIT_FINDINGS = 1
"""``audit verify`` found damage, ``check`` found problems."""
EXIT_ERROR = 2
"""The command could not do its work (no database, bad config, unreadable key, ...)."""

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_CONFIG = Path("toolguard.yaml")
"""The config a command finds in the current folder when given no ``--config``."""
CONFIG_ENV = "TOOLGUARD_CONFIG"
"""The environment variable naming the config when ``--config`` is not given."""


@dataclass
class CliContext:
    """What the commands share; tests pass their own as ``CliRunner().invoke(main, obj=...)``."""

    clock: Callable[[], float] = time.time
    """The current time (``--since 1h`` counts back from it)."""
    sleep: Callable[[float], None] = time.sleep
    """Called between polls of ``audit tail -f``."""
    max_polls: int | None = None
    """Stop ``audit tail -f`` after this many empty polls (None: until interrupted)."""
    color: bool | None = None
    """None: colour and tables on a terminal only."""
    force_terminal: bool | None = None
    """Draw rich output even when not writing to a terminal."""

    def viewer(self, file: IO[str] | None = None) -> Viewer:
        return Viewer(file=file, color=self.color, force_terminal=self.force_terminal)


class CliError(click.ClickException):
    """A library error shown as ``Error: <message>`` with exit code :data:`EXIT_ERROR`; every
    line of the message shown through :func:`toolguard.text.printable` (a message may quote
    model-written text from the trail)."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__("\n".join(printable(line) for line in message.split("\n")))


def _set_color(ctx: click.Context, param: click.Parameter, value: bool | None) -> None:
    if value is not None:
        ctx.ensure_object(CliContext).color = value


class _Command(click.Command):
    """A command that also takes ``--color/--no-color`` after its name (``toolguard audit
    tasks --no-color``), with the same meaning as before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--color/--no-color"],
                default=None,
                expose_value=False,
                is_eager=True,
                callback=_set_color,
                help="Force colour and tables on or off (as `toolguard --color/--no-color`).",
            )
        )


class _Group(click.Group):
    """A group that turns toolguard errors into clean messages instead of tracebacks; its
    commands take ``--color/--no-color`` too (:class:`_Command`)."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise CliError(str(exc)) from exc
        except ToolGuardError as exc:
            raise CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        except sqlite3.Error as exc:  # a last resort: the store and _log wrap their own errors
            raise CliError(
                f"the audit database could not be read: {exc}; check it with "
                "`toolguard audit verify --db PATH`"
            ) from exc


def _obj(ctx: click.Context | None = None) -> CliContext:
    ctx = ctx or click.get_current_context()
    found = ctx.find_object(CliContext)
    return found if found is not None else CliContext()


# -- time ---------------------------------------------------------------------------------------


def parse_when(text: str, now: float) -> float:
    """A timestamp from ``90d``/``1h``/``30m`` (before ``now``) or an ISO date or date-time
    (UTC unless it names an offset). Raises :class:`ValueError` with a readable message."""
    value = text.strip()
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        moment = None
    if moment is not None:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    try:
        return now - parse_duration(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 1h, 7d) nor a date (2026-11-22 or "
            "2026-11-22T10:00)"
        ) from None


class When(click.ParamType[float, Any]):
    """``--since 1h`` / ``--before 90d`` / ``--until 2026-11-22T10:00`` -> a timestamp."""

    name = "when"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return float(value)
        now = _obj(ctx).clock() if ctx is not None else time.time()
        try:
            return parse_when(str(value), now)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Duration(click.ParamType[float, Any]):
    """``30s``, ``5m``, ``1h``, ``7d`` -> seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


WHEN = When()
DURATION = Duration()

# -- shared options -----------------------------------------------------------------------------


def _config_option(help_text: str) -> Callable[[_F], _F]:
    """``--config FILE`` (stored as ``config_path``); see :func:`find_config` for the default."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"{help_text} Default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG} if there is one.",
    )


def db_option(f: _F) -> _F:
    """``--db``: which audit database, a path or a URL (a string: ``click.Path`` would fold
    the ``//`` of ``postgresql://``)."""
    return click.option(
        "--db",
        "db_path",
        metavar="PATH|URL",
        help="The audit database: a SQLite file (a path or sqlite:///path) or a PostgreSQL "
        "server (postgresql://user:password@host:port/dbname). Default: the config's store, "
        "else $TOOLGUARD_DB, else ./.toolguard/audit.db. Without --config, only this database "
        "is used (no config is looked for).",
    )(f)


def db_options(f: _F) -> _F:
    """``--db`` and ``--config``: which audit database (and config) to use."""
    f = _config_option("A toolguard config file: its store, keys and identity limits are used.")(f)
    return db_option(f)


def json_option(f: _F) -> _F:
    """``--json``: machine-readable output (one object per line for lists)."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (one object per line for lists)."
    )(f)


_FILTERS: dict[str, Callable[[_F], _F]] = {
    "identity": click.option("--identity", help="Only this identity."),
    "tool": click.option("--tool", help="Only this tool."),
    "decision": click.option(
        "--decision",
        type=click.Choice(["allow", "deny", "would_deny", "revoke"]),
        help="Only events (or tasks with events) with this decision (would_deny: calls that "
        "ran in shadow mode although refused).",
    ),
    "task": click.option("--task", "task", help="Only this task (an id or a unique prefix)."),
    "since": click.option(
        "--since", type=WHEN, help="From this time: a duration ago (1h, 7d) or a date."
    ),
    "until": click.option(
        "--until", type=WHEN, help="Before this time: a duration ago (1h, 7d) or a date."
    ),
}


def filter_options(*names: str) -> Callable[[_F], _F]:
    """The named filter options (``identity``, ``tool``, ``decision``, ``task``, ``since``,
    ``until``), in that order in ``--help``."""

    def decorate(f: _F) -> _F:
        for name in reversed(names):
            f = _FILTERS[name](f)
        return f

    return decorate


# -- opening the database -----------------------------------------------------------------------


def find_config(
    config_path: Path | None, *, cwd: Path | None = None
) -> tuple[Path | None, str | None]:
    """The config a command uses, and where it came from: ``--config``, else
    ``$TOOLGUARD_CONFIG``, else ``./toolguard.yaml`` if the current folder has one, else none.

    The second item is ``"--config"``, ``"$TOOLGUARD_CONFIG"``, ``"./toolguard.yaml"`` or None.
    Relative paths inside the config (``store``, ``issuer.key_file``) resolve against the
    config file's folder, wherever it was found.
    """
    if config_path is not None:
        return config_path, "--config"
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return Path(env), f"${CONFIG_ENV}"
    found = (cwd or Path.cwd()) / DEFAULT_CONFIG
    if found.is_file():
        return (DEFAULT_CONFIG if cwd is None else found), f"./{DEFAULT_CONFIG}"
    return None, None


def _load(config_path: Path | None) -> GuardConfig | None:
    """The command's config (see :func:`find_config`), validated; None when there is none.

    An explicit ``--db`` or ``--key-file`` without ``--config`` turns the search off: the
    command then uses exactly the files it was given, not the keys or checkpoints of a config
    found in the current folder (which may belong to another trail).
    """
    if config_path is None:
        ctx = click.get_current_context(silent=True)
        params = ctx.params if ctx is not None else {}
        if params.get("db_path") is not None or params.get("key_file") is not None:
            return None
    path, origin = find_config(config_path)
    if path is None:
        return None
    from ..config import load_config  # pydantic only when a config is used

    if origin == f"${CONFIG_ENV}" and not path.exists():
        raise ConfigError(
            f"${CONFIG_ENV} names the config file {path}, which does not exist; fix or unset "
            f"{CONFIG_ENV}, or pass --config",
            source=str(path),
        )
    return load_config(path)


def resolve_db(db_path: str | None, config: GuardConfig | None) -> StoreLocation:
    """``--db``, else the config's store (the config from ``--config``, ``$TOOLGUARD_CONFIG``
    or ``./toolguard.yaml``), else ``$TOOLGUARD_DB``, else the default. A URL of a scheme
    toolguard does not support is a :class:`ConfigError` (never a file named after it)."""
    if db_path is not None:
        return parse_store(db_path)
    if config is not None:
        return config.store_location
    env = os.environ.get("TOOLGUARD_DB")
    return parse_store(env if env else DEFAULT_DB)


def _db_source(db_path: str | None, config: GuardConfig | None) -> str:
    """Where the database path came from, and what to do when nothing is there."""
    if db_path is not None:
        return "check the path given with --db"
    if config is not None:
        return (
            "it is the store of the config; it is created when a guard on this config starts "
            "its first task"
        )
    if os.environ.get("TOOLGUARD_DB"):
        return "it is $TOOLGUARD_DB; check the variable"
    return "pass --db PATH or --config FILE, or set TOOLGUARD_DB"


def _checked_store(location: StoreLocation, obj: CliContext, source: str = "") -> StoreProtocol:
    """A read-only store, refused with a clean error when missing or not toolguard's."""
    path = location.display
    if location.path is not None and not location.path.exists():
        raise CliError(f"no audit database at {path}" + (f"; {source}" if source else ""))
    store = open_store(location, readonly=True, clock=obj.clock)
    try:
        store.open()
    except AuditError as exc:
        store.close()
        if isinstance(exc.__cause__, sqlite3.DatabaseError):  # not a database, or damaged
            raise CliError(
                f"{path} cannot be read as a toolguard audit database ({exc.__cause__}); "
                "check the path"
            ) from exc
        raise
    except BaseException:
        store.close()
        raise
    return store


@contextmanager
def _log(
    db_path: str | None,
    config: GuardConfig | None,
    *,
    write: bool = False,
    create: bool = False,
    keys: KeyRing | PublicKeys | None = None,
    checkpoints: Path | None = None,
    also_checkpoints: Sequence[Path] = (),
) -> Iterator[AuditLog]:
    """The audit log of the command's database; ``write`` opens it writable (after checking
    it is a toolguard trail: a writable store would create or migrate the file), ``create``
    (with ``write``) starts a missing database anew instead of refusing it."""
    obj = _obj()
    location = resolve_db(db_path, config)
    path = location.display
    if write and create and location.path is not None and not location.path.exists():
        store = open_store(location, clock=obj.clock)
    else:
        store = _checked_store(location, obj, _db_source(db_path, config))
        if write:
            store.close()
            store = open_store(location, clock=obj.clock)
    if checkpoints is None and config is not None and db_path is None:
        checkpoints = config.checkpoints_path
    elif checkpoints is None and location.is_postgres:
        checkpoints = location.default_checkpoints()
    try:
        yield AuditLog(store, keys=keys, checkpoints=checkpoints, also_checkpoints=also_checkpoints)
    except sqlite3.Error as exc:  # a last resort: the store wraps its own errors
        raise AuditError(f"the audit database {path} could not be read: {exc}") from exc
    finally:
        store.close()


def _config_keys(config: GuardConfig) -> KeyRing:
    if config.issuer.key:
        return KeyRing.from_pem(config.issuer.key.get_secret_value())
    return KeyRing.load(
        config.resolve_path(config.issuer.key_file), create=False, now=_obj().clock()
    )


def _resolve_task(log: AuditLog, given: str | None) -> str | None:
    """The full id of ``--task`` / ``TASK_ID`` (an id or a unique prefix, any length for the
    readers); text no task id can hold (control, format, surrogate characters) is refused
    with a clean error before it reaches SQL."""
    if given is None:
        return None
    from ..incident import clean_target

    given = clean_target("task", given)
    found = log.find_tasks(given)
    if not found:
        raise CliError(
            f"no task {given!r} in {log.store.path}; list tasks with `toolguard audit tasks`"
        )
    if len(found) > 1:
        raise CliError(
            f"task id prefix {given!r} is ambiguous ({', '.join(f[:16] for f in found[:5])}"
            f"{', ...' if len(found) > 5 else ''}); give more characters"
        )
    return found[0]


def _task_json(row: dict[str, Any]) -> dict[str, Any]:
    """A task row for ``--json``: ``params`` decoded, the denial count as ``denials`` (the key
    ``audit summary`` uses too)."""
    out = dict(row)
    if "denied" in out:
        out["denials"] = out.pop("denied")
    if isinstance(out.get("params"), str):
        try:
            out["params"] = json.loads(out["params"])
        except ValueError:
            pass
    return out


# -- the group ----------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toolguard")
@click.option(
    "--color/--no-color",
    default=None,
    help="Force colour and tables on or off (default: on for a terminal, off when piped; "
    "NO_COLOR is honoured).",
)
@click.pass_context
def main(ctx: click.Context, color: bool | None) -> None:
    """toolguard: least privilege, budgets and an audit trail for AI-agent tools.

    Read the audit trail (toolguard audit ...), revoke tasks, identities or credentials,
    manage signing keys and check configs.
    """
    obj = ctx.ensure_object(CliContext)
    if color is not None:
        obj.color = color
