"""The composition root: settings in, a running application out. Layers are wired here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gatehouse.audit import search, timemap
from gatehouse.audit.checkpoints import signing_key_from_secret
from gatehouse.audit.export.exporter import Exporter, add_export_task
from gatehouse.audit.projector import Projector, catch_up_ctx, catch_up_process_ctx
from gatehouse.audit.retention import retention_cleanup_ctx
from gatehouse.audit.writer import AuditWriter
from gatehouse.bridge.projection import project_bridge_events
from gatehouse.bridge.proxy import Bridge
from gatehouse.config import FailMode, Settings
from gatehouse.identity.service import IdentityService
from gatehouse.metrics import Metrics, add_metrics_route
from gatehouse.policy.engine import PolicyEngine
from gatehouse.policy.settings import PolicySettings, policy_settings
from gatehouse.policy.spend import SpendProjection
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate


@dataclass
class Gatehouse:
    settings: Settings
    db: Database
    writer: AuditWriter
    derived: Projector
    identity: IdentityService
    bridge: Bridge
    policy: PolicyEngine | None = None
    metrics: Metrics | None = None
    exporter: Exporter | None = None


def open_store(settings: Settings) -> Database:
    return Database(
        settings.store.url,
        synchronous=settings.store.sqlite_synchronous,
        busy_timeout_ms=settings.store.busy_timeout_ms,
    )


def derived_tables(timezone: str) -> Projector:
    """What keeps this deployment's derived tables (sessions, tool calls, spend, the full-text
    index, and the log's time map and key index while they keep pace) in step with the log, in
    one pass over each batch of events. Readers of those tables run its `catch_up` first."""
    return Projector(
        [project_bridge_events, SpendProjection(timezone), search.project_search_index, timemap.project]
    )


def build(settings: Settings, *, policy: PolicySettings | None = None) -> Gatehouse:
    """`policy` overrides `settings.policy` (tests, benchmarks)."""
    db = open_store(settings)
    migrate(db)
    policy = policy or policy_settings(settings)
    metrics = Metrics(settings.metrics)
    derived = derived_tables(policy.timezone)
    exporter = Exporter(
        db, settings.export, provider_types={n: p.type for n, p in settings.providers.items()}
    )
    writer = AuditWriter(
        db,
        max_batch=settings.audit.max_batch,
        fail_open=settings.audit.fail_mode is FailMode.OPEN,
        # The exporter learns of commits only if it has sinks to wake (each wake-up is a loop call).
        observers=[metrics.observer, *([exporter.observer] if exporter.sinks else [])],
        process=settings.audit.use_writer_process(settings.store),
        process_tasks=[derived.step, timemap.step],
        # Every append commits under `full`: a journal write is not fsynced.
        journal=settings.audit.journal and settings.store.sqlite_synchronous == "normal",
    )
    identity = IdentityService(db)
    metrics.writer, metrics.exporter, metrics.identity = writer, exporter, identity
    engine = PolicyEngine(db, policy, writer=writer, providers=settings.providers, derived=derived)
    bridge = Bridge(
        providers=settings.providers,
        settings=settings.bridge,
        db=db,
        writer=writer,
        identity=identity,
        max_body_bytes=settings.server.max_body_bytes,
        policy=engine,
    )
    return Gatehouse(
        settings=settings,
        db=db,
        writer=writer,
        identity=identity,
        bridge=bridge,
        policy=engine,
        metrics=metrics,
        exporter=exporter,
        derived=derived,
    )


GATEHOUSE = web.AppKey("gatehouse", Gatehouse)


def create_app(gh: Gatehouse) -> web.Application:
    from gatehouse.api.app import add_api_routes
    from gatehouse.api.audit import add_audit_routes
    from gatehouse.api.policy import add_policy_routes

    app = web.Application(client_max_size=gh.settings.server.max_body_bytes)
    app[GATEHOUSE] = gh
    gh.bridge.add_routes(app)
    add_api_routes(app, gh)
    if gh.settings.oidc is not None:
        from gatehouse.api.oidc import add_oidc_routes

        add_oidc_routes(app, gh, gh.settings.oidc)
    add_policy_routes(app, gh)
    add_audit_routes(app, gh)
    # With the writer process, it does this between commits.
    if not gh.settings.audit.use_writer_process(gh.settings.store):
        threaded = [gh.derived.catch_up, timemap.catch_up]
        if gh.settings.audit.projector_process:
            steps = [gh.derived.step, timemap.step]
            app.cleanup_ctx.append(catch_up_process_ctx(gh.db, steps, fallback=threaded))
        else:
            app.cleanup_ctx.append(catch_up_ctx(gh.db, threaded))
    audit = gh.settings.audit
    if audit.retention.enabled:
        app.cleanup_ctx.append(
            retention_cleanup_ctx(gh.db, audit.retention, signing_key_from_secret(audit.signing_key))
        )

    async def start_writer(_app: web.Application) -> None:
        gh.writer.start()

    async def stop_writer(_app: web.Application) -> None:
        gh.writer.close()
        gh.db.close()

    async def start_policy(_app: web.Application) -> None:
        if gh.policy is not None:
            await gh.policy.start()

    async def stop_policy(_app: web.Application) -> None:
        if gh.policy is not None:
            await gh.policy.close()

    app.on_startup.insert(0, start_writer)
    app.on_startup.append(start_policy)
    app.on_cleanup.insert(0, stop_policy)
    app.on_cleanup.append(stop_writer)
    # Registered last so that they stop first, before the writer and the store close.
    if gh.metrics is not None:
        add_metrics_route(app, gh.metrics)
    if gh.exporter is not None:
        add_export_task(app, gh.exporter)
    return app
