"""`gatehouse templates`: policy as code. Apply YAML files, see what would change, list, show versions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.policy.templates import PolicyError, TemplateInvalid, TemplateStore, schema

file_argument = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from None


@click.group()
def templates() -> None:
    """Templates: what an agent profile may call, how much and how fast (YAML, versioned)."""


@templates.command("apply")
@file_argument
@json_option
@pass_context
def templates_apply(ctx: Context, file: Path, as_json: bool) -> None:
    """Validate FILE and store it as the template's next version (nothing if unchanged)."""
    try:
        plan = TemplateStore(ctx.db).apply(_read(file), str(file), actor=ctx.actor)
    except TemplateInvalid as exc:
        raise click.ClickException("invalid template:\n" + str(exc)) from None
    if as_json:
        emit_json({**plan.as_dict(), "applied": plan.changed})
    elif not plan.changed:
        click.echo(f"template {plan.name} unchanged (v{plan.current_version})")
    else:
        was = f" (was v{plan.current_version})" if plan.current_version else " (new)"
        click.echo(f"applied template {plan.name} v{plan.next_version}{was}")
        click.echo(plan.diff, nl=False)


@templates.command("plan")
@file_argument
@json_option
@pass_context
def templates_plan(ctx: Context, file: Path, as_json: bool) -> None:
    """Validate FILE and show the diff against the stored version. Changes nothing."""
    try:
        plan = TemplateStore(ctx.db).plan(_read(file), str(file))
    except TemplateInvalid as exc:
        raise click.ClickException("invalid template:\n" + str(exc)) from None
    if as_json:
        emit_json(plan.as_dict())
    elif not plan.changed:
        click.echo(f"template {plan.name}: no changes (v{plan.current_version})")
    else:
        click.echo(f"template {plan.name}: v{plan.current_version or 0} -> v{plan.next_version}")
        click.echo(plan.diff, nl=False)


@templates.command("list")
@json_option
@pass_context
def templates_list(ctx: Context, as_json: bool) -> None:
    """List templates and their current versions."""
    rows = TemplateStore(ctx.db).list()
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["name", "version", "source", "updated_by", "updated_at"], times=["updated_at"])


@templates.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, help="A past version (default: the current one).")
@json_option
@pass_context
def templates_show(ctx: Context, name: str, version: int | None, as_json: bool) -> None:
    """Print template NAME as it was applied."""
    try:
        row = TemplateStore(ctx.db).show(name, version)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(row)
        return
    click.echo(
        f"# {row['name']} v{row['version']} from {row['source']}, by {row['created_by']},"
        f" sha256 {row['hash']}"
    )
    click.echo(row["content"], nl=not row["content"].endswith("\n"))


@templates.command("schema")
def templates_schema() -> None:
    """Print the JSON Schema templates are validated against (for editors and CI)."""
    click.echo(json.dumps(schema(), indent=2))
