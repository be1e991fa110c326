"""``decide()``: a pure function from (task, call) to a :class:`Decision`. No I/O, microseconds.

Deny by default: a call is allowed only if the task is active, the tool is listed in the intent
and has a rule, and its operation is allowed for every derived resource by the intent *and* by
the identity's ceiling. Budgets are checked where they are spent (the store), atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .intent import BoundTask, Call, CompiledTool, ResourceError
from .text import quote

__all__ = ["ALLOW", "Decision", "derive_call", "decide", "shadowable"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow or deny, with a reason a model can read and the rule that decided."""

    allowed: bool
    reason: str
    rule: str

    @classmethod
    def deny(cls, reason: str, rule: str) -> Decision:
        return cls(False, reason, rule)


ALLOW = Decision(True, "allowed by the task's intent", "allow")


def derive_call(
    tools: Mapping[str, CompiledTool],
    tool: str,
    args: Mapping[str, Any],
    correlation_id: str,
) -> Call | Decision:
    """Map a tool invocation to its operation, resources and cost; a Decision if it cannot."""
    compiled = tools.get(tool)
    if compiled is None:
        return Decision.deny(
            f"tool {quote(tool)} has no rule in tools:, so it is denied by default",
            f"tools.{tool}",
        )
    try:
        resources = compiled.resources(args)
        cost = compiled.cost(args)
    except ResourceError as exc:
        return Decision.deny(exc.reason, exc.rule)
    return Call(tool, args, compiled.rule.operation, resources, correlation_id, cost)


def decide(
    task: BoundTask, call: Call, *, ended: str | None, now: float, deadline: float
) -> Decision:
    """The decision for one call of an active task; ``ended`` is why the task is over, if it is."""
    if ended is not None:
        return Decision.deny(
            f"the task has ended ({ended}); no further calls are allowed", "task.active"
        )
    if now >= deadline:
        return Decision.deny("the task is past its time limit (ttl); start a new task", "task.ttl")
    if call.tool not in task.tools:
        return Decision.deny(
            f"tool '{call.tool}' is not among the tools of intent '{task.intent}'",
            f"intents.{task.intent}.tools",
        )
    for resource in call.resources:
        refused_by = task.allows(call.operation, resource)
        if refused_by is not None:
            return Decision.deny(
                f"{call.operation} on {quote(resource)} is outside what this task may do "
                f"({_who(task, refused_by)} allows "
                f"{call.operation} only on {_allowed(task, call.operation, refused_by)})",
                refused_by,
            )
    return ALLOW


def shadowable(decision: Decision) -> bool:
    """True for a denial that shadow mode lets run (recorded as ``would_deny``): a tool the
    intent does not list, an operation or resource outside the intent or the identity's
    ceiling. Everything else stays denied even in shadow mode (fail closed): an ended,
    revoked or timed-out task, an unknown tool, an argument that names no valid resource.
    (Budget refusals are decided in the store: see :meth:`toolguard.store.Store.record_call`.)
    """
    rule = decision.rule
    return not decision.allowed and rule.startswith(("intents.", "identities."))


def _who(task: BoundTask, rule: str) -> str:
    if rule.startswith("identities."):
        return f"identity '{task.identity}'"
    return f"intent '{task.intent}'"


def _allowed(task: BoundTask, operation: str, rule: str) -> str:
    source = task.ceiling_patterns if rule.startswith("identities.") else task.patterns
    patterns = [p.replace("\x00", "").replace("\x01", "") for p in source.get(operation, ())]
    return ", ".join(repr(p) for p in patterns) if patterns else "nothing"
