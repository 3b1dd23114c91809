"""Browser single sign-on with OpenID Connect: `/auth/login`, `/auth/callback`, `/auth/logout`, `/auth/me`,
and `authenticate_request`, which lets the REST API accept a browser session as well as a Bearer token.

Cookies (names get the `__Host-` prefix and the `Secure` flag when `oidc.redirect_url` is https):

- `gh_login`: the state of the login in progress, HttpOnly, SameSite=Lax, for `oidc.login_ttl`;
- `gh_session`: the session secret, HttpOnly, SameSite=Lax, for `oidc.session_ttl`;
- `gh_csrf`: the session's CSRF token, readable by scripts. A request authenticated by the session cookie
  with a method other than GET/HEAD/OPTIONS must repeat it in the `X-Gatehouse-CSRF` header.

This module does not import `gatehouse.api.app`, so `api/app.py` may import `authenticate_request` at
module level.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gatehouse.audit.events import Event
from gatehouse.audit.writer import AuditUnavailable
from gatehouse.identity.oidc import (
    Identity,
    OIDCClient,
    OIDCError,
    claim_values,
    map_identity,
    new_code_verifier,
    new_nonce,
    new_state,
)
from gatehouse.identity.oidc_settings import OIDCSettings
from gatehouse.identity.service import AuthError, Principal
from gatehouse.identity.web_sessions import SessionError, SSOStore, WebSession, csrf_matches, csrf_token
from gatehouse.store.db import StoreError
from gatehouse.timeutil import iso

if TYPE_CHECKING:
    from gatehouse.server import Gatehouse

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSRF_HEADER = "X-Gatehouse-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_RETURN_TO = "/auth/me"
SESSION_TOKEN_PREFIX = "web:"  # noqa: S105 - Principal.token_id of a browser session: "web:<session id>"


@dataclass(frozen=True, slots=True)
class CookieNames:
    login: str
    session: str
    csrf: str
    secure: bool

    @classmethod
    def for_settings(cls, settings: OIDCSettings) -> CookieNames:
        prefix = "__Host-" if settings.secure_cookies else ""
        return cls(
            login=f"{prefix}gh_login",
            session=f"{prefix}gh_session",
            csrf=f"{prefix}gh_csrf",
            secure=settings.secure_cookies,
        )


@dataclass
class SSO:
    """What the /auth routes and `authenticate_request` share, kept on the application."""

    settings: OIDCSettings
    client: OIDCClient
    store: SSOStore
    cookies: CookieNames


SSO_KEY = web.AppKey("gatehouse.sso", SSO)


def add_oidc_routes(app: web.Application, gh: Gatehouse, settings: OIDCSettings) -> SSO:
    sso = SSO(
        settings=settings,
        client=OIDCClient(settings),
        store=SSOStore(gh.db),
        cookies=CookieNames.for_settings(settings),
    )
    app[SSO_KEY] = sso
    app.middlewares.append(_store_unavailable)
    r = app.router
    r.add_get("/auth/login", login)
    r.add_get("/auth/callback", callback)
    r.add_get("/auth/logout", logout)
    r.add_post("/auth/logout", logout)
    r.add_get("/auth/me", me)

    async def close_client(_app: web.Application) -> None:
        await sso.client.close()

    app.on_cleanup.append(close_client)
    return sso


# -- authentication for the REST API ------------------------------------------------------------------


async def authenticate_request(request: web.Request) -> Principal:
    """The principal behind a request: a Bearer token when an Authorization header is sent (and then
    only that), otherwise the browser session cookie, with the CSRF header required for state-changing
    methods. Raises `web.HTTPUnauthorized` / `web.HTTPForbidden`, which the API's `problems` middleware
    turns into problem+json."""
    principal, _ = await _authenticate(request)
    return principal


async def _authenticate(request: web.Request) -> tuple[Principal, WebSession | None]:
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send a Gatehouse token as Authorization: Bearer")
        try:
            principal = await _gh(request).identity.authenticate(token.strip())
        except AuthError:
            raise _unauthorized("the token is unknown, expired or revoked") from None
        return principal, None
    sso = request.app.get(SSO_KEY)
    secret = request.cookies.get(sso.cookies.session) if sso is not None else None
    if sso is None or not secret:
        hint = " or log in at /auth/login" if sso is not None else ""
        raise _unauthorized(f"send a Gatehouse token as Authorization: Bearer{hint}")
    try:
        session = await sso.store.authenticate(secret)
    except SessionError as exc:
        raise _unauthorized(exc.message) from None
    if request.method not in SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER, "")
        if not presented or not csrf_matches(secret, presented):
            raise web.HTTPForbidden(
                text=f"a {request.method} authenticated by the session cookie must send the {CSRF_HEADER}"
                f" header with the session's CSRF token (the {sso.cookies.csrf} cookie, or csrf_token from"
                " GET /auth/me)"
            )
    principal = Principal(
        token_id=SESSION_TOKEN_PREFIX + session.id,
        user_id=session.user_id,
        user_name=session.user_name,
        role=session.role,
        agent_id=None,
        agent_name=None,
    )
    return principal, session


def _unauthorized(detail: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=detail, headers={"WWW-Authenticate": 'Bearer realm="gatehouse"'})


# -- handlers ---------------------------------------------------------------------------------------


async def login(request: web.Request) -> web.StreamResponse:
    sso = request.app[SSO_KEY]
    try:
        return_to = _local_path(request.query.get("return_to"))
        hint = request.query.get("login_hint")
        if hint is not None and len(hint) > 256:
            raise OIDCError(400, "login_hint", "login_hint is longer than 256 characters")
        state, nonce, verifier = new_state(), new_nonce(), new_code_verifier()
        url = await sso.client.authorization_url(
            state=state, nonce=nonce, code_verifier=verifier, login_hint=hint
        )
        await asyncio.to_thread(
            sso.store.begin_login,
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            return_to=return_to,
            ttl_s=sso.settings.login_ttl,
        )
    except OIDCError as exc:
        log.warning("cannot start an SSO login: %s", exc.message)
        return _problem(exc.status, exc.message)
    response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    _set_cookie(response, sso.cookies, sso.cookies.login, state, sso.settings.login_ttl, http_only=True)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    sso = request.app[SSO_KEY]
    gh = _gh(request)
    q = request.query
    identity: Identity | None = None
    try:
        state = q.get("state")
        if not state:
            raise OIDCError(400, "state_missing", "the callback has no state parameter; start at /auth/login")
        cookie = request.cookies.get(sso.cookies.login)
        if not cookie:
            raise OIDCError(
                400,
                "login_cookie_missing",
                "no login is in progress in this browser (its login cookie is missing or expired); start"
                " again at /auth/login",
            )
        if not hmac.compare_digest(cookie.encode(), state.encode()):
            raise OIDCError(
                400,
                "state_mismatch",
                "the state parameter does not belong to the login started in this browser; the callback may"
                " be forged or tampered with",
            )
        pending = await asyncio.to_thread(sso.store.consume_login, state)
        await sso.client.check_response_issuer(q.get("iss"))
        if "error" in q:
            error, description = q["error"], q.get("error_description")
            raise OIDCError(
                403 if error == "access_denied" else 401,
                "provider_refused",
                f"the identity provider ended the login: {error}"
                + (f": {description}" if description else ""),
            )
        code = q.get("code")
        if not code:
            raise OIDCError(400, "code_missing", "the callback has no authorization code")
        identity = await sso.client.login(code, code_verifier=pending.code_verifier, nonce=pending.nonce)
        mapped = map_identity(identity, sso.settings)
        result = await asyncio.to_thread(
            sso.store.complete_login,
            issuer=identity.issuer,
            subject=identity.subject,
            mapped=mapped,
            ttl_s=sso.settings.session_ttl,
            link_existing=sso.settings.link_existing_users,
            user_agent=request.headers.get("user-agent"),
            remote=request.remote,
        )
    except OIDCError as exc:
        await _audit_failure(gh, request, exc, identity, sso.settings)
        response = _problem(exc.status, exc.message)
        _clear_cookie(response, sso.cookies, sso.cookies.login)
        return response
    log.info("SSO login: %s (%s), session %s", result.user_name, result.role, result.session_id)
    response = web.Response(status=303, headers={"Location": pending.return_to, "Cache-Control": "no-store"})
    _clear_cookie(response, sso.cookies, sso.cookies.login)
    ttl = sso.settings.session_ttl
    _set_cookie(response, sso.cookies, sso.cookies.session, result.secret, ttl, http_only=True)
    _set_cookie(response, sso.cookies, sso.cookies.csrf, csrf_token(result.secret), ttl, http_only=False)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    sso = request.app[SSO_KEY]
    secret = request.cookies.get(sso.cookies.session)
    ended = None
    if secret:
        ended = await asyncio.to_thread(sso.store.end_session, secret, remote=request.remote)
    body: dict[str, Any] = {"logged_out": ended is not None}
    meta = sso.client.cached_metadata
    if meta is not None and meta.end_session_endpoint:
        # Ending the session at the provider too is the browser's choice: Gatehouse does not keep ID tokens.
        sep = "&" if "?" in meta.end_session_endpoint else "?"
        query = urlencode({"client_id": sso.settings.client_id})
        body["provider_logout_url"] = f"{meta.end_session_endpoint}{sep}{query}"
    response = _json(body)
    for name in (sso.cookies.session, sso.cookies.csrf):
        _clear_cookie(response, sso.cookies, name)
    return response


async def me(request: web.Request) -> web.StreamResponse:
    sso = request.app[SSO_KEY]
    try:
        principal, session = await _authenticate(request)
    except web.HTTPException as exc:
        return _problem(exc.status, exc.text or exc.reason)
    body: dict[str, Any] = {
        "user": principal.user_name,
        "role": principal.role,
        "teams": await asyncio.to_thread(sso.store.teams_of, principal.user_id),
        "auth": "session" if session is not None else "token",
    }
    if session is not None:
        secret = request.cookies[sso.cookies.session]
        body.update(
            email=session.email,
            session={
                "id": session.id,
                "created_at": iso(session.created_at),
                "expires_at": iso(session.expires_at),
            },
            csrf_header=CSRF_HEADER,
            csrf_token=csrf_token(secret),
        )
    else:
        body.update(agent=principal.agent_name, token_id=principal.token_id)
    return _json(body)


# -- helpers ----------------------------------------------------------------------------------------


@web.middleware
async def _store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/auth/* answers 503 in problem+json, not a bare 500, while the store cannot be written."""
    if not request.path.startswith("/auth/"):
        return await handler(request)
    try:
        return await handler(request)
    except (StoreError, AuditUnavailable) as exc:
        log.error("SSO request %s failed: the store is unavailable: %s", request.path, exc)
        return _problem(503, "the store is unavailable; try again shortly")


