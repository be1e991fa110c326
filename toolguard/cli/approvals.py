"""``toolguard approvals list | show | approve | reject``: the queue of held calls.

A call an ``approve`` rule holds waits (for at most ``approval_ttl``) for its decision in the
trail; these commands list the requests and record a person's decision. Deciding a request
that is already decided or expired exits 1 and changes nothing (the check and the write are one
transaction: two people answering at once cannot both win).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..approval import decision_reason, parse_decision
from ..store.approvals import ApprovalRecord
from ..text import MAX_NAME_CHARS
from ._base import (
    EXIT_FINDINGS,
    CliError,
    _Group,
    _load,
    _log,
    _obj,
    db_options,
    json_option,
    main,
)

__all__ = ["approvals_group", "approve_cmd", "list_cmd", "reject_cmd", "show_cmd"]


@main.group("approvals", cls=_Group)
def approvals_group() -> None:
    """Calls held for a person's approval: list them, show one, approve or reject it."""


def _json(record: ApprovalRecord, now: float) -> dict[str, object]:
    return {
        **record.request(),
        "state": record.state(now),
        "decision": record.decision,
        "decided_at": record.decided_at,
        "by": record.by,
        "note": record.note,
        "age_s": round(max(0.0, now - record.requested_at), 3),
    }


def _one(records: list[ApprovalRecord], given: str, path: Path) -> ApprovalRecord:
    given = given.strip()
    if not given or len(given) > MAX_NAME_CHARS or not all(c in "0123456789abcdef" for c in given):
        raise CliError(
            f"{given[:40]!r} is not an approval request id (hex); see `toolguard approvals list`"
        )
    found = [r for r in records if r.request_id.startswith(given)]
    if not found:
        raise CliError(
            f"no approval request {given!r} in {path}; see `toolguard approvals list --all`"
        )
    if len(found) > 1:
        shown = ", ".join(r.request_id[:16] for r in found[:5])
        raise CliError(
            f"approval request id prefix {given!r} is ambiguous ({shown}); give more characters"
        )
    return found[0]


@approvals_group.command("list")
@db_options
@click.option("--all", "show_all", is_flag=True, help="Decided and expired requests too.")
@json_option
def list_cmd(db_path: str | None, config_path: Path | None, show_all: bool, as_json: bool) -> None:
    """The requests awaiting a decision (oldest first, with their age), or every one."""
    obj = _obj()
    config = _load(config_path)
    now = obj.clock()
    with _log(db_path, config) as log:
        records = log.store.approval_requests()
    if not show_all:
        records = [r for r in records if r.state(now) == "pending"]
    viewer = obj.viewer()
    if as_json:
        viewer.json_lines(_json(r, now) for r in records)
    else:
        viewer.approvals(records, now, title=None if show_all else "awaiting approval")


@approvals_group.command("show")
@click.argument("request_id")
@db_options
@json_option
def show_cmd(request_id: str, db_path: str | None, config_path: Path | None, as_json: bool) -> None:
    """One request: the held call, why, its digest, and its decision."""
    obj = _obj()
    config = _load(config_path)
    now = obj.clock()
    with _log(db_path, config) as log:
        record = _one(log.store.approval_requests(), request_id, log.store.path)
    viewer = obj.viewer()
    if as_json:
        viewer.json(_json(record, now))
    else:
        viewer.approval(record, now)


def _decide(
    request_id: str, db_path: str | None, config_path: Path | None, *, approved: bool,
    by: str, note: str | None, as_json: bool,
) -> None:  # fmt: skip
    try:
        decision = parse_decision(
            {"approved": approved, "by": by, **({"note": note} if note else {})}, default_by=by
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    obj = _obj()
    config = _load(config_path)
    kind = "approved" if approved else "rejected"
    with _log(db_path, config, write=True) as log:
        record = _one(log.store.approval_requests(), request_id, log.store.path)
        now = obj.clock()
        result = log.store.decide_approval(
            record, kind, by=decision.by, note=decision.note,
            reason=decision_reason(kind, decision.by, decision.note), now=now,
        )  # fmt: skip
    viewer = obj.viewer()
    found = result.record
    if as_json:
        viewer.json({**_json(found, now), "recorded": result.recorded})
    if result.recorded:
        if not as_json:
            viewer.done(f"{kind} request {found.request_id} ({found.tool} {found.operation} on "
                        f"{', '.join(found.resources)}) by {decision.by}")  # fmt: skip
        return
    if not as_json:
        state = found.state(now)
        why = (
            f"it expired at {found.expires_at:.0f} without a decision"
            if found.decision is None or found.decision == "approval_expired"
            else f"it was already {found.decision} by {found.by or '?'}"
        )
        viewer.warn(f"request {found.request_id} is {state}: {why}; nothing was recorded")
    raise SystemExit(EXIT_FINDINGS)


@approvals_group.command("approve")
@click.argument("request_id")
@db_options
@click.option("--by", required=True, help="Who approves (recorded in the trail).")
@click.option("--note", help="Why (recorded in the trail).")
@json_option
def approve_cmd(
    request_id: str, db_path: str | None, config_path: Path | None, by: str,
    note: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Approve REQUEST_ID (an id or a unique prefix): the held call runs, once."""
    _decide(request_id, db_path, config_path, approved=True, by=by, note=note, as_json=as_json)


@approvals_group.command("reject")
@click.argument("request_id")
@db_options
@click.option("--by", default="cli", show_default=True, help="Who rejects (recorded).")
@click.option("--note", help="Why (recorded in the trail; the agent reads it).")
@json_option
def reject_cmd(
    request_id: str, db_path: str | None, config_path: Path | None, by: str,
    note: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Reject REQUEST_ID (an id or a unique prefix): the held call is denied."""
    _decide(request_id, db_path, config_path, approved=False, by=by, note=note, as_json=as_json)
