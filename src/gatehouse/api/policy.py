"""REST endpoints of the policy layer: templates, policy explain, prices, spend, teams.

Every handler is authorized by role (`gatehouse.policy.roles.PERMISSIONS`); members see their own spend
and may only ask about their own agents.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gatehouse.api.app import PRINCIPAL, Problem, _actor, _gh, _json_body, _string, json_response, requires
from gatehouse.policy import explain as explaining
from gatehouse.policy.engine import PolicyEngine
from gatehouse.policy.prices import PriceService
from gatehouse.policy.roles import allowed
from gatehouse.policy.settings import policy_settings
from gatehouse.policy.spend import GROUPINGS, SpendFilter, report_csv, spend_report
from gatehouse.policy.teams import TeamService
from gatehouse.policy.templates import PolicyError, TemplateInvalid, TemplateNotFound, TemplateStore
from gatehouse.timeutil import parse_time

if TYPE_CHECKING:
    from gatehouse.server import Gatehouse

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def policy_errors(handler: Handler) -> Handler:
    """The policy layer's own errors as problem details; an invalid template lists each line."""

    @wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TemplateInvalid as exc:
            body = {
                "type": "about:blank",
                "title": "Invalid template",
                "status": 422,
                "detail": str(exc),
                "problems": [{"line": p.line, "where": p.where, "message": p.message} for p in exc.problems],
            }
            return web.Response(status=422, body=orjson.dumps(body), content_type="application/problem+json")
        except TemplateNotFound as exc:
            raise Problem(404, "Not Found", str(exc)) from None
        except PolicyError as exc:
            raise Problem(422, "Unprocessable Content", str(exc)) from None

    return wrapped


def _engine(request: web.Request) -> PolicyEngine:
    gh = _gh(request)
    if gh.policy is None:
        gh.policy = PolicyEngine(
            gh.db, policy_settings(gh.settings), providers=gh.settings.providers, derived=gh.derived
        )
    return gh.policy


