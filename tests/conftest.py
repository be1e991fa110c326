"""Shared fixtures: a clean environment, a controllable clock, and guards on real files."""

from __future__ import annotations

import copy
import gc
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import toolguard as tg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def fake_model() -> ModuleType:
    """``examples/_fake_model.py`` (the scripted chat model of the examples and agent tests),
    loaded once as the module ``_fake_model`` (the examples import it by that name too)."""
    module = sys.modules.get("_fake_model")
    if module is None:
        spec = importlib.util.spec_from_file_location("_fake_model", EXAMPLES / "_fake_model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["_fake_model"] = module
        spec.loader.exec_module(module)
    return module


BASE_CONFIG: dict[str, Any] = {
    "issuer": {"name": "toolguard-test", "audience": "kv-service", "ttl": "5m"},
    "identities": {
        "agent-runner": {
            "owner": "data-platform",
            "purpose": "runs job workers",
            "allow": {
                "read": ["agents:context:*", "agents:jobs:*"],
                "write": ["agents:jobs:*"],
                "delete": ["agents:jobs:*"],
            },
            "limits": {"writes_per_minute": 10, "requests_per_day": 1000, "cost_per_day": 5.0},
        },
        "summariser": {
            "owner": "data-platform",
            "allow": {"read": ["agents:jobs:*"]},
        },
    },
    "tools": {
        "kv_get": {"operation": "read", "resource": "{key}"},
        "kv_set": {"operation": "write", "resource": "{key}"},
        "kv_delete": {"operation": "delete", "resource": "{key}"},
        "send_email": {"operation": "write", "resource": "mailto:{to}", "cost": 0.01},
    },
    "intents": {
        "process-job": {
            "identity": "agent-runner",
            "purpose": "Process job {job_id}",
            "tools": ["kv_get", "kv_set"],
            "allow": {
                "read": ["agents:context:*", "agents:jobs:{job_id}:*"],
                "write": ["agents:jobs:{job_id}:*"],
            },
            "budget": {"max_calls": 20, "max_cost": 1.0, "per_tool": {"kv_set": 5}},
            "ttl": "15m",
        },
        "summarise-job": {
            "identity": "summariser",
            "tools": ["kv_get"],
            "allow": {"read": ["agents:jobs:{job_id}:*"]},
            "ttl": "5m",
        },
    },
}


def pytest_configure(config: pytest.Config) -> None:
    """The cyclic garbage collector runs less often in the test processes: the SDKs' imports
    leave ~400,000 long-lived objects that every full collection walks again (10 % of the
    suite's time at the default thresholds of 700, 10, 10; it still runs, only less often)."""
    gc.set_threshold(10_000, 20, 10)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported lives to the end: the collector skips it from now on."""
    gc.freeze()


_SLOW_MODULE = re.compile(r"^pytestmark = (?:\[[^\]]*?)?pytest\.mark\.slow\b", re.MULTILINE)
"""A module marked slow as a whole: ``pytestmark = pytest.mark.slow``, or a list holding it."""


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m "not slow"`` (``make test-fast``), a test module marked slow as a whole is not
    imported: every one of its tests would be deselected anyway, and every xdist worker would
    pay for its imports (an SDK, a subprocess harness). ``make test`` and CI collect it."""
    if config.getoption("markexpr", "") != "not slow":
        return None
    name = collection_path.name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    try:
        text = collection_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # collected, and its error reported, as usual
    return True if _SLOW_MODULE.search(text) else None


class Clock:
    """A controllable clock: ``clock()`` returns ``now``; ``advance(s)`` moves it."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TOOLGUARD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The test config with its store and key in ``tmp_path``; top-level keys overridden."""
    config = copy.deepcopy(BASE_CONFIG)
    config["store"] = str(tmp_path / "audit.db")
    config["issuer"]["key_file"] = str(tmp_path / "keys" / "signing-key.pem")
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def make_guard(tmp_path: Path) -> Iterator[Callable[..., tg.Guard]]:
    """``make_guard(clock=None, providers=None, **config_overrides)`` on real files."""
    guards: list[tg.Guard] = []

    def factory(clock: Callable[[], float] | None = None, **overrides: Any) -> tg.Guard:
        providers = overrides.pop("providers", None)
        kwargs: dict[str, Any] = {}
        if clock is not None:
            kwargs["clock"] = clock
        if providers is not None:
            kwargs["providers"] = providers
        guard = tg.Guard(make_config(tmp_path, **overrides), **kwargs)
        guards.append(guard)
        return guard

    yield factory
    for guard in guards:
        guard.close()


@pytest.fixture
def guard(make_guard: Callable[..., tg.Guard], clock: Clock) -> tg.Guard:
    """A guard on the test config with the controllable clock."""
    return make_guard(clock=clock)
