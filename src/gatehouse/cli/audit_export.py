"""`gatehouse audit export`: a one-off copy of part of the trail, as JSON lines or OCSF records.

Attached to the `audit` group (`audit.add_command(export)`). Reads the store directly, in sequence order,
a batch at a time, so it works with the server running or not and on logs of any size.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from gatehouse.audit.export.jsonl import formatter
from gatehouse.audit.export.source import events_between
from gatehouse.cli.context import Context, pass_context
from gatehouse.timeutil import iso, parse_time

PROGRESS_EVERY_S = 1.0


@click.command("export")
@click.option(
    "--since", required=True, help="Start (inclusive): ISO 8601 (2026-11-17T03:00) or an age (24h, 7d)."
)
@click.option("--until", help="End (exclusive): ISO 8601 or an age. Default: now.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "ocsf"]),
    default="jsonl",
    show_default=True,
    help="jsonl: the event envelope, one per line; ocsf: OCSF API Activity records.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    help="Write to this file instead of stdout.",
)
@click.option("--batch", type=click.IntRange(1, 100_000), default=1000, show_default=True, hidden=True)
@pass_context
def export(ctx: Context, since: str, until: str | None, fmt: str, out: Path | None, batch: int) -> None:
    """Export events recorded between --since and --until, in log order. Progress goes to stderr."""
    try:
        since_us = parse_time(since)
        until_us = parse_time(until) if until is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if until_us is not None and until_us <= since_us:
        raise click.BadParameter("--until must be later than --since")
    encode = formatter(fmt)
    db = ctx.db
    started = time.monotonic()
    last_report = started
    count = 0
    first_seq: int | None = None
    last_seq: int | None = None
    target = str(out) if out else "stdout"
    with _output(out) as sink:
        for events in events_between(db, since_us, until_us, batch=batch):
            sink.write(b"".join(orjson.dumps(encode(e)) + b"\n" for e in events))
            count += len(events)
            first_seq = events[0].seq if first_seq is None else first_seq
            last_seq = events[-1].seq
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                click.echo(
                    f"exported {count:,} events (up to seq {last_seq}, {iso(events[-1].ts)})", err=True
                )
        sink.flush()
    elapsed = time.monotonic() - started
    span = f" (seq {first_seq}..{last_seq})" if count else ""
    click.echo(f"exported {count:,} events{span} to {target} in {elapsed:.1f}s", err=True)


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[BinaryIO]:
    """The file (created or truncated), or stdout's binary stream (flushed, not closed)."""
    if path is None:
        stream = sys.stdout.buffer
        try:
            yield stream
        finally:
            stream.flush()
        return
    with open(path, "wb") as f:
        yield f
