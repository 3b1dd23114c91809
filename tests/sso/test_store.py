"""The SSO store on SQLite and PostgreSQL: single-use logins, provisioning in one transaction with its
audit events, browser sessions checked against the store on every request."""

from __future__ import annotations

import orjson
import pytest

from gatehouse.audit.chain import row_hash
from gatehouse.identity.oidc import Mapped, OIDCError
from gatehouse.identity.service import Actor, IdentityService
from gatehouse.identity.web_sessions import SessionError, SSOStore, csrf_matches, csrf_token
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate

ISSUER = "https://idp.example.test"


def mapped(name: str = "ada", role: str = "admin", teams: dict[str, str] | None = None) -> Mapped:
    return Mapped(
        name=name,
        email=f"{name}@example.test",
        role=role,  # type: ignore[arg-type]
        groups=["g1", "g2"],
        teams=teams or {},
        matched_role_groups=["g1"],
    )


def login(
    store: SSOStore, m: Mapped, *, subject: str = "sub-1", ttl_s: int = 3600, link: bool = False
) -> str:
    return store.complete_login(
        issuer=ISSUER, subject=subject, mapped=m, ttl_s=ttl_s, link_existing=link
    ).secret


def execute(db: Database, sql: str) -> None:
    with db.transaction() as tx:
        tx.execute(sql)


def kinds(db: Database) -> list[str]:
    return [r["kind"] for r in db.query("SELECT kind FROM events ORDER BY seq")]


def test_the_migration_creates_the_tables_once(db: Database) -> None:
    for table in ("oidc_logins", "sso_identities", "sso_team_memberships", "web_sessions"):
        assert db.query(f"SELECT COUNT(*) AS n FROM {table}") == [{"n": 0}]
    assert migrate(db) == []


def test_a_login_in_progress_is_consumed_once(db: Database) -> None:
    store = SSOStore(db)
    store.begin_login(state="s" * 43, nonce="n", code_verifier="v", return_to="/x", ttl_s=60)
    assert db.query("SELECT state_hash FROM oidc_logins")[0]["state_hash"] != "s" * 43  # hashed

    pending = store.consume_login("s" * 43)

    assert (pending.nonce, pending.code_verifier, pending.return_to) == ("n", "v", "/x")
    with pytest.raises(OIDCError) as exc:
        store.consume_login("s" * 43)
    assert exc.value.reason == "state_unknown" and exc.value.status == 400


def test_an_expired_login_in_progress_is_refused(db: Database) -> None:
    store = SSOStore(db)
    store.begin_login(state="late", nonce="n", code_verifier="v", return_to="/", ttl_s=60)
    execute(db, "UPDATE oidc_logins SET expires_at = 1")

    with pytest.raises(OIDCError) as exc:
        store.consume_login("late")
    assert exc.value.reason == "state_expired"


def test_first_login_provisions_and_audits_in_one_chain(db: Database) -> None:
    store = SSOStore(db)
    secret = login(store, mapped(teams={"platform": "team-platform"}))

    user = db.query_one("SELECT * FROM users WHERE name = 'ada'")
    assert user is not None and user["role"] == "admin" and user["email"] == "ada@example.test"
    identity = db.query_one("SELECT * FROM sso_identities")
    assert (
        identity is not None
        and identity["user_id"] == user["id"]
        and orjson.loads(identity["groups"]) == ["g1", "g2"]
    )
    assert db.query("SELECT team, source_group FROM sso_team_memberships") == [
        {"team": "platform", "source_group": "team-platform"}
    ]
    assert kinds(db) == ["admin.user.create", "auth.login"]
    create = orjson.loads(
        db.query("SELECT details FROM events WHERE kind = 'admin.user.create'")[0]["details"]
    )
    assert create["teams"] == ["platform"] and create["subject"] == "sub-1"
    assert secret not in str(db.query("SELECT * FROM web_sessions")) + str(
        db.query("SELECT details FROM events")
    )
    # The events took their place in the hash chain like any other.
    rows = db.query("SELECT * FROM events ORDER BY seq")
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert all(row_hash(r) == r["hash"] for r in rows)


def test_a_later_login_updates_role_email_and_teams_with_an_audited_diff(db: Database) -> None:
    store = SSOStore(db)
    login(store, mapped(teams={"platform": "team-platform", "ops": "team-ops"}))

    m = Mapped(
        name="ignored-new-name",
        email="new@example.test",
        role="member",
        groups=[],
        teams={"web": "team-web", "ops": "team-ops"},
    )
    result = store.complete_login(issuer=ISSUER, subject="sub-1", mapped=m, ttl_s=60, link_existing=False)

    assert result.user_name == "ada" and result.provisioned is False  # the name is kept, the subject decides
    user = db.query_one("SELECT role, email FROM users WHERE name = 'ada'")
    assert user == {"role": "member", "email": "new@example.test"}
    assert [r["team"] for r in db.query("SELECT team FROM sso_team_memberships ORDER BY team")] == [
        "ops",
        "web",
    ]
    update = orjson.loads(
        db.query("SELECT details FROM events WHERE kind = 'admin.user.update'")[0]["details"]
    )
    assert update["changes"] == {
        "role": {"from": "admin", "to": "member"},
        "email": {"from": "ada@example.test", "to": "new@example.test"},
        "teams": {"added": ["web"], "removed": ["platform"]},
    }


def test_a_refused_login_changes_nothing(db: Database) -> None:
    IdentityService(db).create_user("ada", role="owner", actor=Actor())
    store = SSOStore(db)
    before = kinds(db)

    with pytest.raises(OIDCError) as exc:
        login(store, mapped())

    assert exc.value.reason == "name_taken" and exc.value.status == 403
    assert kinds(db) == before
    assert db.query("SELECT * FROM sso_identities") == [] and db.query("SELECT * FROM web_sessions") == []


async def test_sessions_authenticate_until_logout_expiry_or_disabling(db: Database) -> None:
    store = SSOStore(db)
    secret = login(store, mapped())

    session = await store.authenticate(secret)
    assert (session.user_name, session.role) == ("ada", "admin")

    with pytest.raises(SessionError, match="malformed"):
        await store.authenticate("gth_" + "x" * 43)
    with pytest.raises(SessionError, match="unknown"):
        await store.authenticate("ghs_" + "x" * 43)

    ended = store.end_session(secret)
    assert ended is not None and ended.id == session.id
    assert store.end_session(secret) is None  # once
    with pytest.raises(SessionError, match=r"ended \(logged out\)"):
        await store.authenticate(secret)
    assert kinds(db)[-1] == "auth.logout"

    expiring = login(store, mapped())
    execute(db, "UPDATE web_sessions SET expires_at = 1 WHERE revoked_at IS NULL")
    with pytest.raises(SessionError, match="expired"):
        await store.authenticate(expiring)

    disabled = login(store, mapped())
    execute(db, "UPDATE users SET disabled_at = 1")
    with pytest.raises(SessionError, match="disabled"):
        await store.authenticate(disabled)
    with pytest.raises(OIDCError, match="disabled"):
        login(store, mapped())


def test_the_csrf_token_is_bound_to_the_session_secret() -> None:
    a, b = "ghs_" + "a" * 43, "ghs_" + "b" * 43
    assert csrf_token(a) == csrf_token(a) and csrf_token(a) != csrf_token(b)
    assert a not in csrf_token(a)
    assert csrf_matches(a, csrf_token(a)) and not csrf_matches(a, csrf_token(b)) and not csrf_matches(a, "")
