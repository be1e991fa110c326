"""The PostgreSQL store on a real server: the SQLite store's semantics (tests/pg_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

import toolguard as tg

pytestmark = pytest.mark.postgres


def test_a_guarded_call_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    guard = tg.Guard(make_config(tmp_path, store=pg_url, checkpoints=str(tmp_path / "cp")))
    try:
        with guard.task("process-job", job_id="7") as task:
            assert task.task_id
    finally:
        guard.close()
