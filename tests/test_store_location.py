"""Which store a string names (toolguard/location.py): SQLite paths and URLs, PostgreSQL URLs,
and a ConfigError for anything else; a password never shows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_config

import toolguard as tg
from toolguard.cli import main
from toolguard.errors import ConfigError, MissingDependency
from toolguard.location import parse_store, redact_url

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("given", "backend", "path"),
    [
        ("audit.db", "sqlite", "base/audit.db"),
        ("/abs/audit.db", "sqlite", "/abs/audit.db"),
        ("sqlite:///rel/audit.db", "sqlite", "base/rel/audit.db"),
        ("sqlite:////abs/audit.db", "sqlite", "/abs/audit.db"),
        ("C:\\trails\\audit.db", "sqlite", "base/C:\\trails\\audit.db"),
        (f"postgresql://tg:{SECRET}@db.internal:5432/trail", "postgresql", None),
        (f"postgres://tg:{SECRET}@db.internal/trail", "postgresql", None),
    ],
)
def test_a_store_string_selects_its_backend(given: str, backend: str, path: str | None) -> None:
    location = parse_store(given, base="base")
    assert location.backend == backend
    assert (str(location.path) if location.path else None) == path
    if backend == "postgresql":
        assert location.url == given
        assert SECRET not in str(location) and SECRET not in repr(location)
        assert "tg:***@db.internal" in location.display


@pytest.mark.parametrize(
    "given",
    [
        f"mysql://tg:{SECRET}@db/trail",
        f"http://tg:{SECRET}@db/trail",
        f"postgresql:/tg:{SECRET}@db/trail",  # a URL without //: not a file either
        "sqlite://host/audit.db",
        "sqlite:///",
        "",
    ],
)
def test_an_unsupported_store_is_a_config_error_without_the_password(given: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_store(given)
    assert SECRET not in str(info.value)


def test_a_password_in_the_query_is_redacted_too() -> None:
    shown = redact_url(f"postgresql://db/trail?user=tg&password={SECRET}")
    assert SECRET not in shown and "password=***" in shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///trail?host=/run/postgresql",  # a local server's Unix socket
        "postgresql://tg@%2Frun%2Fpostgresql/trail",
        "postgresql://tg@%2Frun%2Fpostgresql:5433/trail",
    ],
)
def test_a_unix_socket_url_is_shown_as_written(url: str) -> None:
    assert redact_url(url) == url
    assert parse_store(url).display == url


@pytest.mark.slow
def test_a_postgresql_url_no_longer_becomes_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://tg:{SECRET}@127.0.0.1:1/trail"
    config = make_config(tmp_path, store=url, busy_timeout="0.1s")
    guard = tg.Guard(config)
    try:
        with pytest.raises(tg.AuditError) as info:
            guard.task("process-job", job_id="1").start()
    finally:
        guard.close()
    assert SECRET not in str(info.value) and "127.0.0.1:1/trail" in str(info.value)
    assert SECRET not in repr(guard.config)
    # nothing named after the URL, anywhere under the working folder
    assert not [p for p in tmp_path.rglob("*") if "postgresql" in p.name or "trail" in p.name]


def test_an_unsupported_scheme_in_the_config_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        tg.Guard(make_config(tmp_path, store=f"mysql://tg:{SECRET}@db/trail"))
    assert "mysql" in str(info.value) and SECRET not in str(info.value)
    assert not list(tmp_path.glob("*trail*"))


@pytest.mark.slow  # the unreachable server: connecting is retried for busy_timeout (5 s)
def test_the_cli_takes_urls_and_never_prints_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = CliRunner().invoke(main, ["audit", "tasks", "--db", f"mysql://tg:{SECRET}@db/x"])
    assert bad.exit_code == 2 and "mysql" in bad.output and SECRET not in bad.output
    monkeypatch.setenv("TOOLGUARD_DB", f"ftp://tg:{SECRET}@db/x")
    env = CliRunner().invoke(main, ["audit", "tasks"])
    assert env.exit_code == 2 and "ftp" in env.output and SECRET not in env.output
    monkeypatch.delenv("TOOLGUARD_DB")
    gone = CliRunner().invoke(
        main, ["audit", "tasks", "--db", f"postgresql://tg:{SECRET}@127.0.0.1:1/x"]
    )
    assert gone.exit_code != 0 and SECRET not in gone.output
    assert not list(tmp_path.iterdir())  # no file named after either URL


def test_a_sqlite_url_works_on_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = tg.Guard(make_config(tmp_path))
    with guard.task("process-job", job_id="1"):
        pass
    guard.close()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["audit", "tasks", "--db", "sqlite:///audit.db"])
    assert result.exit_code == 0, result.output
    assert "process-job" in result.output


def test_without_psycopg_a_postgresql_store_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith("toolguard.store.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependency) as info:
        tg.Guard(make_config(tmp_path, store="postgresql://tg@127.0.0.1/trail"))
    assert 'pip install "agent-toolguard[postgres]"' in str(info.value)


# -- an attacker's (and bad luck's) review: passwords that leaked, files named after them ----


@pytest.mark.parametrize(
    "given",
    [
        f"postgresql://tg:{SECRET}/x@db/trail",  # an un-encoded '/' in the password
        f"postgresql://tg:{SECRET}?x@db/trail",  # '?'
        f"postgresql://tg:{SECRET}#x@db/trail",  # '#'
        f"postgresql://tg:{SECRET}@db:99999/trail",  # bad port
        f"postgresql://tg:{SECRET}@[::1/trail",  # bad IPv6 host
        f"postgresql://tg:{SECRET}%zz@db/trail",  # bad percent-escape (libpq quotes it)
        f"postgresql://tg:{SECRET}@db/tr%00ail",  # %00
        f"postgresql://tg:{SECRET}\n@db/trail",  # a control character
        f"postgresql://tg:{SECRET}\u202e@db/trail",  # a bidi override
        f"postgresql://tg:{SECRET} x@db/trail",  # a space
        f"postgresql://tg:{SECRET}@db/" + "t" * 5000,  # huge
        f"host=db password={SECRET} dbname=trail",  # libpq key=value: was a SQLite file
        f"dbname=trail user=tg password={SECRET}",
        f"trail\x00{SECRET}",  # a NUL: was a raw ValueError from sqlite3
    ],
)
def test_a_malformed_store_is_a_config_error_that_never_shows_the_password(given: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_store(given)
    assert SECRET not in str(info.value)
    assert "postgresql://" in str(info.value) or "store" in str(info.value)


@pytest.mark.parametrize(
    ("given", "hidden"),
    [
        (f"postgresql://db/trail?pass%77ord={SECRET}", "password=***"),  # percent-encoded name
        (f"postgresql://db/trail?%70assword={SECRET}", "password=***"),
        (f"postgresql://db/trail?PASSWORD={SECRET}", "PASSWORD=***"),
        (f"postgresql://db/trail?sslpassword={SECRET}", "sslpassword=***"),  # libpq's key pw
        (f"postgresql://tg:{SECRET}@db/trail?password={SECRET}", "tg:***@db"),
    ],
)
def test_every_password_parameter_is_redacted(given: str, hidden: str) -> None:
    location = parse_store(given)
    assert location.url == given  # libpq still gets it
    for shown in (str(location), repr(location), location.display, redact_url(given)):
        assert SECRET not in shown and hidden in shown
    assert SECRET not in str(location.default_checkpoints())


@pytest.mark.parametrize(
    "given",
    [
        f"postgresql://tg:{SECRET}/x@db/trail",
        f"postgresql://tg:{SECRET}?x@db/trail",
        f"postgresql://tg:123{SECRET}#x@db/trail",
        f"postgresql://tg:{SECRET}@[::1/trail",
        f"postgresql://tg:{SECRET}@db:port/trail",
    ],
)
def test_redact_url_hides_everything_before_the_last_at_when_unsure(given: str) -> None:
    shown = redact_url(given)
    assert SECRET not in shown and "***" in shown


@pytest.mark.parametrize(
    "given",
    [
        f"postgresql://tg:{SECRET}@[::1]:5432/trail",
        f"postgresql://tg:p%40{SECRET}@db/trail?sslmode=require&options=-c%20x%3D1",
        f"postgresql://tg:{SECRET}@/trail?host=%2Fvar%2Frun%2Fpostgresql",
        f"postgresql://tg:{SECRET}@db1:5432,db2:5433/trail?target_session_attrs=read-write",
        f"postgres://tg:{SECRET}@db/trail?user=a@b",
    ],
)
def test_odd_but_valid_postgresql_urls_are_kept_as_given(given: str) -> None:
    location = parse_store(given)
    assert location.is_postgres and location.url == given
    assert SECRET not in repr(location) and SECRET not in str(location.default_checkpoints())


def test_a_path_with_an_equals_sign_is_still_a_sqlite_file() -> None:
    assert parse_store("./host=db/audit.db").path == Path("host=db/audit.db")
    assert parse_store("/data/user=tg/audit.db").path == Path("/data/user=tg/audit.db")


def test_a_libpq_connection_string_makes_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        tg.Guard(make_config(tmp_path, store=f"host=127.0.0.1 password={SECRET} dbname=x"))
    assert SECRET not in str(info.value)
    assert not [p for p in tmp_path.rglob("*") if SECRET in p.name]


@pytest.mark.parametrize(
    "db",
    [
        f"postgresql://tg:{SECRET}%zz@127.0.0.1:1/x",
        f"postgresql://tg:{SECRET}/x@127.0.0.1:1/x",
        f"host=127.0.0.1 password={SECRET}",
        f"postgresql://tg:{SECRET}\t@127.0.0.1:1/x",
    ],
)
def test_the_cli_refuses_a_malformed_db_with_one_error_line(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["audit", "tasks", "--db", db], ["audit", "verify", "--db", db]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
        assert SECRET not in result.output
    monkeypatch.setenv("TOOLGUARD_DB", db)
    result = CliRunner().invoke(main, ["audit", "tasks"])
    assert result.exit_code == 2 and SECRET not in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["100%/audit.db", "a?mode=rwc/audit.db", "b#x/audit.db"])
def test_the_viewer_reads_a_database_whose_path_has_uri_characters(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / name
    guard = tg.Guard(make_config(tmp_path, store=str(path)))
    with guard.task("process-job", job_id="1"):
        pass
    guard.close()
    result = CliRunner().invoke(main, ["audit", "tasks", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "process-job" in result.output


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"postgresql://tg:{SECRET}@db/trail", "not a URL"),  # was "does not exist" + password
        ("https://feed.internal/checkpoints", "not a URL"),
        ("", "not an empty value"),  # was "cannot read .: Is a directory"
        ("   ", "not an empty value"),
    ],
)
def test_checkpoints_flag_refuses_urls_and_empty_values_without_echoing_them(
    value: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = tg.Guard(make_config(tmp_path))
    with guard.task("process-job", job_id="1"):
        pass
    guard.close()
    monkeypatch.chdir(tmp_path)
    for args in (
        ["audit", "verify", "--db", "audit.db", "--checkpoints", value],
        ["audit", "verify", "--db", "audit.db", "--checkpoints", "audit.db.checkpoints",
         "--checkpoints", value],
        ["audit", "acknowledge", "--db", "audit.db", "--truncated", "--by", "me",
         "--reason", "test", "--checkpoints", value],
    ):  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert why in result.output and SECRET not in result.output
        assert "Traceback" not in result.output


def test_checkpoints_flag_takes_a_windows_like_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = tg.Guard(make_config(tmp_path))
    with guard.task("process-job", job_id="1"):
        pass
    guard.close()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "C:").mkdir()  # a relative folder named like a drive: a path, not a URL
    (tmp_path / "audit.db.checkpoints").rename(tmp_path / "C:" / "host.checkpoints")
    result = CliRunner().invoke(
        main, ["audit", "verify", "--db", "audit.db", "--checkpoints", "C:/host.checkpoints"]
    )
    assert result.exit_code == 0 and "OK" in result.output, result.output


def test_verify_refuses_a_checkpoints_file_given_but_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a typo, or a file someone deleted, must not read as "not anchored" with exit 0
    guard = tg.Guard(make_config(tmp_path))
    with guard.task("process-job", job_id="1"):
        pass
    guard.close()
    monkeypatch.chdir(tmp_path)
    args = ["audit", "verify", "--db", "audit.db", "--checkpoints", "audit.db.checkpoints"]
    assert CliRunner().invoke(main, args).exit_code == 0
    for missing in ("audit.db.checkpoint", "host-b/\u202eevil.checkpoints"):
        result = CliRunner().invoke(main, [*args, "--checkpoints", missing])
        assert result.exit_code == 2, result.output
        assert "no checkpoint file at" in result.output and "\u202e" not in result.output
