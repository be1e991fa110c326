"""The ``toolguard`` command: audit viewer, revocation, keys and config checks.

One click group, :func:`main`, with shared option decorators (:func:`db_options`,
:func:`filter_options`, :func:`json_option`). Rendering lives in :mod:`toolguard.viewer` and
:mod:`toolguard.export`; queries in :mod:`toolguard.audit`. Library errors become a one-line
``Error: ...`` and exit code 2; findings (``audit verify`` found tampering, ``check`` found
problems) exit with 1; usage errors exit with 2, as click does.

The database is ``--db PATH``, else the ``store`` of ``--config FILE``, else ``$TOOLGUARD_DB``,
else ``./.toolguard/audit.db``. Readers open it read-only and never create it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

import click

if TYPE_CHECKING:
    from .config import GuardConfig

from . import audit as audit_mod
from .audit import AuditLog
from .durations import parse_duration
from .errors import ConfigError, ToolGuardError
from .keys import KeyRing, PublicKeys
from .store import Store
from .viewer import Viewer, format_time

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

EXIT_FINDINGS = 1
"""``audit verify`` found damage, ``check`` found problems."""
EXIT_ERROR = 2
"""The command could not do its work (no database, bad config, unreadable key, ...)."""

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_DB = Path(".toolguard") / "audit.db"


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
    """A library error shown as ``Error: <message>`` with exit code :data:`EXIT_ERROR`."""

    exit_code = EXIT_ERROR


class _Group(click.Group):
    """A group that turns toolguard errors into clean messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise CliError(str(exc)) from exc
        except ToolGuardError as exc:
            raise CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        except sqlite3.Error as exc:  # a last resort: the store wraps its own errors
            raise CliError(f"the audit database could not be read: {exc}") from exc


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
    """``--config FILE`` (stored as ``config_path``)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help=help_text,
    )


def db_options(f: _F) -> _F:
    """``--db`` and ``--config``: which audit database (and config) to use."""
    f = _config_option("A toolguard config file: its store, keys and identity limits are used.")(f)
    f = click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The audit database (default: the config's store, else $TOOLGUARD_DB, else "
        "./.toolguard/audit.db).",
    )(f)
    return f


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
        type=click.Choice(["allow", "deny", "revoke"]),
        help="Only events (or tasks with events) with this decision.",
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


def _load(config_path: Path | None) -> GuardConfig | None:
    if config_path is None:
        return None
    from .config import load_config  # pydantic only when a config is used

    return load_config(config_path)


def resolve_db(db_path: Path | None, config: GuardConfig | None) -> Path:
    """``--db``, else the config's store, else ``$TOOLGUARD_DB``, else the default."""
    if db_path is not None:
        return db_path
    if config is not None:
        return config.store_path
    env = os.environ.get("TOOLGUARD_DB")
    return Path(env) if env else DEFAULT_DB


def _checked_store(path: Path, obj: CliContext) -> Store:
    """A read-only store, refused with a clean error when missing or not toolguard's."""
    store = Store(path, readonly=True, clock=obj.clock)
    try:
        store.open()
    except BaseException:
        store.close()
        raise
    return store


@contextmanager
def _log(
    db_path: Path | None,
    config: GuardConfig | None,
    *,
    write: bool = False,
    keys: KeyRing | PublicKeys | None = None,
    checkpoints: Path | None = None,
) -> Iterator[AuditLog]:
    obj = _obj()
    path = resolve_db(db_path, config)
    store = _checked_store(path, obj)
    if write:  # checked first: a writable store would create or migrate the file
        store.close()
        store = Store(path, clock=obj.clock)
    if checkpoints is None and config is not None and db_path is None:
        checkpoints = config.checkpoints_path
    try:
        yield AuditLog(store, keys=keys, checkpoints=checkpoints)
    finally:
        store.close()


def _config_keys(config: GuardConfig) -> KeyRing:
    if config.issuer.key:
        return KeyRing.from_pem(config.issuer.key)
    return KeyRing.load(
        config.resolve_path(config.issuer.key_file), create=False, now=_obj().clock()
    )


