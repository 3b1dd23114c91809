"""`gatehouse users|agents|tokens`: manage identities. Tokens are printed once, at creation."""

from __future__ import annotations

import click

from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.identity.service import ROLES, IdentityError
from gatehouse.timeutil import parse_duration


@click.group()
def users() -> None:
    """People: create and list users."""


@users.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
@click.option("--email")
@json_option
@pass_context
def users_create(ctx: Context, name: str, role: str, email: str | None, as_json: bool) -> None:
    """Create user NAME."""
    try:
        user = ctx.identity.create_user(name, role=role, email=email, actor=ctx.actor)
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None
    emit_json(user) if as_json else click.echo(f"created user {name} ({role}) id={user['id']}")


@users.command("list")
@json_option
@pass_context
def users_list(ctx: Context, as_json: bool) -> None:
    """List users."""
    rows = ctx.identity.list_users()
    emit_json(rows) if as_json else emit_table(
        rows, ["name", "role", "email", "created_at"], times=["created_at"]
    )


@click.group()
def agents() -> None:
    """Agents: non-human identities, each owned by a user."""


@agents.command("create")
@click.argument("name")
@click.option("--owner", required=True, help="The user who owns and answers for this agent.")
@click.option("--description")
@json_option
@pass_context
def agents_create(ctx: Context, name: str, owner: str, description: str | None, as_json: bool) -> None:
    """Create agent NAME owned by a user."""
    try:
        agent = ctx.identity.create_agent(name, owner=owner, description=description, actor=ctx.actor)
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None
    emit_json(agent) if as_json else click.echo(f"created agent {name} (owner {owner}) id={agent['id']}")


@agents.command("list")
@click.option("--owner")
@json_option
@pass_context
def agents_list(ctx: Context, owner: str | None, as_json: bool) -> None:
    """List agents."""
    rows = ctx.identity.list_agents(owner)
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["name", "owner", "description", "created_at"], times=["created_at"])


@click.group()
def tokens() -> None:
    """API tokens: what agents and people present to Gatehouse instead of provider keys."""


@tokens.command("create")
@click.option("--user", required=True, help="The user the token acts for.")
@click.option("--agent", help="Bind the token to one of the user's agents.")
@click.option("--name", help="A label to recognise the token by.")
@click.option("--ttl", help="Time to live, e.g. 12h, 30d. Default: no expiry (or the template's maximum).")
@click.option("--template", help="Bind the token to a policy template (see `gatehouse templates`).")
@json_option
@pass_context
def tokens_create(
    ctx: Context,
    user: str,
    agent: str | None,
    name: str | None,
    ttl: str | None,
    template: str | None,
    as_json: bool,
) -> None:
    """Create a token. The secret is printed once and cannot be shown again."""
    try:
        ttl_seconds = parse_duration(ttl) if ttl else None
        info, secret = ctx.identity.create_token(
            user=user, agent=agent, name=name, ttl_seconds=ttl_seconds, template=template, actor=ctx.actor
        )
    except (IdentityError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json({**info.as_dict(), "token": secret})
        return
    click.echo(f"token {info.prefix}… id={info.id} for {user}{f' / agent {agent}' if agent else ''}")
    click.echo("store it now; it will not be shown again:")
    click.echo(secret)


@tokens.command("list")
@click.option("--user")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@json_option
@pass_context
def tokens_list(ctx: Context, user: str | None, include_revoked: bool, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    rows = [t.as_dict() for t in ctx.identity.list_tokens(user, include_revoked=include_revoked)]
    if as_json:
        emit_json(rows)
        return
    times = ["created_at", "expires_at", "last_used_at", "revoked_at"]
    emit_table(rows, ["id", "prefix", "user", "agent", "name", *times], times=times)


@tokens.command("revoke")
@click.argument("token")
@json_option
@pass_context
def tokens_revoke(ctx: Context, token: str, as_json: bool) -> None:
    """Revoke TOKEN (its id or visible prefix). It stops working at once."""
    try:
        info = ctx.identity.revoke_token(token, actor=ctx.actor)
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None
    emit_json(info.as_dict()) if as_json else click.echo(f"revoked token {info.prefix} ({info.id})")
