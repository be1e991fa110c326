"""Redaction of call arguments before they reach the audit trail. Pure.

Values under secret-looking keys (token, secret, password, authorization, api_key, cookie, ...)
and any value that contains an issued credential are replaced by ``[REDACTED]``; long strings are
cut. ``args_sha256`` is taken over the original arguments (canonical JSON) so an investigator can
match a known value without the trail holding it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "SECRET_KEY_PATTERN", "Redactor"]

REDACTED = "[REDACTED]"
SECRET_KEY_PATTERN = (  # noqa: S105 - a pattern of key names, not a secret
    r"token|secret|passw(or)?d|passphrase|authorization|(^|_)auth($|_)|api[_-]?key|apikey|cookie|"
    r"session|credential|private[_-]?key|signature|bearer|client[_-]?secret"
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_MAX_DEPTH = 8
_MAX_ITEMS = 100


def _default(value: Any) -> str:
    return f"<{type(value).__name__}>"


_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default
).encode


class Redactor:
    """Turns a call's arguments into ``(args_json, args_sha256)`` for the trail."""

    def __init__(self, *, extra_keys: Iterable[str] = (), max_chars: int = 2000) -> None:
        extra = "|".join(re.escape(k) for k in extra_keys)
        source = SECRET_KEY_PATTERN + (f"|{extra}" if extra else "")
        self._secret = re.compile(f"(?:{source})", re.IGNORECASE)
        self.max_chars = max_chars

    def with_keys(self, keys: Iterable[str]) -> Redactor:
        """A redactor that also redacts these keys (a tool's own ``redact:`` list)."""
        keys = list(keys)
        if not keys:
            return self
        r = Redactor(max_chars=self.max_chars)
        r._secret = re.compile(
            f"(?:{self._secret.pattern}|" + "|".join(re.escape(k) for k in keys) + ")",
            re.IGNORECASE,
        )
        return r

    def __call__(self, args: Mapping[str, Any]) -> tuple[str, str]:
        original = _canonical(args)
        digest = hashlib.sha256(original.encode("utf-8")).hexdigest()
        return _canonical(self._clean(args, 0)), digest

    def _clean(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            if _JWT.search(value):
                value = _JWT.sub(REDACTED, value)
            if len(value) > self.max_chars:
                return value[: self.max_chars] + f"…[{len(value) - self.max_chars} more chars]"
            return value
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if depth >= _MAX_DEPTH:
            return "[too deep]"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= _MAX_ITEMS:
                    out["…"] = f"[{len(value) - _MAX_ITEMS} more keys]"
                    break
                key = str(k)
                out[key] = REDACTED if self._secret.search(key) else self._clean(v, depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            items = [self._clean(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
            if len(value) > _MAX_ITEMS:
                items.append(f"[{len(value) - _MAX_ITEMS} more items]")
            return items
        return _default(value)
