"""`gatehouse policy explain`: what the Bridge would decide for a call, and which rule decides it."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, json_option
from gatehouse.identity.service import IdentityError
from gatehouse.policy import explain as explaining
from gatehouse.policy.engine import PolicyEngine
from gatehouse.policy.settings import policy_settings
from gatehouse.policy.templates import PolicyError


@click.group()
def policy() -> None:
    """Ask the policy engine."""


@policy.command("explain")
@click.option("--agent", help="The agent making the call.")
@click.option("--user", help="A user calling with a personal token (instead of --agent).")
@click.option("--model", required=True)
@click.option("--provider", help="Provider instance (default: the first that serves the model).")
@click.option(
    "--template", help="The template to judge by (default: the one the agent's tokens are bound to)."
)
@click.option("--max-tokens", type=int, help="The output the call would ask for.")
@json_option
@pass_context
def policy_explain(
    ctx: Context,
    agent: str | None,
    user: str | None,
    model: str,
    provider: str | None,
    template: str | None,
    max_tokens: int | None,
    as_json: bool,
) -> None:
    """Say whether a call would be allowed, which rule decides, and the budget and rate-limit state."""
    if (agent is None) == (user is None):
        raise click.UsageError("name exactly one of --agent and --user")
    try:
        result = asyncio.run(_explain(ctx, agent, user, model, provider, template, max_tokens))
    except (PolicyError, IdentityError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(result)
        return
    _print(result)


async def _explain(
    ctx: Context,
    agent: str | None,
    user: str | None,
    model: str,
    provider: str | None,
    template: str | None,
    max_tokens: int | None,
) -> dict[str, Any]:
    engine = PolicyEngine(ctx.db, policy_settings(ctx.settings), providers=ctx.settings.providers)
    try:
        who = explaining.resolve(ctx.db, agent=agent, user=user)
        return await explaining.explain(
            engine, who, model=model, provider=provider, template=template, max_tokens=max_tokens
        )
    finally:
        await engine.close()


def _print(r: dict[str, Any]) -> None:
    t = r.get("template")
    if t is None:
        governed = "no template"
    elif t.get("missing"):
        governed = f"template {t['name']} (missing)"
    else:
        governed = f"template {t['name']} v{t['version']} ({t['source']})"
    team = f", team {r['team']}" if r.get("team") else ""
    click.echo(f"{r['who']}: {governed}{team}")
    click.echo(f"call:     {r.get('provider') or '?'} / {r['model']}")
    click.echo(f"decision: {r['decision'].upper()} (HTTP {r['status']})")
    click.echo(f"rule:     {r['rule']}")
    click.echo(f"reason:   {r['reason']}")
    if r["checks"]:
        click.echo("checks:")
        for c in r["checks"]:
            click.echo(f"  {c['result']:<8} {c['rule']}")
    if r["limits"]:
        click.echo("budgets and rate limits:")
        for lim in r["limits"]:
            unit = lim["unit"]
            reset = f", resets {lim['resets_at']}" if lim.get("resets_at") else ""
            mark = "ok  " if lim["fits"] else "FULL"
            click.echo(
                f"  {mark} {lim['rule']} [{lim['scope']}]: used {lim['used']} of {lim['limit_value']} {unit},"
                f" remaining {lim['remaining']}; this call up to {lim['this_call']}{reset}"
            )