def _gh(request: web.Request) -> Gatehouse:
    from gatehouse.server import GATEHOUSE

    return request.app[GATEHOUSE]


def _local_path(value: str | None) -> str:
    """Only a path on this server: never an open redirect."""
    if value is None or value == "":
        return DEFAULT_RETURN_TO
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 for c in value)
        or len(value) > 2048
    ):
        raise OIDCError(400, "return_to", "return_to must be a path on this server, like /ui/sessions")
    return value


def _set_cookie(
    response: web.StreamResponse, names: CookieNames, name: str, value: str, max_age: int, *, http_only: bool
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=names.secure,
        httponly=http_only,
        samesite="Lax",
    )


def _clear_cookie(response: web.StreamResponse, names: CookieNames, name: str) -> None:
    response.del_cookie(name, path="/", secure=names.secure, samesite="Lax")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _problem(status: int, detail: str) -> web.Response:
    title = HTTPStatus(status).phrase
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return web.Response(
        status=status,
        body=body,
        content_type="application/problem+json",
        headers={"Cache-Control": "no-store"},
    )


async def _audit_failure(
    gh: Gatehouse,
    request: web.Request,
    exc: OIDCError,
    identity: Identity | None,
    settings: OIDCSettings,
) -> None:
    details: dict[str, Any] = {
        "method": "oidc",
        "reason": exc.reason,
        "detail": exc.message,
        "issuer": identity.issuer if identity else settings.issuer,
        "remote": request.remote,
        "user_agent": request.headers.get("user-agent"),
    }
    user = None
    if exc.subject is not None:
        details["subject"] = exc.subject
    if identity is not None:
        claims = identity.claims
        user = claims.get(settings.username_claim) or claims.get("email")
        details.update(
            subject=identity.subject,
            user=user if isinstance(user, str) else None,
            groups=claim_values(claims.get(settings.groups_claim)),
        )
    event = Event(
        kind="auth.login_failure",
        decision="deny",
        resource=f"user:{user}" if isinstance(user, str) else None,
        details=details,
    )
    try:
        await gh.writer.append(event)
    except AuditUnavailable:
        log.error("could not record a failed SSO login (%s): the audit store is unavailable", exc.reason)
