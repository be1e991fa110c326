"""Shared fixtures: a clean environment, a controllable clock, and guards on real files."""

from __future__ import annotations

import copy
import functools
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

pytest_plugins = ["pg_cluster"]  # tests/pg_cluster.py: pg_cluster, pg_url (a real PostgreSQL)


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


def pytest_sessionfinish(session: pytest.Session) -> None:
    """At the end pytest runs ten full collections to find unraisable exceptions (objects
    whose ``__del__`` fails), each walking everything the tests left alive (the SDKs imported
    by a test, caches: ~1 s in all). One collection here finds the same garbage, with the same
    unraisable hook watching; what survives it is frozen, so pytest's ten walk only what is
    new (what the finalizers left)."""
    gc.collect()
    gc.freeze()


def _whole_module(mark: str) -> re.Pattern[str]:
    """``pytestmark = pytest.mark.MARK`` (or a list holding it) at a module's top level."""
    return re.compile(rf"^pytestmark = (?:\[[^\]]*?)?pytest\.mark\.{mark}\b", re.MULTILINE)


_SLOW_MODULE = _whole_module("slow")
"""A module marked slow as a whole: ``pytestmark = pytest.mark.slow``, or a list holding it."""
_POSTGRES_MODULE = _whole_module("postgres")
"""A module whose every test runs on PostgreSQL (``pytestmark = pytest.mark.postgres``)."""


@functools.cache
def _deselects_every(markexpr: str, mark: str) -> bool:
    """Whether ``-m markexpr`` deselects every test marked ``mark``, whatever its other marks."""
    from _pytest.mark.expression import Expression

    try:
        expression = Expression.compile(markexpr)
    except Exception:  # pytest reports a bad expression itself
        return False
    names = sorted(set(re.findall(r"[\w.]+", markexpr)) - {"and", "or", "not", mark})
    if not markexpr.strip() or len(names) > 8:
        return False
    for bits in range(1 << len(names)):
        marks = {mark} | {n for i, n in enumerate(names) if bits >> i & 1}
        if expression.evaluate(lambda name, /, **kwargs: name in marks):
            return False
    return True


