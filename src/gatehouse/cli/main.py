"""The `gatehouse` command: a thin click group. Commands parse arguments, call the layer, print.

Every command reads the same settings as the server (`--config`, or `GATEHOUSE_CONFIG`, or ./gatehouse.toml,
then `GATEHOUSE_*` environment variables) and talks to the store directly, so it works with the server
running or not.
"""

from __future__ import annotations

from pathlib import Path

import click

from gatehouse import __version__
from gatehouse.cli.audit import audit
from gatehouse.cli.audit_export import export
from gatehouse.cli.context import Context
from gatehouse.cli.identity import agents, tokens, users
from gatehouse.cli.policy import policy
from gatehouse.cli.prices import prices
from gatehouse.cli.serve import migrate_command, serve
from gatehouse.cli.sessions import sessions
from gatehouse.cli.simulate import simulate
from gatehouse.cli.spend import spend
from gatehouse.cli.teams import teams
from gatehouse.cli.templates import templates


@click.group()
@click.version_option(__version__, prog_name="gatehouse")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="GATEHOUSE_CONFIG",
    help="Settings file (TOML). Default: ./gatehouse.toml if present.",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Gatehouse: audited, least-privilege control plane for AI coding agents."""
    ctx.obj = Context(config)


audit.add_command(export)
for command in (
    serve,
    migrate_command,
    users,
    agents,
    tokens,
    sessions,
    audit,
    templates,
    policy,
    teams,
    prices,
    spend,
    simulate,
):
    cli.add_command(command)


def main() -> None:
    cli()
