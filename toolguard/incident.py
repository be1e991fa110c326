"""Incident commands: resolve what to revoke or enable, record it, say exactly what it did.

Shared by :meth:`toolguard.Guard.revoke` / :meth:`~toolguard.Guard.enable` and the
``toolguard revoke`` / ``toolguard enable`` commands, so both follow the same rules:

- **Every target is resolved before anything is written.** A task (``task_id``) or a credential
  (``jti``) is given by its full id or by a unique prefix of at least :data:`MIN_PREFIX`
  characters (the viewer prints 8); the full id is what gets recorded. An identity is given by
  its exact name and must be known from the config or the trail. An unknown target, an
  ambiguous prefix (its candidates are listed) or a shorter prefix raises
  :class:`~toolguard.errors.UnknownTarget` and records nothing: a revocation that matches
  nothing is never reported as a success.
- **The result says what was revoked**: the credentials that were live (issued to an active
  task, not expired, not revoked yet), counted just before the revocation is written, and the
  active tasks it ended (the target and its delegated child tasks).
- **Revoking what is already revoked** (an ended task, a credential of an ended task, an expired
  or revoked credential, an identity with nothing live) is recorded again (the reason of the
  new revocation is in the trail, and a verifier's clock leeway never lets a just-expired
  credential slip through) and reported as such in :attr:`Revocation.already`; it is no error.
- ``enable`` of an identity that is not disabled writes nothing and says so
  (:attr:`Enablement.changed` is False).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from .errors import UnknownTarget
from .formatting import plural
from .store import StoreProtocol, StoreReader

__all__ = [
    "MAX_TARGET",
    "MIN_PREFIX",
    "Enablement",
    "Revocation",
    "clean_target",
    "enable_identity",
    "resolve_identity",
    "resolve_jti",
    "resolve_task",
    "revoke_target",
]

MIN_PREFIX = 6
"""The shortest prefix of a task id or a credential id an incident command accepts (a full id
of any length is accepted as it is)."""

MAX_TARGET = 200
"""The longest id or identity name an incident command accepts."""

_SHOWN = 10
"""How many candidates an ambiguous prefix lists."""

_WHAT = {"task": "task", "identity": "identity", "jti": "credential"}


@dataclass(frozen=True, eq=False)
class Revocation(Sequence[str]):
    """What a revocation did. As a sequence it is the ids of the active tasks it ended (what
    ``Guard.revoke`` returned before it returned this object), so ``list(result)``,
    ``len(result)`` and ``result == [task_id]`` keep working."""

    scope: str
    """``task``, ``identity`` or ``jti``."""
    target: str
    """The full id (or the identity's name) that was recorded."""
    reason: str
    disabled: bool = False
    """The identity was also disabled (``disable=True``)."""
    live_credentials: tuple[str, ...] = ()
    """Ids of the credentials that were live and are now revoked."""
    tasks: tuple[str, ...] = ()
    """Active tasks this ended that are not a delegated child of another one it ended (for a
    task: the task itself, if it was active; for an identity: its active tasks)."""
    child_tasks: tuple[str, ...] = ()
    """Active delegated child tasks it ended with them."""
    already: str | None = None
    """Why nothing was live any more (the target was already revoked, ended or expired), or
    None."""
    ended: tuple[str, ...] = field(default=())
    """Every active task it ended, in the store's order."""

    # -- the old return value (a list of ended task ids) ----------------------------------------

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self.ended[index]

    def __len__(self) -> int:
        return len(self.ended)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ended)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Revocation):
            return self.to_dict() == other.to_dict()
        if isinstance(other, (list, tuple)):
            return list(self.ended) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # -- reporting ------------------------------------------------------------------------------

    def summary(self) -> str:
        """One line: ``revoked task <id>: 3 live credentials, 1 task (and 2 delegated child
        tasks)``, with ``; disabled it`` and ``(already revoked: ...)`` as they apply."""
        text = (
            f"revoked {_WHAT[self.scope]} {self.target}: "
            f"{plural(len(self.live_credentials), 'live credential')}, "
            f"{plural(len(self.tasks), 'task')}"
        )
        if self.child_tasks:
            text += f" (and {plural(len(self.child_tasks), 'delegated child task')})"
        if self.disabled:
            text += "; disabled it"
        if self.already:
            text += f" ({self.already})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (``revoked``, ``reason``, ``disabled`` and ``ended`` as
        before; the counts and ids of what was live)."""
        return {
            "revoked": {"task_id" if self.scope == "task" else self.scope: self.target},
            "scope": self.scope,
            "target": self.target,
            "reason": self.reason,
            "disabled": self.disabled,
            "live_credentials": len(self.live_credentials),
            "credentials": list(self.live_credentials),
            "tasks": len(self.tasks),
            "child_tasks": len(self.child_tasks),
            "ended": list(self.ended),
            "already_revoked": self.already is not None,
            "already": self.already,
        }


@dataclass(frozen=True)
class Enablement:
    """What ``enable`` did: ``changed`` is False when the identity was not disabled (nothing
    was written)."""

    identity: str
    reason: str
    changed: bool
    was_disabled_for: str | None = None
    """The reason it had been disabled with, if it was."""

    def __bool__(self) -> bool:
        return self.changed

    def summary(self) -> str:
        if self.changed:
            return f"enabled identity {self.identity}"
        return f"identity {self.identity} is not disabled; nothing to enable"

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.identity,
            "reason": self.reason,
            "changed": self.changed,
            "was_disabled_for": self.was_disabled_for,
        }


# -- resolving targets --------------------------------------------------------------------------


def clean_target(scope: str, given: object) -> str:
    """The given id or name, refused (:class:`UnknownTarget`) unless it is a non-empty
    printable string of at most :data:`MAX_TARGET` characters without surrounding spaces: no
    id toolguard issues or accepts has control, format (bidi) or surrogate characters, and
    refusing them here keeps them out of the trail, the SQL and the error message."""
    what = _WHAT[scope]
    if not isinstance(given, str) or not given.strip() or given != given.strip():
        raise UnknownTarget(
            f"the {what} to act on must be a non-empty id without surrounding spaces "
            f"(got {given!r:.80})",
            scope=scope,
            value=str(given)[:MAX_TARGET],
        )
    if len(given) > MAX_TARGET:
        raise UnknownTarget(
            f"the {what} id given has {len(given)} characters; no {what} id is longer than "
            f"{MAX_TARGET}",
            scope=scope,
            value=given[:MAX_TARGET],
        )
    if not given.isprintable():
        shown = given.encode("ascii", "backslashreplace").decode("ascii")
        raise UnknownTarget(
            f"the {what} id {shown!r} has control, format or surrogate characters; copy it "
            "from `toolguard audit tasks` or `toolguard audit show`",
            scope=scope,
            value=shown,
        )
    return given


def _unique(scope: str, given: str, found: Sequence[str], where: str, hint: str) -> str:
    what = _WHAT[scope]
    if not found:
        raise UnknownTarget(f"no {what} {given!r} in {where}; {hint}", scope=scope, value=given)
    if len(found) > 1:
        shown = ", ".join(found[:_SHOWN]) + (", ..." if len(found) > _SHOWN else "")
        raise UnknownTarget(
            f"{what} id prefix {given!r} is ambiguous: it matches {shown}; give more "
            "characters (nothing was revoked)",
            scope=scope,
            value=given,
            candidates=tuple(found[:_SHOWN]),
        )
    return found[0]


def _short(scope: str, given: str) -> UnknownTarget:
    return UnknownTarget(
        f"{_WHAT[scope]} id {given!r} is not a full id, and a prefix must have at least "
        f"{MIN_PREFIX} characters; give more characters (nothing was revoked)",
        scope=scope,
        value=given,
    )


def resolve_task(store: StoreReader, given: str) -> str:
    """The full id of a task given by its id or a unique prefix (>= :data:`MIN_PREFIX`)."""
    given = clean_target("task", given)
    if store.task_row(given) is not None:
        return given
    if len(given) < MIN_PREFIX:
        raise _short("task", given)
    found = store.task_ids_with_prefix(given, limit=_SHOWN + 1)
    return _unique("task", given, found, str(store.path), "list tasks with `toolguard audit tasks`")


def resolve_jti(store: StoreReader, given: str) -> str:
    """The full id of a credential the store issued, given by its id or a unique prefix
    (>= :data:`MIN_PREFIX`; the viewer prints the first 8 characters)."""
    given = clean_target("jti", given)
    if store.credential_rows(given, limit=1):
        return given
    if len(given) < MIN_PREFIX:
        raise _short("jti", given)
    found = [str(r["jti"]) for r in store.credential_rows(given, prefix=True, limit=_SHOWN + 1)]
    return _unique(
        "jti",
        given,
        found,
        str(store.path),
        "credential ids are shown by `toolguard audit show TASK` (jti column); a pruned "
        "credential has expired and needs no revocation",
    )


def resolve_identity(store: StoreReader, given: str, known: Collection[str] = ()) -> str:
    """An identity's name, exactly, if the config (``known``) or the trail knows it."""
    given = clean_target("identity", given)
    if given in known or store.identity_seen(given):
        return given
    names = sorted(set(known) | set(store.known_identities()))
    listed = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    where = "the config or " if known else ""
    raise UnknownTarget(
        f"no identity {given!r} in {where}the trail at {store.path}"
        + (f" (known: {listed})" if names else "")
        + ("" if known else "; pass --config to act on an identity that has not run yet"),
        scope="identity",
        value=given,
    )


