"""Durations in config files and on the command line: ``30s``, ``5m``, ``24h``, ``7d``. Pure."""

from __future__ import annotations

import re
from typing import Any

from .numbers import MAX_DURATION, is_finite_number

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``15m``, ``24h``, ``7d``, ``250ms`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 5m or 24h, got {value!r}")
    if isinstance(value, (int, float)):
        if not is_finite_number(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64 and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 24h, got {_show(value)}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration must be at most 100 years, got {_show(value)}")
    return seconds


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"
