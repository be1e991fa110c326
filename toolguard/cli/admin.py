"""``toolguard revoke``, ``enable``, ``keys ...`` and ``check``: administration commands.

Revoke a task, an identity or one credential and enable an identity again; create, rotate and
publish the issuer's signing keys; validate a config file or print its JSON Schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

if TYPE_CHECKING:
    from ..config import GuardConfig

from ..keys import KeyRing
from ..viewer import format_time, plural
from ._base import (
    _F,
    CONFIG_ENV,
    DEFAULT_CONFIG,
    DURATION,
    EXIT_FINDINGS,
    CliError,
    _config_option,
    _Group,
    _load,
    _log,
    _obj,
    db_options,
    find_config,
    json_option,
    main,
    resolve_db,
)

__all__ = [
    "check_cmd",
    "db_group",
    "db_migrate",
    "enable_cmd",
    "key_options",
    "keys_create",
    "keys_group",
    "keys_jwks",
    "keys_rotate",
    "revoke_cmd",
]


# -- revoke / enable ----------------------------------------------------------------------------


@main.command("revoke")
@db_options
@click.option("--task", "task", help="Revoke this task and its children (id or unique prefix).")
@click.option(
    "--identity",
    help="Revoke every credential of this identity (in the config or the trail); end its tasks.",
)
@click.option(
    "--jti", help="Revoke one credential by its id (or a unique prefix of 6+ characters)."
)
@click.option(
    "--reason",
    default="revoked from the command line",
    show_default=True,
    help="Why (recorded in the trail).",
)
@click.option(
    "--disable",
    is_flag=True,
    help="With --identity: also refuse its new tasks until `toolguard enable`.",
)
@json_option
def revoke_cmd(
    db_path: str | None,
    config_path: Path | None,
    task: str | None,
    identity: str | None,
    jti: str | None,
    reason: str,
    disable: bool,
    as_json: bool,
) -> None:
    """Revoke a task, an identity or one credential (give exactly one).

    Verifiers that share the database reject the credentials at once; active tasks end.
    An unknown target, an ambiguous prefix or one shorter than 6 characters is an error
    (exit 2) and records nothing. Prints what was live and is now revoked; revoking what was
    already revoked is recorded again and says so (exit 0).
    """
    if sum(v is not None for v in (task, identity, jti)) != 1:
        raise click.UsageError("give exactly one of --task, --identity or --jti")
    if disable and identity is None:
        raise click.UsageError("--disable goes with --identity")
    if not reason.strip():
        raise click.UsageError("--reason must say why (it is recorded in the trail)")
    obj = _obj()
    config = _load(config_path)
    viewer = obj.viewer()
    target = {"task_id": task, "identity": identity, "jti": jti}
    if config is not None and db_path is None:
        from ..engine import Guard

        with _log(db_path, config):  # refuse a missing database before the guard creates one
            pass

        with Guard(config, clock=obj.clock) as guard:
            result = guard.revoke(**target, reason=reason, disable=disable, by="cli")
    else:
        from ..incident import revoke_target

        with _log(db_path, config, write=True) as log:
            result = revoke_target(
                log.store, **target, reason=reason, disable=disable, by="cli", now=obj.clock(),
                identities=config.identities if config is not None else (),
            )  # fmt: skip
    if config is not None and identity is not None and identity not in config.identities:
        viewer.warn(f"warning: identity {identity!r} is not in the config (known from the trail)")
    if as_json:
        viewer.json(result.to_dict())
        return
    viewer.done(result.summary())
    if result.ended:
        viewer.line(f"ended: {', '.join(result.ended)}")


@main.command("enable")
@click.argument("identity")
@db_options
@click.option(
    "--reason",
    default="re-enabled from the command line",
    show_default=True,
    help="Why (recorded in the trail).",
)
@json_option
def enable_cmd(
    identity: str, db_path: str | None, config_path: Path | None, reason: str, as_json: bool
) -> None:
    """Let IDENTITY start tasks again after `toolguard revoke --identity --disable`.

    IDENTITY must be in the config or the trail; one that is not disabled is left alone."""
    obj = _obj()
    config = _load(config_path)
    if config is not None and db_path is None:
        from ..engine import Guard

        with _log(db_path, config):  # refuse a missing database before the guard creates one
            pass

        with Guard(config, clock=obj.clock) as guard:
            result = guard.enable(identity, reason=reason)
    else:
        from ..incident import enable_identity

        with _log(db_path, config, write=True) as log:
            result = enable_identity(
                log.store, identity, reason=reason, now=obj.clock(),
                identities=config.identities if config is not None else (),
            )  # fmt: skip
    viewer = obj.viewer()
    if as_json:
        viewer.json(result.to_dict())
    else:
        viewer.done(result.summary())


# -- keys ---------------------------------------------------------------------------------------


@main.group("keys", cls=_Group)
def keys_group() -> None:
    """Create, rotate and publish the issuer's signing keys."""