def _resolve_task(log: AuditLog, given: str | None) -> str | None:
    if given is None:
        return None
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
    out = dict(row)
    if isinstance(out.get("params"), str):
        try:
            out["params"] = json.loads(out["params"])
        except ValueError:
            pass
    return out


# -- the group ----------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agent-toolguard", prog_name="toolguard")
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


@main.group(cls=_Group)
def audit() -> None:
    """Read, follow, summarise, verify, export and prune the audit trail."""


# -- audit tasks / show -------------------------------------------------------------------------


@audit.command("tasks")
@db_options
@filter_options("identity", "tool", "decision", "task", "since", "until")
@click.option("--status", help="Only tasks with this status (active, ok, error, revoked, ...).")
@click.option("--intent", help="Only tasks of this intent.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Show at most this many tasks, newest first (0: no limit).",
)
@json_option
def tasks_cmd(
    db_path: Path | None,
    config_path: Path | None,
    identity: str | None,
    tool: str | None,
    decision: str | None,
    task: str | None,
    since: float | None,
    until: float | None,
    status: str | None,
    intent: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tasks, newest first, with their calls, denials, errors and cost.

    --since and --until bound the task's start; --tool and --decision keep tasks with at
    least one such event.
    """
    config = _load(config_path)
    with _log(db_path, config) as log:
        rows = log.tasks(
            identity=identity,
            status=status,
            since=since,
            until=until,
            intent=intent,
            tool=tool,
            decision=decision,
            task_id=_resolve_task(log, task),
            limit=limit or None,
        )
    viewer = _obj().viewer()
    if as_json:
        viewer.json_lines(_task_json(r) for r in rows)
    else:
        viewer.tasks(rows)


@audit.command("show")
@click.argument("task_id")
@db_options
@json_option
def show_cmd(task_id: str, db_path: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Show the timeline of one task (TASK_ID: an id or a unique prefix).

    One line per event: start, each call with its decision, operation, resources, credential
    id, outcome, duration and cost (a call with no recorded outcome shows as incomplete),
    denials with their reason, revocations, and the end with its status.
    """
    config = _load(config_path)
    with _log(db_path, config) as log:
        full = cast(str, _resolve_task(log, task_id))
        task = log.task(full)
        rows = log.timeline(full)
    viewer = _obj().viewer()
    if task is None:  # pragma: no cover - resolved above
        raise CliError(f"no task {task_id!r}")
    if as_json:
        viewer.json({"task": _task_json(task), "timeline": rows})
    else:
        viewer.timeline(task, rows)


# -- audit tail / denied ------------------------------------------------------------------------


@audit.command("tail")
@db_options
@filter_options("identity", "tool", "decision", "task", "since")
@click.option(
    "--kind", help="Only events of this kind (request, outcome, denied, task_start, ...)."
)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the newest events to show first.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they are written.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between polls with --follow.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="With --follow: stop after this many new events.",
)
@json_option
def tail_cmd(
    db_path: Path | None,
    config_path: Path | None,
    identity: str | None,
    tool: str | None,
    decision: str | None,
    task: str | None,
    since: float | None,
    kind: str | None,
    lines: int,
    follow: bool,
    interval: float,
    count: int | None,
    as_json: bool,
) -> None:
    """Show the newest events; with -f, follow new ones (Ctrl-C stops)."""
    obj = _obj()
    config = _load(config_path)
    viewer = obj.viewer()
    with _log(db_path, config) as log:
        filters: dict[str, Any] = {
            "identity": identity,
            "tool": tool,
            "decision": decision,
            "task_id": _resolve_task(log, task),
            "since": since,
            "kind": kind,
        }
        head = log.head_seq()
        first = log.latest(lines, before_seq=head + 1, **filters) if lines else []
        if not follow:
            if as_json:
                viewer.json_lines(e.to_dict() for e in first)
            else:
                viewer.events(first)
            return
        emit: Callable[[Any], None] = (
            (lambda e: viewer.json(e.to_dict())) if as_json else viewer.event
        )
        for event in first:
            emit(event)
        seen = 0
        try:
            for event in log.follow(
                after_seq=head,
                interval=interval,
                sleep=obj.sleep,
                max_polls=obj.max_polls,
                **filters,
            ):
                emit(event)
                viewer.file.flush()
                seen += 1
                if count is not None and seen >= count:
                    break
        except KeyboardInterrupt:  # pragma: no cover - interactive
            pass


