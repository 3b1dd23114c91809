"""`gatehouse teams`: groups of users (and their agents) counted together, with their own limits."""

from __future__ import annotations

from typing import Any

import click

from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.identity.service import IdentityError
from gatehouse.policy.teams import TeamService
from gatehouse.policy.templates import PolicyError

_ERRORS = (IdentityError, PolicyError)


@click.group()
def teams() -> None:
    """Teams: users and agents whose spend is counted together."""


@teams.command("create")
@click.argument("name")
@click.option("--description")
@json_option
@pass_context
def teams_create(ctx: Context, name: str, description: str | None, as_json: bool) -> None:
    """Create team NAME."""
    try:
        team = TeamService(ctx.db).create(name, description=description, actor=ctx.actor)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    emit_json(team) if as_json else click.echo(f"created team {name} id={team['id']}")


@teams.command("list")
@json_option
@pass_context
def teams_list(ctx: Context, as_json: bool) -> None:
    """List teams."""
    rows = TeamService(ctx.db).list()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["limits"] = _limits_text(r["limits"]) or "-"
    emit_table(rows, ["name", "members", "agents", "limits", "description"])


@teams.command("show")
@click.argument("name")
@json_option
@pass_context
def teams_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show a team: members, agents, limits."""
    try:
        team = TeamService(ctx.db).show(name)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(team)
        return
    click.echo(f"team {team['name']}" + (f": {team['description']}" if team["description"] else ""))
    click.echo(f"members: {', '.join(team['members']) or '-'}")
    click.echo(f"agents:  {', '.join(team['agents']) or '-'}")
    click.echo(f"limits:  {_limits_text(team['limits']) or '-'}")


@teams.command("add-member")
@click.argument("team")
@click.argument("user")
@pass_context
def teams_add_member(ctx: Context, team: str, user: str) -> None:
    """Put USER in TEAM (a user is in one team at most: this moves them)."""
    try:
        result = TeamService(ctx.db).add_member(team, user, actor=ctx.actor)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    moved = f" (moved from {result['previous_team']})" if result["previous_team"] else ""
    click.echo(f"{user} is in team {team}{moved}")


@teams.command("remove-member")
@click.argument("team")
@click.argument("user")
@pass_context
def teams_remove_member(ctx: Context, team: str, user: str) -> None:
    """Take USER out of TEAM."""
    try:
        TeamService(ctx.db).remove_member(team, user, actor=ctx.actor)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{user} left team {team}")


@teams.command("set-agent")
@click.argument("agent")
@click.argument("team", required=False)
@pass_context
def teams_set_agent(ctx: Context, agent: str, team: str | None) -> None:
    """Count AGENT for TEAM (without TEAM: for its owner's team again)."""
    try:
        TeamService(ctx.db).set_agent_team(agent, team, actor=ctx.actor)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"agent {agent} counts for team {team}" if team else f"agent {agent} counts for its owner's team"
    )


@teams.command("limits")
@click.argument("team")
@click.option("--daily-usd", type=float, help="Budget per calendar day.")
@click.option("--weekly-usd", type=float, help="Budget per calendar week (from Monday).")
@click.option("--monthly-usd", type=float, help="Budget per calendar month.")
@click.option("--rolling", is_flag=True, help="Budgets over the last 24 h / 7 d / 30 d instead.")
@click.option("--rpm", type=int, help="Requests per minute.")
@click.option("--tpm", type=int, help="Tokens per minute.")
@click.option("--clear", is_flag=True, help="Remove every limit of the team.")
@json_option
@pass_context
def teams_limits(
    ctx: Context,
    team: str,
    daily_usd: float | None,
    weekly_usd: float | None,
    monthly_usd: float | None,
    rolling: bool,
    rpm: int | None,
    tpm: int | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Set TEAM's budgets and rate limits (replacing the previous ones)."""
    limits: dict[str, Any] = {}
    if not clear:
        window = "rolling" if rolling else "calendar"
        budgets = [
            {"usd": usd, "period": period, "window": window}
            for usd, period in ((daily_usd, "day"), (weekly_usd, "week"), (monthly_usd, "month"))
            if usd is not None
        ]
        rates = {k: v for k, v in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)) if v is not None}
        if not budgets and not rates:
            raise click.UsageError("give at least one limit, or --clear")
        limits = {"budgets": budgets, "rate_limits": rates}
    try:
        result = TeamService(ctx.db).set_limits(team, limits, actor=ctx.actor)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(result)
    else:
        click.echo(f"team {team} limits: {_limits_text(result['limits']) or 'none'}")


def _limits_text(limits: dict[str, Any]) -> str:
    parts = [
        f"{b['usd']:g} USD/{b['period']}" + (" rolling" if b.get("window") == "rolling" else "")
        for b in limits.get("budgets") or []
    ]
    rates = limits.get("rate_limits") or {}
    if "requests_per_minute" in rates:
        parts.append(f"{rates['requests_per_minute']} req/min")
    if "tokens_per_minute" in rates:
        parts.append(f"{rates['tokens_per_minute']} tok/min")
    return ", ".join(parts)
