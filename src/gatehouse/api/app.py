"""The management REST API under /api/v1: JSON in and out, errors as RFC 9457 problem details.

Every handler is authorized by role through `@requires(...)`; there is no unauthenticated handler except
`/api/v1/health`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gatehouse.api.oidc import authenticate_request
from gatehouse.bridge.sessions import SessionFilter, list_sessions, show_session
from gatehouse.identity.service import Actor, Conflict, IdentityError, NotFound, Principal
from gatehouse.timeutil import parse_duration, parse_time

if TYPE_CHECKING:
    from gatehouse.server import Gatehouse

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("principal", Principal)
READERS = ("owner", "admin", "auditor")
ADMINS = ("owner", "admin")


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def problem_response(status: int, title: str, detail: str) -> web.Response:
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return web.Response(status=status, body=body, content_type="application/problem+json")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def requires(*roles: str) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def authorized(request: web.Request) -> web.StreamResponse:
            principal = await authenticate_request(request)
            if principal.role not in roles:
                raise Problem(403, "Forbidden", f"role {principal.role!r} may not do this")
            request[PRINCIPAL] = principal
            return await handler(request)

        return authorized

    return decorate


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.title, exc.detail)
    except NotFound as exc:
        return problem_response(404, "Not Found", str(exc))
    except Conflict as exc:
        return problem_response(409, "Conflict", str(exc))
    except IdentityError as exc:
        return problem_response(422, "Unprocessable Content", str(exc))
    except web.HTTPException as exc:
        return problem_response(exc.status, exc.reason, exc.text or exc.reason)


def _gh(request: web.Request) -> Gatehouse:
    from gatehouse.server import GATEHOUSE

    return request.app[GATEHOUSE]


def _actor(request: web.Request) -> Actor:
    principal = request[PRINCIPAL]
    return Actor(user_id=principal.user_id, name=principal.user_name)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Bad Request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise Problem(422, "Unprocessable Content", f"{key!r} must be a non-empty string")
    return value


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok" if _gh(request).writer.healthy else "degraded"})


@requires(*READERS, "template_admin", "member")  # every role
async def me(request: web.Request) -> web.Response:
    p = request[PRINCIPAL]
    return json_response({"user": p.user_name, "role": p.role, "agent": p.agent_name, "token_id": p.token_id})


@requires(*READERS)
async def sessions_list(request: web.Request) -> web.Response:
    q = request.query
    try:
        f = SessionFilter(
            user=q.get("user"),
            agent=q.get("agent"),
            model=q.get("model"),
            provider=q.get("provider"),
            client=q.get("client"),
            since_us=parse_time(q["since"]) if "since" in q else None,
            until_us=parse_time(q["until"]) if "until" in q else None,
            limit=int(q.get("limit", "50")),
        )
    except ValueError as exc:
        raise Problem(400, "Bad Request", str(exc)) from None
    gh = _gh(request)
    await gh.derived.acatch_up(gh.db)
    return json_response({"sessions": list_sessions(gh.db, f)})


@requires(*READERS)
async def sessions_show(request: web.Request) -> web.Response:
    gh = _gh(request)
    await gh.derived.acatch_up(gh.db)
    found = show_session(gh.db, request.match_info["id"])
    if found is None:
        raise Problem(404, "Not Found", f"no session {request.match_info['id']!r}")
    return json_response(found)


@requires(*ADMINS)
async def users_list(request: web.Request) -> web.Response:
    return json_response({"users": _gh(request).identity.list_users()})


@requires(*ADMINS)
async def users_create(request: web.Request) -> web.Response:
    body = await _json_body(request)
    name = _string(body, "name")
    role = _string(body, "role", required=False) or "member"
    if role == "owner" and request[PRINCIPAL].role != "owner":
        raise Problem(403, "Forbidden", "only an owner may create another owner")
    user = _gh(request).identity.create_user(
        name or "", role=role, email=_string(body, "email", required=False), actor=_actor(request)
    )
    return json_response(user, status=201)


@requires(*ADMINS)
async def agents_list(request: web.Request) -> web.Response:
    return json_response({"agents": _gh(request).identity.list_agents(request.query.get("owner"))})


@requires(*ADMINS)
async def agents_create(request: web.Request) -> web.Response:
    body = await _json_body(request)
    agent = _gh(request).identity.create_agent(
        _string(body, "name") or "",
        owner=_string(body, "owner") or "",
        description=_string(body, "description", required=False),
        actor=_actor(request),
    )
    return json_response(agent, status=201)


@requires(*ADMINS)
async def tokens_list(request: web.Request) -> web.Response:
    tokens = _gh(request).identity.list_tokens(
        request.query.get("user"), include_revoked=request.query.get("include_revoked") == "true"
    )
    return json_response({"tokens": [t.as_dict() for t in tokens]})


@requires(*ADMINS)
async def tokens_create(request: web.Request) -> web.Response:
    body = await _json_body(request)
    ttl = _string(body, "ttl", required=False)
    try:
        ttl_seconds = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    info, secret = _gh(request).identity.create_token(
        user=_string(body, "user") or "",
        agent=_string(body, "agent", required=False),
        name=_string(body, "name", required=False),
        ttl_seconds=ttl_seconds,
        template=_string(body, "template", required=False),
        actor=_actor(request),
    )
    # The only time the secret is ever shown.
    return json_response({**info.as_dict(), "token": secret}, status=201)


@requires(*ADMINS)
async def tokens_revoke(request: web.Request) -> web.Response:
    info = _gh(request).identity.revoke_token(request.match_info["id"], actor=_actor(request))
    return json_response(info.as_dict())


# -- self-service: a person manages their own tokens ---------------------------------------------------

PEOPLE = (*READERS, "template_admin", "member")
SELF_SERVICE_DEFAULT_TTL = "30d"


def _person(request: web.Request) -> Principal:
    """Tokens are credentials: a person may mint their own, an agent may not mint any."""
    principal = request[PRINCIPAL]
    if principal.agent_id is not None:
        raise Problem(403, "Forbidden", "an agent's token cannot manage tokens; sign in as a person")
    return principal


@requires(*PEOPLE)
async def my_tokens_list(request: web.Request) -> web.Response:
    me = _person(request)
    tokens = _gh(request).identity.list_tokens(me.user_name)
    return json_response({"tokens": [t.as_dict() for t in tokens]})


@requires(*PEOPLE)
async def my_tokens_create(request: web.Request) -> web.Response:
    """Create a token for yourself (optionally for one of your agents, bound to a template). It expires:
    after `ttl`, 30 days by default, or the template's maximum."""
    me = _person(request)
    body = await _json_body(request)
    template = _string(body, "template", required=False)
    ttl = _string(body, "ttl", required=False) or (None if template else SELF_SERVICE_DEFAULT_TTL)
    try:
        ttl_seconds = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    info, secret = _gh(request).identity.create_token(
        user=me.user_id,
        agent=_string(body, "agent", required=False),
        name=_string(body, "name", required=False),
        ttl_seconds=ttl_seconds,
        template=template,
        actor=_actor(request),
    )
    return json_response({**info.as_dict(), "token": secret}, status=201)