@audit.command("denied")
@db_options
@filter_options("identity", "tool", "task", "since", "until")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many of the newest denials.",
)
@json_option
def denied_cmd(
    db_path: Path | None,
    config_path: Path | None,
    identity: str | None,
    tool: str | None,
    task: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the newest denials with their reason and rule."""
    config = _load(config_path)
    with _log(db_path, config) as log:
        events = log.latest(
            limit,
            kind="denied",
            identity=identity,
            tool=tool,
            task_id=_resolve_task(log, task),
            since=since,
            until=until,
        )
    viewer = _obj().viewer()
    if as_json:
        viewer.json_lines(e.to_dict() for e in events)
    else:
        viewer.events(events, empty="no denials match")


# -- audit summary ------------------------------------------------------------------------------


@audit.command("summary")
@db_options
@click.option(
    "--by",
    type=click.Choice(["identity", "tool"]),
    help="Only per identity or only per tool (default: both).",
)
@click.option(
    "--since",
    type=WHEN,
    default="24h",
    show_default=True,
    help="From this time: a duration ago (1h, 7d) or a date.",
)
@click.option("--until", type=WHEN, help="Before this time (default: now).")
@click.option(
    "--idle-days",
    type=click.FloatRange(min=0),
    default=7.0,
    show_default=True,
    help="List identities with no task for this many days.",
)
@click.option(
    "--spike-window",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Compare the calls in this last window with the usual rate.",
)
@click.option(
    "--spike-factor",
    type=click.FloatRange(min=1.0),
    default=3.0,
    show_default=True,
    help="Report a spike when the recent rate is this many times the usual one.",
)
@json_option
def summary_cmd(
    db_path: Path | None,
    config_path: Path | None,
    by: str | None,
    since: float,
    until: float | None,
    idle_days: float,
    spike_window: float,
    spike_factor: float,
    as_json: bool,
) -> None:
    """Usage per identity and per tool: calls, denials, errors, cost, rate peaks (most calls
    in any 60 seconds), today's use against the identity's quota (with --config), spikes
    against the usual rate (the 7 days before), and identities with no recent task."""
    obj = _obj()
    config = _load(config_path)
    limits = {name: ident.limits for name, ident in config.identities.items()} if config else {}
    with _log(db_path, config) as log:
        summary = log.summary(
            by=(by,) if by else audit_mod.GROUPS,
            since=since,
            until=until,
            now=obj.clock(),
            limits=limits,
            identities=sorted(config.identities) if config else (),
            idle_days=idle_days,
            spike_window=spike_window,
            spike_factor=spike_factor,
        )
    viewer = obj.viewer()
    if as_json:
        viewer.json(summary.to_dict())
    else:
        viewer.summary(summary)


# -- audit verify -------------------------------------------------------------------------------


@audit.command("verify")
@db_options
@click.option(
    "--jwks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check checkpoint signatures with these public keys (default: the config's key).",
)
@click.option(
    "--checkpoints",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The checkpoint file (default: the config's, else <db>.checkpoints).",
)
@json_option
def verify_cmd(
    db_path: Path | None,
    config_path: Path | None,
    jwks: Path | None,
    checkpoints: Path | None,
    as_json: bool,
) -> None:
    """Recompute the hash chain and check it against the signed checkpoints.

    Exits with 1 when the trail was modified, truncated or rewritten.
    """
    config = _load(config_path)
    keys: KeyRing | PublicKeys | None = None
    if jwks is not None:
        keys = PublicKeys.from_jwks(jwks)
    elif config is not None:
        keys = _config_keys(config)
    with _log(db_path, config, keys=keys, checkpoints=checkpoints) as log:
        report = log.verify()
    viewer = _obj().viewer()
    if as_json:
        viewer.json(report.to_dict())
    else:
        viewer.verify(report)
    if not report.ok:
        click.get_current_context().exit(EXIT_FINDINGS)


# -- audit export -------------------------------------------------------------------------------


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    try:
        handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}; check the path") from exc
    with handle:
        yield handle


@audit.command("export")
@db_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "html"]),
    default="json",
    show_default=True,
    help="json: one event per line; csv: a header and one row per event; html: one "
    "self-contained page with the summary, a usage chart and every task's timeline.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default: standard output).",
)
@filter_options("identity", "tool", "decision", "task", "since", "until")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="html: at most this many tasks, newest first (0: no limit).",
)
@json_option
def export_cmd(
    db_path: Path | None,
    config_path: Path | None,
    fmt: str,
    output: Path | None,
    identity: str | None,
    tool: str | None,
    decision: str | None,
    task: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """Export events (json, csv) or a report page (html). --json is --format json."""
    from .export import write_csv, write_html, write_jsonl

    obj = _obj()
    config = _load(config_path)
    if as_json:
        fmt = "json"
    with _log(db_path, config) as log:
        task_id = _resolve_task(log, task)
        with _output(output) as out:
            if fmt == "html":
                count = write_html(
                    log,
                    out,
                    now=obj.clock(),
                    since=since,
                    until=until,
                    identity=identity,
                    tool=tool,
                    decision=decision,
                    task_id=task_id,
                    limit=limit or None,
                    limits=(
                        {n: i.limits for n, i in config.identities.items()} if config else None
                    ),
                    identities=sorted(config.identities) if config else (),
                    source=str(log.store.path),
                )
                what = "task(s)"
            else:
                rows = log.iter_rows(
                    identity=identity,
                    tool=tool,
                    decision=decision,
                    task_id=task_id,
                    since=since,
                    until=until,
                )
                count = (write_jsonl if fmt == "json" else write_csv)(rows, out)
                what = "event(s)"
    if output is not None and str(output) != "-":
        click.echo(f"exported {count} {what} to {output}", err=True)


# -- audit prune --------------------------------------------------------------------------------


@audit.command("prune")
@db_options
@click.option(
    "--before",
    type=WHEN,
    required=True,
    help="Remove events older than this: a duration ago (90d) or a date.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The issuer's signing key, to sign the record of the cut (default: the config's).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
def prune_cmd(
    db_path: Path | None,
    config_path: Path | None,
    before: float,
    key_file: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove old events while keeping the chain verifiable.

    A signed record of the cut (the first kept seq and the hash of the last removed event)
    is appended to the checkpoint file, and the cut is recorded in the database; `audit
    verify` starts from there. Ended tasks with no event left and expired credential ids go
    too; revocations are kept. Needs the issuer's key (--config or --key-file).
    """
    obj = _obj()
    config = _load(config_path)
    keys: KeyRing | None = None
    if key_file is not None:
        keys = KeyRing.load(key_file, create=False, now=obj.clock())
    elif config is not None:
        keys = _config_keys(config)
    elif not dry_run:
        raise CliError(
            "pruning signs a record of the cut with the issuer's key, so that `audit verify` "
            "accepts it; pass --config or --key-file"
        )
    with _log(db_path, config, write=not dry_run, keys=keys) as log:
        result = log.prune(before=before, now=obj.clock(), dry_run=dry_run)
    viewer = obj.viewer()
    if as_json:
        viewer.json(result.to_dict())
    else:
        viewer.prune(result)


# -- revoke / enable ----------------------------------------------------------------------------


@main.command("revoke")
@db_options
@click.option("--task", "task", help="Revoke this task and its children (id or unique prefix).")
@click.option("--identity", help="Revoke every credential of this identity; end its tasks.")
@click.option("--jti", help="Revoke one credential by its id.")
@click.option(
    "--reason",
    default="revoked from the command line",
    show_default=True,
    help="Why (recorded in the trail).",
)
@click.option(
    "--disable",
    is_flag=True,
    help="With --identity: also refuse its new tasks until `toolguard enable`.",
)
@json_option
def revoke_cmd(
    db_path: Path | None,
    config_path: Path | None,
    task: str | None,
    identity: str | None,
    jti: str | None,
    reason: str,
    disable: bool,
    as_json: bool,
) -> None:
    """Revoke a task, an identity or one credential (give exactly one).

    Verifiers that share the database reject the credentials at once; active tasks end.
    """
    if sum(v is not None for v in (task, identity, jti)) != 1:
        raise click.UsageError("give exactly one of --task, --identity or --jti")
    if disable and identity is None:
        raise click.UsageError("--disable goes with --identity")
    obj = _obj()
    config = _load(config_path)
    viewer = obj.viewer()
    with _log(db_path, config) as log:
        task_id = _resolve_task(log, task)
    if config is not None and identity is not None and identity not in config.identities:
        viewer.warn(f"warning: identity {identity!r} is not in the config")
    target = {"task_id": task_id, "identity": identity, "jti": jti}
    if config is not None and db_path is None:
        from .engine import Guard

        with Guard(config, clock=obj.clock) as guard:
            ended = guard.revoke(**target, reason=reason, disable=disable, by="cli")
    else:
        with _log(db_path, config, write=True) as log:
            ended = audit_mod.revoke(
                log.store, **target, reason=reason, disable=disable, by="cli", now=obj.clock()
            )
    scope, value = next((k, v) for k, v in target.items() if v is not None)
    if as_json:
        viewer.json(
            {"revoked": {scope: value}, "reason": reason, "disabled": disable, "ended": ended}
        )
        return
    what = {"task_id": "task", "identity": "identity", "jti": "credential"}[scope]
    viewer.done(f"revoked {what} {value}" + (" and disabled it" if disable else ""))
    if ended:
        viewer.line(f"ended {len(ended)} active task(s): {', '.join(ended)}")


@main.command("enable")
@click.argument("identity")
@db_options
@click.option(
    "--reason",
    default="re-enabled from the command line",
    show_default=True,
    help="Why (recorded in the trail).",
)
@json_option
def enable_cmd(
    identity: str, db_path: Path | None, config_path: Path | None, reason: str, as_json: bool
) -> None:
    """Let IDENTITY start tasks again after `toolguard revoke --identity --disable`."""
    obj = _obj()
    config = _load(config_path)
    if config is not None and db_path is None:
        from .engine import Guard

        with _log(db_path, config):  # refuse a missing database before the guard creates one
            pass
        with Guard(config, clock=obj.clock) as guard:
            guard.enable(identity, reason=reason)
    else:
        with _log(db_path, config, write=True) as log:
            audit_mod.enable(log.store, identity, reason=reason, now=obj.clock())
    viewer = obj.viewer()
    if as_json:
        viewer.json({"enabled": identity, "reason": reason})
    else:
        viewer.done(f"enabled identity {identity}")


# -- keys ---------------------------------------------------------------------------------------


@main.group("keys", cls=_Group)
def keys_group() -> None:
    """Create, rotate and publish the issuer's signing keys."""


def key_options(f: _F) -> _F:
    """``--key-file``, ``--config`` and ``--algorithm``."""
    f = click.option(
        "--algorithm",
        type=click.Choice(["EdDSA", "ES256"]),
        help="Key algorithm (default: the config's, else EdDSA; rotate keeps the current one).",
    )(f)
    f = _config_option("Take the key file and algorithm from this config's issuer section.")(f)
    f = click.option(
        "--key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The PEM private key (default: the config's issuer.key_file, else "
        ".toolguard/signing-key.pem).",
    )(f)
    return f


def _key_target(
    key_file: Path | None, config_path: Path | None, algorithm: str | None
) -> tuple[Path, GuardConfig | None, str | None]:
    config = _load(config_path)
    if key_file is None:
        key_file = (
            config.resolve_path(config.issuer.key_file)
            if config is not None
            else Path(".toolguard") / "signing-key.pem"
        )
    if algorithm is None and config is not None:
        algorithm = config.issuer.algorithm
    return key_file, config, algorithm


@keys_group.command("create")
@key_options
@json_option
def keys_create(
    key_file: Path | None, config_path: Path | None, algorithm: str | None, as_json: bool
) -> None:
    """Create a signing key (mode 0600) if there is none yet."""
    path, _, alg = _key_target(key_file, config_path, algorithm)
    if path.exists():
        raise CliError(
            f"a signing key already exists at {path}; rotate it with `toolguard keys rotate`"
        )
    ring = KeyRing.load(path, algorithm=cast(Any, alg or "EdDSA"), create=True)
    viewer = _obj().viewer()
    if as_json:
        viewer.json({"path": str(path), "kid": ring.active.kid, "algorithm": ring.active.algorithm})
    else:
        viewer.done(f"created {ring.active.algorithm} key {ring.active.kid} at {path}")


@keys_group.command("rotate")
@key_options
@click.option(
    "--keep",
    type=DURATION,
    help="Keep trusting the old public key this long (default: the config's issuer.max_ttl, "
    "else 1h); at least the longest credential lifetime.",
)
@json_option
def keys_rotate(
    key_file: Path | None,
    config_path: Path | None,
    algorithm: str | None,
    keep: float | None,
    as_json: bool,
) -> None:
    """Replace the signing key; the old public key stays in the JWKS for --keep."""
    path, config, alg = _key_target(key_file, config_path, algorithm)
    if keep is None:
        keep = config.issuer.effective_max_ttl if config is not None else 3600.0
    now = _obj().clock()
    ring = KeyRing.rotate(path, algorithm=cast(Any, alg), now=now, max_ttl=keep)
    old = ring.retired[-1]
    viewer = _obj().viewer()
    if as_json:
        viewer.json(
            {
                "path": str(path),
                "kid": ring.active.kid,
                "algorithm": ring.active.algorithm,
                "retired": old.kid,
                "keep_until": old.keep_until,
            }
        )
    else:
        viewer.done(f"new {ring.active.algorithm} key {ring.active.kid} at {path}")
        viewer.line(
            f"old key {old.kid} is trusted for verification until {format_time(old.keep_until)}"
        )


@keys_group.command("jwks")
@key_options
@json_option
def keys_jwks(
    key_file: Path | None, config_path: Path | None, algorithm: str | None, as_json: bool
) -> None:
    """Print the public keys as a JWKS document (for verifiers; no private material)."""
    path, config, _ = _key_target(key_file, config_path, algorithm)
    if key_file is None and config is not None and config.issuer.key:
        ring = KeyRing.from_pem(config.issuer.key)
    else:
        ring = KeyRing.load(path, create=False, now=_obj().clock())
    doc = ring.jwks()
    if as_json:
        _obj().viewer().json(doc)
    else:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))


