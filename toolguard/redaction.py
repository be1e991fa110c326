"""Redaction of call arguments before they reach the audit trail. Pure.

Rules, applied at every nesting level of the arguments:

* the value under a secret-looking key (:data:`SECRET_KEY_PATTERN`, searched case-insensitively
  in the key: ``token``, ``secret``, ``password``, ``authorization``, ``api_key``, ``cookie``,
  ...) or under one of the extra keys of the config (``redact_keys``, and a tool's ``redact``
  list: exact names, case-insensitive, ``*`` as a wildcard) becomes ``[REDACTED]`` (``null``
  stays ``null``), whatever its type (a whole nested object too);
* inside every string, issued credentials (any JWT), ``Bearer``/``Basic`` credentials, URL
  passwords (``scheme://user:[REDACTED]@host``), PEM private keys and well-known API key formats
  (:data:`SECRET_VALUE_PATTERNS`) are replaced by ``[REDACTED]``, as is every match of the
  extra value patterns (regexes);
* then strings (values and keys) longer than ``max_chars`` are cut (``…[N more chars]``);
  containers keep their first 100 items and 8 levels; a result longer than 16 times ``max_chars``
  is stored as ``{"…": "[arguments cut: ...]", "head": "<its first 16 times max_chars>"}``;
* values that are not JSON are converted first (pydantic models with ``model_dump(mode="json")``,
  dataclasses with ``asdict``) and redacted the same way; bytes become ``<bytes: N>``, any
  other object ``<TypeName>``.

``args_sha256`` is ``hmac-sha256:`` followed by the hex HMAC-SHA256, keyed with the guard's
*arguments key* (32 random bytes kept outside the database,
:func:`toolguard.keys.load_args_key`), of the
*original* arguments' canonical JSON (sorted keys, no spaces, UTF-8; models and dataclasses as
their JSON form, bytes as standard base64). An investigator who holds a value and the key can
check it was the one used (:func:`args_digest`, ``toolguard audit match-args``); without the key
the digest says nothing about a redacted PIN or password, however short.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DIGEST_PREFIX",
    "REDACTED",
    "SECRET_KEY_PATTERN",
    "SECRET_VALUE_PATTERNS",
    "Redactor",
    "args_digest",
    "canonical_args",
    "compile_patterns",
    "scrub_text",
]

REDACTED = "[REDACTED]"
DIGEST_PREFIX = "hmac-sha256:"
"""How ``args_sha256`` values start (older trails hold a bare, unkeyed SHA-256 hex)."""

_KEY_NAMES = (
    r"token|secret|passw(or)?d|passphrase|(^|[_-])pwd($|[_-])|authorization|(^|[_-])auth($|[_-])",
    r"api[_-]?key|apikey|access[_-]?key|private[_-]?key|cookie|session|credential|signature",
    r"bearer|jwt",
)
SECRET_KEY_PATTERN = "|".join(_KEY_NAMES)
"""Key names whose values are always redacted (searched anywhere in the key, ignoring case)."""

_JWT_SOURCE = r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
_AUTH_SOURCE = r"(?P<scheme>\b(?i:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
_URL_SOURCE = r"(?P<userinfo>://[^/\s:@]{0,256}:)[^/\s@]+(?=@)"
_PEM_SOURCE = r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"
_VENDOR_SOURCE = (
    r"\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style secret keys
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
)

SECRET_VALUE_PATTERNS: tuple[str, ...] = (
    _JWT_SOURCE,
    _AUTH_SOURCE,
    _URL_SOURCE,
    _PEM_SOURCE,
    _VENDOR_SOURCE,
)
"""Secrets recognised inside any string: a JWT (every token toolguard issues), the credential
of a ``Bearer``/``Basic`` value (the scheme is kept), the password of a URL (``://user:`` is
kept), a PEM private key, and AWS, GitHub, Slack, OpenAI-style and Google API keys."""

_JWT = re.compile(_JWT_SOURCE)
_AUTH = re.compile(_AUTH_SOURCE)
_URL = re.compile(_URL_SOURCE)
_PEM = re.compile(_PEM_SOURCE)
_VENDOR = re.compile(_VENDOR_SOURCE)
_VENDOR_HINTS = ("AKIA", "gh", "xox", "sk-", "AIza")
_MAX_DEPTH = 8
_MAX_ARGS_FACTOR = 16
"""The redacted ``args`` JSON is cut at this many times ``max_chars`` (32,000 by default)."""
_MAX_ITEMS = 100
_KEY_CACHE_SIZE = 4096


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One alternation of value regexes (``None`` when there are none).

    Raises ``re.error`` naming the first pattern that does not compile.
    """
    sources = [p for p in patterns if p]
    if not sources:
        return None
    for source in sources:
        re.compile(source)
    return re.compile("|".join(f"(?:{s})" for s in sources))


