"""Text no store can hold (U+0000, which PostgreSQL text refuses; lone surrogates, which are not
UTF-8), from every outside source that reaches the store: both backends record, hash and match
the same visible escape (``\\x00``, ``\\ud800``) instead of failing closed on one of them (or
raising a raw UnicodeEncodeError on both), and the chain still verifies. Every test runs on
SQLite and on a real PostgreSQL (tests/conftest.py, BOTH_BACKENDS)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BASE_CONFIG, Clock, raw_sql
from langchain_core.tools import tool

import toolguard as tg
from toolguard.chain import GENESIS, HASHED_FIELDS, Event, event_values, row_values, values_hash
from toolguard.errors import ConfigError
from toolguard.text import storable

BAD = "a\x00b\ud800c"
SHOWN = "a\\x00b\\ud800c"
KEY = "agents:jobs:42:state"


@tool
def kv_get(key: str) -> str:
    """Read a key; fails with a message holding NUL and a lone surrogate."""
    raise RuntimeError(f"backend said {BAD}")


@tool
def kv_set(key: str, value: str) -> str:
    """Write a key."""
    return "ok"


def _events(guard: tg.Guard, kind: str) -> list[dict[str, Any]]:
    names = ", ".join(HASHED_FIELDS)
    rows = raw_sql(guard, f"SELECT {names} FROM events WHERE kind = ? ORDER BY seq", (kind,))
    return [dict(zip(HASHED_FIELDS, row)) for row in rows]


def _verified(guard: tg.Guard) -> None:
    report = guard.audit.verify()
    assert report.ok, report.damage


def test_storable_escapes_only_what_no_store_holds() -> None:
    assert storable(BAD) == SHOWN
    assert storable("\udc80\U0001f600é\n\t\x1b") == "\\udc80\U0001f600é\n\t\x1b"
    plain = "agents:jobs:42"
    assert storable(plain) is plain


def test_an_event_with_nul_in_every_text_column_is_recorded_and_hashed_alike(
    guard: tg.Guard,
) -> None:
    """The one place: every text column of an event is escaped before it is hashed, so the
    stored row, its hash and a verify are the same on both backends."""
    text = [n for n in HASHED_FIELDS if n not in ("seq", "ts", "kind", "duration_ms", "cost")]
    event = Event(ts=1_790_000_000.0, kind="note", **{name: f"{name}-{BAD}" for name in text})
    guard.store.append(event)
    (stored,) = _events(guard, "note")
    for name in text:
        assert stored[name] == f"{name}-{SHOWN}", name
    (digest,) = raw_sql(guard, "SELECT hash FROM events WHERE seq = ?", (stored["seq"],))[0]
    assert digest == values_hash(GENESIS, row_values(stored))  # escaped before hashing
    assert digest == values_hash(GENESIS, event_values(stored["seq"], event))
    assert row_values({"seq": 1, "reason": BAD})[HASHED_FIELDS.index("reason")] == BAD  # reads
    _verified(guard)


def test_tool_error_text_and_argument_values_with_nul_are_recorded(guard: tg.Guard) -> None:
    get, put = tg.guard([kv_get, kv_set], guard)
    with guard.task("process-job", job_id="42"):
        assert put.invoke({"key": KEY, "value": BAD}) == "ok"
        with pytest.raises(RuntimeError):
            get.invoke({"key": KEY})
    requests, outcomes = _events(guard, "request"), _events(guard, "outcome")
    assert '"value":"a\\u0000b\\ud800c"' in requests[0]["args"]  # JSON escapes, both stores
    assert outcomes[1]["error"] == f"RuntimeError: backend said {SHOWN}"
    _verified(guard)


def test_a_target_with_nul_is_denied_and_the_denial_recorded(guard: tg.Guard) -> None:
    (put,) = tg.guard([kv_set], guard)
    with guard.task("process-job", job_id="42"):
        assert "Denied by toolguard" in put.invoke({"key": f"agents:jobs:42:{BAD}", "value": "v"})
    (denied,) = _events(guard, "denied")
    assert "contains control characters (\\x00)" in denied["reason"]
    assert "\x00" not in denied["args"] and "\\u0000" in denied["args"]
    _verified(guard)


def test_revoke_and_enable_reasons_with_nul_are_recorded_alike(
    guard: tg.Guard, clock: Clock
) -> None:
    """Guard.revoke and toolguard revoke share audit.revoke: the event, the revocations row
    and identity_state hold the escape (they failed closed on PostgreSQL, and raised a raw
    UnicodeEncodeError for a lone surrogate on both stores)."""
    (put,) = tg.guard([kv_set], guard)
    with guard.task("process-job", job_id="42") as task:
        put.invoke({"key": KEY, "value": "v"})
        token = guard.store.task_jtis(task.task_id)
        guard.revoke(task_id=task.task_id, reason=f"why {BAD}", by=f"ops {BAD}")
    guard.revoke(identity="summariser", reason=BAD, disable=True)
    guard.enable("summariser", reason=f"back {BAD}")
    revokes = _events(guard, "revoke")
    assert [e["reason"] for e in revokes] == [
        f"why {SHOWN}",
        f"{SHOWN} (identity disabled)",
    ]
    assert _events(guard, "enable")[0]["reason"] == f"back {SHOWN}"
    rows = raw_sql(guard, "SELECT scope, reason, by FROM revocations ORDER BY id")
    assert rows[0] == ("task", f"why {SHOWN}", f"ops {SHOWN}")
    assert ("identity", SHOWN, "api") in rows
    assert raw_sql(guard, "SELECT reason FROM identity_state") == [(f"back {SHOWN}",)]
    assert token  # the task's credential is rejected with the recorded reason
    reason = guard.store.revoked_reason(
        jti=token[0], task_id=task.task_id, identity="agent-runner", chain=(), issued_at=0.0
    )
    assert reason == f"task revoked: why {SHOWN}"
    _verified(guard)


def test_a_task_end_reason_and_status_with_nul_are_recorded(guard: tg.Guard) -> None:
    with guard.task("process-job", job_id="1") as first:
        first.end("error", reason=BAD)
    with guard.task("process-job", job_id="2") as second:
        second.end(BAD)
    ends = _events(guard, "task_end")
    assert ends[0]["reason"] == SHOWN
    assert ends[1]["reason"] == f"task ended ({SHOWN})"
    assert "\x00" not in str(raw_sql(guard, "SELECT status FROM tasks"))
    _verified(guard)


def test_read_filters_with_nul_match_nothing_instead_of_failing(guard: tg.Guard) -> None:
    """A filter from the command line or an API call (task id, identity, tool, ...): on
    PostgreSQL a NUL parameter was 'cannot read the audit database'; both now match what was
    recorded for that text (nothing here)."""
    with guard.task("process-job", job_id="42"):
        pass
    assert guard.audit.events(task_id=BAD) == []
    assert guard.audit.events(identity=BAD, tool=BAD) == []
    assert guard.audit.tasks(identity=BAD) == []
    assert guard.audit.tasks(intent=BAD, status=BAD) == []
    assert guard.store.identity_disabled(BAD) is None
    assert (
        guard.store.revoked_reason(jti=BAD, task_id=BAD, identity=BAD, chain=(BAD,), issued_at=0)
        is None
    )


def test_a_recorded_escape_is_found_by_the_text_it_came_from(guard: tg.Guard) -> None:
    """A tool name the model made up is recorded escaped; a filter with the name as the model
    wrote it finds that record, on both stores."""
    with guard.task("process-job", job_id="42"), pytest.raises(tg.PolicyDenied):
        guard.authorize(f"tool-{BAD}", {"key": KEY})
    (event,) = guard.audit.events(tool=f"tool-{BAD}")
    assert event.kind == "denied" and event.tool == f"tool-{SHOWN}"
    assert guard.audit.events(tool=f"tool-{SHOWN}") == [event]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c["identities"].update({BAD: {"owner": "x"}}), id="identity-name"),
        pytest.param(
            lambda c: c["intents"]["process-job"].update(purpose=f"Job {{job_id}} {BAD}"),
            id="purpose",
        ),
        pytest.param(
            lambda c: c["intents"].update({BAD: {"identity": "summariser", "tools": ["kv_get"]}}),
            id="intent-name",
        ),
        pytest.param(lambda c: c["tools"]["kv_get"].update(resource="{key}\x00"), id="template"),
        pytest.param(lambda c: c["issuer"].update(name="iss\ud800"), id="issuer"),
    ],
)
def test_a_config_text_with_nul_or_a_lone_surrogate_is_a_config_error(
    make_guard: Callable[..., tg.Guard], change: Callable[[dict[str, Any]], None]
) -> None:
    """Names, purposes and templates reach the store (task rows, events, budgets): a NUL
    failed closed on PostgreSQL at the first task while SQLite recorded it."""
    config = copy.deepcopy(BASE_CONFIG)
    change(config)
    with pytest.raises(ConfigError, match=r"NUL character .* or a lone surrogate") as raised:
        make_guard(**{k: config[k] for k in ("identities", "intents", "tools", "issuer")})
    assert "unstorable" in str(raised.value) or "cannot record" in str(raised.value)