@requires(*PEOPLE)
async def my_tokens_revoke(request: web.Request) -> web.Response:
    me = _person(request)
    key = request.match_info["id"]
    identity = _gh(request).identity
    mine = [t for t in identity.list_tokens(me.user_name) if key in (t.id, t.prefix)]
    if not mine:  # someone else's token is "not found" too: do not confirm it exists
        raise Problem(404, "Not Found", f"you have no active token with id or prefix {key!r}")
    info = identity.revoke_token(mine[0].id, actor=_actor(request))
    return json_response(info.as_dict())


def add_api_routes(app: web.Application, gh: Gatehouse) -> None:
    app.middlewares.append(problems)
    r = app.router
    r.add_get("/api/v1/health", health)
    r.add_get("/api/v1/me", me)
    r.add_get("/api/v1/me/tokens", my_tokens_list)
    r.add_post("/api/v1/me/tokens", my_tokens_create)
    r.add_delete("/api/v1/me/tokens/{id}", my_tokens_revoke)
    r.add_get("/api/v1/sessions", sessions_list)
    r.add_get("/api/v1/sessions/{id}", sessions_show)
    r.add_get("/api/v1/users", users_list)
    r.add_post("/api/v1/users", users_create)
    r.add_get("/api/v1/agents", agents_list)
    r.add_post("/api/v1/agents", agents_create)
    r.add_get("/api/v1/tokens", tokens_list)
    r.add_post("/api/v1/tokens", tokens_create)
    r.add_delete("/api/v1/tokens/{id}", tokens_revoke)
