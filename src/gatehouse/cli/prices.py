"""`gatehouse prices`: the price book (USD per million tokens), effective-dated."""

from __future__ import annotations

import click

from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.policy.prices import PriceService
from gatehouse.policy.templates import PolicyError
from gatehouse.timeutil import parse_time


@click.group()
def prices() -> None:
    """The price book: what each model costs, per million tokens."""


@prices.command("set")
@click.argument("model")
@click.option("--input", "input_", type=float, required=True, help="USD per million input tokens.")
@click.option("--output", type=float, required=True, help="USD per million output tokens.")
@click.option(
    "--cache-read", type=float, help="USD per million cache-read tokens (default: the input price)."
)
@click.option(
    "--cache-write", type=float, help="USD per million cache-write tokens (default: the input price)."
)
@click.option(
    "--from", "since", help="Effective from (ISO 8601; default: now). Earlier calls keep their price."
)
@json_option
@pass_context
def prices_set(
    ctx: Context,
    model: str,
    input_: float,
    output: float,
    cache_read: float | None,
    cache_write: float | None,
    since: str | None,
    as_json: bool,
) -> None:
    """Price MODEL (an exact name or a glob such as 'claude-sonnet-4-5*')."""
    try:
        price = PriceService(ctx.db).set(
            model,
            input=input_,
            output=output,
            cache_read=cache_read,
            cache_write=cache_write,
            effective_from=parse_time(since) if since else None,
            actor=ctx.actor,
        )
    except (PolicyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(price.as_dict())
    else:
        click.echo(
            f"price of {model}: input {price.input:g}, output {price.output:g},"
            f" cache read {price.cache_read:g}, cache write {price.cache_write:g} USD per million tokens"
        )


@prices.command("list")
@click.option("--stored", is_flag=True, help="Only entries set in the store (not the shipped defaults).")
@json_option
@pass_context
def prices_list(ctx: Context, stored: bool, as_json: bool) -> None:
    """List prices (store entries first, then shipped defaults)."""
    rows = [p.as_dict() for p in PriceService(ctx.db).list(include_defaults=not stored)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["effective_from"] = r["effective_from"] or None
    emit_table(
        rows,
        ["model", "input", "output", "cache_read", "cache_write", "effective_from", "source"],
        times=["effective_from"],
    )
