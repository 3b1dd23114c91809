"""`gatehouse spend`: what LLM calls cost, grouped by user, team, agent, model or day."""

from __future__ import annotations

import click

from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.policy.settings import policy_settings
from gatehouse.policy.spend import COLUMNS, GROUPINGS, SpendFilter, rebuild_spend, report_csv, spend_report
from gatehouse.timeutil import parse_time


@click.group()
def spend() -> None:
    """Spend: the cost of LLM calls, derived from the event log and the price book."""


@spend.command("report")
@click.option("--by", type=click.Choice(GROUPINGS), default="user", show_default=True)
@click.option("--from", "since", help="From (ISO 8601, or an age like 7d).")
@click.option("--to", "until", help="Until (exclusive).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@json_option
@pass_context
def spend_report_command(
    ctx: Context, by: str, since: str | None, until: str | None, as_csv: bool, as_json: bool
) -> None:
    """Spend per user, team, agent, model, provider, template or day."""
    try:
        f = SpendFilter(
            since_us=parse_time(since) if since else None, until_us=parse_time(until) if until else None
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    report = spend_report(ctx.derived_db, by, f)
    if as_csv:
        click.echo(report_csv(report), nl=False)
    elif as_json:
        emit_json(report)
    else:
        rows = [{**r, "key": r["key"] if r["key"] is not None else "-"} for r in report["rows"]]
        rows.append({"key": "TOTAL", **report["total"]})
        for r in rows:
            r["cost_usd"] = f"{r['cost_usd']:.6f}"
        emit_table(rows, ["key", *COLUMNS])


@spend.command("rebuild")
@pass_context
def spend_rebuild(ctx: Context) -> None:
    """Recompute the spend table from the event log (after restoring a backup, say)."""
    count = rebuild_spend(ctx.db, policy_settings(ctx.settings).timezone)
    click.echo(f"rebuilt spend for {count} calls")
