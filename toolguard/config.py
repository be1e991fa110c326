"""The configuration: pydantic models, loading from YAML/TOML/JSON or a dict, ``${ENV}``.

Every model is frozen and forbids unknown keys. Problems are collected and reported together
with their location (``intents.process-job.allow.write[0]``, and ``file:line:col`` for a YAML or
JSON file) in one :class:`ConfigError`; :mod:`toolguard.configcheck` finds them (and the
warnings of ``toolguard check``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from .durations import parse_duration
from .errors import ConfigError
from .location import DEFAULT_DB, StoreLocation, parse_store
from .numbers import MAX_COST, MAX_COUNT
from .text import PLACEHOLDER

__all__ = [
    "AnomalyRule",
    "Budget",
    "GuardConfig",
    "IdentityConfig",
    "IdentityLimits",
    "IntentConfig",
    "Issue",
    "IssuerConfig",
    "Loc",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "ConfigProblems",
    "Mode",
    "OPERATION_NAME",
    "PLACEHOLDER",
    "TooLarge",
    "ToolRule",
    "format_path",
    "load_config",
    "parse_duration",
    "reference_problems",
    "substitute_env",
]

Operation = str
"""An operation class such as ``read``, ``write``, ``delete``; any lowercase word is accepted."""

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
OPERATION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
"""What an operation's name may be (``read``, ``write``, ``delete``, ``approve-payment``)."""


Mode = Literal["enforce", "shadow"]
"""How a task's decisions take effect: ``enforce`` (the default) denies what the policy or a
budget refuses; ``shadow`` runs it anyway and records the call as ``would_deny`` (see
docs/shadow.md for what stays denied even in shadow mode)."""


def _not_a_bool(value: Any) -> Any:
    # YAML's true/false would otherwise pass as 1/0 (pydantic's lax int and float)
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


