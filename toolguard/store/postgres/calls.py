"""The statements the server runs for a call: an event appended to the chain, and the whole
pre-call transaction as one statement.

On SQLite a call's transaction (:meth:`Store.record_call
<toolguard.store.sqlite.core.Store.record_call>`) reads the revocations and the budgets, the
client decides, then writes the ``request`` event and the credential row. On PostgreSQL that is
two round trips, and the writer lock is held across the client's turn between them (the lock
serialises the fleet's writers: its hold time bounds their calls per second).

:func:`call_statement` is that transaction's common case as one statement, run by the server
under the lock and sent in the ``COMMIT``'s round trip (:meth:`PgConnection.read_at_commit
<toolguard.store.postgres.connection.PgConnection.read_at_commit>`): no revocation applies, and
every identity limit fits, with the admission log in order. The server evaluates the fast path
of :meth:`Charge.apply <toolguard.store.sqlite.budgets.Charge.apply>` term for term (the same
reads, the same sums and ceilings, the next log row formatted as ``_FORMAT``), and only when it
passes appends the event and writes the credential row with that log row. Otherwise the
statement writes nothing and returns false; the store then decides the call the usual way,
which explains a refusal, logs the refused attempt and revokes on anomaly. So the server never
admits a call the client would refuse; a number wider than its field, a log row written by a
later clock or a task without its counters in memory take the usual way too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ...chain import GENESIS, HASHED_FIELDS, REAL_FIELDS, Event, encode_values, event_values
from ..sqlite.budgets import Charge
from ..sqlite.core import revocation_check

__all__ = ["APPEND", "append_params", "call_params", "call_statement"]


def _cast(name: str) -> str:
    return f"CAST(? AS {'DOUBLE PRECISION' if name in REAL_FIELDS else 'TEXT'})"


APPEND = (
    f"INSERT INTO events ({', '.join(HASHED_FIELDS)}, prev_hash, hash)"
    " SELECT h.seq + 1, "
    + ", ".join(_cast(name) for name in HASHED_FIELDS[1:])
    + ", h.hash, encode(sha256(convert_to(h.hash || '[' || CAST(h.seq + 1 AS TEXT)"
    " || CAST(? AS TEXT), 'UTF8')), 'hex')"
    " FROM (SELECT COALESCE(e.seq, p.seq, 0) AS seq, COALESCE(e.hash, p.hash,"
    f" '{GENESIS}') AS hash FROM (SELECT 1) AS one"
    " LEFT JOIN (SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1) AS e ON TRUE"
    " LEFT JOIN (SELECT before_seq - 1 AS seq, head_hash AS hash FROM prunes"
    " ORDER BY id DESC LIMIT 1) AS p ON e.seq IS NULL) AS h"
)
"""An event appended to the chain by the server: the head (the last event, else the last
prune's cut, else genesis) read under the writer lock by the INSERT itself, ``seq`` its
successor, ``hash`` = sha256(prev_hash + canonical JSON) where the client sends the JSON after
``[seq`` (the values it hashes are the ones it sends; ``seq`` is the array's first element and
is written as the server writes it, the same digits). Byte for byte what
:func:`toolguard.chain.values_hash` computes, so ``verify`` recomputes it; no round trip to
read the head first. Parameters: :func:`append_params`."""

_SEQ_PREFIX = "[0,"


def append_params(event: Event) -> tuple[Any, ...]:
    """The parameters of :data:`APPEND` for ``event``: its stored values but ``seq``, and the
    canonical JSON of them all after ``[seq``. A lone surrogate is refused here
    (``UnicodeEncodeError``), as SQLite's hash refuses it."""
    values = event_values(0, event)  # exactly what is stored is what is hashed
    text = encode_values(values)
    if not text.startswith(_SEQ_PREFIX):  # pragma: no cover - seq is the first field
        raise AssertionError("the canonical JSON of an event starts with its seq")
    if not text.isascii():
        text.encode("utf-8")
    return (*values[1:], text[len(_SEQ_PREFIX) - 1 :])


def _number(value: str, width: int) -> str:
    """``value`` (a BIGINT) in ``width`` digits, as ``%0<width>d`` writes it; ``#`` signs
    where it does not fit, a ``-`` and one character more when negative (never admitted)."""
    return f"to_char({value}, 'FM{'0' * width}')"


_LOG_ROW = 1 + 17 + 4 * (1 + 10) + 1 + 16
"""The length of an admission-log row (``t<17>:<10>:<10>:<10>:<10>:<16>``)."""


@lru_cache(maxsize=64)
def call_statement(
    select: str,
    columns: int,
    checks: tuple[tuple[bool, int], ...],
    credential: bool,
) -> str:
    """The call as one statement; it returns one row, ``(admitted,)``.

    ``select``: the read of :meth:`Store.record_call` (the revocation check and the budget
    columns of :class:`Charge`); ``columns``: how many budget columns it reads (0: the identity
    has no limits; 2: the newest log row and the window's boundary; 3: and the day's);
    ``checks``: ``(daily, field)`` of each limit, as :class:`Charge`'s fast path checks them;
    ``credential``: a credential row is written (else only the log row, if any).
    """
    logged = columns > 0
    day = "r.day" if columns == 3 else "r.win"
    read = "r(revoked, newest, win, day)" if columns == 3 else "r(revoked, newest, win)"
    # MATERIALIZED: read once (an inlined CTE would repeat its subqueries in every use)
    parts = [f"WITH {read if logged else 'r(revoked)'} AS MATERIALIZED ({select})"]
    if logged:
        parts.append(
            f", a AS MATERIALIZED (SELECT r.revoked, r.win, {day} AS day,"
            f" string_to_array(r.newest, ':') AS n, string_to_array(r.win, ':') AS w,"
            f" string_to_array({day}, ':') AS y FROM r)"
        )
        total = "CAST(a.n[{}] AS BIGINT)".format
        tally = (
            f"'t' || {_number('CAST(? AS BIGINT)', 17)}"
            f" || ':' || {_number(total(2) + ' + 1', 10)}"
            f" || ':' || {_number(total(3) + ' + 1', 10)}"
            f" || ':' || {_number(total(4) + ' + CAST(? AS BIGINT)', 10)}"
            f" || ':' || {_number(total(5) + ' + CAST(? AS BIGINT)', 10)}"
            f" || ':' || {_number(total(6) + ' + CAST(? AS BIGINT)', 16)}"
        )
        parts.append(f", t AS (SELECT a.*, {tally} AS tally FROM a)")
        ok = [
            "t.revoked IS NULL AND t.n IS NOT NULL AND t.win <> '' AND t.day <> ''",
            "CAST(substr(t.n[1], 2) AS BIGINT) <= CAST(? AS BIGINT)",
        ]
        ok += [
            f"CAST(t.n[{field + 1}] AS BIGINT) - CAST(t.{'y' if daily else 'w'}[{field + 1}]"
            " AS BIGINT) + CAST(? AS BIGINT) <= CAST(? AS DOUBLE PRECISION)"
            for daily, field in checks
        ]
        ok.append(f"length(t.tally) = {_LOG_ROW} AND strpos(t.tally, '#') = 0")
        parts.append(f", f AS (SELECT COALESCE({' AND '.join(ok)}, FALSE) AS ok, t.tally FROM t)")
    else:
        tally = "CAST(? AS TEXT)" if credential else "CAST(NULL AS TEXT)"
        parts.append(f", f AS (SELECT r.revoked IS NULL AS ok, {tally} AS tally FROM r)")
    parts.append(f", ev AS ({APPEND} CROSS JOIN f WHERE f.ok)")
    if credential:
        parts.append(
            ", cr AS (INSERT INTO credentials (identity, tally, jti, task_id, tool, operation,"
            " issued_at, expires_at, jit) SELECT CAST(? AS TEXT), f.tally, CAST(? AS TEXT),"
            " CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION),"
            " CAST(? AS DOUBLE PRECISION), CAST(? AS BIGINT) FROM f WHERE f.ok)"
        )
    elif logged:
        parts.append(
            ", cr AS (INSERT INTO credentials (identity, tally, issued_at, expires_at)"
            " SELECT CAST(? AS TEXT), f.tally, CAST(? AS DOUBLE PRECISION),"
            " CAST(? AS DOUBLE PRECISION) FROM f WHERE f.ok)"
        )
    parts.append(" SELECT f.ok FROM f")
    return "".join(parts)


def call_params(
    step: Charge,
    chain: Sequence[str],
    identity: str,
    task_started_at: float,
    event: Event,
    credential: tuple[Any, ...] | None,
    now: float,
) -> tuple[str, tuple[Any, ...]]:
    """:func:`call_statement` for one call and its parameters, in the order of the text (the
    arguments are :meth:`Store.record_call`'s)."""
    log = step.shape if step.shape is not None and step.shape.log else None  # identity limits
    columns = 0 if log is None else 3 if log.log_day else 2
    checks: tuple[tuple[bool, int], ...] = ()
    params: list[Any] = [*chain, identity, task_started_at, *step.params]
    if log is not None:
        _, _, writes, deletes, cost = log.adds
        now_us = step.now_us
        params += (now_us, writes, deletes, cost, now_us)
        checks = tuple((c.daily, c.field) for c in log.checks)
        for c in log.checks:
            params += (c.amount, float(c.ceiling))
    elif credential is not None:
        params.append("j" + credential[0])
    params += append_params(event)
    if credential is not None:
        jti, task_id, _, tool, operation, issued_at, expires_at, jit = credential
        params += (identity, jti, task_id, tool, operation, issued_at, expires_at, jit)
    elif log is not None:
        params += (identity, now, now)
    sql = call_statement(
        step.select(revocation_check(len(chain))), columns, checks, credential is not None
    )
    return sql, tuple(params)
