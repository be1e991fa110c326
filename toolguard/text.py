"""Model-written text: what may enter, how long it may be, and how it is shown. Pure.

Everything an agent's model writes (resource values, tool names, tool-call ids, tool error
messages) is checked or neutralised here, and everything read back from the trail is shown
through :func:`printable`, so one definition of "unsafe character" holds everywhere:

* :data:`UNSAFE`: the C0 and C1 control characters and DEL (Unicode ``Cc``), the format
  characters (``Cf``: bidi overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks
  U+200E/U+200F/U+061C, zero-width characters U+200B-U+200D, U+2060, U+FEFF, the soft hyphen,
  the invisible "tag" characters U+E0000-U+E007F, ...), the line and paragraph separators
  U+2028/U+2029 (``Zl``/``Zp``), and lone surrogates (``Cs``, which cannot even be encoded as
  UTF-8). None of them can be part of a resource: :func:`check_text` names the first one.
* :func:`printable` escapes each of them as ``\\xNN``/``\\uXXXX``/``\\UXXXXXXXX``, so a
  terminal, a CSV cell or an HTML page shows them instead of obeying them (a U+202E would
  otherwise reverse the rest of the line on screen).
* :func:`neutral` is :func:`printable` cut to a length: for identifiers that must still be
  recorded when they are malformed (a tool name or tool-call id from the model).
* :func:`quote` is how a message (a denial reason, read by the model and stored in the trail)
  quotes model-written text: built-in secret formats redacted, unsafe characters escaped, and
  at most :data:`QUOTE_CHARS` characters.

The bounds (:data:`MAX_RESOURCE_CHARS`, :data:`MAX_NAME_CHARS`, :data:`MAX_REASON_CHARS`,
:data:`MAX_ERROR_CHARS`, :data:`QUOTE_CHARS`) are documented in docs/security.md.
"""

from __future__ import annotations

import re

from .redaction import scrub_text

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "MAX_RESOURCE_CHARS",
    "PLACEHOLDER",
    "QUOTE_CHARS",
    "UNSAFE",
    "check_text",
    "clip",
    "neutral",
    "printable",
    "quote",
    "storable",
]

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A template placeholder, ``{name}`` (group 1: the name), in resource patterns, purposes and
resource templates; the one definition every module uses."""

MAX_RESOURCE_CHARS = 2048
"""A longer resource is refused (the call is denied); 2048 fits any practical URL or path."""
MAX_NAME_CHARS = 200
"""Tool names and correlation (tool-call) ids are recorded with at most this many characters."""
MAX_REASON_CHARS = 1000
"""A denial reason (stored, and sent back to the model) is cut to this many characters."""
MAX_ERROR_CHARS = 500
"""The description of a tool's exception (the ``error`` column) is cut to this many."""
QUOTE_CHARS = 120
"""A message quotes at most this many characters of a model-written value."""

UNSAFE = re.compile(
    "["
    "\x00-\x1f\x7f-\x9f"  # C0, DEL, C1
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f"  # zero-width space/non-joiner/joiner, LRM, RLM
    "\u2028-\u202e"  # line/paragraph separators, bidi embeddings and overrides
    "\u2060-\u2064\u2066-\u206f"  # word joiner, invisible operators, bidi isolates
    "\ud800-\udfff"  # lone surrogates
    "\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"  # tag characters
    "]"
)
"""Characters never accepted in a resource and always escaped on display (see the module)."""

_CUT = "…[{} more chars]"


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def check_text(value: str, *, limit: int | None = None) -> str | None:
    """``None`` if ``value`` is acceptable model-written input, else the problem, as words
    (``"contains control characters (\\x85)"``, ``"is 1000000 characters long (at most
    2048)"``)."""
    if limit is not None and len(value) > limit:
        return f"is {len(value)} characters long (at most {limit})"
    m = UNSAFE.search(value)
    if m is None:
        return None
    char = m.group()
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        what = "a lone surrogate"
    elif code < 0x20 or 0x7F <= code <= 0x9F:
        what = "control characters"
    else:
        what = "invisible or bidi control characters"
    return f"contains {what} ({_escape(m)})"


def printable(value: object) -> str:
    """``value`` as text safe for a terminal, CSV or HTML: every :data:`UNSAFE` character
    escaped (``\\x1b``, ``\\u202e``, ``\\udc80``); ``None`` is the empty string."""
    if value is None:
        return ""
    text = value if type(value) is str else str(value)
    if text.isascii() and text.isprintable():
        return text
    return UNSAFE.sub(_escape, text)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    """``value`` with the characters no audit store can hold escaped as :func:`printable`
    does: U+0000 (``\\x00``: PostgreSQL text refuses it) and lone surrogates (``\\udc80``:
    they are not UTF-8, which both stores write). Every text that reaches the store goes
    through it (events before they are hashed, revocations, read filters), so SQLite and
    PostgreSQL record, hash and match the same text. Other control characters are stored as
    they are (both stores hold them) and escaped on display."""
    if "\x00" not in value and (value.isascii() or _UNSTORABLE.search(value) is None):
        return value
    return _UNSTORABLE.sub(_escape, value)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + _CUT.format(len(text) - limit)


def neutral(value: str, limit: int = MAX_NAME_CHARS) -> str:
    """An identifier made safe to store and show: unsafe characters escaped, then cut."""
    return clip(printable(value), limit)


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``'value'`` for a message: built-in secret formats redacted, unsafe characters
    escaped, at most ``limit`` characters of the value."""
    shown = clip(printable(scrub_text(value)), limit)
    return "'" + shown.replace("'", "\\'") + "'"