# -- acting -------------------------------------------------------------------------------------


def _already(store: StoreReader, scope: str, target: str, now: float) -> str | None:
    if scope == "task":
        row = store.task_row(target)
        if row is not None and row.get("ended_at") is not None:
            status, at = row.get("status"), _time(row["ended_at"])
            return f"already revoked: the task ended ({status}) at {at}"
        return None
    if scope == "identity":
        last = store.last_revocation("identity", target)
        if last is not None:
            return f"already revoked at {_time(last['ts'])}: {_shown(last['reason'])}"
        return "nothing was live"
    last = store.last_revocation("jti", target)
    if last is not None:
        return f"already revoked at {_time(last['ts'])}: {_shown(last['reason'])}"
    rows = store.credential_rows(target, limit=1)
    if rows:
        row = rows[0]
        task = store.task_row(str(row["task_id"])) if row.get("task_id") else None
        if task is not None and task.get("ended_at") is not None:
            status, at = task.get("status"), _time(task["ended_at"])
            return f"already revoked: its task ended ({status}) at {at}"
        if row.get("expires_at") is not None and float(row["expires_at"]) <= now:
            return f"already expired at {_time(row['expires_at'])}"
        ident = store.last_revocation("identity", str(row.get("identity")))
        if ident is not None and float(ident["ts"]) >= float(row.get("issued_at") or 0):
            at = _time(ident["ts"])
            return f"already revoked with its identity at {at}: {_shown(ident['reason'])}"
    return "already revoked"