def key_options(f: _F) -> _F:
    """``--key-file``, ``--config`` and ``--algorithm``."""
    f = click.option(
        "--algorithm",
        type=click.Choice(["EdDSA", "ES256"]),
        help="Key algorithm (default: the config's, else EdDSA; rotate keeps the current one).",
    )(f)
    f = _config_option("Take the key file and algorithm from this config's issuer section.")(f)
    f = click.option(
        "--key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The PEM private key (default: the config's issuer.key_file, else "
        ".toolguard/signing-key.pem).",
    )(f)
    return f


def _key_target(
    key_file: Path | None, config_path: Path | None, algorithm: str | None
) -> tuple[Path, GuardConfig | None, str | None]:
    config = _load(config_path)
    if key_file is None:
        key_file = (
            config.resolve_path(config.issuer.key_file)
            if config is not None
            else Path(".toolguard") / "signing-key.pem"
        )
    if algorithm is None and config is not None:
        algorithm = config.issuer.algorithm
    return key_file, config, algorithm


@keys_group.command("create")
@key_options
@json_option
def keys_create(
    key_file: Path | None, config_path: Path | None, algorithm: str | None, as_json: bool
) -> None:
    """Create a signing key (mode 0600) if there is none yet."""
    path, _, alg = _key_target(key_file, config_path, algorithm)
    if path.exists():
        raise CliError(
            f"a signing key already exists at {path}; rotate it with `toolguard keys rotate`"
        )
    ring = KeyRing.load(path, algorithm=cast(Any, alg or "EdDSA"), create=True)
    viewer = _obj().viewer()
    if as_json:
        viewer.json({"path": str(path), "kid": ring.active.kid, "algorithm": ring.active.algorithm})
    else:
        viewer.done(f"created {ring.active.algorithm} key {ring.active.kid} at {path}")


@keys_group.command("rotate")
@key_options
@click.option(
    "--keep",
    type=DURATION,
    help="Keep trusting the old public key this long (default: the config's issuer.max_ttl, "
    "else 1h); at least the longest credential lifetime.",
)
@json_option
def keys_rotate(
    key_file: Path | None,
    config_path: Path | None,
    algorithm: str | None,
    keep: float | None,
    as_json: bool,
) -> None:
    """Replace the signing key; the old public key stays in the JWKS for --keep."""
    path, config, alg = _key_target(key_file, config_path, algorithm)
    if keep is None:
        keep = config.issuer.effective_max_ttl if config is not None else 3600.0
    now = _obj().clock()
    ring = KeyRing.rotate(path, algorithm=cast(Any, alg), now=now, max_ttl=keep)
    old = ring.retired[-1]
    viewer = _obj().viewer()
    if as_json:
        viewer.json(
            {
                "path": str(path),
                "kid": ring.active.kid,
                "algorithm": ring.active.algorithm,
                "retired": old.kid,
                "keep_until": old.keep_until,
            }
        )
    else:
        viewer.done(f"new {ring.active.algorithm} key {ring.active.kid} at {path}")
        viewer.line(
            f"old key {old.kid} is trusted for verification until {format_time(old.keep_until)}"
        )


@keys_group.command("jwks")
@key_options
@json_option
def keys_jwks(
    key_file: Path | None, config_path: Path | None, algorithm: str | None, as_json: bool
) -> None:
    """Print the public keys as a JWKS document (for verifiers; no private material)."""
    path, config, _ = _key_target(key_file, config_path, algorithm)
    if key_file is None and config is not None and config.issuer.key:
        ring = KeyRing.from_pem(config.issuer.key.get_secret_value())
    else:
        ring = KeyRing.load(path, create=False, now=_obj().clock())
    doc = ring.jwks()
    if as_json:
        _obj().viewer().json(doc)
    else:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))