def _auth_value(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    if scheme[:5].lower() == "basic":
        encoded = match.group(0)[len(scheme) :]
        try:
            decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except ValueError:
            decoded = b""
        if b":" not in decoded:
            return match.group(0)  # "basic information": prose, not a credential
    return scheme + REDACTED


def _scrub_builtin(text: str) -> str:
    """The built-in secret formats of :data:`SECRET_VALUE_PATTERNS` redacted. Each rule runs
    only when a cheap substring test says it may match (strings can be long)."""
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "://" in text and "@" in text:
        text = _URL.sub(lambda m: m.group("userinfo") + REDACTED, text)
    lower = text.lower()
    if "bearer" in lower or "basic" in lower:
        text = _AUTH.sub(_auth_value, text)
    if "PRIVATE KEY-----" in text:
        text = _PEM.sub(REDACTED, text)
    if any(hint in text for hint in _VENDOR_HINTS):
        text = _VENDOR.sub(REDACTED, text)
    return text


def scrub_text(
    text: str, secrets: Iterable[str] = (), *, patterns: re.Pattern[str] | None = None
) -> str:
    """``text`` with every exact value in ``secrets`` (e.g. the token a tool was given), the
    built-in secret formats and the matches of ``patterns`` replaced by ``[REDACTED]``.

    Use it on error messages before they are stored or logged.
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    text = _scrub_builtin(text)
    if patterns is not None and patterns.search(text):
        text = patterns.sub(REDACTED, text)
    return text


def _key_matcher(keys: Iterable[str]) -> str:
    """Exact key names (case-insensitive), ``*`` matching any run of characters."""
    parts = ["^" + ".*".join(re.escape(p) for p in k.split("*")) + "$" for k in keys if k]
    return "|".join(parts)


def _digest_default(value: Any) -> Any:
    """The JSON form of a non-JSON value in the canonical original (for ``args_sha256``)."""
    plain = _plain(value)
    if plain is not _NOT_PLAIN:
        return plain
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    return f"<{type(value).__name__}>"


_NOT_PLAIN = object()


def _str_keys(value: Any, depth: int) -> Any:
    """A copy with every mapping key as text, cut at 32 levels (for hashing odd arguments)."""
    if depth > 32:
        return "[too deep]"
    if isinstance(value, Mapping):
        return {str(k): _str_keys(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_str_keys(v, depth + 1) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A model or dataclass as plain JSON-able data; ``_NOT_PLAIN`` for anything else."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(mode="json")
        except Exception:  # a model that cannot dump itself is shown by its type
            return _NOT_PLAIN
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return dataclasses.asdict(value)
        except Exception:  # a dataclass with fields that cannot be copied
            return _NOT_PLAIN
    return _NOT_PLAIN


_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_digest_default
).encode
_canonical_ascii = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_digest_default
).encode


class Redactor:
    """Turns a call's arguments into ``(args_json, args_sha256)`` for the trail.

    ``extra_keys``: key names redacted in addition to :data:`SECRET_KEY_PATTERN` (exact,
    case-insensitive, ``*`` wildcard). ``patterns``: regexes whose matches inside string values
    are redacted, in addition to :data:`SECRET_VALUE_PATTERNS`. ``max_chars``: longer strings
    are cut. Built once per config and tool; calls are thread-safe.
    """

    def __init__(
        self,
        *,
        extra_keys: Iterable[str] = (),
        patterns: Iterable[str] = (),
        max_chars: int = 2000,
        digest_key: bytes | None = None,
    ) -> None:
        self.extra_keys = tuple(extra_keys)
        self.patterns = tuple(patterns)
        self.max_chars = max_chars
        self._digest_key = digest_key
        self._pads = None if digest_key is None else _hmac_pads(digest_key)
        extra = _key_matcher(self.extra_keys)
        self._secret = re.compile(
            f"(?:{SECRET_KEY_PATTERN})" + (f"|(?:{extra})" if extra else ""), re.IGNORECASE
        )
        self._extra_values = compile_patterns(self.patterns)
        self._key_cache: dict[str, bool] = {}

    def with_keys(self, keys: Iterable[str] = (), *, patterns: Iterable[str] = ()) -> Redactor:
        """A redactor that also redacts these keys and value patterns (a tool's own rules)."""
        keys, patterns = tuple(keys), tuple(patterns)
        if not keys and not patterns:
            return self
        return Redactor(
            extra_keys=(*self.extra_keys, *keys),
            patterns=(*self.patterns, *patterns),
            max_chars=self.max_chars,
            digest_key=self._digest_key,
        )

    def __call__(self, args: Mapping[str, Any]) -> tuple[str, str]:
        """``(redacted JSON, digest of the original's canonical JSON)``: ``hmac-sha256:<hex>``
        with a ``digest_key``, else the bare SHA-256 hex (unkeyed: for tests and tools only)."""
        original = canonical_args(args)
        data = original.encode("utf-8", "surrogatepass")
        if self._pads is not None:  # HMAC (RFC 2104) from precomputed pads: ~1 µs, not ~6
            inner, outer = self._pads[0].copy(), self._pads[1].copy()
            inner.update(data)
            outer.update(inner.digest())
            digest = DIGEST_PREFIX + outer.hexdigest()
        else:
            digest = hashlib.sha256(data).hexdigest()
        cleaned = self._clean(args, 0)
        text = original if cleaned is args else _canonical(cleaned)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates cannot be stored: escape them
                text = _canonical_ascii(cleaned)
        limit = _MAX_ARGS_FACTOR * self.max_chars
        if len(text) > limit:  # many long values: the whole column is bounded too
            text = _canonical(
                {
                    "…": f"[arguments cut: {len(text)} characters of JSON, the first {limit} kept]",
                    "head": text[:limit],
                }
            )
        return text, digest

    def scrub(self, text: str, secrets: Iterable[str] = ()) -> str:
        """:func:`scrub_text` with this redactor's extra value patterns."""
        return scrub_text(text, secrets, patterns=self._extra_values)

    # -- internals ------------------------------------------------------------------------------

    def _is_secret(self, key: str) -> bool:
        cached = self._key_cache.get(key)
        if cached is None:
            cached = self._secret.search(key) is not None
            if len(self._key_cache) < _KEY_CACHE_SIZE and len(key) <= 64:
                self._key_cache[key] = cached
        return cached

    def _clean_str(self, value: str) -> str:
        value = _scrub_builtin(value)
        extra = self._extra_values
        if extra is not None and extra.search(value):
            value = extra.sub(REDACTED, value)
        if len(value) > self.max_chars:
            return value[: self.max_chars] + f"…[{len(value) - self.max_chars} more chars]"
        return value

    def _clean(self, value: Any, depth: int) -> Any:
        """The redacted form of ``value``; ``value`` itself (same object) when unchanged."""
        kind = type(value)
        if kind is str:
            return self._clean_str(value)
        if value is None or kind is bool or kind is int or kind is float:
            return value
        if depth >= _MAX_DEPTH:
            return "[too deep]"
        if isinstance(value, Mapping):
            changed = kind is not dict
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= _MAX_ITEMS:
                    out["…"] = f"[{len(value) - _MAX_ITEMS} more keys]"
                    changed = True
                    break
                key = k if type(k) is str else str(k)
                secret = v is not None and self._is_secret(key)
                if len(key) > 16 or not key.isalnum():  # keys are model-written text too
                    key = self._clean_str(key)
                changed = changed or key is not k
                if secret:
                    out[key] = REDACTED
                    changed = True
                    continue
                item = self._clean(v, depth + 1)
                changed = changed or item is not v
                out[key] = item
            return out if changed else value
        if isinstance(value, (list, tuple)):
            items = [self._clean(v, depth + 1) for v in value[:_MAX_ITEMS]]
            if len(value) > _MAX_ITEMS:
                items.append(f"[{len(value) - _MAX_ITEMS} more items]")
            elif all(a is b for a, b in zip(items, value)):
                return value
            return items
        if isinstance(value, str):  # a str subclass (an enum member): its plain text
            return self._clean(str.__str__(value), depth)
        if isinstance(value, int):  # an IntEnum member: its number
            return int(value)
        if isinstance(value, float):
            return float(value)
        plain = _plain(value)
        if plain is not _NOT_PLAIN:
            return self._clean(plain, depth + 1)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return f"<bytes: {len(bytes(value))}>"
        return f"<{type(value).__name__}>"


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the HMAC inner and outer pads of ``key`` (RFC 2104)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


def canonical_args(args: Mapping[str, Any]) -> str:
    """The canonical JSON of a call's original arguments, as ``args_sha256`` digests it."""
    try:
        return _canonical(args)
    except (TypeError, ValueError):  # non-str keys or a cycle: hash a plain copy
        return _canonical(_str_keys(args, 0))


def args_digest(args: Mapping[str, Any], key: bytes) -> str:
    """The ``args_sha256`` value of ``args`` under the arguments key ``key``: what an
    investigator compares with the trail to check a candidate value (constant-time with
    :func:`hmac.compare_digest`)."""
    data = canonical_args(args).encode("utf-8", "surrogatepass")
    return DIGEST_PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()
