"""The ``toolguard-mcp`` command (also ``python -m toolguard_mcp``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial

import anyio
import click

from toolguard import ConfigError, Guard, ToolGuardError

from .proxy import GuardingProxy, Upstream, parse_params
from .serve import serve_http, serve_stdio

__all__ = ["cli", "main"]

EPILOG = """\b
Examples:
  toolguard-mcp proxy --config toolguard.yaml --intent process-job --param job_id=42 \\
      -- python my_server.py
  toolguard-mcp proxy --config toolguard.yaml --intent process-job --param job_id=42 \\
      --upstream-url http://127.0.0.1:8000/mcp --listen 127.0.0.1:8765
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """toolguard for MCP servers: a proxy that guards every tool call."""


@cli.command(epilog=EPILOG)
@click.option(
    "--config", "-c", "config_path", required=True,
    type=click.Path(exists=True, dir_okay=False), help="The toolguard config file.",
)  # fmt: skip
@click.option("--intent", "-i", required=True, help="The intent every client session runs as.")
@click.option(
    "--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
    help="A task parameter of the intent (repeatable).",
)  # fmt: skip
@click.option(
    "--upstream-url", metavar="URL",
    help="The upstream MCP server's streamable HTTP endpoint (instead of a command).",
)  # fmt: skip
@click.option(
    "--listen", metavar="HOST:PORT",
    help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio.",
)  # fmt: skip
@click.option(
    "--log-level", default="WARNING", show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging on stderr.",
)  # fmt: skip
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND ARGS...]")
def proxy(
    config_path: str,
    intent: str,
    params: tuple[str, ...],
    upstream_url: str | None,
    listen: str | None,
    log_level: str,
    command: tuple[str, ...],
) -> None:
    """Serve MCP to a client and forward to an upstream MCP server, guarding every tool call.

    Each client session is one task of INTENT: tools/list offers only the intent's tools,
    every tools/call is checked, budgeted, audited and gets its own short-lived credential
    (sent to the upstream in _meta["io.toolguard/credential"] over stdio, as
    "Authorization: Bearer" over HTTP), and the task ends with its credentials revoked when
    the session ends.
    """
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="%(message)s")
    if bool(command) == bool(upstream_url):
        raise click.UsageError(
            "give the upstream MCP server either as a command after '--' or with "
            "--upstream-url, not both"
        )
    try:
        values = parse_params(params)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None
    address: tuple[str, int] | None = None
    if listen is not None:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(
                f"{listen!r} is not HOST:PORT; write e.g. --listen 127.0.0.1:8765",
                param_hint="--listen",
            )
        address = (host.strip("[]"), int(port))
    try:
        guard = Guard.from_config(config_path)
    except ToolGuardError as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None
    with guard:
        try:
            server = GuardingProxy(
                guard,
                intent,
                Upstream(command=command, url=upstream_url, env=dict(os.environ)),
                params=values,
            )
        except ConfigError as exc:
            raise click.ClickException(f"{config_path}: {exc}") from None
        if address is not None:
            serve_http(server, *address)
            return
        try:
            healthy = anyio.run(partial(serve_stdio, server, on_abandon=_abandon(guard)))
        except Exception as exc:  # already logged by the proxy; say it plainly too
            click.echo(f"toolguard-mcp: the session failed: {type(exc).__name__}", err=True)
            healthy = False
    if not healthy:
        sys.exit(1)


def _abandon(guard: Guard) -> Callable[[int], None]:
    """Exit now (the session's task has ended): the SDK's stdin reader would otherwise keep
    the process until the client closes stdin."""

    def leave(code: int) -> None:
        try:
            guard.close()  # pending outcome rows are written
        finally:
            sys.stderr.flush()
            os._exit(code)

    return leave


def main() -> None:
    cli(prog_name="toolguard-mcp")
