"""Checks for the numbers that enter toolguard from a tool, a model, a config or a clock. Pure.

Every such number is checked where it enters, with :func:`finite_number` (or the predicate
:func:`is_finite_number`): a boolean, a non-finite float (``nan``, ``inf``), a number below
its minimum or above its maximum is refused with a readable reason, before it can reach the
micro-unit arithmetic of the budgets (:func:`toolguard.budget.to_units`) or an SQLite
``INTEGER`` column (64 bits), where it would fail inside a transaction.

The bounds are generous for any real use and far inside what those can hold:

- :data:`MAX_COST`: one call's cost, a cost limit (10^9, i.e. 10^15 micro-units);
- :data:`MAX_COUNT`: a call-count limit (10^9);
- :data:`MAX_DURATION`: a TTL, a time limit, a timeout (100 years, in seconds);
- :data:`MAX_TIMESTAMP`: a clock value (year 5138: timestamps are stored as 17-digit µs).
"""

from __future__ import annotations

import math

__all__ = [
    "MAX_COST",
    "MAX_COUNT",
    "MAX_DURATION",
    "MAX_TIMESTAMP",
    "check_timestamp",
    "is_timestamp",
    "finite_number",
    "is_finite_number",
]

MAX_COST = 1e9
"""The largest cost of one call, and the largest cost limit (10^15 micro-units)."""
MAX_COUNT = 1_000_000_000
"""The largest call-count limit (``max_calls``, ``requests_per_day``, ...)."""
MAX_DURATION = 100 * 365.25 * 86400.0
"""The largest duration (TTL, time limit, timeout): 100 years, in seconds."""
MAX_TIMESTAMP = 1e11
"""Clock values must be below this (Unix seconds, the year 5138) and above 0."""


def is_finite_number(value: object) -> bool:
    """True for an ``int`` or ``float`` (not a ``bool``) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) <= 1e300  # float(10**400) would raise OverflowError
    return math.isfinite(value)


def finite_number(
    value: object,
    what: str,
    *,
    minimum: float = 0.0,
    maximum: float = MAX_COST,
    positive: bool = False,
) -> float:
    """``value`` as a float, or :class:`ValueError` with a sentence naming ``what``.

    Refuses booleans, non-numbers, ``nan`` and infinities, numbers below ``minimum`` (or not
    above it with ``positive``) and above ``maximum``.
    """
    if not is_finite_number(value):
        raise ValueError(f"{what} must be a finite number, not {_show(value)}")
    number = float(value)  # type: ignore[arg-type]  # is_finite_number checked the type
    if number < minimum or (positive and number <= minimum):
        bound = "more than" if positive else "at least"
        raise ValueError(f"{what} must be {bound} {minimum:g}, not {_show(value)}")
    if number > maximum:
        raise ValueError(f"{what} must be at most {maximum:g}, not {_show(value)}")
    return number


def is_timestamp(value: object) -> bool:
    """Whether ``value`` is a Unix time in seconds toolguard accepts (finite, from 0 to
    :data:`MAX_TIMESTAMP`, not a bool)."""
    return is_finite_number(value) and 0 < float(value) < MAX_TIMESTAMP  # type: ignore[arg-type]


def check_timestamp(value: object, what: str = "the clock") -> float:
    """A clock value (Unix seconds) as a float, or :class:`ValueError` naming ``what``."""
    if not is_timestamp(value):
        raise ValueError(
            f"{what} returned {_show(value)}, which is not a Unix time in seconds (a finite "
            f"number between 0 and {MAX_TIMESTAMP:g}); fix the clock= callable"
        )
    return float(value)  # type: ignore[arg-type]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"