# -- check --------------------------------------------------------------------------------------


@main.command("check")
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_config_option("The config to check (the same as CONFIG).")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too, not only on errors.")
@click.option("--schema", is_flag=True, help="Print the config's JSON Schema (for editors).")
@json_option
def check_cmd(
    config: Path | None, config_path: Path | None, strict: bool, schema: bool, as_json: bool
) -> None:
    """Check CONFIG and print every problem at once, one line each, with its file:line:col.

    Errors (the config does not load) and warnings (it loads, but part of it can never take
    effect) are listed together, then counted. Exit 0 when there is no error (and, with
    --strict, no warning), 1 when there is, 2 when there is no config to check. Without
    CONFIG: --config, else $TOOLGUARD_CONFIG, else ./toolguard.yaml.
    """
    viewer = _obj().viewer()
    if schema:
        from ..config import GuardConfig

        doc = GuardConfig.json_schema()
        if as_json:
            viewer.json(doc)
        else:
            click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if config is not None and config_path is not None and config != config_path:
        raise click.UsageError("give the config once: as CONFIG or as --config, not both")
    path, origin = find_config(config or config_path)
    if path is None:
        raise click.UsageError(
            f"no config to check: give a CONFIG file (or --config), set ${CONFIG_ENV}, or run "
            f"where ./{DEFAULT_CONFIG} is; or print the schema with --schema"
        )
    if origin == f"${CONFIG_ENV}" and not path.exists():
        raise CliError(
            f"${CONFIG_ENV} names the config file {path}, which does not exist; fix or unset "
            f"{CONFIG_ENV}, or give CONFIG"
        )
    from ..configcheck import check_config

    report = check_config(path)  # a file that cannot be read at all is a ConfigError: exit 2
    errors, warnings = len(report.errors), len(report.warnings)
    failed = bool(errors or (strict and warnings))
    if as_json:
        viewer.json(
            {
                "ok": not failed,
                "source": str(path),
                "strict": strict,
                "errors": errors,
                "warnings": warnings,
                "problems": [f.to_dict() for f in report.findings],
                **report.counts,
                "disabled_identities": list(report.disabled),
            }
        )
    else:
        for finding in report.findings:
            viewer.line(finding.format(), "red" if finding.severity == "error" else "yellow")
        if report.findings:
            counts = [plural(n, word) for n, word in ((errors, "error"), (warnings, "warning"))]
            summary = f"Found {', '.join(c for c in counts if not c.startswith('0 '))}."
            if not errors:
                summary += (
                    " The config loads; --strict fails on warnings."
                    if not strict
                    else " (--strict: warnings fail the check)"
                )
            viewer.line(summary, "bold red" if failed else "bold yellow")
        else:
            viewer.done(
                f"ok: {path}: {plural(report.counts['identities'], 'identity')}, "
                f"{plural(report.counts['tools'], 'tool')}, "
                f"{plural(report.counts['intents'], 'intent')}"
            )
    if failed:
        click.get_current_context().exit(EXIT_FINDINGS)


# -- db -----------------------------------------------------------------------------------------


@main.group("db", cls=_Group)
def db_group() -> None:
    """The audit database itself."""


@db_group.command("migrate")
@db_options
@json_option
def db_migrate(db_path: str | None, config_path: Path | None, as_json: bool) -> None:
    """Create the store's tables, or bring them to this version's schema (guards do this by
    themselves when they may; run it with a role that may create tables when they may not)."""
    from ..store import SCHEMA_VERSION, open_store

    config = _load(config_path)
    location = resolve_db(db_path, config)
    store = open_store(location, clock=_obj().clock)
    try:
        store.open()
    finally:
        store.close()
    viewer = _obj().viewer()
    if as_json:
        viewer.json({"store": location.display, "schema_version": SCHEMA_VERSION})
    else:
        viewer.line(f"{location.display}: schema version {SCHEMA_VERSION}")
