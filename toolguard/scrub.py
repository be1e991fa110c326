"""Removing a call's token from whatever a tool returns or raises, before the model sees it.

:func:`scrub` is the one place that does it, for ``guard()`` tools and for ``GuardMiddleware``
(which runs every tool through a ``guard()`` twin). It walks the value and replaces each secret
(the call's token) by ``[REDACTED]``:

* in strings — the exact value, its percent-encoded form (``%65%79...``, decoded repeatedly,
  up to three layers) and its base64 forms (standard and URL-safe alphabet, any alignment: the
  whole base64 run that contains it is replaced);
* in ``bytes`` / ``bytearray`` / ``memoryview`` (the same forms, byte for byte; the type is
  kept, a memoryview becomes ``bytes``);
* inside tuples (``response_format="content_and_artifact"`` results: content *and* artifact),
  lists, sets, dicts (keys and values), content blocks, nested to any depth (cycles are cut);
* inside pydantic models (``ToolMessage``, any ``BaseModel``: a copy with the fields scrubbed)
  and dataclasses (LangGraph's ``Command``: a copy via ``dataclasses.replace``);
* inside exceptions, in place: ``args``, ``__notes__``, attributes, and the chained
  ``__cause__`` / ``__context__``; an ``Exception`` whose ``str()`` still shows the token is
  replaced by a ``RuntimeError`` with the scrubbed text (``BaseException`` s such as
  ``CancelledError`` keep their type);
* any other object whose ``str()`` or ``repr()`` shows the token is replaced by its scrubbed
  ``str()`` (what the model would have read).

Known limits: other encodings (hex, compression, encryption, a token split across values,
reversed, or with its case changed) are not recognised; the scrubber protects against
accidental leaks, not against a tool written to smuggle its credential out. Only the call's
own token is known here (the audit trail's redaction recognises every JWT).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from .redaction import REDACTED

__all__ = ["SecretForms", "scrub"]

_MAX_DEPTH = 32
_PERCENT_LAYERS = 3
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")
_CYCLE = "[...]"


class SecretForms:
    """The secrets to remove and the encoded forms they are recognised in.

    The base64 forms are built on first use: most tool results are shorter than any form of
    a token (:attr:`shortest`), and a call whose result is never long enough pays nothing for
    them."""

    __slots__ = ("_b64", "secrets", "shortest")

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets: tuple[str, ...] = tuple(dict.fromkeys(s for s in secrets if s))
        self._b64: tuple[str, ...] | None = None
        lengths = [len(s) for s in self.secrets]
        for secret in self.secrets:
            size = len(secret.encode("utf-8", "surrogatepass"))
            lengths += [n for n in (_core_length(offset, size) for offset in range(3)) if n >= 8]
        self.shortest = min(lengths, default=0)
        """No string shorter than this holds a recognised form of a secret (the exact value,
        a percent-encoded one, which is longer still, or a base64 core)."""

    @property
    def cores(self) -> tuple[str, ...]:
        """The base64 cores of the secrets: each secret encoded at the three alignments, in
        both alphabets, without the characters that also depend on the bytes around it."""
        if self._b64 is None:
            cores: list[str] = []
            for secret in self.secrets:
                raw = secret.encode("utf-8", "surrogatepass")
                for offset in range(3):
                    for encode in (base64.b64encode, base64.urlsafe_b64encode):
                        text = encode(b"\0" * offset + raw).decode("ascii").rstrip("=")
                        core = text[4 if offset else 0 : len(text) - 4]
                        if len(core) >= 8:
                            cores.append(core)
            self._b64 = tuple(dict.fromkeys(cores))
        return self._b64

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, value: str) -> str:
        """``value`` with every recognised form of every secret replaced by ``[REDACTED]``."""
        if len(value) < self.shortest:
            return value
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if "%" in value:
            layer = value
            for _ in range(_PERCENT_LAYERS):
                decoded = unquote(layer, errors="replace")
                if decoded == layer:
                    break
                layer = decoded
                if self._hidden_in(layer):  # percent-encoded: the text is kept decoded
                    for secret in self.secrets:
                        layer = layer.replace(secret, REDACTED)
                    value = layer
        for core in self.cores:
            while core in value:
                value = _replace_run(value, core)
        return value

    def _hidden_in(self, decoded: str) -> bool:
        return any(s in decoded for s in self.secrets) or any(c in decoded for c in self.cores)

    def data(self, value: bytes) -> bytes:
        """:meth:`text` for bytes (each byte read as one character, so nothing is lost)."""
        text = value.decode("latin-1")
        scrubbed = self.text(text)
        if scrubbed is text or scrubbed == text:
            return value
        return scrubbed.encode("latin-1", "replace")


def _core_length(offset: int, size: int) -> int:
    """The length of the base64 core of a ``size``-byte secret at ``offset`` (see
    :attr:`SecretForms.cores`): the unpadded encoding of ``offset + size`` bytes, less the
    characters shared with the bytes around it."""
    return (4 * (offset + size) + 2) // 3 - (4 if offset else 0) - 4


def _replace_run(value: str, core: str) -> str:
    """Replace the base64 run that contains ``core`` (at its first occurrence)."""
    start = value.index(core)
    end = start + len(core)
    while start > 0 and ord(value[start - 1]) < 128 and ord(value[start - 1]) in _B64_CHARS:
        start -= 1
    while end < len(value) and ord(value[end]) < 128 and ord(value[end]) in _B64_CHARS:
        end += 1
    return value[:start] + REDACTED + value[end:]


def scrub(value: Any, secrets: Iterable[str] | SecretForms) -> Any:
    """``value`` without the ``secrets`` (see the module doc for what is covered).

    Returns ``value`` itself when nothing had to change; containers, models and dataclasses
    that held a secret are copies (the original is not modified), exceptions are scrubbed in
    place. Never raises for odd values: what cannot be inspected is checked through ``str()``.
    """
    forms = secrets if isinstance(secrets, SecretForms) else SecretForms(secrets)
    if not forms:
        return value
    return _Walk(forms).value(value, 0)


class _Walk:
    __slots__ = ("active", "done", "forms")

    def __init__(self, forms: SecretForms) -> None:
        self.forms = forms
        self.active: set[int] = set()  # ids of the containers being walked (cycle guard)
        self.done: set[int] = set()  # ids of exceptions already scrubbed

    def leaks(self, text: str) -> bool:
        return self.forms.text(text) != text

    def value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self.forms.text(value)
        if value is None or kind is bool or kind is int or kind is float:
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            scrubbed = self.forms.data(data)
            if scrubbed is data:
                return value
            return bytearray(scrubbed) if isinstance(value, bytearray) else scrubbed
        if isinstance(value, str):  # a str subclass: scrubbed, as plain text if it must change
            text = str.__str__(value)
            clean = self.forms.text(text)
            return value if clean == text else clean
        if isinstance(value, BaseException):
            return self.exception(value, depth)
        if depth >= _MAX_DEPTH:
            return self.opaque(value)
        key = id(value)
        if key in self.active:
            return _CYCLE
        self.active.add(key)
        try:
            return self.composite(value, depth + 1)
        finally:
            self.active.discard(key)

    def composite(self, value: Any, depth: int) -> Any:
        if isinstance(value, Mapping):
            items = [(self.value(k, depth), self.value(v, depth)) for k, v in value.items()]
            if all(a is k and b is v for (a, b), (k, v) in zip(items, value.items())):
                return value
            return _rebuild(value, items, dict if type(value) is dict else None)
        if isinstance(value, (list, tuple, set, frozenset)):
            members = list(value)
            cleaned = [self.value(v, depth) for v in members]
            if all(a is b for a, b in zip(cleaned, members)):
                return value
            return _rebuild(value, cleaned, type(value) if type(value) in _PLAIN else None)
        fields = getattr(type(value), "model_fields", None)
        if isinstance(fields, Mapping) and callable(getattr(value, "model_copy", None)):
            changed = {}
            for name in fields:
                current = getattr(value, name, None)
                cleaned_field = self.value(current, depth)
                if cleaned_field is not current:
                    changed[name] = cleaned_field
            extra = getattr(value, "__pydantic_extra__", None) or {}
            for name, current in extra.items():
                cleaned_field = self.value(current, depth)
                if cleaned_field is not current:
                    changed[name] = cleaned_field
            return value.model_copy(update=changed) if changed else self.checked(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.dataclass(value, depth)
        return self.opaque(value)

    def dataclass(self, value: Any, depth: int) -> Any:
        changed: dict[str, Any] = {}
        late: dict[str, Any] = {}
        for field in dataclasses.fields(value):
            current = getattr(value, field.name, None)
            cleaned = self.value(current, depth)
            if cleaned is not current:
                (changed if field.init else late)[field.name] = cleaned
        if not changed and not late:
            return self.checked(value)
        try:
            copy = dataclasses.replace(value, **changed)
            for name, cleaned in late.items():
                object.__setattr__(copy, name, cleaned)
        except Exception:  # a dataclass that cannot be copied: shown by its scrubbed text
            return self.forms.text(_text(value))
        return copy

    def checked(self, value: Any) -> Any:
        """A value whose parts were clean: replaced by its text if its text still leaks."""
        return self.opaque(value)

    def opaque(self, value: Any) -> Any:
        """An object this walk cannot take apart: its scrubbed ``str()`` if that shows a
        secret (what the model would have read), else the object itself."""
        text = _text(value)
        if self.leaks(text) or self.leaks(_text(value, repr)):
            return self.forms.text(text)
        return value

    def exception(self, exc: BaseException, depth: int) -> BaseException:
        """Scrub ``exc`` in place (args, notes, attributes, chained exceptions)."""
        if id(exc) in self.done or depth >= _MAX_DEPTH:
            return exc
        self.done.add(id(exc))
        args = exc.args
        cleaned_args = tuple(self.value(a, depth + 1) for a in args)
        if any(a is not b for a, b in zip(cleaned_args, args)):
            with contextlib.suppress(Exception):
                exc.args = cleaned_args
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [self.value(n, depth + 1) for n in notes]
        attributes = getattr(exc, "__dict__", None)
        if isinstance(attributes, dict):
            for name, current in list(attributes.items()):
                if name == "__notes__":
                    continue
                cleaned = self.value(current, depth + 1)
                if cleaned is not current:
                    try:
                        setattr(exc, name, cleaned)
                    except Exception:
                        attributes[name] = cleaned
        for chained in (exc.__cause__, exc.__context__):
            if chained is not None:
                self.exception(chained, depth + 1)
        text = _text(exc)
        if isinstance(exc, Exception) and self.leaks(text):  # not for cancellation & co.
            replacement = RuntimeError(f"{type(exc).__name__}: {self.forms.text(text)}")
            replacement.__suppress_context__ = True
            return replacement
        return exc


_PLAIN: tuple[type[Any], ...] = (list, tuple, set, frozenset)


def _rebuild(original: Any, items: list[Any], plain: type[Any] | None) -> Any:
    if plain is not None:
        return plain(items)
    if isinstance(original, Mapping):
        try:
            return type(original)(items)  # type: ignore[call-arg]
        except Exception:
            return dict(items)
    make = getattr(type(original), "_make", None)  # a namedtuple
    try:
        return make(items) if callable(make) else type(original)(items)
    except Exception:
        base = next(b for b in (tuple, list, frozenset, set) if isinstance(original, b))
        return base(items)


def _text(value: Any, show: Any = str) -> str:
    try:
        text = show(value)
    except Exception:  # an object that cannot show itself cannot show the token either
        return ""
    return text if isinstance(text, str) else ""
