"""Every REST endpoint is authorized: the full matrix of endpoints x roles, with the status each gets."""

from __future__ import annotations

import itertools
from typing import Any

import anthropic
import httpx
import pytest
from aiohttp import web

from gatehouse.api.app import add_api_routes
from gatehouse.api.policy import add_policy_routes
from gatehouse.identity.service import ROLES
from gatehouse.policy.teams import TeamService
from gatehouse.server import create_app
from tests.gateway.conftest import Stack
from tests.policy.conftest import CI_BOT, OPERATOR, PolicyStackFactory

ALL = set(ROLES)
READERS = {"owner", "admin", "auditor"}
ADMINS = {"owner", "admin"}
TEMPLATE_READERS = {"owner", "admin", "template_admin", "auditor"}
TEMPLATE_WRITERS = {"owner", "admin", "template_admin"}
_n = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}{next(_n)}"


# (method, route path, concrete path, body factory, roles allowed, status when allowed)
MATRIX: list[tuple[str, str, str, Any, set[str], int]] = [
    ("GET", "/api/v1/me", "/api/v1/me", None, ALL, 200),
    ("GET", "/api/v1/me/tokens", "/api/v1/me/tokens", None, ALL, 200),
    (
        "POST",
        "/api/v1/me/tokens",
        "/api/v1/me/tokens",
        lambda: {"name": _unique("tk"), "ttl": "1h"},
        ALL,
        201,
    ),
    ("DELETE", "/api/v1/me/tokens/{id}", "/api/v1/me/tokens/nope", None, ALL, 404),
    ("GET", "/api/v1/sessions", "/api/v1/sessions", None, READERS, 200),
    ("GET", "/api/v1/sessions/{id}", "/api/v1/sessions/nope", None, READERS, 404),
    ("GET", "/api/v1/users", "/api/v1/users", None, ADMINS, 200),
    ("POST", "/api/v1/users", "/api/v1/users", lambda: {"name": _unique("u")}, ADMINS, 201),
    ("GET", "/api/v1/agents", "/api/v1/agents", None, ADMINS, 200),
    (
        "POST",
        "/api/v1/agents",
        "/api/v1/agents",
        lambda: {"name": _unique("a"), "owner": "alice"},
        ADMINS,
        201,
    ),
    ("GET", "/api/v1/tokens", "/api/v1/tokens", None, ADMINS, 200),
    ("POST", "/api/v1/tokens", "/api/v1/tokens", lambda: {"user": "alice"}, ADMINS, 201),
    ("DELETE", "/api/v1/tokens/{id}", "/api/v1/tokens/nope", None, ADMINS, 404),
    ("GET", "/api/v1/templates", "/api/v1/templates", None, TEMPLATE_READERS, 200),
    (
        "POST",
        "/api/v1/templates",
        "/api/v1/templates",
        lambda: {"content": CI_BOT.replace("name: ci-bot", f"name: {_unique('t')}"), "source": "t.yaml"},
        TEMPLATE_WRITERS,
        201,
    ),
    (
        "POST",
        "/api/v1/templates/plan",
        "/api/v1/templates/plan",
        lambda: {"content": CI_BOT},
        TEMPLATE_WRITERS,
        200,
    ),
    ("GET", "/api/v1/templates/{name}", "/api/v1/templates/ci-bot", None, TEMPLATE_READERS, 200),
    # Members may ask about their own agents (alice owns ci-bot); the template admin does not own it.
    (
        "GET",
        "/api/v1/policy/explain",
        "/api/v1/policy/explain?agent=ci-bot&model=claude-sonnet-5&max_tokens=100",
        None,
        {"owner", "admin", "auditor", "member"},
        200,
    ),
    ("GET", "/api/v1/prices", "/api/v1/prices", None, ALL, 200),
    (
        "POST",
        "/api/v1/prices",
        "/api/v1/prices",
        lambda: {"model": "m*", "input": 1, "output": 2},
        ADMINS,
        201,
    ),
    ("GET", "/api/v1/spend", "/api/v1/spend?by=model", None, ALL, 200),
    ("GET", "/api/v1/teams", "/api/v1/teams", None, READERS, 200),
    ("POST", "/api/v1/teams", "/api/v1/teams", lambda: {"name": _unique("team")}, ADMINS, 201),
    ("GET", "/api/v1/teams/{name}", "/api/v1/teams/platform", None, READERS, 200),
    (
        "PUT",
        "/api/v1/teams/{name}/limits",
        "/api/v1/teams/platform/limits",
        lambda: {"budgets": [{"usd": 100, "period": "month"}]},
        ADMINS,
        200,
    ),
    (
        "POST",
        "/api/v1/teams/{name}/members",
        "/api/v1/teams/platform/members",
        lambda: {"user": "bob"},
        ADMINS,
        201,
    ),
    (
        "DELETE",
        "/api/v1/teams/{name}/members/{user}",
        "/api/v1/teams/platform/members/bob",
        None,
        ADMINS,
        200,
    ),
    (
        "PUT",
        "/api/v1/agents/{name}/team",
        "/api/v1/agents/ci-bot/team",
        lambda: {"team": "platform"},
        ADMINS,
        200,
    ),
]
PUBLIC = {("GET", "/api/v1/health")}


