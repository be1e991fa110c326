"""Identities, intents, tool rules, bound tasks and resource patterns. Pure: no I/O.

A pattern is a string where ``*`` matches any run of characters and everything else is literal;
matching is anchored and case-sensitive. ``{name}`` placeholders are bound at task start from the
task's parameters, and bound values are literal (a ``job_id`` of ``*`` matches only ``*``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .config import Budget, GuardConfig, IdentityLimits, ToolRule
from .errors import ConfigError
from .numbers import MAX_COST, finite_number
from .text import MAX_RESOURCE_CHARS, PLACEHOLDER, check_text, quote

__all__ = [
    "ApprovalRule",
    "BoundTask",
    "Call",
    "CompiledTool",
    "Policy",
    "ResourceError",
    "bind_pattern",
    "pattern_covers",
    "template_parameters",
]

_TOKEN = re.compile(PLACEHOLDER.pattern + r"|\*")
"""A placeholder (group 1: its name) or a ``*`` wildcard (group 1: None)."""
_NEVER = re.compile(r"(?!)")
_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])")
"""A percent-escape of an unreserved character (RFC 3986 §2.3): ``%2E`` is ``.``."""
_SEGMENT_SPLIT = re.compile(r"[/\\;]")


class ResourceError(ValueError):
    """A call's resource cannot be derived or is malformed; the call is denied."""

    def __init__(self, reason: str, rule: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


def _fill(values: Mapping[str, str], m: re.Match[str]) -> str:
    return values.get(m.group(1) or "", m.group(0))


def _placeholders(template: str) -> list[str]:
    return [m.group(1) for m in _TOKEN.finditer(template) if m.group(1)]


def template_parameters(
    config: GuardConfig, intent: str, *, where: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The intent's required template parameters (its and its identity's patterns) and its
    optional ones (its purpose's). An unknown intent raises :class:`ConfigError` telling the
    user to pass another intent to ``where`` (the adapter, e.g. ``GuardMiddleware``)."""
    spec = config.intents.get(intent)
    if spec is None:
        known = ", ".join(sorted(config.intents)) or "none"
        raise ConfigError(
            f"intent {intent!r} is not defined (defined: {known}); add it under intents: or "
            f"pass another intent to {where}",
            problems=[(f"intents.{intent}", "not defined")],
        )
    identity = config.identities.get(spec.identity)
    patterns = [p for ps in (*spec.allow.values(), *spec.approve.values()) for p in ps]
    if identity is not None:
        patterns += [p for ps in (*identity.allow.values(), *identity.approve.values()) for p in ps]
    required = sorted({m for p in patterns for m in PLACEHOLDER.findall(p)})
    optional = sorted(set(PLACEHOLDER.findall(spec.purpose or "")) - set(required))
    return tuple(required), tuple(optional)


def bind_pattern(pattern: str, params: Mapping[str, str], *, where: str = "") -> str:
    """Regex source for a pattern with its placeholders bound literally from ``params``."""
    out: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        name = m.group(1)
        if name is None:
            out.append(".*")
        elif name in params:
            out.append(re.escape(params[name]))
        else:
            raise ConfigError(
                f"{where or 'pattern'} {pattern!r} needs the task parameter {name!r}; "
                f"pass it as guard.task(..., {name}=...)",
                problems=[(where, f"missing task parameter {name!r}")],
            )
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return "".join(out)


def _substitute(pattern: str, params: Mapping[str, str]) -> str:
    """The pattern with placeholders replaced by their (literal) values, for coverage checks."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "*"
        return "\x00" + params[name] + "\x01"

    return _TOKEN.sub(repl, pattern)


def _symbols(pattern: str) -> list[str | None]:
    """A substituted pattern as a list of literal characters and ``None`` for ``*``."""
    out: list[str | None] = []
    literal = False
    for ch in pattern:
        if ch == "\x00":
            literal = True
        elif ch == "\x01":
            literal = False
        elif ch == "*" and not literal:
            out.append(None)
        else:
            out.append(ch)
    return out


def pattern_covers(outer: str, inner: str) -> bool:
    """True if every resource matched by ``inner`` is matched by ``outer`` (both substituted).

    Sound for ``*``-globs: a wildcard of ``inner`` can only be absorbed by a wildcard of ``outer``.
    """
    a, b = _symbols(outer), _symbols(inner)
    # dp[j] : outer[:i] can produce inner[:j]
    dp = [False] * (len(b) + 1)
    dp[0] = True
    for sym in a:
        new = [False] * (len(b) + 1)
        if sym is None:
            running = False
            for j in range(len(b) + 1):
                running = running or dp[j]
                new[j] = running
        else:
            for j in range(1, len(b) + 1):
                new[j] = dp[j - 1] and b[j - 1] == sym
        dp = new
    return dp[len(b)]


def _compile_union(sources: Sequence[str]) -> re.Pattern[str]:
    if not sources:
        return _NEVER
    return re.compile("(?:" + "|".join(f"(?:{s})" for s in sources) + r")\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Call:
    """One tool invocation inside a task, with its derived operation and resources."""

    tool: str
    args: Mapping[str, Any]
    operation: str
    resources: tuple[str, ...]
    correlation_id: str
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class CompiledTool:
    """A tool rule, compiled once: derives a call's operation, resources and cost."""

    name: str
    rule: ToolRule
    fields: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def compile(cls, name: str, rule: ToolRule) -> CompiledTool:
        return cls(name, rule, tuple((t, tuple(_placeholders(t))) for t in rule.resources))

    def resources(self, args: Mapping[str, Any]) -> tuple[str, ...]:
        """The call's resources, or :class:`ResourceError` (a denial)."""
        out: list[str] = []
        for template, names in self.fields:
            values: dict[str, str] = {}
            for name in names:
                if name not in args or args[name] is None:
                    raise ResourceError(
                        f"tool '{self.name}' needs the argument '{name}' to name its resource",
                        f"tools.{self.name}.resource",
                    )
                arg = args[name]
                if not isinstance(arg, (str, int)) or isinstance(arg, bool):
                    raise ResourceError(
                        f"argument '{name}' of tool '{self.name}' must be a string to name a "
                        "resource",
                        f"tools.{self.name}.resource",
                    )
                values[name] = str(arg)
            # one pass: a value that itself looks like "{other}" is never substituted again
            value = _TOKEN.sub(partial(_fill, values), template)
            out.append(self._normalize(value))
        return tuple(out)

    def _normalize(self, value: str) -> str:
        rule = f"tools.{self.name}.resource"
        problem = check_text(value, limit=MAX_RESOURCE_CHARS)
        if problem is not None:
            raise ResourceError(f"the resource {quote(value)} {problem}", rule)
        kind = self.rule.kind
        if kind == "path":
            if "\\" in value:
                raise ResourceError(f"the path {quote(value)} contains a backslash", rule)
            norm = posixpath.normpath(value)
            if norm == ".." or norm.startswith("../") or "/../" in norm:
                raise ResourceError(f"the path {quote(value)} escapes its root with '..'", rule)
            if value.startswith("/") and norm.startswith("//"):
                norm = "/" + norm.lstrip("/")
            return norm
        if kind == "url":
            return _normalize_url(value, rule)
        return value

    def cost(self, args: Mapping[str, Any]) -> float:
        """The cost estimate reserved before the call runs."""
        if self.rule.cost_arg is None:
            return self.rule.cost
        value = args.get(self.rule.cost_arg)
        try:  # nan, inf, a huge int would poison the budget arithmetic: a denial instead
            cost = finite_number(value, "x", maximum=MAX_COST - self.rule.cost)
        except ValueError:
            raise ResourceError(
                f"argument '{self.rule.cost_arg}' of tool '{self.name}' must be a non-negative "
                f"number (finite, at most {MAX_COST - self.rule.cost:g}; it is the call's cost)",
                f"tools.{self.name}.cost_arg",
            ) from None
        return cost + self.rule.cost


def _normalize_url(value: str, rule: str) -> str:
    """The URL in normal form (RFC 3986 §6.2.2: lowercase scheme and host, no default port,
    unreserved characters decoded, no fragment); :class:`ResourceError` for a URL whose path
    holds a dot segment in any spelling (``..``, ``%2e%2E``, ``.%2e;x``, ``..%2f``, ``\\``)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ResourceError(f"the URL {quote(value)} is malformed: {exc}", rule) from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ResourceError("URLs with user information are not allowed", rule)
    if not parts.scheme or not host:
        raise ResourceError(f"the URL {quote(value)} needs a scheme and a host", rule)
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host.lower().rstrip(".")
    if ":" in netloc:  # an IPv6 literal keeps its brackets
        netloc = f"[{netloc}]"
    if port is not None and port != default:
        netloc += f":{port}"
    path = _UNRESERVED_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), parts.path or "/")
    if "\\" in value or "%5c" in path.lower():  # browsers and some servers read it as "/"
        raise ResourceError(f"the URL {quote(value)} has a backslash", rule)
    # a server may decode once more, or read ``/`` from ``%2F`` and ``..`` from ``..;x``:
    # no spelling of a dot segment is accepted, whatever the decoding
    decoded = path
    for _ in range(3):
        if any(seg in (".", "..") for seg in _SEGMENT_SPLIT.split(decoded)):
            raise ResourceError(
                f"the URL {quote(value)} has a '.' or '..' segment in its path; "
                "name the resource without dot segments",
                rule,
            )
        again = unquote(decoded, errors="surrogateescape")
        if again == decoded:
            break
        decoded = again
    else:
        raise ResourceError(
            f"the URL {quote(value)} is percent-encoded more than twice in its path", rule
        )
    return urlunsplit((scheme, netloc, path, parts.query, ""))


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """An ``approve`` rule bound to a task: calls of ``operation`` on a resource matching
    ``pattern`` are held for a person's approval; ``rule`` names it in the trail."""

    operation: str
    pattern: re.Pattern[str]
    rule: str
    shown: str
    """The pattern with its placeholders bound, as the approval request shows it."""


@dataclass(frozen=True, slots=True)
class BoundTask:
    """An intent bound to parameters: what one task may do. Immutable; shared by its calls."""

    intent: str
    identity: str
    params: Mapping[str, str]
    tools: frozenset[str]
    intent_allow: Mapping[str, re.Pattern[str]]
    ceiling_allow: Mapping[str, re.Pattern[str]]
    patterns: Mapping[str, tuple[str, ...]]
    """Substituted intent patterns per operation (for delegation coverage checks)."""
    ceiling_patterns: Mapping[str, tuple[str, ...]]
    budget: Budget
    limits: IdentityLimits
    ttl: float
    audience: str | None
    purpose: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    approvals: tuple[ApprovalRule, ...] = ()
    """The intent's and the identity's ``approve`` rules (either one holds a call)."""
    approval_ttl: float = 1800.0

    def held_by(self, operation: str, resources: Sequence[str]) -> ApprovalRule | None:
        """The first ``approve`` rule that holds a call of ``operation`` on ``resources``."""
        for rule in self.approvals:
            if rule.operation == operation and any(rule.pattern.match(r) for r in resources):
                return rule
        return None

    mode: str = "enforce"
    """``enforce``, or ``shadow``: a call the policy or a budget refuses runs anyway and is
    recorded as ``would_deny`` (:meth:`GuardConfig.mode`)."""

    def allows(self, operation: str, resource: str) -> str | None:
        """None if allowed, else the rule that refused."""
        if not _match(self.intent_allow.get(operation), resource):
            return f"intents.{self.intent}.allow.{operation}"
        if not _match(self.ceiling_allow.get(operation), resource):
            return f"identities.{self.identity}.allow.{operation}"
        return None

    def covered_by(self, parent: BoundTask) -> str | None:
        """None if everything this task may do, ``parent`` may do too; else what is wider."""
        extra_tools = sorted(self.tools - parent.tools)
        if extra_tools:
            return f"tools {extra_tools} are not allowed to the parent task"
        for op, patterns in self.patterns.items():
            for p in patterns:
                for source, label in (
                    (parent.patterns.get(op, ()), f"intent '{parent.intent}'"),
                    (parent.ceiling_patterns.get(op, ()), f"identity '{parent.identity}'"),
                ):
                    if not any(pattern_covers(o, p) for o in source):
                        shown = p.replace("\x00", "").replace("\x01", "")
                        return f"{op} on {shown!r} is wider than the parent's {label} allows"
        return None


def _match(pattern: re.Pattern[str] | None, resource: str) -> bool:
    return pattern is not None and pattern.match(resource) is not None


class Policy:
    """The compiled config: tool rules and intents, ready to bind tasks and derive calls."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.tools = {name: CompiledTool.compile(name, rule) for name, rule in config.tools.items()}

    def bind(self, intent_name: str, params: Mapping[str, Any]) -> BoundTask:
        """Bind an intent's placeholders; :class:`ConfigError` for unknown intents or params."""
        intent = self.config.intents.get(intent_name)
        if intent is None:
            known = ", ".join(sorted(self.config.intents)) or "none"
            raise ConfigError(
                f"intent {intent_name!r} is not defined (defined: {known}); add it under intents:",
                problems=[(f"intents.{intent_name}", "not defined")],
            )
        identity = self.config.identities.get(intent.identity)
        if identity is None:  # pragma: no cover - GuardConfig validates references
            raise ConfigError(f"identity {intent.identity!r} is not defined")
        str_params: dict[str, str] = {}
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ConfigError(
                    f"task parameter {key!r} must be a string or an integer, got "
                    f"{type(value).__name__}",
                    problems=[(f"params.{key}", "not a string")],
                )
            text = str(value)
            problem = check_text(text, limit=MAX_RESOURCE_CHARS)
            if problem is not None:
                raise ConfigError(
                    f"task parameter {key!r} {problem}; pass plain text",
                    problems=[(f"params.{key}", problem)],
                )
            str_params[key] = text
        base = f"intents.{intent_name}.allow"
        intent_allow = {
            op: _compile_union(
                [bind_pattern(p, str_params, where=f"{base}.{op}[{i}]") for i, p in enumerate(ps)]
            )
            for op, ps in intent.allow.items()
        }
        cbase = f"identities.{intent.identity}.allow"
        ceiling = {
            op: _compile_union(
                [bind_pattern(p, str_params, where=f"{cbase}.{op}[{i}]") for i, p in enumerate(ps)]
            )
            for op, ps in identity.allow.items()
        }
        approvals = tuple(
            ApprovalRule(
                op,
                _compile_union([bind_pattern(p, str_params, where=f"{base}.{op}[{i}]")]),
                f"{base}.{op}",
                _substitute(p, str_params).replace("\x00", "").replace("\x01", ""),
            )
            for source, base in (
                (intent.approve, f"intents.{intent_name}.approve"),
                (identity.approve, f"identities.{intent.identity}.approve"),
            )
            for op, ps in source.items()
            for i, p in enumerate(ps)
        )
        purpose = intent.purpose
        if purpose:
            for key, value in str_params.items():
                purpose = purpose.replace("{" + key + "}", value)
        return BoundTask(
            intent=intent_name,
            identity=intent.identity,
            params=str_params,
            tools=frozenset(intent.tools),
            intent_allow=intent_allow,
            ceiling_allow=ceiling,
            patterns={
                op: tuple(_substitute(p, str_params) for p in ps) for op, ps in intent.allow.items()
            },
            ceiling_patterns={
                op: tuple(_substitute(p, str_params) for p in ps)
                for op, ps in identity.allow.items()
            },
            budget=intent.budget,
            limits=identity.limits,
            ttl=intent.ttl,
            audience=intent.audience,
            purpose=purpose,
            approvals=approvals,
            approval_ttl=intent.approval_ttl,
            mode=self.config.mode(intent_name),
        )
