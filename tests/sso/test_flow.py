"""Single sign-on end to end: a real OpenID provider, a real Gatehouse, the authorization code flow with
PKCE walked like a browser does."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from gatehouse.api.oidc import SSO_KEY
from gatehouse.audit.journal import drain_all
from gatehouse.identity.service import Actor
from tests.sso.conftest import Browser, SSOStack, StackFactory, query_of, with_query


def person(stack: SSOStack, prefix: str, groups: list[str]) -> str:
    """A fresh account at the provider (the provider outlives each test)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    stack.provider.account(name, groups=groups, email=f"{name}@example.test")
    return name


def logged_in(stack: SSOStack, name: str) -> Browser:
    browser = stack.browser()
    r = browser.login(name)
    assert r.status_code == 303, r.text
    return browser


def assert_problem(r: httpx.Response, status: int, *phrases: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    for phrase in phrases:
        assert phrase in detail, detail


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_admin_login_provisions_the_user_and_the_session_reads_the_api(
    make_sso: StackFactory, db_url: str
) -> None:
    stack = make_sso(store_url=db_url)
    name = person(stack, "ada", ["developers", "gatehouse-admins", "team-platform", "unrelated"])
    browser = stack.browser()
    authorization_url = browser.start(name, return_to="/api/v1/me")
    sent = query_of(authorization_url)
    assert authorization_url.startswith(f"{stack.provider.issuer}/auth?")
    assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
    assert sent["state"] and sent["nonce"] and sent["state"] != sent["nonce"]
    assert browser.cookie("gh_login") == sent["state"]

    r = browser.callback(browser.authorize(authorization_url))

    assert r.status_code == 303 and r.headers["location"] == "/api/v1/me"
    set_cookies = r.headers.get_list("set-cookie")
    session_cookie = next(c for c in set_cookies if c.startswith("gh_session="))
    csrf_cookie = next(c for c in set_cookies if c.startswith("gh_csrf="))
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie and "Path=/" in session_cookie
    assert "HttpOnly" not in csrf_cookie
    secret = browser.cookie("gh_session")
    assert secret is not None and secret.startswith("ghs_")

    user = stack.user(name)
    assert user is not None and user["role"] == "admin" and user["email"] == f"{name}@example.test"
    assert stack.teams(name) == ["platform"]
    stored = stack.gh.db.query("SELECT hash FROM web_sessions WHERE user_id = ?", (user["id"],))
    assert len(stored) == 1 and stored[0]["hash"] != secret  # only the hash is kept

    me = browser.api("GET", "/auth/me").json()
    assert (me["user"], me["role"], me["teams"], me["auth"]) == (name, "admin", ["platform"], "session")
    assert me["csrf_token"] == browser.cookie("gh_csrf")
    sessions = browser.api("GET", "/api/v1/sessions")
    assert sessions.status_code == 200 and sessions.json() == {"sessions": []}
    assert browser.api("GET", "/api/v1/me").json()["user"] == name

    created = stack.events("admin.user.create")
    assert [e["details"]["name"] for e in created] == [name]
    assert created[0]["details"]["by"] == "sso" and created[0]["details"]["role"] == "admin"
    (login,) = stack.events("auth.login")
    assert login["decision"] == "allow" and login["actor_user"] == user["id"]
    details = login["details"]
    assert details["issuer"] == stack.provider.issuer and details["subject"] == name
    assert details["role"] == "admin" and details["role_groups"] == ["developers", "gatehouse-admins"]
    assert details["teams"] == ["platform"] and details["provisioned"] is True
    drain_all(stack.gh.db)
    assert secret not in str(stack.gh.db.query("SELECT details FROM events"))


@pytest.mark.parametrize(
    ("groups", "role", "sessions_status"),
    [
        (["developers", "team-web"], "member", 403),
        (["gatehouse-auditors", "developers"], "auditor", 200),
        (["contractors"], "member", 403),  # no mapped group: the default role
    ],
)
def test_groups_map_to_the_highest_role_and_the_role_decides_access(
    make_sso: StackFactory, groups: list[str], role: str, sessions_status: int
) -> None:
    stack = make_sso()
    name = person(stack, "pat", groups)
    browser = logged_in(stack, name)

    assert browser.api("GET", "/auth/me").json()["role"] == role
    r = browser.api("GET", "/api/v1/sessions")
    assert r.status_code == sessions_status, r.text
    if sessions_status == 403:
        assert_problem(r, 403, f"role {role!r} may not do this")
    assert browser.api("GET", "/api/v1/me").status_code == 200  # any role may ask who it is


def test_require_group_match_refuses_people_outside_the_mapped_groups(make_sso: StackFactory) -> None:
    stack = make_sso(require_group_match=True)
    outsider = person(stack, "eve", ["contractors"])

    r = stack.browser().login(outsider)

    assert_problem(r, 403, "in none of the identity provider groups")
    assert "gh_session" not in r.headers.get("set-cookie", "")
    assert stack.user(outsider) is None
    (failure,) = stack.events("auth.login_failure")
    assert failure["decision"] == "deny"
    assert failure["details"]["reason"] == "no_group_match"
    assert failure["details"]["user"] == outsider and failure["details"]["groups"] == ["contractors"]
    assert stack.events("auth.login") == []


def test_a_tampered_state_is_refused(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "tom", ["developers"])
    browser = stack.browser()
    callback_url = browser.authorize(browser.start(name))

    r = browser.callback(with_query(callback_url, state="forged-" + query_of(callback_url)["state"][7:]))

    assert_problem(r, 400, "state parameter does not belong to the login started in this browser")
    assert browser.cookie("gh_session") is None and stack.user(name) is None
    assert [e["details"]["reason"] for e in stack.events("auth.login_failure")] == ["state_mismatch"]


def test_a_callback_in_a_browser_that_did_not_start_the_login_is_refused(make_sso: StackFactory) -> None:
    """Login CSRF: an attacker's own callback URL, opened in the victim's browser, logs nobody in."""
    stack = make_sso()
    attacker = person(stack, "mallory", ["gatehouse-admins"])
    attackers_browser = stack.browser()
    callback_url = attackers_browser.authorize(attackers_browser.start(attacker))
    victim = stack.browser()  # another cookie jar

    r = victim.callback(callback_url)

    assert_problem(r, 400, "no login is in progress in this browser")
    assert victim.cookie("gh_session") is None
    assert [e["details"]["reason"] for e in stack.events("auth.login_failure")] == ["login_cookie_missing"]


def test_an_id_token_with_another_nonce_is_refused(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "nina", ["gatehouse-admins"])
    browser = stack.browser()
    authorization_url = browser.start(name)
    # The provider faithfully signs whatever nonce it is sent: send it one this login did not choose.
    r = browser.callback(
        browser.authorize(with_query(authorization_url, nonce="not-the-nonce-gatehouse-chose"))
    )

    assert_problem(r, 401, "nonce does not match")
    assert browser.cookie("gh_session") is None and stack.user(name) is None
    (failure,) = stack.events("auth.login_failure")
    assert failure["details"]["reason"] == "nonce_mismatch" and failure["details"]["subject"] == name


def test_a_replayed_callback_and_a_reused_code_are_refused(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "rex", ["gatehouse-admins"])
    browser = stack.browser()
    callback_url = browser.authorize(browser.start(name))
    assert browser.callback(callback_url).status_code == 303

    # Replaying the callback, even with the login cookie forged to match its state: the state is spent.
    replay = httpx.Client(follow_redirects=False, cookies={"gh_login": query_of(callback_url)["state"]})
    r = replay.get(callback_url)
    assert_problem(r, 400, "already completed")

    # Injecting the spent code into a fresh login: the provider refuses it (used, and not this PKCE verifier).
    other = stack.browser()
    fresh_state = query_of(other.start(name))["state"]
    injected = with_query(callback_url, state=fresh_state)
    r = other.callback(injected)
    assert_problem(r, 401, "identity provider refused the authorization code", "invalid_grant")

    reasons = [e["details"]["reason"] for e in stack.events("auth.login_failure")]
    assert reasons == ["state_unknown", "code_exchange_refused"]
    assert len(stack.events("auth.login")) == 1


def test_an_expired_session_is_refused(make_sso: StackFactory) -> None:
    stack = make_sso(session_ttl=1)
    name = person(stack, "exp", ["gatehouse-admins"])
    secret = logged_in(stack, name).cookie("gh_session")
    # A client that keeps the cookie past its Max-Age (or stole it): the server's expiry decides.
    client = httpx.Client(base_url=stack.url, headers={"cookie": f"gh_session={secret}"})
    assert client.get("/api/v1/sessions").status_code == 200

    time.sleep(1.1)

    assert_problem(
        client.get("/api/v1/sessions"), 401, "the session has expired; log in again at /auth/login"
    )
    assert_problem(client.get("/auth/me"), 401, "the session has expired")


def test_state_changing_calls_with_the_session_cookie_need_the_csrf_header(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "carl", ["gatehouse-admins"])
    browser = logged_in(stack, name)
    csrf = browser.cookie("gh_csrf")
    assert csrf

    r = browser.api("POST", "/api/v1/users", json={"name": "dana"})
    assert_problem(r, 403, "X-Gatehouse-CSRF")
    r = browser.api(
        "POST", "/api/v1/users", json={"name": "dana"}, headers={"X-Gatehouse-CSRF": csrf[:-2] + "xx"}
    )
    assert_problem(r, 403, "X-Gatehouse-CSRF")
    assert stack.user("dana") is None

    r = browser.api("POST", "/api/v1/users", json={"name": "dana"}, headers={"X-Gatehouse-CSRF": csrf})
    assert r.status_code == 201, r.text
    (created,) = [e for e in stack.events("admin.user.create") if e["details"]["name"] == "dana"]
    assert created["details"]["by"] == name


def test_a_bearer_token_takes_precedence_over_the_session_cookie(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "bea", ["gatehouse-admins"])
    browser = logged_in(stack, name)

    r = browser.api("GET", "/api/v1/sessions", headers={"authorization": "Bearer gth_" + "x" * 43})
    assert_problem(r, 401, "the token is unknown, expired or revoked")

    _, token = stack.gh.identity.create_token(user=name, actor=Actor())
    cookieless = httpx.Client(base_url=stack.url)
    r = cookieless.post(
        "/api/v1/users", json={"name": "via-token"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 201, r.text  # no CSRF header needed: a token is not ambient authority
    assert_problem(cookieless.get("/api/v1/sessions"), 401, "log in at /auth/login")


def test_logout_ends_the_session_everywhere(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "lou", ["gatehouse-admins"])
    browser = logged_in(stack, name)
    secret = browser.cookie("gh_session")

    r = browser.api("GET", "/auth/logout")

    assert r.status_code == 200 and r.json()["logged_out"] is True
    assert r.json()["provider_logout_url"].startswith(f"{stack.provider.issuer}/session/end?client_id=")
    assert browser.cookie("gh_session") is None and browser.cookie("gh_csrf") is None
    stale = httpx.Client(base_url=stack.url, headers={"cookie": f"gh_session={secret}"})
    assert_problem(stale.get("/api/v1/sessions"), 401, "the session was ended (logged out)")
    (logout,) = stack.events("auth.logout")
    assert logout["details"]["web_session"] == stack.events("auth.login")[0]["details"]["web_session"]


def test_role_and_teams_follow_the_provider_at_each_login(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "mia", ["gatehouse-admins", "team-platform"])
    first = logged_in(stack, name)
    assert first.api("GET", "/api/v1/sessions").status_code == 200

    stack.provider.account(name, groups=["developers", "team-web"], email=f"{name}@example.test")
    logged_in(stack, name)

    user = stack.user(name)
    assert user is not None and user["role"] == "member"
    assert stack.teams(name) == ["web"]
    (update,) = stack.events("admin.user.update")
    assert update["details"]["changes"] == {
        "role": {"from": "admin", "to": "member"},
        "teams": {"added": ["web"], "removed": ["platform"]},
    }
    # The earlier browser session carries no role of its own: it is refused at once.
    assert_problem(first.api("GET", "/api/v1/sessions"), 403, "role 'member' may not do this")
    assert len(stack.gh.db.query("SELECT id FROM users WHERE name = ?", (name,))) == 1


def test_an_existing_local_user_is_not_taken_over_unless_linking_is_allowed(make_sso: StackFactory) -> None:
    stack = make_sso()
    name = person(stack, "root", ["gatehouse-admins"])
    stack.gh.identity.create_user(name, role="owner", actor=Actor())

    r = stack.browser().login(name)

    assert_problem(r, 403, "already exists and is not linked")
    assert stack.user(name)["role"] == "owner"  # type: ignore[index]
    assert [e["details"]["reason"] for e in stack.events("auth.login_failure")] == ["name_taken"]


def test_linking_an_existing_user_when_allowed(make_sso: StackFactory) -> None:
    stack = make_sso(link_existing_users=True)
    name = person(stack, "lin", ["gatehouse-auditors"])
    local = stack.gh.identity.create_user(name, role="member", actor=Actor())

    browser = logged_in(stack, name)

    assert browser.api("GET", "/auth/me").json()["role"] == "auditor"
    user = stack.user(name)
    assert user is not None and user["id"] == local["id"] and user["role"] == "auditor"
    (update,) = stack.events("admin.user.update")
    assert update["details"]["changes"]["role"] == {"from": "member", "to": "auditor"}
    assert [e["details"]["provisioned"] for e in stack.events("auth.login")] == [False]


def test_the_provider_refusing_the_person_is_reported(make_sso: StackFactory) -> None:
    stack = make_sso()
    browser = stack.browser()

    r = browser.callback(browser.authorize(browser.start("nobody-" + uuid.uuid4().hex[:6])))

    assert_problem(r, 403, "the identity provider ended the login: access_denied")
    assert [e["details"]["reason"] for e in stack.events("auth.login_failure")] == ["provider_refused"]


def test_signing_key_rotation_at_the_provider_needs_no_restart(make_sso: StackFactory) -> None:
    stack = make_sso()
    first = person(stack, "rot", ["gatehouse-admins"])
    logged_in(stack, first)
    client = stack.app[SSO_KEY].client
    kids_before = {k.kid for k in client._jwks.keys}  # type: ignore[union-attr]

    new_kid = stack.provider.rotate_keys()
    second = person(stack, "rot", ["developers"])
    browser = logged_in(stack, second)

    assert new_kid not in kids_before
    assert new_kid in {k.kid for k in client._jwks.keys}  # type: ignore[union-attr]
    assert browser.api("GET", "/auth/me").json()["user"] == second


def test_return_to_must_stay_on_this_server(make_sso: StackFactory) -> None:
    stack = make_sso()
    browser = stack.browser()
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        r = browser.api("GET", "/auth/login", params={"return_to": target})
        assert_problem(r, 400, "return_to must be a path on this server")
    assert browser.cookie("gh_login") is None


def test_a_store_failure_is_a_clear_503(make_sso: StackFactory) -> None:
    stack = make_sso()
    with stack.gh.db.transaction() as tx:
        tx.execute("DROP TABLE oidc_logins")

    r = stack.browser().api("GET", "/auth/login")

    assert_problem(r, 503, "the store is unavailable")
