"""``toolguard audit ...``: read, follow, summarise, verify, export and prune the audit trail.

The ``audit`` group and its subcommands ``tasks``, ``show``, ``tail``, ``denied``, ``summary``,
``verify``, ``acknowledge``, ``export``, ``prune`` and ``replay``. Queries live in
:mod:`toolguard.audit` (and :mod:`toolguard.replay`), rendering in :mod:`toolguard.viewer` and
:mod:`toolguard.export`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import click

from .. import audit as audit_mod
from ..keys import KeyRing, PublicKeys
from ..numbers import MAX_COUNT
from ..text import printable
from ..viewer import plural
from ._base import (
    DURATION,
    EXIT_FINDINGS,
    WHEN,
    CliError,
    _config_keys,
    _Group,
    _load,
    _log,
    _obj,
    _resolve_task,
    _task_json,
    db_option,
    db_options,
    filter_options,
    find_config,
    json_option,
    main,
)

__all__ = [
    "acknowledge_cmd",
    "audit",
    "denied_cmd",
    "export_cmd",
    "prune_cmd",
    "replay_cmd",
    "show_cmd",
    "summary_cmd",
    "tail_cmd",
    "tasks_cmd",
    "verify_cmd",
]


@main.group(cls=_Group)
def audit() -> None:
    """Read, follow, summarise, verify, export and prune the audit trail."""


TASK_STATUSES = (
    "active",
    "ok",
    "error",
    "expired",
    "revoked",
    "parent-ended",
    "cancelled",
    "abandoned",
)
"""The statuses toolguard gives tasks; ``--status`` also takes any other status found in the
trail (``TaskSession.end(status)`` takes any word)."""

EVENT_KINDS = (
    "task_start",
    "task_resume",
    "request",
    "outcome",
    "denied",
    "task_end",
    "revoke",
    "enable",
    "acknowledge",
    "approval_requested",
    "approved",
    "rejected",
    "approval_expired",
)
"""The kinds of event toolguard writes; ``--kind`` also takes any other kind found in the
trail."""


def _check_value(
    log: audit_mod.AuditLog, option: str, value: str | None, known: tuple[str, ...]
) -> None:
    """Refuse a ``--status``/``--kind`` value that neither toolguard nor the trail knows,
    instead of answering "no tasks match"."""
    if value is None or value in known:
        return
    used = log.store.task_status_used if option == "--status" else log.store.event_kind_used
    if used(value):
        return
    raise click.BadParameter(
        f"{value!r} is not a {option[2:]} toolguard records (one of: {', '.join(known)})",
        param_hint=f"'{option}'",
    )


# -- audit tasks / show -------------------------------------------------------------------------


@audit.command("tasks")
@db_options
@filter_options("identity", "tool", "decision", "task", "since", "until")
@click.option(
    "--status",
    help="Only tasks with this status (active, ok, error, expired, revoked, parent-ended, "
    "cancelled, abandoned, or another status found in the trail).",
)
@click.option("--intent", help="Only tasks of this intent.")
@click.option(
    "--limit",
    type=click.IntRange(min=0, max=MAX_COUNT),
    default=50,
    show_default=True,
    help="Show at most this many tasks, newest first (0: no limit).",
)
@json_option
def tasks_cmd(
    db_path: str | None,
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
        _check_value(log, "--status", status, TASK_STATUSES)
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
def show_cmd(task_id: str, db_path: str | None, config_path: Path | None, as_json: bool) -> None:
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
    "--kind",
    help="Only events of this kind (task_start, task_resume, request, outcome, denied, "
    "task_end, revoke, enable, acknowledge, or another kind found in the trail).",
)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0, max=MAX_COUNT),
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
    type=click.IntRange(min=1, max=MAX_COUNT),
    help="With --follow: stop after this many new events.",
)
@json_option
def tail_cmd(
    db_path: str | None,
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
        _check_value(log, "--kind", kind, EVENT_KINDS)
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
    type=click.IntRange(min=0, max=MAX_COUNT),
    default=50,
    show_default=True,
    help="Show at most this many of the newest denials (0: no limit).",
)
@click.option(
    "--would-deny",
    "would_deny",
    is_flag=True,
    help="Show the calls that ran in shadow mode although refused (would_deny) instead.",
)
@json_option
def denied_cmd(
    db_path: str | None,
    config_path: Path | None,
    identity: str | None,
    tool: str | None,
    task: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    would_deny: bool,
    as_json: bool,
) -> None:
    """Show the newest denials with their reason and rule; with --would-deny, the calls that
    shadow mode let run although the policy or a budget refused them."""
    config = _load(config_path)
    which: dict[str, str] = (
        {"kind": "request", "decision": "would_deny"} if would_deny else {"kind": "denied"}
    )
    with _log(db_path, config) as log:
        newest = log.events(
            limit=limit or None,
            newest_first=True,
            **which,
            identity=identity,
            tool=tool,
            task_id=_resolve_task(log, task),
            since=since,
            until=until,
        )
        events = newest[::-1]
    viewer = _obj().viewer()
    if as_json:
        viewer.json_lines(e.to_dict() for e in events)
    else:
        viewer.events(
            events, empty="no would-deny calls match" if would_deny else "no denials match"
        )


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
    db_path: str | None,
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
        now = obj.clock()
        awaiting = [r for r in log.store.approval_requests() if r.state(now) == "pending"]
    viewer = obj.viewer()
    if as_json:
        viewer.json(
            {
                **summary.to_dict(),
                "awaiting_approval": [
                    {**r.request(), "age_s": round(max(0.0, now - r.requested_at), 3)}
                    for r in awaiting
                ],
            }
        )
    else:
        if awaiting:  # what an on-call person looks for first
            viewer.approvals(awaiting, now, title=f"awaiting approval ({len(awaiting)})")
        viewer.summary(summary)


# -- audit verify -------------------------------------------------------------------------------


def _local_checkpoints(
    ctx: click.Context, param: click.Parameter, value: Path | tuple[Path, ...] | None
) -> Path | tuple[Path, ...] | None:
    """``--checkpoints`` names local files: an empty value or a URL (which may hold a
    password, and would be read as a missing file: "not anchored", exit 0) is refused."""
    for path in (value,) if isinstance(value, Path) else value or ():
        text = str(path)
        if not text.strip() or text == ".":
            raise click.BadParameter("give the path of a checkpoint file, not an empty value")
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:/", text):  # a drive letter C:/ is a path
            raise click.BadParameter(
                "a checkpoint file is a local path, not a URL; copy each host's file here "
                "and give its path"
            )
    return value


def _existing_checkpoints(
    ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]
) -> tuple[Path, ...]:
    """``verify --checkpoints`` names files that exist: a file named on purpose and missing (a
    typo, or a file someone deleted) must not read as "not anchored", exit 0."""
    _local_checkpoints(ctx, param, value)
    for path in value:
        if not path.exists():
            raise click.BadParameter(
                f"no checkpoint file at {printable(str(path))}; give the path of each host's "
                "file (omit --checkpoints to use the config's, which may not exist yet)"
            )
    return value


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
    callback=_existing_checkpoints,
    multiple=True,
    help="A checkpoint file (default: the config's, else <db>.checkpoints). Repeat it for a "
    "PostgreSQL store written by several hosts: one file per host.",
)
@json_option
def verify_cmd(
    db_path: str | None,
    config_path: Path | None,
    jwks: Path | None,
    checkpoints: tuple[Path, ...],
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
    files = list(checkpoints)
    if not files and config is not None and config.checkpoints:
        files = [config.checkpoints_path]  # the config's checkpoints:, with --db too
    first = files[0] if files else None
    with _log(db_path, config, keys=keys, checkpoints=first, also_checkpoints=files[1:]) as log:
        report = log.verify()
    viewer = _obj().viewer()
    if as_json:
        viewer.json(report.to_dict())
    else:
        viewer.verify(report)
    if not report.ok:
        click.get_current_context().exit(EXIT_FINDINGS)


# -- audit acknowledge --------------------------------------------------------------------------


@audit.command("acknowledge")
@db_options
@click.option(
    "--truncated",
    is_flag=True,
    help="Accept that the trail ends before its newest signed checkpoint (e.g. a power cut "
    "with durability: normal lost the newest commits).",
)
@click.option(
    "--key-change",
    is_flag=True,
    help="Accept that the newest checkpoint is signed by a key this guard does not hold (the "
    "signing key was lost or replaced).",
)
@click.option("--by", required=True, help="Who acknowledges (recorded and signed).")
@click.option("--reason", required=True, help="Why (recorded and signed).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The issuer's signing key, to sign the gap record (default: the config's).",
)
@click.option(
    "--checkpoints",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_local_checkpoints,
    help="The checkpoint file (default: the config's, else <db>.checkpoints).",
)
@json_option
def acknowledge_cmd(
    db_path: str | None,
    config_path: Path | None,
    truncated: bool,
    key_change: bool,
    by: str,
    reason: str,
    key_file: Path | None,
    checkpoints: Path | None,
    as_json: bool,
) -> None:
    """Let guards continue a trail that is behind its newest signed checkpoint, or whose
    checkpoints are signed by a key they do not hold.

    Guards refuse to start on such a trail. After investigating (`audit verify`), this appends
    an `acknowledge` event and a signed gap record to the checkpoint file; `audit verify` then
    reports the gap as acknowledged (a note) instead of as damage. Name every problem found
    (--truncated, --key-change); needs the issuer's key (--config or --key-file).
    """
    obj = _obj()
    config = _load(config_path)
    if not (truncated or key_change):
        raise CliError("say what to acknowledge: --truncated and/or --key-change")
    keys: KeyRing
    if key_file is not None:
        keys = KeyRing.load(key_file, create=False, now=obj.clock())
    elif config is not None:
        keys = _config_keys(config)
    else:
        raise CliError(
            "acknowledging signs a gap record with the issuer's key; pass --config or --key-file"
        )
    kinds = [k for k, given in (("truncated", truncated), ("key-change", key_change)) if given]
    with _log(
        db_path, config, write=True, create=truncated, keys=keys, checkpoints=checkpoints
    ) as log:
        record = log.integrity.acknowledge(kinds, by=by, reason=reason, now=obj.clock())
    viewer = obj.viewer()
    if as_json:
        viewer.json(record)
    else:
        viewer.done(
            f"acknowledged {', '.join(record['acknowledged'])} by {record['by']}: the trail "
            f"ended at seq {record['trail_end']}, the newest checkpoint covered seq "
            f"{record['covers']['seq']}; gap record signed at seq {record['seq']} in "
            f"{log.checkpoints_path}"
        )


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
    type=click.IntRange(min=0, max=MAX_COUNT),
    default=500,
    show_default=True,
    help="html: at most this many tasks, newest first (0: no limit).",
)
@json_option
def export_cmd(
    db_path: str | None,
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
    from ..export import write_csv, write_html, write_jsonl

    obj = _obj()
    if as_json:
        given = click.get_current_context().get_parameter_source("fmt")
        if fmt != "json" and given is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(
                f"--json means --format json; it cannot go with --format {fmt} (give one of them)"
            )
        fmt = "json"
    config = _load(config_path)
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
                    budgets=({n: i.budget for n, i in config.intents.items()} if config else None),
                    source=str(log.store.path),
                )
                what = "task"
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
                what = "event"
    if output is not None and str(output) != "-":
        click.echo(f"exported {plural(count, what)} to {output}", err=True)


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
@click.option(
    "--checkpoints",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_local_checkpoints,
    help="The checkpoint file that gets the signed record of the cut (default: the config's, "
    "else <db>.checkpoints; for PostgreSQL a file of this host under ./.toolguard).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
def prune_cmd(
    db_path: str | None,
    config_path: Path | None,
    before: float,
    key_file: Path | None,
    checkpoints: Path | None,
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
    with _log(db_path, config, write=not dry_run, keys=keys, checkpoints=checkpoints) as log:
        result = log.prune(before=before, now=obj.clock(), dry_run=dry_run)
    viewer = obj.viewer()
    if as_json:
        viewer.json(result.to_dict())
    else:
        viewer.prune(result)


# -- audit replay -------------------------------------------------------------------------------


@audit.command("replay")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config to try: the recorded calls are re-evaluated under it (default: "
    "$TOOLGUARD_CONFIG, else ./toolguard.yaml, e.g. after editing it).",
)
@db_option
@click.option(
    "--since",
    type=WHEN,
    default="7d",
    show_default=True,
    help="Replay the calls from this time: a duration ago (1h, 7d) or a date.",
)
@click.option("--until", type=WHEN, help="Replay the calls before this time (default: now).")
@click.option("--intent", help="Only the calls of tasks of this intent.")
@json_option
def replay_cmd(
    config_path: Path | None,
    db_path: str | None,
    since: float,
    until: float | None,
    intent: str | None,
    as_json: bool,
) -> None:
    """Re-evaluate the recorded calls under another config and show what would change.

    Lists the calls that ran and would now be denied (by the policy or a budget), those that
    were denied and would now run, the budgets that would run out (first when), and the
    calls that cannot be replayed exactly (an argument the new rules need was redacted or
    cut in the trail). Reads the trail only; writes nothing. Exits with 1 when a call would
    newly be denied, 0 otherwise, 2 on errors.
    """
    from ..replay import replay

    config = _load(config_path)
    if config is None:
        raise CliError(
            "replay re-evaluates the trail under a config: pass --config NEW.yaml (with --db "
            "for a trail other than its store)"
        )
    shown = str(config_path or find_config(None)[0])
    if intent is not None and intent not in config.intents:
        known = ", ".join(sorted(config.intents)) or "none"
        raise CliError(f"intent {intent!r} is not in {shown} (its intents: {known})")
    with _log(db_path, config) as log:
        try:
            report = replay(log.store, config, since=since, until=until, intent=intent)
        except (ValueError, TypeError, KeyError) as exc:  # a row no guard writes
            raise CliError(
                f"the trail holds a malformed row ({type(exc).__name__}: {exc}); nothing was "
                "replayed. Check it with `toolguard audit verify`"
            ) from exc
    viewer = _obj().viewer()
    if as_json:
        viewer.json(report.to_dict())
    else:
        viewer.replay(report, shown)
    if report.exit_code:
        click.get_current_context().exit(EXIT_FINDINGS)
