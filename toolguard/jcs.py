"""RFC 8785 JSON Canonicalization Scheme (JCS), pure: one byte string per JSON value.

* objects: members sorted by their names as UTF-16 code units (RFC 8785 §3.2.3), no spaces;
* strings: UTF-8, only ``"``, ``\\`` and the control characters U+0000..U+001F escaped, the
  latter as ``\\b \\t \\n \\f \\r`` or ``\\u00xx`` (lowercase hex); a lone surrogate is refused;
* numbers: IEEE-754 doubles serialised as ECMAScript's ``Number.prototype.toString`` does
  (shortest round-trip digits; ``1e+21``, ``1e-7``; ``-0`` is ``0``); NaN and infinities are
  refused, and so is an integer that a double cannot hold exactly (it would change meaning).

Used for the digest of an action held for approval (:mod:`toolguard.approval`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from .numbers import is_finite_number

__all__ = ["CanonicalizationError", "canonicalize", "canonical_sha256", "number_text"]


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form: NaN, an infinity, an inexact integer, a lone
    surrogate, a non-string key, or a type JSON does not have."""


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"
_MAX_DEPTH = 200


def number_text(value: float | int) -> str:
    """ECMAScript ``Number.prototype.toString`` of a finite double (RFC 8785 §3.2.2.3)."""
    if isinstance(value, int):
        as_float = float(value) if abs(value) < 1 << 1024 else float("inf")
        if as_float != value:
            raise CanonicalizationError(
                f"the integer {value} cannot be represented exactly as a JSON number (IEEE-754"
                " double); pass it as a string"
            )
        value = as_float
    if not is_finite_number(value):
        raise CanonicalizationError(f"{value!r} is not a JSON number (NaN and infinities are not)")
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digits that round-trip, as ECMAScript requires
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    point = mantissa.find(".")
    point = len(mantissa) if point < 0 else point
    point += int(exp_text) if exp_text else 0  # where the decimal point is, in ``digits``
    digits = mantissa.replace(".", "")
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point  # ECMAScript: digits s (k of them), value s * 10^(n-k)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-")
        text += str(abs(e))
    return sign + text


def _string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise CanonicalizationError(
                f"the string {value[:40]!r} holds a lone surrogate (U+{code:04X}); it is not"
                " valid Unicode text"
            )
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode(value: Any, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise CanonicalizationError(f"the value nests deeper than {_MAX_DEPTH} levels")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (int, float)):
        out.append(number_text(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalizationError(
                    f"an object key must be a string, not {type(key).__name__} ({key!r})"
                )
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(
            f"a value of type {type(value).__name__} has no JSON form; pass JSON data"
            " (strings, numbers, booleans, null, lists, objects)"
        )


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of ``value`` as UTF-8 bytes; :class:`CanonicalizationError`
    for what JSON cannot say exactly."""
    out: list[str] = []
    _encode(value, out, 0)
    return "".join(out).encode("utf-8")


def canonical_sha256(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return hashlib.sha256(canonicalize(value)).hexdigest()
