"""The exception tree of toolguard.

Every error toolguard raises is a :class:`ToolGuardError`::

    ToolGuardError
    ├── ConfigError            the config (or a task's parameters) is wrong; fix it before running
    ├── PolicyDenied           a call (or a task start) is not allowed by the declared intent
    │   ├── BudgetExceeded     ... because a budget scope has no room left
    │   └── NoActiveTask       ... because no task is active in this context
    ├── CredentialError        a credential could not be minted or was rejected
    │   ├── CredentialInvalid  signature, header, claims or shape are wrong
    │   ├── CredentialExpired  past ``exp`` (or before ``nbf``)
    │   ├── CredentialRevoked  its task, identity or jti was revoked
    │   └── ScopeMismatch      valid, but not for this operation / resource / tool
    ├── AuditError             the audit trail could not be written: the tool did not run
    ├── UnknownTarget          an incident command's task, identity or credential is not known
    │                          (or its prefix is ambiguous or too short); nothing was recorded
    └── MissingDependency      a feature needs a package this install left out (LangChain, the
                               command line): also a ``ModuleNotFoundError``; says what to install

Each exception carries structured fields (``tool``, ``task_id``, ``rule``; budgets add
``scope``, ``limit``, ``used`` and ``retry_after``) and builds its message from them.
"""

import math

__all__ = [
    "ApprovalDenied",
    "AuditError",
    "BudgetExceeded",
    "ConfigError",
    "CredentialError",
    "CredentialExpired",
    "CredentialInvalid",
    "CredentialRevoked",
    "MissingDependency",
    "NoActiveTask",
    "PolicyDenied",
    "ScopeMismatch",
    "ToolGuardError",
    "UnknownTarget",
]


class ToolGuardError(Exception):
    """Root of every error raised by toolguard."""

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        task_id: str | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tool = tool
        self.task_id = task_id
        self.rule = rule

    def __str__(self) -> str:
        return self.message


class ConfigError(ToolGuardError):
    """The configuration is invalid; ``problems`` lists every ``(location, message)``."""

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, str]] | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message)
        self.problems: list[tuple[str, str]] = problems or []
        self.source = source

    @classmethod
    def from_problems(
        cls, problems: list[tuple[str, str]], *, source: str | None = None
    ) -> "ConfigError":
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} problem(s){where}:"]
        lines += [f"  {loc or '<root>'}: {msg}" for loc, msg in problems]
        return cls("\n".join(lines), problems=problems, source=source)


class PolicyDenied(ToolGuardError):
    """A call or task start was denied. ``reason`` is readable by a model."""

    def __init__(
        self,
        reason: str,
        *,
        tool: str | None = None,
        task_id: str | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(reason, tool=tool, task_id=task_id, rule=rule)
        self.reason = reason


class ApprovalDenied(PolicyDenied):
    """A call held for a person's approval did not get it: rejected, expired, or answered
    with a decision that is not one (see docs/agents.md, "Human approval")."""

    def __init__(
        self,
        reason: str,
        *,
        tool: str | None = None,
        task_id: str | None = None,
        rule: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(reason, tool=tool, task_id=task_id, rule=rule)
        self.request_id = request_id


class NoActiveTask(PolicyDenied):
    """A guarded tool was called outside ``guard.task(...)``."""

    def __init__(self, *, tool: str | None = None) -> None:
        super().__init__(
            f"tool '{tool}' was called outside a task; run it inside "
            "`with guard.task(intent, **params):` (or use GuardMiddleware)",
            tool=tool,
            rule="task.active",
        )


class BudgetExceeded(PolicyDenied):
    """A budget scope has no room for this call."""

    def __init__(
        self,
        *,
        scope: str,
        limit: float,
        used: float,
        retry_after: float | None,
        tool: str | None = None,
        task_id: str | None = None,
        rule: str | None = None,
    ) -> None:
        self.scope = scope
        self.limit = limit
        self.used = used
        self.retry_after = retry_after
        when = (
            f"; room frees up in {math.ceil(retry_after)}s"
            if retry_after is not None
            else "; it does not reset during this task"
        )
        reason = f"budget '{scope}' is exhausted ({_num(used)} of {_num(limit)} used){when}"
        super().__init__(reason, tool=tool, task_id=task_id, rule=rule or f"budget.{scope}")


class CredentialError(ToolGuardError):
    """A credential could not be minted, or a presented credential was rejected."""


class CredentialInvalid(CredentialError):
    """The token is malformed, wrongly signed, or its header or claims are not acceptable."""


class CredentialExpired(CredentialError):
    """The token is past its ``exp`` (or before its ``nbf``)."""


class CredentialRevoked(CredentialError):
    """The token's task, identity or jti has been revoked."""


class ScopeMismatch(CredentialError):
    """The token is valid but does not cover the requested operation, resource or tool."""


class AuditError(ToolGuardError):
    """The audit trail could not be written; the tool did not run. Never a denial."""


class UnknownTarget(ToolGuardError, LookupError):
    """The target of a revocation or an ``enable`` is not known, or a prefix of it matches
    several (``candidates`` lists them) or is too short. Nothing was recorded.

    ``scope`` is ``task``, ``identity`` or ``jti``; ``value`` what was given.
    """

    def __init__(
        self, message: str, *, scope: str, value: str, candidates: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, task_id=value if scope == "task" else None)
        self.scope = scope
        self.value = value
        self.candidates = candidates


class MissingDependency(ToolGuardError, ModuleNotFoundError):
    """A feature needs a package that is not installed: ``agent-toolguard-core`` alone (the
    install of a verifier-only service) has no LangChain and no command line. The message
    names the feature and what to install; ``name`` is the missing module (as for any
    ``ModuleNotFoundError``), ``extra`` the extra of ``agent-toolguard-core`` that brings it.
    """

    def __init__(self, message: str, *, name: str, extra: str) -> None:
        super().__init__(message)
        self.name = name
        self.extra = extra


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
