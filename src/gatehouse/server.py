"""The composition root: settings in, a running application out. Layers are wired here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gatehouse.audit.writer import AuditWriter
from gatehouse.bridge.projection import project_bridge_events
from gatehouse.bridge.proxy import Bridge
from gatehouse.config import FailMode, Settings
from gatehouse.identity.service import IdentityService
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate


@dataclass
class Gatehouse:
    settings: Settings
    db: Database
    writer: AuditWriter
    identity: IdentityService
    bridge: Bridge


def open_store(settings: Settings) -> Database:
    return Database(
        settings.store.url,
        synchronous=settings.store.sqlite_synchronous,
        busy_timeout_ms=settings.store.busy_timeout_ms,
    )


def build(settings: Settings) -> Gatehouse:
    db = open_store(settings)
    migrate(db)
    writer = AuditWriter(
        db,
        projections=[project_bridge_events],
        max_batch=settings.audit.max_batch,
        fail_open=settings.audit.fail_mode is FailMode.OPEN,
    )
    identity = IdentityService(db)
    bridge = Bridge(
        providers=settings.providers,
        settings=settings.bridge,
        db=db,
        writer=writer,
        identity=identity,
        max_body_bytes=settings.server.max_body_bytes,
    )
    return Gatehouse(settings=settings, db=db, writer=writer, identity=identity, bridge=bridge)


GATEHOUSE = web.AppKey("gatehouse", Gatehouse)


def create_app(gh: Gatehouse) -> web.Application:
    from gatehouse.api.app import add_api_routes

    app = web.Application(client_max_size=gh.settings.server.max_body_bytes)
    app[GATEHOUSE] = gh
    gh.bridge.add_routes(app)
    add_api_routes(app, gh)
    if gh.settings.oidc is not None:
        from gatehouse.api.oidc import add_oidc_routes

        add_oidc_routes(app, gh, gh.settings.oidc)

    async def start_writer(_app: web.Application) -> None:
        gh.writer.start()

    async def stop_writer(_app: web.Application) -> None:
        gh.writer.close()
        gh.db.close()

    app.on_startup.insert(0, start_writer)
    app.on_cleanup.append(stop_writer)
    return app
