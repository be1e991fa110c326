"""Helpers every framework adapter shares (LangChain, the OpenAI Agents SDK, PydanticAI, MCP):
no framework is imported here.

- :func:`policy_value`: a validated argument as the policy and the audit see it;
- :func:`task_params`: an intent's template parameters for a run, from what the caller gave,
  the run's context and the parent task;
- :class:`CallCredentials`: the credential of each running call, keyed by the framework's
  per-call context object (held, compared by identity);
- :func:`call_secrets`, :func:`scrub_error`: what a call's result and errors must not show
  the model (its token, with :func:`toolguard.scrub.scrub`'s every form).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic_core import to_jsonable_python

from .context import permit_var
from .credentials import issued_token
from .errors import ConfigError, CredentialError
from .intent import template_parameters
from .scrub import scrub

if TYPE_CHECKING:
    from .credentials import Credential
    from .engine import Guard
    from .task import TaskSession

__all__ = [
    "DENIED",
    "CallCredentials",
    "call_secrets",
    "policy_value",
    "scrub_error",
    "task_params",
]

_Context = TypeVar("_Context")

DENIED = "Denied by toolguard: "
"""How the text a model reads for a denied call starts, in every framework (the reason
follows)."""


def policy_value(value: Any) -> Any:
    """A validated argument as the policy and the audit see it: plain JSON data (a
    ``pydantic.HttpUrl`` as its normalised text, a model as its JSON form, an enum as its
    value), so the resource checked is the one the tool will use."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value
    if kind is dict:
        return {k: policy_value(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [policy_value(v) for v in value]
    try:
        return to_jsonable_python(value)
    except Exception:  # not JSON (a file object, ...): the policy sees the object itself
        return value


def call_secrets(credential: Credential) -> tuple[str, ...]:
    """The secrets of a call to keep from the model: its token, if one was signed (a token
    never signed cannot be in a result)."""
    token = issued_token(credential)
    return (token,) if token else ()


def scrub_error(exc: BaseException, credential: Credential) -> BaseException:
    """``exc`` without the call's token: scrubbed in place, or a replacement when its text
    still shows it (see :func:`toolguard.scrub.scrub`). Raise the replacement ``from None``
    when it is not ``exc``."""
    scrubbed: BaseException = scrub(exc, call_secrets(credential))
    return scrubbed


def _lookup(context: Any, name: str) -> Any:
    if context is None:
        return None
    if isinstance(context, Mapping):
        return context.get(name)
    return getattr(context, name, None)


def task_params(
    guard: Guard,
    intent: str,
    *,
    given: Mapping[str, Any],
    contexts: Sequence[Any],
    parent: TaskSession | None,
    where: str,
    how: str,
) -> dict[str, Any]:
    """The intent's template parameters for one run: each from ``given`` (the adapter's
    ``params=``), else the first of the run's ``contexts`` that has it (a key of a mapping or
    an attribute), else the ``parent`` task's. A missing required one is a
    :class:`ConfigError` that says ``how`` to pass it; ``where`` names the adapter in the
    unknown-intent error."""
    required, optional = template_parameters(guard.config, intent, where=where)
    params: dict[str, Any] = {}
    missing: list[str] = []
    for name in (*required, *optional):
        value = given.get(name)
        for context in contexts:
            if value is not None:
                break
            value = _lookup(context, name)
        if value is None and parent is not None:
            value = parent.params.get(name)
        if value is not None:
            params[name] = value
        elif name in required:
            missing.append(name)
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise ConfigError(
            f"intent '{intent}' needs the task parameter(s) {names}; pass them as "
            + how.format(first=repr(missing[0])),
            problems=[(f"params.{m}", "missing task parameter") for m in missing],
        )
    return params


class CallCredentials(Generic[_Context]):
    """The credential of each guarded call running with a given per-call context object (a
    framework's ``RunContext``, often an unhashable dataclass, so it is keyed by identity). An
    entry holds its context, so the context's id cannot be reused while the entry exists, and
    a lookup checks it is the same object; an adapter drops the entry when the call ends."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[_Context, Credential]] = {}

    def put(self, ctx: _Context, credential: Credential) -> None:
        self._entries[id(ctx)] = (ctx, credential)

    def get(self, ctx: _Context) -> Credential | None:
        entry = self._entries.get(id(ctx))
        return entry[1] if entry is not None and entry[0] is ctx else None

    def current(self, ctx: _Context, *, wrapper: str) -> Credential:
        """The credential of the call running with ``ctx``, else of the call running in this
        context (``tg.current_credential()``'s); :class:`CredentialError` outside a guarded
        call, naming ``wrapper``, the adapter function that guards the tools."""
        credential = self.get(ctx)
        if credential is not None:
            return credential
        permit = permit_var.get()
        if permit is None:
            raise CredentialError(
                "no guarded tool call is running for this context; tool_credential(ctx) works "
                f"only inside a tool guarded with {wrapper}"
            )
        return permit.credential

    def drop(self, ctx: _Context) -> None:
        entry = self._entries.get(id(ctx))
        if entry is not None and entry[0] is ctx:
            del self._entries[id(ctx)]
