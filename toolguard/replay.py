"""Replay the recorded calls of a trail under another config (``toolguard audit replay``). Pure:
reads the trail, writes nothing.

Each recorded call (a ``request`` or a ``denied`` event of a task) is re-evaluated with the
new config's tool rules, intents, identities and budgets, using the same decision functions
as the guard (:func:`toolguard.policy.derive_call`, :func:`toolguard.policy.decide`,
:func:`toolguard.budget.plan`), and compared with what happened:

- **newly denied**: the call ran (``allow``, or ``would_deny`` in shadow mode) and the new
  config refuses it (its policy, or a budget, in enforce mode);
- **newly allowed**: the call was denied and the new config lets it run;
- **cannot replay**: what the new rules need to derive the call's resources or cost was not
  stored exactly (an argument redacted, cut, or the arguments cut as a whole): replay never
  guesses; the call is listed with the reason and, for the budgets, counted as it happened.
- **held**: the new config's ``approve`` rules hold the call for a person's approval: replay
  cannot know what a person would answer, so it neither allows nor denies it (and does not
  replay a person's past answer under the new config); for the budgets, counted as it happened.

Denials that came from the state of the trail, not from the policy (a revoked, ended or
timed-out task's calls, a failed credential mint, an ``on_anomaly`` revocation) stay as they
were. Budgets are replayed in trail order: the task limits (``max_calls``, ``per_tool``,
``per_operation``, ``max_cost``, a delegated call spending its ancestors' too), the identity's
rolling 60-second windows and UTC days; the state is rebuilt from the start of the UTC day
before ``since`` and from the start of every task still running then, and the calls before
``since`` are not reported.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .budget import ROLLING_WINDOW, Spend, day_key, day_start, plan, to_units
from .config import GuardConfig
from .errors import BudgetExceeded, ConfigError
from .intent import BoundTask, Call, Policy
from .policy import Decision, decide, derive_call, shadowable
from .redaction import REDACTED
from .store import StoreReader
from .text import PLACEHOLDER

__all__ = ["Change", "Exhaustion", "ReplayReport", "replay"]

_CUT = re.compile(r"…\[\d+ more (chars|keys|items)\]")
_STATE_RULES = ("revocation.", "task.active", "credentials.provider")
"""Denials that came from the trail's state, not the policy: replayed as they were."""


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded call whose verdict changes (or that cannot be replayed)."""

    seq: int
    ts: float
    task_id: str
    intent: str
    identity: str
    tool: str
    operation: str | None
    resources: tuple[str, ...]
    before: str
    """``allow``, ``would_deny`` or ``deny``: what the trail recorded."""
    after: str
    """``allow``, ``would_deny``, ``deny``, ``held`` (a person would decide) or
    ``cannot-replay``."""
    reason: str
    """Why the new config decides so (or why it cannot be replayed)."""
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "task_id": self.task_id,
            "intent": self.intent,
            "identity": self.identity,
            "tool": self.tool,
            "operation": self.operation,
            "resources": list(self.resources),
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "rule": self.rule,
        }


@dataclass(slots=True)
class Exhaustion:
    """A budget that would run out under the new config: when first, and how many calls."""

    scope: str
    rule: str
    owner: str
    """The task id (task limits) or the identity (identity limits)."""
    first_ts: float
    first_seq: int
    refused: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "rule": self.rule,
            "owner": self.owner,
            "first_ts": self.first_ts,
            "first_seq": self.first_seq,
            "refused": self.refused,
        }


@dataclass(slots=True)
class ReplayReport:
    """What would change: the calls replayed, the changes, the budgets that would run out."""

    since: float
    until: float | None
    intent: str | None
    calls: int = 0
    """Recorded calls replayed (reported window, intent filter)."""
    unchanged: int = 0
    newly_denied: list[Change] = field(default_factory=list)
    newly_allowed: list[Change] = field(default_factory=list)
    shadowed: list[Change] = field(default_factory=list)
    """Calls that ran and would still run, but as ``would_deny`` (the new config's shadow
    mode), or ran as ``would_deny`` and would now be allowed."""
    cannot_replay: list[Change] = field(default_factory=list)
    held: list[Change] = field(default_factory=list)
    """Calls the new config holds for a person's approval (their outcome is a person's)."""
    budgets: list[Exhaustion] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 if anything would newly be denied, else 0."""
        return 1 if self.newly_denied else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "intent": self.intent,
            "calls": self.calls,
            "unchanged": self.unchanged,
            "newly_denied": [c.to_dict() for c in self.newly_denied],
            "newly_allowed": [c.to_dict() for c in self.newly_allowed],
            "shadowed": [c.to_dict() for c in self.shadowed],
            "cannot_replay": [c.to_dict() for c in self.cannot_replay],
            "held": [c.to_dict() for c in self.held],
            "budgets": [b.to_dict() for b in self.budgets],
        }


