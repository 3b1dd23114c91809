"""`gatehouse serve` and `gatehouse migrate`."""

from __future__ import annotations

import asyncio
import logging

import click
from aiohttp import web

from gatehouse.cli.context import Context, pass_context
from gatehouse.gctuning import tune_gc
from gatehouse.server import build, create_app, open_store
from gatehouse.store.migrations import migrate


@click.command()
@click.option("--host", help="Address to bind (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default from settings: 8080).")
@pass_context
def serve(ctx: Context, host: str | None, port: int | None) -> None:
    """Run the Gatehouse server: the Bridge under /bridge/<provider>/ and the API under /api/v1/."""
    settings = ctx.settings
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _use_uvloop()
    gh = build(settings)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    names = ", ".join(f"{n} ({p.type})" for n, p in settings.providers.items()) or "none"
    click.echo(f"gatehouse {settings.store.url.split('://')[0]} store, providers: {names}")
    click.echo(f"listening on http://{host}:{port}  (bridge: /bridge/<provider>/, api: /api/v1/)")
    app = create_app(gh)
    tune_gc()
    web.run_app(app, host=host, port=port, print=None, access_log=None, handle_signals=True)


@click.command("migrate")
@pass_context
def migrate_command(ctx: Context) -> None:
    """Create or upgrade the store's schema (the server also does this at start)."""
    db = open_store(ctx.settings)
    applied = migrate(db)
    click.echo(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