# -- check --------------------------------------------------------------------------------------


@main.command("check")
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--schema", is_flag=True, help="Print the config's JSON Schema (for editors).")
@json_option
def check_cmd(config: Path | None, schema: bool, as_json: bool) -> None:
    """Validate CONFIG and print every problem with its location; exit 1 if any."""
    viewer = _obj().viewer()
    if schema:
        from .config import GuardConfig

        doc = GuardConfig.json_schema()
        if as_json:
            viewer.json(doc)
        else:
            click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if config is None:
        raise click.UsageError("give a CONFIG file to check, or --schema")
    try:
        from .config import load_config

        loaded = load_config(config)
    except ConfigError as exc:
        problems = exc.problems or [("", str(exc))]
        if as_json:
            viewer.json(
                {
                    "ok": False,
                    "source": str(config),
                    "problems": [{"location": loc, "message": msg} for loc, msg in problems],
                }
            )
        else:
            viewer.line(f"{config}: {len(problems)} problem(s)", "bold red")
            for loc, msg in problems:
                viewer.line(f"  {loc or '<root>'}: {msg}", "red")
        click.get_current_context().exit(EXIT_FINDINGS)
    counts = {
        "identities": len(loaded.identities),
        "tools": len(loaded.tools),
        "intents": len(loaded.intents),
    }
    if as_json:
        viewer.json({"ok": True, "source": str(config), **counts})
    else:
        viewer.done(
            f"ok: {config}: {counts['identities']} identities, {counts['tools']} tools, "
            f"{counts['intents']} intents"
        )
