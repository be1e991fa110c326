"""Faults against the trail's anchors: a lost WAL tail, a lost or replaced signing key, and short
or failed checkpoint writes. A guard must refuse to continue a trail it cannot vouch for until an
operator acknowledges the gap, never create a key silently next to an existing trail, and never
count a checkpoint as written that is not fully on disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import Clock, make_config
from langchain_core.tools import tool

import toolguard as tg
from toolguard.cli import CliContext, main
from toolguard.errors import AuditError
from toolguard.integrity import Integrity
from toolguard.keys import KeyRing

EVENTS_PER_TASK = 8  # task_start, 3 x (request, outcome), task_end


@tool
def kv_get(key: str) -> str:
    """Read a key."""
    return f"value of {key}"


def _tasks(guard: tg.Guard, clock: Clock, tasks: int, *, first: int = 0) -> None:
    get = tg.guard(kv_get, guard)
    for t in range(first, first + tasks):
        with guard.task("process-job", job_id=str(t)):
            for i in range(3):
                clock.advance(1)
                get.invoke({"key": f"agents:jobs:{t}:item{i}"})


def _db_files(config: dict[str, Any]) -> list[Path]:
    db = Path(config["store"])
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


def _snapshot(config: dict[str, Any], where: Path) -> None:
    where.mkdir()
    for path in _db_files(config):
        if path.exists():
            shutil.copy2(path, where / path.name)


def _restore(config: dict[str, Any], where: Path) -> None:
    """Put the database back as it was at the snapshot: what a power cut that loses the
    newest WAL frames (``durability: normal``) leaves, while the checkpoint lines survive."""
    for path in _db_files(config):
        path.unlink(missing_ok=True)
        if (where / path.name).exists():
            shutil.copy2(where / path.name, path)


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return make_config(tmp_path)


@pytest.fixture
def config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "toolguard.json"
    path.write_text(json.dumps(config))
    return path


def _cli(clock: Clock, *args: str) -> Result:
    context = CliContext(clock=clock, sleep=lambda s: None, max_polls=1)
    return CliRunner().invoke(main, list(args), obj=context)


def _lost_tail(config: dict[str, Any], clock: Clock, tmp_path: Path) -> None:
    """Two tasks survive; the next two are lost with the WAL tail, their checkpoints not."""
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 2)
    _snapshot(config, tmp_path / "before-cut")
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 2, first=2)
    _restore(config, tmp_path / "before-cut")


# -- item 5: a lost WAL tail ------------------------------------------------------------------


def test_lost_wal_tail_refuses_to_start_naming_the_gap_and_the_fix(
    config: dict[str, Any], clock: Clock, tmp_path: Path
) -> None:
    _lost_tail(config, clock, tmp_path)
    with pytest.raises(AuditError) as caught:
        tg.Guard(config, clock=clock)
    message = str(caught.value)
    kept, signed = 2 * EVENTS_PER_TASK, 4 * EVENTS_PER_TASK
    assert f"ends at seq {kept} but the checkpoint signed at " in message
    assert f"covers seq {signed}" in message
    assert "toolguard audit acknowledge --truncated" in message
    # the refused guard appended nothing; verify calls it a cut tail
    integrity = Integrity(
        _open_store(config), keys=KeyRing.load(config["issuer"]["key_file"], create=False)
    )
    report = integrity.verify()
    assert report.head_seq == kept
    assert [d.kind for d in report.damage] == ["truncated"]
    integrity.store.close()


def _open_store(config: dict[str, Any]) -> Any:
    from toolguard.store import Store

    return Store(config["store"])


def test_acknowledged_gap_lets_guards_continue_and_verify_reports_a_note_not_rewritten(
    config: dict[str, Any], config_file: Path, clock: Clock, tmp_path: Path
) -> None:
    _lost_tail(config, clock, tmp_path)
    result = _cli(
        clock,
        "audit",
        "acknowledge",
        "--config",
        str(config_file),
        "--truncated",
        "--by",
        "alice",
        "--reason",
        "power cut on host-7",
    )
    assert result.exit_code == 0, result.output
    assert "acknowledged truncated by alice" in result.output
    with tg.Guard(config, clock=clock) as guard:  # starts now
        _tasks(guard, clock, 3, first=10)  # and re-uses seqs the lost checkpoints signed
        report = guard.audit.verify()
        acks = guard.audit.events(kind="acknowledge")
    assert report.ok, report.damage
    assert report.anchored_seq == report.head_seq
    assert any(n.startswith("acknowledged gap: the trail ended at seq 16") for n in report.notes)
    assert any("alice" in n and "power cut on host-7" in n for n in report.notes)
    (ack,) = acks
    assert ack.seq == 2 * EVENTS_PER_TASK + 1
    assert "alice" in (ack.reason or "") and ack.operation == "truncated"
    lines = Path(config["store"] + ".checkpoints").read_text().splitlines()
    gaps = [json.loads(line) for line in lines if '"gap"' in line]
    assert len(gaps) == 1
    assert gaps[0]["covers"]["seq"] == 4 * EVENTS_PER_TASK
    assert gaps[0]["trail_end"] == 2 * EVENTS_PER_TASK
    # the CLI verify agrees: exit 0
    verified = _cli(clock, "audit", "verify", "--config", str(config_file), "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["ok"] is True


def test_a_gap_record_does_not_excuse_damage_below_the_acknowledged_end(
    config: dict[str, Any], clock: Clock, tmp_path: Path
) -> None:
    import sqlite3

    _lost_tail(config, clock, tmp_path)
    keys = KeyRing.load(config["issuer"]["key_file"], create=False)
    store = _open_store(config)
    Integrity(store, keys=keys, checkpoints=config["store"] + ".checkpoints").acknowledge(
        ["truncated"], by="bob", reason="crash"
    )
    store.close()
    with sqlite3.connect(config["store"]) as conn:  # then someone cuts below the gap
        conn.execute("DELETE FROM events WHERE seq = 8")
    store = _open_store(config)
    report = Integrity(store, keys=keys).verify()
    store.close()
    assert not report.ok
    assert report.damage[0].kind == "deleted" and report.damage[0].seq == 8


def test_a_forged_gap_record_excuses_nothing(
    config: dict[str, Any], clock: Clock, tmp_path: Path
) -> None:
    _lost_tail(config, clock, tmp_path)
    store = _open_store(config)
    head = store.query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")[0]
    forged = KeyRing.generate()
    from toolguard.integrity import sign_gap

    record = sign_gap(
        forged, head["seq"], head["hash"], 0.0, acknowledged=["truncated"], trail_end=0,
        by="mallory", reason="x", covers={},
    )  # fmt: skip
    record["kid"] = KeyRing.load(config["issuer"]["key_file"], create=False).active.kid
    with open(config["store"] + ".checkpoints", "a") as f:
        f.write(json.dumps(record) + "\n")
    keys = KeyRing.load(config["issuer"]["key_file"], create=False)
    report = Integrity(store, keys=keys).verify()
    store.close()
    assert {d.kind for d in report.damage} >= {"truncated", "bad-signature"}
    with pytest.raises(AuditError, match="no valid signature"):
        tg.Guard(config, clock=clock)


def test_acknowledge_with_nothing_to_acknowledge_is_an_error(
    config: dict[str, Any], config_file: Path, clock: Clock
) -> None:
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    result = _cli(
        clock, "audit", "acknowledge", "--config", str(config_file), "--truncated",
        "--by", "alice", "--reason", "none",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "nothing to acknowledge" in result.output
    lines = Path(config["store"] + ".checkpoints").read_text().splitlines()
    assert not any('"gap"' in line for line in lines)


def test_database_deleted_under_its_checkpoints_refuses_to_start(
    config: dict[str, Any], clock: Clock
) -> None:
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    for path in _db_files(config):
        path.unlink(missing_ok=True)
    with pytest.raises(AuditError, match=r"ends at seq 0 but the checkpoint signed at .* covers"):
        tg.Guard(config, clock=clock)


def test_concurrent_guards_on_a_clean_trail_start_after_each_other(
    config: dict[str, Any], clock: Clock
) -> None:
    """The start-up check passes on a healthy trail however its checkpoints interleave."""
    first = tg.Guard(config, clock=clock)
    second = tg.Guard(config, clock=clock)
    try:
        _tasks(first, clock, 1)
        _tasks(second, clock, 1, first=1)
        _tasks(first, clock, 1, first=2)
    finally:
        first.close()
        second.close()
    with tg.Guard(config, clock=clock) as guard:
        assert guard.audit.verify().ok


# -- item 5: a lost or replaced signing key ---------------------------------------------------


def test_deleted_key_file_next_to_a_trail_is_never_silently_recreated(
    config: dict[str, Any], clock: Clock
) -> None:
    key_file = Path(config["issuer"]["key_file"])
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    key_file.unlink()
    with pytest.raises(AuditError) as caught:
        tg.Guard(config, clock=clock)
    assert f"signing key file {key_file} does not exist" in str(caught.value)
    assert "toolguard keys create" in str(caught.value)
    assert "acknowledge --key-change" in str(caught.value)
    assert not key_file.exists()


def test_deleted_key_with_events_but_no_checkpoint_file_is_refused_too(
    config: dict[str, Any], clock: Clock
) -> None:
    key_file = Path(config["issuer"]["key_file"])
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    key_file.unlink()
    Path(config["store"] + ".checkpoints").unlink()
    with pytest.raises(AuditError, match="does not exist, but the audit trail"):
        tg.Guard(config, clock=clock)
    assert not key_file.exists()


def test_a_fresh_trail_still_creates_its_key(config: dict[str, Any], clock: Clock) -> None:
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    assert Path(config["issuer"]["key_file"]).exists()


def test_replaced_key_refuses_until_acknowledged_then_verify_notes_it(
    config: dict[str, Any], config_file: Path, clock: Clock
) -> None:
    key_file = Path(config["issuer"]["key_file"])
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 2)
        old_kid = guard.keys.active.kid
    key_file.unlink()
    created = _cli(clock, "keys", "create", "--config", str(config_file))
    assert created.exit_code == 0, created.output
    with pytest.raises(AuditError) as caught:
        tg.Guard(config, clock=clock)
    assert f"signed by key {old_kid!r}, which this guard does not hold" in str(caught.value)
    assert "--key-change" in str(caught.value)
    result = _cli(
        clock, "audit", "acknowledge", "--config", str(config_file), "--key-change",
        "--by", "ops", "--reason", "key lost with host-3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1, first=5)
        report = guard.audit.verify()
    assert report.ok, report.damage
    assert any(n.startswith("acknowledged key change by ops") for n in report.notes)


def test_lost_key_and_cut_tail_must_both_be_acknowledged(
    config: dict[str, Any], config_file: Path, clock: Clock, tmp_path: Path
) -> None:
    _lost_tail(config, clock, tmp_path)
    Path(config["issuer"]["key_file"]).unlink()
    assert _cli(clock, "keys", "create", "--config", str(config_file)).exit_code == 0
    with pytest.raises(AuditError) as caught:
        tg.Guard(config, clock=clock)
    assert "does not hold" in str(caught.value) and "ends at seq 16" in str(caught.value)
    only_key = _cli(
        clock, "audit", "acknowledge", "--config", str(config_file), "--key-change",
        "--by", "ops", "--reason", "r",
    )  # fmt: skip
    assert only_key.exit_code == 2
    assert "add --truncated" in only_key.output
    both = _cli(
        clock, "audit", "acknowledge", "--config", str(config_file), "--key-change",
        "--truncated", "--by", "ops", "--reason", "r",
    )  # fmt: skip
    assert both.exit_code == 0, both.output
    tg.Guard(config, clock=clock).close()


def test_a_rotated_key_past_keep_until_still_vouches_for_its_checkpoints(
    config: dict[str, Any], clock: Clock
) -> None:
    key_file = Path(config["issuer"]["key_file"])
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    # rotated long ago, kept for one second, and no task ran since
    ring = KeyRing.rotate(key_file, now=time.time() - 7200, max_ttl=1)
    assert not ring.retired or ring.retired[-1].keep_until < time.time()
    with tg.Guard(config, clock=clock) as guard:
        assert guard.keys.retired == ()  # no credential verifies with it any more
        assert len(guard.keys.archived) == 1
        _tasks(guard, clock, 1, first=1)
        assert guard.audit.verify().ok


def test_start_up_reads_only_the_tail_of_a_long_checkpoint_file(
    config: dict[str, Any], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    path = Path(config["store"] + ".checkpoints")
    last = path.read_bytes().splitlines()[-1]
    with open(path, "r+b") as f:  # 100,000 older (duplicate) lines before the newest
        body = f.read()
        f.seek(0)
        f.write((last + b"\n") * 100_000 + body)
    assert path.stat().st_size > 20_000_000

    def no_full_read(self: Path) -> bytes:
        raise AssertionError("start-up must not read the whole checkpoint file")

    monkeypatch.setattr(Path, "read_bytes", no_full_read)
    started = time.perf_counter()
    tg.Guard(config, clock=clock).close()
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0  # ~3 ms measured; the bound only catches a full read on a loaded machine


def test_start_up_skips_a_torn_or_garbled_last_line(config: dict[str, Any], clock: Clock) -> None:
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    with open(config["store"] + ".checkpoints", "ab") as f:
        f.write(b'garbage}\n{"alg": "EdDSA", "hash": "9f')
    tg.Guard(config, clock=clock).close()


# -- item 6: short and failed checkpoint writes ------------------------------------------------


_real_write = os.write


def _patched_write(
    monkeypatch: pytest.MonkeyPatch, path: Path, behave: Callable[[int, bytes], int]
) -> None:
    """``os.write`` on ``path`` does ``behave(fd, data)``; other files are written as usual."""
    real = _real_write
    target = os.path.realpath(path)

    def write(fd: int, data: Any) -> int:
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name == target:
            return behave(fd, bytes(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_short_checkpoint_write_raises_and_is_not_cached(
    guard: tg.Guard, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tasks(guard, clock, 1)
    path = guard.audit.checkpoints_path
    _tasks_no_checkpoint = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="9") as task:
        _tasks_no_checkpoint.invoke({"key": "agents:jobs:9:a"})
        with monkeypatch.context() as m:
            _patched_write(m, path, lambda fd, data: _real_write(fd, data[: len(data) // 2]))
            with pytest.raises(AuditError, match=r"only \d+ of \d+ bytes were written"):
                guard.audit.checkpoint()
        assert task.status == "active"
    # the task end above wrote its own checkpoint (a fresh line after the torn one)
    assert guard.audit.checkpoint() is not None
    report = guard.audit.verify()
    assert report.ok, report.damage
    assert report.anchored_seq == report.head_seq
    assert any("incomplete" in n for n in report.notes)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_short_checkpoint_write_of_an_unchanged_head_is_retried_not_cached(
    guard: tg.Guard, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tasks(guard, clock, 1)
    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="8"):
        get.invoke({"key": "agents:jobs:8:a"})
        path = guard.audit.checkpoints_path
        with monkeypatch.context() as m:
            _patched_write(m, path, lambda fd, data: _real_write(fd, data[:10]))
            with pytest.raises(AuditError):
                guard.audit.checkpoint()
        record = guard.audit.checkpoint()  # same head: must be written now, not "cached"
        assert record is not None
        lines = path.read_text().splitlines()
        assert json.loads(lines[-1]) == record  # on a fresh line after the torn prefix
        assert len(lines[-2]) == 10


def _enospc(fd: int, data: bytes) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_enospc_on_a_checkpoint_is_an_audit_error_and_the_task_still_ends(
    guard: tg.Guard, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    _tasks(guard, clock, 1)
    path = guard.audit.checkpoints_path
    get = tg.guard(kv_get, guard)
    with monkeypatch.context() as m:
        _patched_write(m, path, _enospc)
        # a task end still ends (and revokes) when its checkpoint cannot be written
        with guard.task("process-job", job_id="7") as task:
            get.invoke({"key": "agents:jobs:7:a"})
            with pytest.raises(AuditError, match="No space left on device"):
                guard.audit.checkpoint()
        assert task.status == "ok"
        assert "could not write the audit checkpoint" in caplog.text
    assert guard.audit.checkpoint() is not None
    assert guard.audit.verify().ok


def test_durability_full_fsyncs_each_checkpoint_line(
    make_guard: Callable[..., tg.Guard], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = make_guard(clock=clock, durability="full")
    _tasks(guard, clock, 1)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    get = tg.guard(kv_get, guard)
    with guard.task("process-job", job_id="6"):
        get.invoke({"key": "agents:jobs:6:a"})
        synced.clear()
        guard.audit.checkpoint()
        assert synced  # the checkpoint line was fsynced


@pytest.mark.parametrize("keep_tasks", [0, 1])
def test_a_pruned_trail_still_starts(config: dict[str, Any], clock: Clock, keep_tasks: int) -> None:
    """The newest checkpoint may cover an event a signed prune removed: that is no gap."""
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 2)
        clock.advance(3600)
        cut = clock()
        _tasks(guard, clock, keep_tasks, first=2)
        clock.advance(60)
        result = guard.audit.prune(before=cut, now=clock())
        assert result.removed == 2 * EVENTS_PER_TASK
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1, first=5)
        assert guard.audit.verify().ok


def test_a_deleted_database_can_be_acknowledged_and_starts_anew(
    config: dict[str, Any], config_file: Path, clock: Clock
) -> None:
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1)
    for path in _db_files(config):
        path.unlink(missing_ok=True)
    result = _cli(
        clock, "audit", "acknowledge", "--config", str(config_file), "--truncated",
        "--by", "ops", "--reason", "disk replaced",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the trail ended at seq 0" in result.output
    with tg.Guard(config, clock=clock) as guard:
        _tasks(guard, clock, 1, first=1)
        report = guard.audit.verify()
    assert report.ok, report.damage
    assert report.head_seq == 1 + EVENTS_PER_TASK
