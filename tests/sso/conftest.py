"""A real OpenID Connect provider (panva/oidc-provider under Node.js) and a real Gatehouse serving the SSO
routes, each on a loopback port; `Browser` walks the authorization code flow with httpx like a browser
(cookies, redirects), stopping where a test wants to interfere."""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

import gatehouse.api.app as api_app
from gatehouse.api.oidc import SSO_KEY, add_oidc_routes
from gatehouse.audit.journal import drain_all
from gatehouse.config import Settings, StoreSettings
from gatehouse.identity.oidc_settings import OIDCSettings
from gatehouse.server import Gatehouse, build, create_app
from gatehouse.serving import serve_in_thread

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "gatehouse-test"
CLIENT_SECRET = "test-client-secret-" + uuid.uuid4().hex
ROLE_MAPPING = {
    "gatehouse-admins": "admin",
    "gatehouse-auditors": "auditor",
    "developers": "member",
}
TEAM_MAPPING = {"team-platform": "platform", "team-web": "web"}


def _free_port() -> int:
    """A free port below the kernel's ephemeral range. The Gatehouse port is registered at the provider
    for the whole session but bound only while a test runs; an ephemeral port could meanwhile become the
    local end of some outgoing connection (ours included), and the next test could not listen on it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _ensure_node_modules() -> None:
    """`npm ci` once (under a lock, in case several pytest processes start together)."""
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not: cannot install tests/sso/oidc (run `npm ci` there)")
    lock_path = Path(tempfile.gettempdir()) / "gatehouse-sso-npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=OIDC_DIR,
                check=True,
                timeout=600,
                capture_output=True,
            )


@dataclass
class Provider:
    issuer: str
    gatehouse_port: int
    log_path: Path

    @property
    def redirect_url(self) -> str:
        return f"http://127.0.0.1:{self.gatehouse_port}/auth/callback"

    def account(self, name: str, *, groups: list[str], **claims: Any) -> None:
        httpx.put(
            f"{self.issuer}/_test/accounts/{name}", json={"groups": groups, **claims}
        ).raise_for_status()

    def rotate_keys(self) -> str:
        response = httpx.post(f"{self.issuer}/_test/rotate")
        response.raise_for_status()
        return str(response.json()["kid"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "node is not installed: the SSO tests run a real OpenID provider (oidc-provider) on Node.js"
        )
    _ensure_node_modules()
    port, gatehouse_port = _free_port(), _free_port()
    issuer = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("oidc") / "provider.log"
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_ISSUER": issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URIS": f"http://127.0.0.1:{gatehouse_port}/auth/callback",
        "NODE_ENV": "test",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [node, str(OIDC_DIR / "provider.mjs")],
            cwd=OIDC_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the OpenID provider did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield Provider(issuer=issuer, gatehouse_port=gatehouse_port, log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- the REST API with the session wiring ------------------------------------------------------------

# The change docs/sso.md asks for in api/app.py `requires`, applied here in memory until it is made.
_REQUIRES_OLD = """            gh = _gh(request)
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Problem(401, "Unauthorized", "send a Gatehouse token as Authorization: Bearer")
            try:
                principal = await gh.identity.authenticate(token.strip())
            except AuthError:
                raise Problem(401, "Unauthorized", "the token is unknown, expired or revoked") from None
