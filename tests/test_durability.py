"""Durability modes: ``normal`` (survives process crashes) sets ``synchronous=NORMAL``;
``full`` (survives power loss) sets ``synchronous=FULL`` on every connection and fsyncs the
checkpoint file."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Clock
from langchain_core.tools import tool

import toolguard as tg
from toolguard.errors import ConfigError


def _pragmas(guard: tg.Guard) -> tuple[int, str]:
    conn = guard.store.conn
    return (
        int(conn.execute("PRAGMA synchronous").fetchone()[0]),
        str(conn.execute("PRAGMA journal_mode").fetchone()[0]),
    )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        pytest.param({}, 1, id="default-normal"),
        pytest.param({"durability": "normal"}, 1, id="normal"),
        pytest.param({"durability": "full"}, 2, id="full"),
    ],
)
def test_durability_sets_synchronous_on_every_connection(
    make_guard: Callable[..., tg.Guard], overrides: dict[str, Any], expected: int
) -> None:
    guard = make_guard(**overrides)
    seen: list[tuple[int, str]] = []

    main = _pragmas(guard)
    worker = threading.Thread(target=lambda: seen.append(_pragmas(guard)))
    worker.start()
    worker.join()

    assert main == (expected, "wal")
    assert seen == [(expected, "wal")]  # the per-thread connection too


def test_durability_unknown_mode_is_a_config_error(make_guard: Callable[..., tg.Guard]) -> None:
    with pytest.raises(ConfigError, match="durability"):
        make_guard(durability="paranoid")


@pytest.mark.parametrize(
    "mode, fsyncs",
    [pytest.param("normal", False, id="normal"), pytest.param("full", True, id="full")],
)
def test_durability_full_fsyncs_the_checkpoint_file(
    make_guard: Callable[..., tg.Guard],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    fsyncs: bool,
) -> None:
    guard = make_guard(clock=clock, durability=mode)
    path = guard.config.checkpoints_path
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self") else "?")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)

    @tool
    def kv_get(key: str) -> str:
        """Read a key."""
        return key

    with guard.task("process-job", job_id="1"):
        tg.guard(kv_get, guard).invoke({"key": "agents:jobs:1:a"})

    assert path.exists()
    assert (str(path) in synced or "?" in synced) is fsyncs
