"""A throwaway PostgreSQL server for the tests (a pytest plugin, loaded by conftest.py).

``$TOOLGUARD_TEST_PG`` (a URL of a server where the tests may create databases) is used when
set; else a cluster is started in a temporary folder with the server binaries of the machine
(``/usr/lib/postgresql/*/bin``; as root, run as the ``postgres`` user), one per pytest-xdist
worker, stopped at the end of the session. Without binaries the PostgreSQL tests skip with the
reason, except under ``CI``, where they fail: CI must never skip them (.ci/run installs them).

Each test gets its own database (``pg_url``), dropped after it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

TEST_PG = os.environ.get("TOOLGUARD_TEST_PG", "").strip()
"""Read at import: the tests' autouse fixture clears every TOOLGUARD_* variable."""


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


class Cluster:
    """A running server: ``url(db)`` names one of its databases; ``stop``/``start`` for the
    fault tests (only for a cluster started here)."""

    def __init__(self, base_url: str, data: Path | None, port: int, as_postgres: bool) -> None:
        self.base_url = base_url
        self.data = data
        self.port = port
        self.as_postgres = as_postgres

    def url(self, db: str) -> str:
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, ""))

    def _pg_ctl(self, *args: str) -> None:
        assert self.data is not None, "a server given by $TOOLGUARD_TEST_PG is not ours to stop"
        binaries = _binaries()
        assert binaries is not None
        command = [str(binaries / "pg_ctl"), "-D", str(self.data / "data"), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._pg_ctl(
            "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=300",
            "-l",
            str(self.data / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    if TEST_PG:
        yield Cluster(TEST_PG, None, urlsplit(TEST_PG).port or 5432, False)
        return
    binaries = _binaries()
    if binaries is None:
        _unavailable(
            "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); install "
            "the postgresql package or set TOOLGUARD_TEST_PG to a server URL"
        )
    root = os.geteuid() == 0
    data = Path(tempfile.mkdtemp(prefix="toolguard-pg-"))
    try:
        if root:
            shutil.chown(data, "postgres", "postgres")
        command = [str(binaries / "initdb"), "-D", str(data / "data"), "-A", "trust",
                   "-U", "postgres", "--no-sync", "-E", "UTF8"]  # fmt: skip
        if root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        port = _free_port()
        cluster = Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, port, root)
        cluster.start()
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(data, ignore_errors=True)
        _unavailable(f"cannot start a throwaway cluster: {exc}")
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        except (OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(data, ignore_errors=True)


def admin(cluster: Cluster, sql: str) -> None:
    """Run one statement as the cluster's admin (autocommit)."""
    import psycopg

    with psycopg.connect(cluster.base_url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A new, empty database of the test server; dropped after the test."""
    name = "tg_" + uuid.uuid4().hex[:16]
    admin(pg_cluster, f"CREATE DATABASE {name}")
    try:
        yield pg_cluster.url(name)
    finally:
        try:
            admin(pg_cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception:
            pass
