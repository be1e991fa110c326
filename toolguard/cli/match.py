"""``toolguard audit match-args``: check a candidate value against an event's ``args_sha256``.

``args_sha256`` is a keyed digest (HMAC-SHA256 with the arguments key, docs/audit.md): only
someone holding the key can test a guess, and this command is how an investigator does it.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import click

from ..keys import load_args_key
from ..redaction import DIGEST_PREFIX, args_digest
from ._base import EXIT_FINDINGS, CliError, _load, _log, _obj, db_options, json_option
from .audit import audit

__all__ = ["match_args_cmd"]


@audit.command("match-args")
@click.argument("seq", type=click.IntRange(min=1))
@click.option(
    "--args",
    "args_text",
    required=True,
    help='The candidate arguments as a JSON object, e.g. \'{"key": "k", "pin": "1234"}\'.',
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The arguments key file (default: the config's args_key_file; $TOOLGUARD_ARGS_KEY wins).",
)
@db_options
@json_option
def match_args_cmd(
    seq: int,
    args_text: str,
    key_file: Path | None,
    db_path: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Check whether ARGS are the arguments of the call recorded at SEQ.

    Computes the keyed digest of the candidate arguments (all of them, as the tool received
    them, secrets included) and compares it with the event's ``args_sha256``. Exit 0 on a
    match, 1 on a mismatch, 2 if the event, the key or the arguments cannot be used.
    """
    try:
        candidate: Any = json.loads(args_text)
    except ValueError as exc:
        raise CliError(f"--args is not valid JSON ({exc}); pass a JSON object") from None
    if not isinstance(candidate, dict):
        raise CliError("--args must be a JSON object (the call's arguments by name)")
    config = _load(config_path)
    if key_file is None and config is not None:
        key_file = config.args_key_path
    key = load_args_key(key_file, create=False)  # $TOOLGUARD_ARGS_KEY wins over both
    with _log(db_path, config) as log:
        found = log.events(after_seq=seq - 1, limit=1)
    if not found or found[0].seq != seq:
        raise CliError(f"there is no event at seq {seq} in the audit trail")
    stored = found[0].args_sha256
    if not stored:
        raise CliError(f"the event at seq {seq} ({found[0].kind}) records no arguments")
    if not stored.startswith(DIGEST_PREFIX):
        raise CliError(
            f"the event at seq {seq} has an unkeyed digest (written before {DIGEST_PREFIX}); "
            "compare it with the SHA-256 recipe of older versions"
        )
    match = hmac.compare_digest(args_digest(candidate, key), stored)
    viewer = _obj().viewer()
    if as_json:
        viewer.json({"seq": seq, "match": match})
    else:
        viewer.line(
            f"seq {seq}: the arguments match" if match else f"seq {seq}: the arguments differ"
        )
    if not match:
        raise click.exceptions.Exit(EXIT_FINDINGS)