@pytest.fixture
def stack(policy_stack: PolicyStackFactory) -> Stack:
    stack = policy_stack()
    ids = stack.gh.identity
    tokens = {"member": ids.create_token(user="alice", actor=OPERATOR)[1]}  # alice herself, not her agent
    for role in ROLES:
        if role != "member":
            ids.create_user(f"the-{role}", role=role, actor=OPERATOR)
            tokens[role] = ids.create_token(user=f"the-{role}", actor=OPERATOR)[1]
    ids.create_user("bob", actor=OPERATOR)
    TeamService(stack.db).create("platform", actor=OPERATOR)
    stack.extra["tokens"] = tokens
    return stack


def test_the_matrix_covers_every_endpoint_of_the_api() -> None:
    app = web.Application()
    add_api_routes(app, None)  # type: ignore[arg-type]
    add_policy_routes(app, None)  # type: ignore[arg-type]
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    covered = {(m, p) for m, p, *_ in MATRIX} | PUBLIC
    assert routes - covered == set()


def test_every_endpoint_by_every_role(stack: Stack) -> None:
    tokens: dict[str, str] = stack.extra["tokens"]
    failures = []
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for role in ROLES:  # each role walks every endpoint in order (add a member, then remove it)
            for method, _, path, body, allowed, ok_status in MATRIX:
                response = http.request(
                    method,
                    path,
                    json=body() if body else None,
                    headers={"authorization": f"Bearer {tokens[role]}"},
                )
                expected = ok_status if role in allowed else 403
                if response.status_code != expected:
                    failures.append(
                        f"{method} {path} as {role}: {response.status_code} != {expected} {response.text}"
                    )
                if expected == 403:
                    assert response.headers["content-type"] == "application/problem+json"
        for method, _, path, body, _, _ in MATRIX:
            anonymous = http.request(method, path, json=body() if body else None)
            if anonymous.status_code != 401:
                failures.append(f"{method} {path} without a token: {anonymous.status_code}")
    assert not failures, "\n".join(failures)


def test_every_api_route_refuses_anonymous_callers(stack: Stack) -> None:
    """Including the endpoints other layers add: nothing under /api/ is open except health and login."""
    app = create_app(stack.gh)
    public_words = ("health", "/auth/", "oidc", "login", "logout", "callback", "/.well-known/")
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for route in app.router.routes():
            path = route.resource.canonical if route.resource else ""
            if not path.startswith("/api/") or route.method == "HEAD" or any(w in path for w in public_words):
                continue
            concrete = path.replace("{", "").replace("}", "")
            response = http.request(route.method, concrete, json={})
            assert response.status_code == 401, f"{route.method} {path}: {response.status_code}"


def test_members_see_their_own_spend_only(stack: Stack) -> None:
    tokens: dict[str, str] = stack.extra["tokens"]
    for token in (stack.token, tokens["admin"]):
        anthropic.Anthropic(base_url=stack.anthropic_url, api_key=token, max_retries=0).messages.create(
            model="claude-sonnet-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    stack.gh.writer.close()
    with httpx.Client(base_url=stack.url) as http:

        def users(role: str) -> list[str]:
            r = http.get("/api/v1/spend?by=user", headers={"authorization": f"Bearer {tokens[role]}"})
            return [row["key"] for row in r.json()["rows"]]

        assert users("member") == ["alice"]
        assert users("template_admin") == []
        assert sorted(users("auditor")) == ["alice", "the-admin"]
        csv = http.get(
            "/api/v1/spend?by=day&format=csv", headers={"authorization": f"Bearer {tokens['owner']}"}
        )
        assert csv.headers["content-type"].startswith("text/csv") and csv.text.startswith("day,calls,")


def test_invalid_template_over_the_api_lists_each_line(stack: Stack) -> None:
    tokens: dict[str, str] = stack.extra["tokens"]
    r = httpx.post(
        f"{stack.url}/api/v1/templates",
        json={"content": "name: x\nmodels:\n  allow: [1]\n", "source": "templates/x.yaml"},
        headers={"authorization": f"Bearer {tokens['template_admin']}"},
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["problems"] == [
        {"line": 3, "where": "models.allow[0]", "message": "1 is not of type 'string'"}
    ]
    assert "templates/x.yaml:3: models.allow[0]" in r.json()["detail"]