def _shown(text: Any) -> str:
    """A reason from the trail as one printable line of at most 200 characters."""
    line = "".join(c if c.isprintable() else "?" for c in str(text or ""))
    return line if len(line) <= 200 else line[:197] + "..."


def _time(ts: Any) -> str:
    from .formatting import format_time

    return format_time(float(ts))


def revoke_target(
    store: StoreProtocol,
    *,
    task_id: str | None = None,
    identity: str | None = None,
    jti: str | None = None,
    reason: str = "revoked",
    disable: bool = False,
    by: str = "api",
    now: float,
    identities: Collection[str] = (),
) -> Revocation:
    """Resolve the target (see the module's docstring), count what is live, record the
    revocation and its audit event (:func:`toolguard.audit.revoke`), and say what it did.

    ``identities``: the identities of the config (known even before they ran). Raises
    :class:`~toolguard.errors.UnknownTarget` (nothing written) for an unknown, ambiguous or
    too short target, :class:`ValueError` for a call that does not give exactly one target.
    """
    from .audit import revoke

    targets = (("task", task_id), ("identity", identity), ("jti", jti))
    given = [(s, v) for s, v in targets if v is not None]
    if len(given) != 1:
        raise ValueError("revoke exactly one of task_id=, identity= or jti=")
    if disable and identity is None:
        raise ValueError("disable=True goes with identity=")
    scope, value = given[0]
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a revocation needs a reason (it is recorded in the trail)")
    if scope == "task":
        target = resolve_task(store, value)
        live = store.live_credentials(now=now, task_id=target)
    elif scope == "identity":
        target = resolve_identity(store, value, identities)
        live = store.live_credentials(now=now, identity=target)
    else:
        target = resolve_jti(store, value)
        live = store.live_credentials(now=now, jti=target)
    already = None if live else _already(store, scope, target, now)
    ended = revoke(
        store,
        task_id=target if scope == "task" else None,
        identity=target if scope == "identity" else None,
        jti=target if scope == "jti" else None,
        reason=reason,
        disable=disable,
        by=by,
        now=now,
    )
    ended_set = set(ended)
    roots: list[str] = []
    children: list[str] = []
    for tid in ended:
        row = store.task_row(tid)
        parent = row.get("parent_id") if row is not None else None
        (children if parent in ended_set else roots).append(tid)
    if ended:
        already = None
    return Revocation(
        scope=scope,
        target=target,
        reason=reason,
        disabled=disable,
        live_credentials=tuple(live),
        tasks=tuple(roots),
        child_tasks=tuple(children),
        already=already,
        ended=tuple(ended),
    )


def enable_identity(
    store: StoreProtocol,
    identity: str,
    *,
    reason: str = "re-enabled",
    now: float,
    identities: Collection[str] = (),
) -> Enablement:
    """Enable a disabled identity again (with its audit event). An identity that is not
    disabled is left alone (nothing written); an unknown one raises
    :class:`~toolguard.errors.UnknownTarget`."""
    from .audit import enable

    name = resolve_identity(store, identity, identities)
    disabled_for = store.identity_disabled(name)
    if disabled_for is None:
        return Enablement(name, reason, changed=False)
    enable(store, name, reason=reason, now=now)
    return Enablement(name, reason, changed=True, was_disabled_for=disabled_for)