@dataclass(slots=True)
class _Task:
    row: Mapping[str, Any]
    bound: BoundTask | None
    """None when the new config cannot bind the task's intent (``refusal`` says why)."""
    refusal: Decision | None
    parent: _Task | None
    deadline: float

    @property
    def task_id(self) -> str:
        return str(self.row["task_id"])

    @property
    def shadow(self) -> bool:
        t: _Task | None = self
        while t is not None:
            if t.bound is None or t.bound.mode != "shadow":
                return False
            t = t.parent
        return True


class _Budgets:
    """The budget state of the replay, in memory: task totals, identity logs."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], int] = defaultdict(int)
        self.days: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.windows: dict[str, deque[tuple[float, str]]] = defaultdict(deque)

    def refusal(self, spends: Sequence[Spend], now: float) -> Spend | None:
        day = day_key(now)
        for s in spends:
            if s.kind == "total":
                if self.totals[(s.owner, s.label)] + to_units(s.amount) > to_units(s.limit):
                    return s
            elif s.kind == "day":
                used = self.days[(s.owner, day)][s.slot]
                amount = to_units(s.amount) if s.slot == "c" else 1
                limit = to_units(s.limit) if s.slot == "c" else s.limit
                if used + amount > limit:
                    return s
            elif s.kind == "rolling":
                window = self.windows[s.owner]
                while window and window[0][0] <= now - ROLLING_WINDOW:
                    window.popleft()
                if sum(1 for _, marks in window if s.slot in marks) + 1 > s.limit:
                    return s
        return None

    def used(self, s: Spend, now: float) -> float:
        if s.kind == "total":
            return self.totals[(s.owner, s.label)] / 1_000_000
        if s.kind == "day":
            value = self.days[(s.owner, day_key(now))][s.slot]
            return value / 1_000_000 if s.slot == "c" else value
        return sum(1 for _, marks in self.windows[s.owner] if s.slot in marks)

    def spend(self, spends: Sequence[Spend], now: float) -> None:
        """Spend a call that runs: its task totals, and one entry of its identity's log."""
        logged = [s for s in spends if s.kind in ("day", "rolling")]
        for s in spends:
            if s.kind == "total":
                self.totals[(s.owner, s.label)] += to_units(s.amount)
        if logged:
            owner, marks = logged[0].owner, logged[0].marks
            counters = self.days[(owner, day_key(now))]
            for mark in marks:  # a, w (writes and deletes), d
                counters[mark] += 1
            counters["c"] += next((to_units(s.amount) for s in logged if s.slot == "c"), 0)
            self.windows[owner].append((now, marks))


