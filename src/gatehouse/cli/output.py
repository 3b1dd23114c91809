"""Printing for people (aligned tables) and for scripts (`--json`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click
import orjson

from gatehouse.timeutil import iso

# Every command that prints data takes the same flag, so scripts can rely on it.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def emit_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def emit_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, times: Sequence[str] = ()
) -> None:
    rendered = [[_cell(row.get(c), c in times) for c in columns] for row in rows]
    if not rendered:
        click.echo("(none)")
        return
    widths = [max(len(c), *(len(r[i]) for r in rendered)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in rendered:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any, is_time: bool) -> str:
    if value is None:
        return "-"
    if is_time:
        return iso(int(value)) or "-"
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def fail(message: str) -> Callable[[], None]:
    raise click.ClickException(message)