NoBool = BeforeValidator(_not_a_bool)
"""Refuses ``true``/``false`` where a number is meant (``max_calls: true`` is not 1)."""
Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A positive, finite duration up to 100 years (``30s``, ``5m``, a number of seconds)."""
Count = Annotated[int, NoBool, Field(ge=0, le=MAX_COUNT)]
"""A call-count limit: a whole number from 0 to 10^9."""
Cost = Annotated[float, NoBool, Field(ge=0, le=MAX_COST)]
"""A cost or cost limit: a finite number from 0 to 10^9 (10^15 micro-units)."""


class _Model(BaseModel):
    # nan and inf are refused everywhere (a float field says "finite number")
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False
    )


class IssuerConfig(_Model):
    """Who signs the per-call credentials, for whom, and for how long."""

    name: str = "toolguard-local"
    """The ``iss`` claim; verifiers compare it exactly."""
    audience: str = "toolguard"
    """The default ``aud`` claim: the downstream service that accepts the credentials."""
    key_file: str = ".toolguard/signing-key.pem"
    """PEM private key; created with mode 0600 on first use (relative to the config file)."""
    key: SecretStr | None = None
    """The PEM private key itself, typically ``${TOOLGUARD_SIGNING_KEY}``; wins over key_file.
    A secret: ``repr``, ``str`` and dumps of the config show ``**********``; code that needs it
    calls ``key.get_secret_value()``."""
    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    """Signature algorithm of new keys."""
    ttl: Duration = 300.0
    """Lifetime of one call's credential; never past the task's deadline."""
    max_ttl: Duration | None = None
    """Verifiers reject lifetimes (exp - iat) above this; defaults to ``ttl``."""
    leeway: Annotated[float, NoBool] = Field(default=5.0, ge=0, le=60)
    """Clock skew verifiers tolerate, in seconds (0 to 60)."""

    @property
    def effective_max_ttl(self) -> float:
        return self.max_ttl if self.max_ttl is not None else self.ttl


class AnomalyRule(_Model):
    """Automatic revocation when an identity misbehaves."""

    revoke_when_rate_exceeds: Annotated[float, NoBool] | None = Field(default=None, le=MAX_COUNT)
    """Revoke the identity's tasks when its attempted calls per minute exceed this multiple of its
    per-minute limit (``5x`` or ``5``)."""

    @field_validator("revoke_when_rate_exceeds", mode="before")
    @classmethod
    def _multiple(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower().endswith("x"):
            return float(v.strip()[:-1])
        return v


class IdentityLimits(_Model):
    """Identity-wide limits, shared by every task of the identity and every process."""

    requests_per_minute: Count | None = None
    writes_per_minute: Count | None = None
    """Counts ``write`` and ``delete`` calls in any rolling 60 seconds."""
    deletes_per_minute: Count | None = None
    requests_per_day: Count | None = None
    """Resets at 00:00 UTC."""
    cost_per_day: Cost | None = None
    on_anomaly: AnomalyRule | None = None
    """Revoke the identity when it attempts far more calls per minute than its limits allow."""

    @model_validator(mode="after")
    def _anomaly_needs_a_rate(self) -> IdentityLimits:
        multiple = self.on_anomaly.revoke_when_rate_exceeds if self.on_anomaly else None
        if multiple is None:
            return self
        if multiple <= 1:
            raise ValueError(
                "on_anomaly.revoke_when_rate_exceeds must be more than 1x the per-minute limit"
                " (at 1x the first refused call would revoke the identity)"
            )
        rates = (self.requests_per_minute, self.writes_per_minute, self.deletes_per_minute)
        if not any(r for r in rates):
            raise ValueError(
                "on_anomaly needs a positive per-minute limit to compare against; set "
                "requests_per_minute, writes_per_minute or deletes_per_minute"
            )
        return self


class IdentityConfig(_Model):
    """A non-human actor and the ceiling of what any of its intents may allow."""

    owner: str | None = None
    purpose: str | None = None
    allow: dict[Operation, list[str]] = Field(default_factory=dict)
    """The ceiling: ``operation -> resource patterns``. An intent can only narrow it."""
    limits: IdentityLimits = Field(default_factory=IdentityLimits)
    disabled: bool = False
    """A disabled identity starts no task (see also ``toolguard revoke --identity --disable``)."""
    approve: dict[Operation, list[str]] = Field(default_factory=dict)
    """``operation -> resource patterns`` whose calls a person must approve, in every intent of
    the identity (added to the intent's own ``approve``; never removes one). Each pattern must
    lie inside the ceiling's ``allow`` for its operation."""
    mode: Mode | None = None
    """``shadow``: the identity's intents that set no ``mode`` of their own run in shadow mode
    (denied calls run and are recorded as ``would_deny``); default ``enforce``."""

    @field_validator("allow", "approve")
    @classmethod
    def _ops(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return _check_allow(v)

    @model_validator(mode="after")
    def _approve_inside_allow(self) -> IdentityConfig:
        _check_approve_inside(self.approve, self.allow, "the identity's ceiling")
        return self


class ToolRule(_Model):
    """How a call of one tool maps to an operation and resources."""

    operation: Operation
    resource: str | list[str]
    """Template(s) filled from the call's arguments: ``"{key}"``, ``"mailto:{to}"``."""
    kind: Literal["plain", "path", "url"] = "plain"
    """``path`` normalizes and refuses ``..`` escapes; ``url`` normalizes scheme, host and
    unreserved percent-escapes, and refuses a dot segment in any spelling (``..``, ``%2e%2e``,
    ``..;x``, ``..%2f``) and backslashes. Every kind refuses control, bidi and invisible
    characters and values longer than 2048 characters."""
    cost: Cost = 0.0
    """Fixed cost of one call (reserved before it runs)."""
    cost_arg: str | None = None
    """Take the cost estimate from this argument of the call."""
    audience: str | None = None
    """The ``aud`` of this tool's credentials, if not the issuer's default."""
    redact: list[str] = Field(default_factory=list)
    """Extra argument names whose values are redacted in the audit trail (``*`` wildcards)."""
    redact_patterns: list[str] = Field(default_factory=list)
    """Extra regular expressions; matching parts of argument values are redacted."""

    @field_validator("redact_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return _check_regexes(v)

    @field_validator("operation")
    @classmethod
    def _op(cls, v: str) -> str:
        if not OPERATION_NAME.match(v):
            raise ValueError(
                f"operation {v!r} must be a lowercase word such as read, write, delete"
            )
        return v

    @property
    def resources(self) -> tuple[str, ...]:
        return (self.resource,) if isinstance(self.resource, str) else tuple(self.resource)


class Budget(_Model):
    """Task-level budget of one intent."""

    max_calls: Count | None = None
    max_cost: Cost | None = None
    per_tool: dict[str, Count] = Field(default_factory=dict)
    per_operation: dict[Operation, Count] = Field(default_factory=dict)


class IntentConfig(_Model):
    """A declared task shape; ``{placeholders}`` are bound when a task starts."""

    identity: str
    purpose: str | None = None
    tools: list[str]
    allow: dict[Operation, list[str]] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    ttl: Duration = 900.0
    audience: str | None = None
    approve: dict[Operation, list[str]] = Field(default_factory=dict)
    """``operation -> resource patterns``: an allowed call on a matching resource is held until
    a person approves it (docs/agents.md, "Human approval"). Each pattern must lie inside the
    intent's ``allow`` for its operation."""
    approval_ttl: Duration = 1800.0
    """How long an approval request waits for a decision (and a held call waits for it)."""
    mode: Mode | None = None
    """``enforce`` or ``shadow`` (calls the policy or a budget refuses run anyway and are
    recorded as ``would_deny``); unset: the identity's ``mode``, else ``enforce``."""

    @field_validator("allow", "approve")
    @classmethod
    def _ops(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return _check_allow(v)

    @model_validator(mode="after")
    def _approve_inside_allow(self) -> IntentConfig:
        _check_approve_inside(self.approve, self.allow, "the intent")
        return self


class GuardConfig(_Model):
    """The whole configuration of a :class:`toolguard.Guard`."""

    store: str | None = Field(default=None, repr=False)
    """The store: a SQLite file (a path, ``sqlite:///relative`` or ``sqlite:////absolute``) or
    a PostgreSQL server (``postgresql://user:password@host:port/dbname``); default
    ``$TOOLGUARD_DB``, else ``./.toolguard/audit.db``. Any other ``scheme://`` is refused.
    Not in ``repr`` (a URL holds a password)."""
    store_pool_size: Annotated[int, NoBool] = Field(default=4, ge=1, le=1000)
    """PostgreSQL only: the most connections a guard process opens to the server (its pool)."""

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_store(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    durability: Literal["normal", "full"] = "normal"
    """``normal`` survives process crashes; ``full`` also survives power loss (slower)."""
    busy_timeout: Duration = 5.0
    """How long a call waits for the database lock before failing closed with AuditError."""
    checkpoints: str | None = None
    """JSON-lines file of signed chain checkpoints; default ``<store>.checkpoints``."""
    max_arg_chars: Annotated[int, NoBool] = Field(default=2000, ge=16, le=10_000_000)
    """Audit arguments: longer string values are cut to this many characters."""
    redact_keys: list[str] = Field(default_factory=list)
    """Argument names redacted in the audit trail, in addition to the built-in secret names."""
    redact_patterns: list[str] = Field(default_factory=list)
    """Regular expressions whose matches in argument values are redacted, for every tool."""
    args_key_file: str | None = None
    """The key of ``args_sha256`` (HMAC-SHA256), 64 hex characters in a 0600 file; default
    ``args-hmac.key`` beside ``issuer.key_file``; ``$TOOLGUARD_ARGS_KEY`` wins."""

    @field_validator("redact_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return _check_regexes(v)

    issuer: IssuerConfig = Field(default_factory=IssuerConfig)
    identities: dict[str, IdentityConfig] = Field(default_factory=dict)
    tools: dict[str, ToolRule] = Field(default_factory=dict)
    intents: dict[str, IntentConfig] = Field(default_factory=dict)
    base_dir: str | None = Field(default=None, exclude=True)
    """Directory relative paths are resolved against (the config file's); set by the loader."""

    @model_validator(mode="after")
    def _references(self) -> GuardConfig:
        problems = reference_problems(self.identities, self.tools, self.intents)
        if problems:
            raise ConfigProblems(problems, references=True)
        return self

    def mode(self, intent: str) -> Mode:
        """The mode of an intent's tasks: the intent's own ``mode``, else its identity's, else
        ``enforce`` (an unknown intent is ``enforce``)."""
        spec = self.intents.get(intent)
        if spec is None:
            return "enforce"
        identity = self.identities.get(spec.identity)
        return spec.mode or (identity.mode if identity is not None else None) or "enforce"

    def resolve_path(self, path: str) -> Path:
        """A config path made absolute against the config file's directory."""
        p = Path(os.path.expanduser(path))
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p

    @property
    def store_location(self) -> StoreLocation:
        """The store this config names (``store``, else ``$TOOLGUARD_DB``, else the default
        SQLite file); a relative SQLite path resolves against the config file's folder."""
        if self.store:
            return parse_store(os.path.expanduser(self.store), base=self.base_dir)
        return parse_store(os.environ.get("TOOLGUARD_DB") or DEFAULT_DB)

    @property
    def store_path(self) -> Path:
        """The SQLite file of the store; :class:`ConfigError` for a PostgreSQL store (use
        :attr:`store_location`)."""
        location = self.store_location
        if location.path is None:
            raise ConfigError(
                f"the store {location.display} is a PostgreSQL server, not a file; use "
                "store_location"
            )
        return location.path

    @property
    def args_key_path(self) -> Path:
        """The arguments key file (``args_key_file``, else beside the signing key file)."""
        if self.args_key_file:
            return self.resolve_path(self.args_key_file)
        return self.resolve_path(self.issuer.key_file).parent / "args-hmac.key"

    @property
    def checkpoints_path(self) -> Path:
        if self.checkpoints:
            return self.resolve_path(self.checkpoints)
        base = Path(self.base_dir) if self.base_dir else None
        return self.store_location.default_checkpoints(base)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the config file, for editors."""
        schema = cls.model_json_schema()
        schema.get("properties", {}).pop("base_dir", None)
        return schema


Loc = tuple[str | int, ...]
"""A location in the config as keys and list indices: ``("intents", "job", "tools", 2)``."""


class Issue(NamedTuple):
    """One problem found in the config: where, what, and which kind."""

    path: Loc
    message: str
    code: str = "invalid"
    """``invalid``, ``unknown-key``, ``undefined-identity``, ... (see docs/cli.md)."""
    on_key: bool = False
    """The problem is the key itself (a misspelt name), not its value."""


def format_path(path: Loc) -> str:
    """``intents.job.tools[2]`` for ``("intents", "job", "tools", 2)``; ``""`` for the root."""
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, str(part))
    return out


class ConfigProblems(ValueError):
    """Problems found by a validator; ``relative`` paths are below the field's own."""

    def __init__(
        self, problems: list[Issue], *, relative: bool = False, references: bool = False
    ) -> None:
        super().__init__("; ".join(f"{format_path(p.path)}: {p.message}" for p in problems))
        self.problems = problems
        self.relative = relative
        self.references = references


def reference_problems(
    identities: Collection[Any], tools: Collection[Any], intents: Mapping[Any, Any]
) -> list[Issue]:
    """Intents naming an identity or a tool that is not defined, and ``budget.per_tool`` entries
    for tools the intent does not list. ``intents`` values are :class:`IntentConfig` models or
    the raw mappings of a config that did not validate (wrongly typed parts are skipped)."""
    problems: list[Issue] = []
    for name, intent in intents.items():
        if isinstance(intent, IntentConfig):
            identity: Any = intent.identity
            listed: Any = intent.tools
            per_tool: Any = intent.budget.per_tool
        elif isinstance(intent, Mapping):
            identity, listed = intent.get("identity"), intent.get("tools")
            budget = intent.get("budget")
            per_tool = budget.get("per_tool") if isinstance(budget, Mapping) else None
        else:
            continue
        where: Loc = ("intents", name)
        if isinstance(identity, str) and identity not in identities:
            problems.append(
                Issue(
                    (*where, "identity"),
                    f"identity {identity!r} is not defined; add it under identities:",
                    "undefined-identity",
                )
            )
        names = {t for t in listed if isinstance(t, str)} if isinstance(listed, list) else set()
        for i, tool in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(tool, str) and tool not in tools:
                problems.append(
                    Issue(
                        (*where, "tools", i),
                        f"tool {tool!r} has no rule under tools:; add one with an operation "
                        "and a resource",
                        "undefined-tool",
                    )
                )
        for tool in per_tool if isinstance(per_tool, Mapping) else ():
            if isinstance(listed, list) and tool not in names:
                problems.append(
                    Issue(
                        (*where, "budget", "per_tool", tool),
                        f"tool {tool!r} is not among the intent's tools",
                        "budget-tool",
                        on_key=True,
                    )
                )
    return problems


def _check_regexes(v: list[str]) -> list[str]:
    for pattern in v:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from None
    return v


def _check_allow(v: dict[str, list[str]]) -> dict[str, list[str]]:
    problems: list[Issue] = []
    for op, patterns in v.items():
        if not OPERATION_NAME.match(op):
            problems.append(
                Issue(
                    (op,),
                    f"operation {op!r} must be a lowercase word such as read, write, delete",
                    on_key=True,
                )
            )
        for i, pattern in enumerate(patterns):
            if not pattern or any(ord(c) < 32 or ord(c) == 127 for c in pattern):
                problems.append(
                    Issue((op, i), f"pattern {pattern!r} is empty or has control characters")
                )
    if problems:
        raise ConfigProblems(problems, relative=True)
    return v


def _check_approve_inside(
    approve: dict[str, list[str]], allow: dict[str, list[str]], whose: str
) -> None:
    """An ``approve`` pattern must hold only resources ``allow`` allows for its operation (a
    rule outside it could never hold a call: a mistake)."""
    from .intent import pattern_covers  # intent imports this module

    def literal(pattern: str) -> str:  # placeholders compare as the same (unknown) text
        return PLACEHOLDER.sub(lambda m: "\x00{" + m.group(1) + "}\x01", pattern)

    problems: list[Issue] = []
    for op, patterns in approve.items():
        allowed = [literal(p) for p in allow.get(op, [])]
        for i, pattern in enumerate(patterns):
            if not any(pattern_covers(a, literal(pattern)) for a in allowed):
                shown = ", ".join(repr(p) for p in allow.get(op, [])) or "nothing"
                problems.append(
                    Issue(
                        ("approve", op, i),
                        f"approval rule {op} {pattern!r} is outside what {whose} allows "
                        f"({op} on {shown}); add it under allow.{op} or remove the rule",
                        "approve-outside-allow",
                    )
                )
    if problems:
        raise ConfigProblems(problems, relative=True)


MAX_CONFIG_BYTES = 1 << 20
"""A config file is at most 1 MiB."""
MAX_CONFIG_VALUES = 100_000
"""A config holds at most this many values once YAML aliases are expanded (a billion-laughs
file of 1 KB expands to 9^8 of them)."""
MAX_CONFIG_DEPTH = 32
"""And nests at most this deep."""


class TooLarge(Exception):
    """The config expands past :data:`MAX_CONFIG_VALUES` values or :data:`MAX_CONFIG_DEPTH`
    levels; nothing else is checked."""

    def __init__(self, path: Loc, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def substitute_env(
    value: Any, path: Loc, problems: list[Issue], budget: list[int] | None = None,
    depth: int = 0,
) -> Any:  # fmt: skip
    """``${ENV}`` substituted in every string, walking the config as a tree (an unset variable
    becomes ``""`` and an ``env-unset`` problem); raises :class:`TooLarge` beyond
    MAX_CONFIG_VALUES values (aliases count once per use) or MAX_CONFIG_DEPTH levels."""
    if budget is None:
        budget = [MAX_CONFIG_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge(
            path,
            f"the config has more than {MAX_CONFIG_VALUES} values once its YAML aliases are "
            "expanded (an alias bomb?); write it out plainly or make it smaller",
        )
    if depth > MAX_CONFIG_DEPTH:
        raise TooLarge(path, f"the config nests deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                problems.append(
                    Issue(path, f"environment variable {name} is not set; export it", "env-unset")
                )
                return ""
            return os.environ[name]

        return _ENV.sub(repl, value)
    if isinstance(value, Mapping):
        return {
            k: substitute_env(v, (*path, k), problems, budget, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            substitute_env(v, (*path, i), problems, budget, depth + 1) for i, v in enumerate(value)
        ]
    return value


def _join(loc: str, key: str) -> str:
    return f"{loc}.{key}" if loc else key


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | GuardConfig) -> GuardConfig:
    """Load and validate a config from a file path (YAML, TOML, JSON), a mapping, or a model.

    Raises :class:`ConfigError` listing every error with its location (``file:line:col`` too
    for a YAML or JSON file); the warnings of ``toolguard check`` do not stop a load.
    """
    if isinstance(source, GuardConfig):
        return source
    from .configcheck import check_config

    report = check_config(source, warnings=False)
    if report.config is None or report.errors:
        raise report.error()
    return report.config