"""
_REQUIRES_NEW = """            principal = await authenticate_request(request)
"""
_IMPORT_ANCHOR = "from gatehouse.bridge.sessions import"
_IMPORT_NEW = "from gatehouse.api.oidc import authenticate_request\n"


def wired_api_module() -> types.ModuleType:
    """`gatehouse.api.app` with `requires` calling `authenticate_request`: the real module once it is
    wired, otherwise its current source with the documented change applied."""
    source = inspect.getsource(api_app)
    if "authenticate_request" in source:
        return api_app
    if _REQUIRES_OLD not in source or _IMPORT_ANCHOR not in source:
        pytest.fail(
            "api/app.py `requires` no longer has the shape docs/sso.md patches: apply the wiring from"
            " docs/sso.md to api/app.py (then this shim steps aside)"
        )
    patched = source.replace(_REQUIRES_OLD, _REQUIRES_NEW).replace(
        _IMPORT_ANCHOR, _IMPORT_NEW + _IMPORT_ANCHOR, 1
    )
    module = types.ModuleType(api_app.__name__)
    module.__file__ = api_app.__file__
    exec(compile(patched, str(api_app.__file__), "exec"), module.__dict__)
    # Share the original's exception class and request key, so routes defined elsewhere against
    # `gatehouse.api.app` (policy, ...) behave the same behind the copy's middleware.
    module.__dict__.update(Problem=api_app.Problem, PRINCIPAL=api_app.PRINCIPAL)
    return module


# -- Gatehouse --------------------------------------------------------------------------------------


@dataclass
class SSOStack:
    url: str
    gh: Gatehouse
    app: web.Application
    provider: Provider
    settings: OIDCSettings

    def browser(self) -> Browser:
        return Browser(self)

    def events(self, kind: str) -> list[dict[str, Any]]:
        drain_all(self.gh.db)  # what the server journaled, chained into the log (as every reader does)
        rows = self.gh.db.query("SELECT * FROM events WHERE kind = ? ORDER BY seq", (kind,))
        return [{**r, "details": orjson.loads(r["details"])} for r in rows]

    def user(self, name: str) -> dict[str, Any] | None:
        return self.gh.db.query_one("SELECT * FROM users WHERE name = ?", (name,))

    def teams(self, name: str) -> list[str]:
        rows = self.gh.db.query(
            "SELECT m.team FROM sso_team_memberships m JOIN users u ON u.id = m.user_id WHERE u.name = ?"
            " ORDER BY m.team",
            (name,),
        )
        return [r["team"] for r in rows]


StackFactory = Callable[..., SSOStack]


@pytest.fixture
def make_sso(provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StackFactory]:
    """A Gatehouse with SSO on the provider's registered redirect port; keyword arguments override
    `OIDCSettings` fields, `store_url` picks the store."""
    contexts: list[Any] = []
    # create_app() looks add_api_routes up on the module when it runs; sys.modules is left alone.
    monkeypatch.setattr(api_app, "add_api_routes", wired_api_module().add_api_routes)

    def make(*, store_url: str | None = None, **overrides: Any) -> SSOStack:
        assert not contexts, "one Gatehouse per test: it binds the provider's registered redirect port"
        oidc = OIDCSettings(
            issuer=provider.issuer,
            client_id=CLIENT_ID,
            client_secret=SecretStr(CLIENT_SECRET),
            redirect_url=provider.redirect_url,
            role_mapping=ROLE_MAPPING,  # type: ignore[arg-type]
            team_mapping=TEAM_MAPPING,
            **overrides,
        )
        fields: dict[str, Any] = {"store": StoreSettings(url=store_url or f"sqlite:///{tmp_path / 'gh.db'}")}
        if "oidc" in Settings.model_fields:  # once server.py wires SSO from the settings
            fields["oidc"] = oidc
        gh = build(Settings(**fields))
        apps: list[web.Application] = []

        def make_app() -> web.Application:
            app = create_app(gh)
            if SSO_KEY not in app:
                add_oidc_routes(app, gh, oidc)
            app[SSO_KEY].client.jwks_min_refresh_s = 0  # the rotation test rotates within a second
            apps.append(app)
            return app

        ctx = serve_in_thread(make_app, port=provider.gatehouse_port)
        url = ctx.__enter__()
        contexts.append(ctx)
        return SSOStack(url=url, gh=gh, app=apps[0], provider=provider, settings=oidc)

    yield make
    for ctx in reversed(contexts):
        ctx.__exit__(None, None, None)


# -- a browser ---------------------------------------------------------------------------------------


@dataclass
class Browser:
    stack: SSOStack
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(follow_redirects=False, timeout=15)

    def close(self) -> None:
        self.client.close()

    def start(self, login_hint: str, **query: str) -> str:
        """GET /auth/login; return the authorization URL Gatehouse redirects to."""
        r = self.client.get(f"{self.stack.url}/auth/login", params={"login_hint": login_hint, **query})
        assert r.status_code == 302, r.text
        return r.headers["location"]

    def authorize(self, authorization_url: str) -> str:
        """Walk the provider's redirects (login, consent); return the callback URL, not yet visited."""
        url = authorization_url
        for _ in range(12):
            if url.startswith(self.stack.provider.redirect_url):
                return url
            r = self.client.get(url)
            assert r.status_code in (302, 303), (
                f"{url}: {r.status_code} {r.text}\n{self.stack.provider.log()}"
            )
            url = urljoin(url, r.headers["location"])
        raise AssertionError(f"the provider never redirected back: {url}")

    def callback(self, url: str) -> httpx.Response:
        return self.client.get(url)

    def login(self, user: str) -> httpx.Response:
        """The whole flow; the callback's response (303 to the return path on success)."""
        return self.callback(self.authorize(self.start(user)))

    def cookie(self, name: str) -> str | None:
        return self.client.cookies.get(name)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, f"{self.stack.url}{path}", **kwargs)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))