def _deselects_every_slow_test(markexpr: str) -> bool:
    """Whether ``-m markexpr`` deselects every test marked slow, whatever its other marks."""
    return _deselects_every(markexpr, "slow")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With a ``-m`` that deselects every slow test (``make test-fast``: ``-m "not slow and not
    postgres"``), a test module marked slow as a whole is not imported: all its tests would be
    deselected anyway, and every xdist worker would pay for its imports (an SDK, a subprocess
    harness). Likewise a module marked postgres as a whole when ``-m`` deselects every postgres
    test (its imports: psycopg). ``make test`` and CI collect them."""
    name = collection_path.name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    markexpr = config.getoption("markexpr", "") or ""
    skipped = [
        pattern
        for mark, pattern in (("slow", _SLOW_MODULE), ("postgres", _POSTGRES_MODULE))
        if _deselects_every(markexpr, mark)
    ]
    if not skipped:
        return None
    try:
        text = collection_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # collected, and its error reported, as usual
    return True if any(pattern.search(text) for pattern in skipped) else None


SHARED_WORKER = {
    "tests/test_openai_agents.py": "the SDK tests",
    "tests/test_pydantic_ai.py": "the SDK tests",
    "tests/test_approvals_adapters.py": "the SDK tests",
}
"""Test modules that ``--dist loadfile`` (``make test-fast``) runs on one worker, as if one file:
they import the same agent SDKs when their first test runs (OpenAI Agents ~1.2 s of CPU,
PydanticAI ~0.6 s), which each worker running one of them would pay again."""


def xdist_scope(nodeid: str) -> str:
    """The unit of work of ``--dist loadfile`` a test belongs to: its file, or the group of
    :data:`SHARED_WORKER`."""
    file = nodeid.split("::", 1)[0]
    return SHARED_WORKER.get(file, file)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with the modules of :data:`SHARED_WORKER` as one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return Scheduling(config, log)


class Clock:
    """A controllable clock: ``clock()`` returns ``now``; ``advance(s)`` moves it."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """``(what, thread id)`` of every write transaction a store opens from now on (clear it
    to start counting later): which thread did the store work (issue 15's async tests)."""
    import threading

    from toolguard.store import Store

    seen: list[tuple[str, int]] = []
    original = Store._write

    def spy(self: Store, what: str) -> Any:
        seen.append((what, threading.get_ident()))
        return original(self, what)

    monkeypatch.setattr(Store, "_write", spy)
    return seen


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TOOLGUARD_"):
            monkeypatch.delenv(name)


_BASE_AS_DEFINED = copy.deepcopy(BASE_CONFIG)


@pytest.fixture(autouse=True)
def _base_config_unchanged() -> Iterator[None]:
    """A test that mutates BASE_CONFIG (through a shallow copy) changes every later test's
    config: fail that test, not the innocent ones after it."""
    yield
    if BASE_CONFIG != _BASE_AS_DEFINED:
        BASE_CONFIG.clear()
        BASE_CONFIG.update(copy.deepcopy(_BASE_AS_DEFINED))
        pytest.fail("this test changed tests/conftest.py's BASE_CONFIG (copy it deeply first)")


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


BOTH_BACKENDS = frozenset(
    {
        "test_budget.py",
        "test_budget_cost.py",
        "test_task.py",
        "test_delegation.py",
        "test_resume.py",
        "test_audit.py",
        "test_engine.py",
        "test_prune.py",
        "test_integrity.py",
        "test_middleware.py",
        "test_anomaly.py",
        "test_revocation_crossprocess.py",
        "test_budget_race.py",
        "test_approvals.py",
        "test_replay.py",
        "test_revocation_feed.py",
        "test_store_text.py",
        "test_shadow.py",
        "test_cli.py",
        "test_cli_incident.py",
        "test_export.py",
        "test_starlette.py",
        "test_approvals_adapters.py",
        "test_approvals_attacks.py",
        "test_approvals_langgraph.py",
    }
)
"""Test files whose guards (``make_guard``, ``guard``) run on both stores: SQLite, and a real
PostgreSQL (``[postgres]``, marked ``postgres``; tests/pg_cluster.py). One fixture, no copies."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (
        "backend" in metafunc.fixturenames
        and Path(str(metafunc.definition.path)).name in BOTH_BACKENDS
        and metafunc.definition.get_closest_marker("sqlite_only") is None
    ):
        metafunc.parametrize(
            "backend",
            ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
            indirect=True,
        )


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store of ``make_guard``: ``sqlite`` (a file in tmp_path), or ``postgres`` (a new
    database of the test server) in the files of :data:`BOTH_BACKENDS`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store_config(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The config keys that put a test's store on its ``backend``: none for SQLite (the file
    of :func:`make_config`), else ``store`` (a new database of the test server) and
    ``checkpoints`` (in tmp_path). For tests that build their config themselves:
    ``make_config(tmp_path, **store_config)``."""
    if backend == "postgres":
        pg_url = request.getfixturevalue("pg_url")
        return {"store": pg_url, "checkpoints": str(tmp_path / "audit.db.checkpoints")}
    return {}


@pytest.fixture
def make_guard(tmp_path: Path, store_config: dict[str, str]) -> Iterator[Callable[..., tg.Guard]]:
    """``make_guard(clock=None, providers=None, **config_overrides)`` on real files (and, with
    ``backend`` postgres, a real PostgreSQL database, its checkpoints still in tmp_path)."""
    guards: list[tg.Guard] = []
    defaults = store_config

    def factory(clock: Callable[[], float] | None = None, **overrides: Any) -> tg.Guard:
        providers = overrides.pop("providers", None)
        kwargs: dict[str, Any] = {}
        if clock is not None:
            kwargs["clock"] = clock
        if providers is not None:
            kwargs["providers"] = providers
        guard = tg.Guard(make_config(tmp_path, **{**defaults, **overrides}), **kwargs)
        guards.append(guard)
        return guard

    yield factory
    for guard in guards:
        guard.close()


def store_arg(guard: tg.Guard) -> str:
    """The guard's store as ``--db`` takes it (a SQLite path or a PostgreSQL URL)."""
    location = guard.config.store_location
    return location.url if location.is_postgres else str(location.path)


def raw_connection(guard: tg.Guard) -> Any:
    """A connection of one's own to the guard's store (autocommit; ``BEGIN``/``COMMIT`` by
    hand), with sqlite3's ``execute`` on either backend: an attacker's or an operator's."""
    location = guard.config.store_location
    if location.is_postgres:
        import psycopg

        from toolguard.store.postgres.connection import PgConnection

        class Own(PgConnection):
            """Closed when dropped, like a sqlite3 connection; ``with`` as sqlite3's."""

            def __enter__(self) -> Own:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def __del__(self) -> None:
                self.close()

        return Own(psycopg.connect(location.url, autocommit=True), lock_timeout=5.0)
    import sqlite3

    return sqlite3.connect(str(location.path), isolation_level=None)


def pg_writer(guard: tg.Guard) -> Any:
    """The PostgreSQL store's writer connection (a ``PgConnection``), once it has written."""
    from toolguard.store.postgres.connection import PgConnection

    writer: Any = guard.store._writer
    assert writer is not None
    conn = writer[1]
    assert isinstance(conn, PgConnection)
    return conn


def raw_sql(guard: tg.Guard, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the guard's store behind its back (as an attacker or an operator
    with a database client would), on either backend; returns the rows."""
    location = guard.config.store_location
    if location.is_postgres:
        import psycopg

        from toolguard.store.postgres.connection import translate

        with psycopg.connect(location.url, autocommit=True) as conn:
            cur = conn.execute(translate(sql), params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
    import sqlite3

    with sqlite3.connect(str(location.path)) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def guard(make_guard: Callable[..., tg.Guard], clock: Clock) -> tg.Guard:
    """A guard on the test config with the controllable clock."""
    return make_guard(clock=clock)