def _time(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise Problem(400, "Bad Request", str(exc)) from None


def _int(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise Problem(400, "Bad Request", f"{key} must be an integer") from None


# -- templates ---------------------------------------------------------------------------------------


@requires(*allowed("templates.read"))
async def templates_list(request: web.Request) -> web.Response:
    return json_response({"templates": TemplateStore(_gh(request).db).list()})


@requires(*allowed("templates.write"))
@policy_errors
async def templates_apply(request: web.Request) -> web.Response:
    body = await _json_body(request)
    content = _string(body, "content") or ""
    source = _string(body, "source", required=False) or "<api>"
    plan = TemplateStore(_gh(request).db).apply(content, source, actor=_actor(request))
    return json_response({**plan.as_dict(), "applied": plan.changed}, status=201 if plan.changed else 200)


@requires(*allowed("templates.write"))
@policy_errors
async def templates_plan(request: web.Request) -> web.Response:
    body = await _json_body(request)
    plan = TemplateStore(_gh(request).db).plan(
        _string(body, "content") or "", _string(body, "source", required=False) or "<api>"
    )
    return json_response(plan.as_dict())


@requires(*allowed("templates.read"))
@policy_errors
async def templates_show(request: web.Request) -> web.Response:
    row = TemplateStore(_gh(request).db).show(request.match_info["name"], _int(request, "version"))
    return json_response(row)


# -- explain -----------------------------------------------------------------------------------------


@requires(*allowed("policy.explain"))
@policy_errors
async def policy_explain(request: web.Request) -> web.Response:
    q = request.query
    model = q.get("model")
    if not model:
        raise Problem(400, "Bad Request", "model is required")
    gh = _gh(request)
    principal = request[PRINCIPAL]
    agent, user = q.get("agent"), q.get("user")
    if agent is None and user is None:
        agent, user = principal.agent_id, None if principal.agent_id else principal.user_id
    who = explaining.resolve(gh.db, agent=agent, user=user)
    if principal.role in ("member", "template_admin") and who.owner_id != principal.user_id:
        raise Problem(403, "Forbidden", f"role {principal.role!r} may only ask about its own agents")
    result = await explaining.explain(
        _engine(request),
        who,
        model=model,
        provider=q.get("provider"),
        template=q.get("template"),
        max_tokens=_int(request, "max_tokens"),
    )
    return json_response(result)


# -- prices ------------------------------------------------------------------------------------------


@requires(*allowed("prices.read"))
async def prices_list(request: web.Request) -> web.Response:
    include = request.query.get("defaults", "true") != "false"
    prices = PriceService(_gh(request).db).list(include_defaults=include)
    return json_response({"prices": [p.as_dict() for p in prices]})


def _number(body: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Problem(422, "Unprocessable Content", f"{key!r} must be a number (USD per million tokens)")
    return float(value)


@requires(*allowed("prices.write"))
@policy_errors
async def prices_set(request: web.Request) -> web.Response:
    body = await _json_body(request)
    since = _string(body, "from", required=False)
    try:
        effective = parse_time(since) if since else None
    except ValueError as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    price = PriceService(_gh(request).db).set(
        _string(body, "model") or "",
        input=_number(body, "input") or 0.0,
        output=_number(body, "output") or 0.0,
        cache_read=_number(body, "cache_read", required=False),
        cache_write=_number(body, "cache_write", required=False),
        effective_from=effective,
        actor=_actor(request),
    )
    return json_response(price.as_dict(), status=201)


# -- spend -------------------------------------------------------------------------------------------


@requires(*allowed("spend.read"))
@policy_errors
async def spend(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL]
    by = request.query.get("by", "user")
    if by not in GROUPINGS:
        raise Problem(400, "Bad Request", f"by must be one of {', '.join(GROUPINGS)}")
    own = principal.role not in allowed("spend.read_all")
    gh = _gh(request)
    await gh.derived.acatch_up(gh.db)
    report = spend_report(
        gh.db,
        by,
        SpendFilter(
            since_us=_time(request, "from"),
            until_us=_time(request, "to"),
            user_id=principal.user_id if own else None,
        ),
    )
    if request.query.get("format") == "csv":
        return web.Response(text=report_csv(report), content_type="text/csv")
    report["generated_at"] = datetime.now(UTC).isoformat()
    return json_response(report)


# -- teams -------------------------------------------------------------------------------------------


@requires(*allowed("teams.read"))
async def teams_list(request: web.Request) -> web.Response:
    return json_response({"teams": TeamService(_gh(request).db).list()})


@requires(*allowed("teams.write"))
@policy_errors
async def teams_create(request: web.Request) -> web.Response:
    body = await _json_body(request)
    team = TeamService(_gh(request).db).create(
        _string(body, "name") or "",
        description=_string(body, "description", required=False),
        actor=_actor(request),
    )
    return json_response(team, status=201)


@requires(*allowed("teams.read"))
async def teams_show(request: web.Request) -> web.Response:
    return json_response(TeamService(_gh(request).db).show(request.match_info["name"]))


@requires(*allowed("teams.write"))
@policy_errors
async def teams_limits(request: web.Request) -> web.Response:
    body = await _json_body(request)
    result = TeamService(_gh(request).db).set_limits(request.match_info["name"], body, actor=_actor(request))
    return json_response(result)


@requires(*allowed("teams.write"))
@policy_errors
async def teams_add_member(request: web.Request) -> web.Response:
    body = await _json_body(request)
    result = TeamService(_gh(request).db).add_member(
        request.match_info["name"], _string(body, "user") or "", actor=_actor(request)
    )
    return json_response(result, status=201)


@requires(*allowed("teams.write"))
@policy_errors
async def teams_remove_member(request: web.Request) -> web.Response:
    result = TeamService(_gh(request).db).remove_member(
        request.match_info["name"], request.match_info["user"], actor=_actor(request)
    )
    return json_response(result)


@requires(*allowed("teams.write"))
@policy_errors
async def agents_team(request: web.Request) -> web.Response:
    body = await _json_body(request)
    team = body.get("team")
    if team is not None and (not isinstance(team, str) or not team):
        raise Problem(422, "Unprocessable Content", "'team' must be a team name or null")
    result = TeamService(_gh(request).db).set_agent_team(
        request.match_info["name"], team, actor=_actor(request)
    )
    return json_response(result)


def add_policy_routes(app: web.Application, gh: Gatehouse) -> None:
    r = app.router
    r.add_get("/api/v1/templates", templates_list)
    r.add_post("/api/v1/templates", templates_apply)
    r.add_post("/api/v1/templates/plan", templates_plan)
    r.add_get("/api/v1/templates/{name}", templates_show)
    r.add_get("/api/v1/policy/explain", policy_explain)
    r.add_get("/api/v1/prices", prices_list)
    r.add_post("/api/v1/prices", prices_set)
    r.add_get("/api/v1/spend", spend)
    r.add_get("/api/v1/teams", teams_list)
    r.add_post("/api/v1/teams", teams_create)
    r.add_get("/api/v1/teams/{name}", teams_show)
    r.add_put("/api/v1/teams/{name}/limits", teams_limits)
    r.add_post("/api/v1/teams/{name}/members", teams_add_member)
    r.add_delete("/api/v1/teams/{name}/members/{user}", teams_remove_member)
    r.add_put("/api/v1/agents/{name}/team", agents_team)