def replay(
    store: StoreReader,
    config: GuardConfig,
    *,
    since: float,
    until: float | None = None,
    intent: str | None = None,
) -> ReplayReport:
    """Re-evaluate the recorded calls from ``since`` (to ``until``) under ``config``; only
    the calls of tasks of ``intent`` when given. Reads ``store``; writes nothing."""
    report = ReplayReport(since=since, until=until, intent=intent)
    policy = Policy(config)
    tasks: dict[str, _Task | None] = {}

    def task(task_id: str) -> _Task | None:
        if task_id in tasks:
            return tasks[task_id]
        tasks[task_id] = None  # a cycle in parent ids ends here
        row = store.task_row(task_id)
        if row is None:
            return None
        parent = task(str(row["parent_id"])) if row.get("parent_id") else None
        found = _bind(policy, config, row, parent)
        tasks[task_id] = found
        return found

    # the budget state starts with the day (and the tasks) running at ``since``
    load_from = day_start(since)
    running = store.earliest_running_start(since, load_from)
    if running is not None:
        load_from = min(load_from, running)
    # first pass: what each call's outcome settled (a reported cost, or that it did not run)
    outcomes: dict[str, Mapping[str, Any]] = {}
    for e in store.iter_call_events(since=load_from, until=until):
        if e["kind"] == "outcome" and e.get("correlation_id"):
            outcomes[str(e["correlation_id"])] = {"cost": e.get("cost"), "outcome": e["outcome"]}
    budgets = _Budgets()
    exhausted: dict[tuple[str, str], Exhaustion] = {}
    for event in store.iter_call_events(since=load_from, until=until):
        if event["kind"] == "outcome" or not event.get("task_id") or not event.get("tool"):
            continue
        t = task(str(event["task_id"]))
        if t is None:
            continue
        ts = float(event["ts"])
        reported = ts >= since and (intent is None or t.row.get("intent") == intent)
        before = "deny" if event["kind"] == "denied" else str(event.get("decision") or "allow")
        outcome = outcomes.get(str(event.get("correlation_id")))
        after, decision, spends, call = _evaluate(policy, t, event, outcome, before)
        held = _held(t, call, outside=after == "would_deny") if call is not None else None
        if held is not None and after in ("allow", "would_deny"):
            after = "held"
            decision = Decision.deny(
                f"the new config holds this call for a person's approval ({held}); replay "
                "cannot know the answer",
                held,
            )
        if after in ("cannot-replay", "held"):
            if before != "deny" and spends:  # it ran: count it as it happened
                budgets.spend(spends, ts)
        elif after in ("allow", "would_deny") and spends:
            refused = budgets.refusal(spends, ts)
            if refused is not None:
                key = (refused.name or refused.label, refused.owner)
                hit = exhausted.get(key)
                if hit is None:
                    hit = exhausted[key] = Exhaustion(
                        refused.name or refused.label, refused.rule, refused.owner, ts,
                        int(event["seq"]),
                    )  # fmt: skip
                if reported:
                    hit.refused += 1
                error = BudgetExceeded(
                    scope=refused.name or refused.label,
                    limit=refused.limit,
                    used=budgets.used(refused, ts),
                    retry_after=None,
                    rule=refused.rule or None,
                )
                if after == "allow":  # a would_deny keeps the policy's reason
                    decision = Decision.deny(error.reason, error.rule or refused.rule)
                after = "would_deny" if t.shadow else "deny"
            if after != "deny":
                budgets.spend(spends, ts)
        if not reported:
            continue
        report.calls += 1
        change = Change(
            seq=int(event["seq"]),
            ts=ts,
            task_id=t.task_id,
            intent=str(t.row.get("intent") or ""),
            identity=str(t.row.get("identity") or ""),
            tool=str(event["tool"]),
            operation=call.operation if call is not None else event.get("operation"),
            resources=call.resources if call is not None else _resources(event),
            before=before,
            after=after,
            reason=decision.reason if decision is not None else "",
            rule=decision.rule if decision is not None else "",
        )
        ran_before, runs_after = before != "deny", after in ("allow", "would_deny")
        if after == "cannot-replay":
            report.cannot_replay.append(change)
        elif after == "held":
            report.held.append(change)
        elif ran_before and not runs_after:
            report.newly_denied.append(change)
        elif not ran_before and runs_after:
            report.newly_allowed.append(change)
        elif before != after:
            report.shadowed.append(change)
        else:
            report.unchanged += 1
    report.budgets = [b for b in exhausted.values() if b.refused]
    report.budgets.sort(key=lambda b: b.first_seq)
    return report


def _bind(
    policy: Policy, config: GuardConfig, row: Mapping[str, Any], parent: _Task | None
) -> _Task:
    """A recorded task under the new config: its bound intent, or why it cannot start."""
    name = str(row.get("intent") or "")
    started = float(row.get("started_at") or 0.0)
    try:
        params = json.loads(row.get("params") or "{}")
    except ValueError:
        params = None
    refusal: Decision | None = None
    bound: BoundTask | None = None
    spec = config.intents.get(name)
    if spec is None:
        refusal = Decision.deny(
            f"intent '{name}' is not defined in the new config", f"intents.{name}"
        )
    elif not isinstance(params, dict):
        refusal = Decision.deny("the task's parameters are not readable", f"intents.{name}")
    else:
        try:
            bound = policy.bind(name, params)
        except ConfigError as exc:
            refusal = Decision.deny(f"the task could not start: {exc}", f"intents.{name}")
        identity = config.identities.get(spec.identity)
        if bound is not None and identity is not None and identity.disabled:
            refusal = Decision.deny(
                f"identity '{spec.identity}' is disabled by the new config",
                f"identities.{spec.identity}.disabled",
            )
            bound = None
        if bound is not None and parent is not None and parent.bound is not None:
            wider = bound.covered_by(parent.bound)
            if wider is not None:
                refusal = Decision.deny(
                    f"the delegated task could not start: {wider}", f"intents.{name}"
                )
                bound = None
    deadline = started + (bound.ttl if bound is not None else 0.0)
    if parent is not None:
        deadline = min(deadline, parent.deadline)
    return _Task(row, bound, refusal, parent, deadline)


