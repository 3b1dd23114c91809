"""The audit read API under /api/v1/audit: timeline, search, verify, one event. Roles owner, admin,
auditor. Errors are problem details, like the rest of the API.

Store work runs in worker threads: a timeline page is quick, but a search may first catch the index up and
a verification walks the whole chain, and neither may hold up the event loop that serves the Bridge.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import SecretStr

from gatehouse.api.app import READERS, Problem, json_response, requires
from gatehouse.audit.checkpoints import load_private_key, load_public_key
from gatehouse.audit.queries import EventFilter, QueryError, get_event, search, timeline
from gatehouse.audit.verify import verify_database
from gatehouse.timeutil import parse_time

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gatehouse.server import Gatehouse

_VERIFYING = web.AppKey("audit_verifying", asyncio.Lock)


def _gh(request: web.Request) -> Gatehouse:
    from gatehouse.server import GATEHOUSE

    return request.app[GATEHOUSE]


def _filter(request: web.Request) -> EventFilter:
    q = request.query
    try:
        return EventFilter(
            user=q.get("user") or None,
            agent=q.get("agent") or None,
            session=q.get("session") or None,
            workspace=q.get("workspace") or None,
            since_us=parse_time(q["from"]) if q.get("from") else None,
            until_us=parse_time(q["to"]) if q.get("to") else None,
            kinds=tuple(k for k in q.getall("kind", []) if k),
            limit=int(q.get("limit", "100")),
            cursor=q.get("cursor") or None,
        )
    except ValueError as exc:
        raise Problem(400, "Bad Request", str(exc)) from None


@requires(*READERS)
async def audit_timeline(request: web.Request) -> web.Response:
    f = _filter(request)
    try:
        page = await asyncio.to_thread(timeline, _gh(request).db, f)
    except QueryError as exc:
        raise Problem(400, "Bad Request", str(exc)) from None
    return json_response(page.as_dict())


@requires(*READERS)
async def audit_search(request: web.Request) -> web.Response:
    query = request.query.get("q", "")
    if not query.strip():
        raise Problem(400, "Bad Request", "give the text to search for as ?q=")
    f = _filter(request)
    try:
        page = await asyncio.to_thread(search, _gh(request).db, query, f)
    except QueryError as exc:
        raise Problem(400, "Bad Request", str(exc)) from None
    return json_response(page.as_dict())


@requires(*READERS)
async def audit_verify(request: web.Request) -> web.Response:
    """Verify the chain (with the configured key's public half, or ?public_key=). 200 with `ok: false` and
    the first break when it is broken; 409 while another verification runs."""
    gh = _gh(request)
    key = _public_key(gh, request.query.get("public_key"))
    keep_going = request.query.get("keep_going") in ("1", "true")
    lock = request.app[_VERIFYING]
    if lock.locked():
        raise Problem(409, "Conflict", "a verification is already running; try again when it is done")
    async with lock:
        report = await asyncio.to_thread(
            verify_database, gh.db, public_key=key, max_breaks=100 if keep_going else 1
        )
    return json_response(report.as_dict())


@requires(*READERS)
async def audit_event(request: web.Request) -> web.Response:
    event_id = request.match_info["id"]
    event = await asyncio.to_thread(get_event, _gh(request).db, event_id)
    if event is None:
        raise Problem(404, "Not Found", f"no event {event_id!r}")
    return json_response(event)


def _public_key(gh: Gatehouse, given: str | None) -> Ed25519PublicKey | None:
    if given:
        try:
            return load_public_key(given, allow_path=False)  # never a path on the server
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
    secret: Any = getattr(gh.settings.audit, "signing_key", None)
    if isinstance(secret, SecretStr):
        return load_private_key(secret.get_secret_value()).public_key()
    return None


def add_audit_routes(app: web.Application, gh: Gatehouse) -> None:
    app[_VERIFYING] = asyncio.Lock()
    r = app.router
    r.add_get("/api/v1/audit/timeline", audit_timeline)
    r.add_get("/api/v1/audit/search", audit_search)
    r.add_get("/api/v1/audit/verify", audit_verify)
    r.add_get("/api/v1/audit/events/{id}", audit_event)