def _evaluate(
    policy: Policy,
    t: _Task,
    event: Mapping[str, Any],
    outcome: Mapping[str, Any] | None,
    before: str,
) -> tuple[str, Decision | None, tuple[Spend, ...], Call | None]:
    """(after, the decision, the budget spends, the derived call) of one recorded call."""
    rule = str(event.get("rule") or "")
    if before == "deny" and (rule.startswith(_STATE_RULES) or rule.endswith(".on_anomaly")):
        return "deny", Decision.deny(str(event.get("reason") or ""), rule), (), None
    tool = str(event["tool"])
    args, problem = _args(policy, tool, event.get("args"))
    old_spends = _old_spends(t, event, outcome)
    if problem is not None:
        return "cannot-replay", Decision.deny(problem, "replay"), old_spends, None
    if t.bound is None:
        assert t.refusal is not None
        return "deny", t.refusal, (), None
    derived = derive_call(policy.tools, tool, args, str(event.get("correlation_id") or ""))
    if isinstance(derived, Decision):
        return "deny", derived, (), None
    call = derived
    cost = _actual_cost(event, outcome)
    if cost is not None:
        call = Call(call.tool, call.args, call.operation, call.resources, call.correlation_id, cost)
    ts = float(event["ts"])
    decision = decide(t.bound, call, ended=None, now=ts, deadline=t.deadline)
    spends = _spends(t, call)
    if decision.allowed:
        return "allow", decision, spends, call
    if t.shadow and shadowable(decision):
        return "would_deny", decision, spends, call
    return "deny", decision, (), call


def _held(t: _Task, call: Call, *, outside: bool) -> str | None:
    """The new config's ``approve`` rule that would hold ``call`` (the task's, else an
    ancestor's; ``outside``: a shadow-mode ``would_deny``, held by any rule of its operation),
    as the guard decides it (:func:`toolguard.approval.held_by`)."""
    task: _Task | None = t
    while task is not None:
        if task.bound is not None and task.bound.approvals:
            rule = task.bound.held_by(call.operation, call.resources)
            if rule is None and outside:
                ops = [r for r in task.bound.approvals if r.operation == call.operation]
                rule = ops[0] if ops else None
            if rule is not None:
                return rule.rule
        task = task.parent
    return None


def _spends(t: _Task, call: Call) -> tuple[Spend, ...]:
    """The call's spends under the new config: its task's plan and every ancestor's task
    limits (keyed by the task's id: ``plan`` is pure)."""
    assert t.bound is not None
    spends = list(plan(t.bound, t.task_id, call))
    parent = t.parent
    while parent is not None:
        if parent.bound is not None:
            spends += [s for s in plan(parent.bound, parent.task_id, call) if s.kind == "total"]
        parent = parent.parent
    return tuple(s for s in spends if s.kind != "attempts")


def _old_spends(
    t: _Task, event: Mapping[str, Any], outcome: Mapping[str, Any] | None
) -> tuple[Spend, ...]:
    """What a call that cannot be replayed spent under the new config's limits, from its
    recorded operation and cost (it ran as recorded)."""
    if t.bound is None or event["kind"] != "request":
        return ()
    call = Call(
        str(event["tool"]),
        {},
        str(event.get("operation") or ""),
        _resources(event),
        str(event.get("correlation_id") or ""),
        _actual_cost(event, outcome) or float(event.get("cost") or 0.0),
    )
    return _spends(t, call)


def _actual_cost(event: Mapping[str, Any], outcome: Mapping[str, Any] | None) -> float | None:
    """The cost an outcome settled (a reported actual cost), if it differs from the
    request's estimate; else None (the new rules estimate it)."""
    if outcome is None or outcome.get("cost") is None:
        return None
    actual = float(outcome["cost"])
    return actual if actual != float(event.get("cost") or 0.0) else None


def _resources(event: Mapping[str, Any]) -> tuple[str, ...]:
    raw = event.get("resources")
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return (str(raw),)
    return tuple(str(r) for r in value) if isinstance(value, list) else ()


def _args(policy: Policy, tool: str, stored: object) -> tuple[dict[str, Any], str | None]:
    """The stored arguments a new tool rule reads, or why they cannot be trusted: redacted,
    cut, or the arguments cut as a whole."""
    try:
        args = json.loads(stored) if isinstance(stored, str) else {}
    except ValueError:
        return {}, "the call's stored arguments are not readable JSON"
    if not isinstance(args, dict):
        return {}, "the call's stored arguments are not an object"
    if "…" in args and "head" in args:
        return {}, "the call's arguments were cut as a whole in the trail (max_arg_chars)"
    compiled = policy.tools.get(tool)
    if compiled is None:
        return args, None
    needed = [n for template in compiled.rule.resources for n in PLACEHOLDER.findall(template)]
    if compiled.rule.cost_arg:
        needed.append(compiled.rule.cost_arg)
    for name in needed:
        value = args.get(name)
        if isinstance(value, str) and REDACTED in value:
            return args, f"argument '{name}' is redacted in the trail"
        if isinstance(value, str) and _CUT.search(value):
            return args, f"argument '{name}' was cut in the trail (max_arg_chars)"
        if "…" in args and name not in args:
            return args, f"argument '{name}' was cut from the trail (too many keys)"
    return args, None


def changes(report: ReplayReport) -> Iterable[Change]:
    """Every change of a report, in trail order."""
    out = [
        *report.newly_denied,
        *report.newly_allowed,
        *report.shadowed,
        *report.cannot_replay,
        *report.held,
    ]
    return sorted(out, key=lambda c: c.seq)
