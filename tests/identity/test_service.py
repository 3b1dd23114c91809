from __future__ import annotations

import pytest

from gatehouse.identity.service import Actor, AuthError, Conflict, IdentityError, IdentityService, NotFound
from gatehouse.store.db import Database

OPERATOR = Actor()


@pytest.fixture
def ids(db: Database) -> IdentityService:
    service = IdentityService(db)
    service.create_user("alice", role="admin", actor=OPERATOR)
    service.create_agent("ci-bot", owner="alice", actor=OPERATOR)
    return service


async def test_token_is_stored_only_as_a_hash_and_authenticates(ids: IdentityService, db: Database) -> None:
    info, secret = ids.create_token(user="alice", agent="ci-bot", name="ci", actor=OPERATOR)
    assert secret.startswith("gth_") and len(secret) >= 43
    assert info.prefix == secret[:12]
    dump = str(db.query("SELECT * FROM tokens")) + str(db.query("SELECT details FROM events"))
    assert secret not in dump
    principal = await ids.authenticate(secret)
    assert (principal.user_name, principal.agent_name, principal.role) == ("alice", "ci-bot", "admin")


async def test_revoked_and_expired_tokens_stop_working_at_once(ids: IdentityService, db: Database) -> None:
    _, secret = ids.create_token(user="alice", actor=OPERATOR)
    await ids.authenticate(secret)
    ids.revoke_token(secret[:12], actor=OPERATOR)
    with pytest.raises(AuthError, match="revoked"):
        await ids.authenticate(secret)
    with pytest.raises(Conflict):
        ids.revoke_token(secret[:12], actor=OPERATOR)

    info, expiring = ids.create_token(user="alice", ttl_seconds=3600, actor=OPERATOR)
    await ids.authenticate(expiring)
    with db.transaction() as tx:  # time passes
        tx.execute("UPDATE tokens SET expires_at = expires_at - 3600000001 WHERE id = ?", (info.id,))
    with pytest.raises(AuthError, match="expired"):
        await ids.authenticate(expiring)


async def test_unknown_and_malformed_tokens_are_refused(ids: IdentityService) -> None:
    with pytest.raises(AuthError, match="malformed"):
        await ids.authenticate("sk-ant-something")
    with pytest.raises(AuthError, match="unknown"):
        await ids.authenticate("gth_" + "A" * 43)


def test_admin_changes_are_audited_with_the_change(ids: IdentityService, db: Database) -> None:
    info, _ = ids.create_token(user="alice", actor=OPERATOR)
    ids.revoke_token(info.id, actor=OPERATOR)
    kinds = [r["kind"] for r in db.query("SELECT kind FROM events ORDER BY seq")]
    assert kinds == [
        "admin.user.create",
        "admin.agent.create",
        "admin.token.create",
        "admin.token.revoke",
    ]


def test_bad_input_is_refused_clearly(ids: IdentityService) -> None:
    with pytest.raises(Conflict, match="already exists"):
        ids.create_user("alice", actor=OPERATOR)
    with pytest.raises(IdentityError, match="invalid user name"):
        ids.create_user("bad name!", actor=OPERATOR)
    with pytest.raises(IdentityError, match="unknown role"):
        ids.create_user("bob", role="god", actor=OPERATOR)
    with pytest.raises(NotFound, match="no user"):
        ids.create_agent("x", owner="nobody", actor=OPERATOR)
    ids.create_user("bob", actor=OPERATOR)
    with pytest.raises(IdentityError, match="not owned"):
        ids.create_token(user="bob", agent="ci-bot", actor=OPERATOR)
    with pytest.raises(NotFound):
        ids.revoke_token("gth_nothere", actor=OPERATOR)


async def test_a_token_looked_up_once_is_not_joined_again_until_identity_changes(
    ids: IdentityService, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = ids.create_token(user="alice", agent="ci-bot", actor=OPERATOR)
    await ids.authenticate(secret)
    lookups: list[str] = []
    read = db.aquery_one

    async def counted(query: str, params: tuple[object, ...] = ()) -> object:
        lookups.append(query)
        return await read(query, params)

    monkeypatch.setattr(db, "aquery_one", counted)
    await ids.authenticate(secret)
    await ids.authenticate(secret)
    assert not any("FROM tokens" in q for q in lookups)  # only the version row was read
    with db.transaction() as tx:  # last-used bookkeeping is not a change that matters
        tx.execute("UPDATE tokens SET last_used_at = 1")
    await ids.authenticate(secret)
    assert not any("FROM tokens" in q for q in lookups)
    with db.transaction() as tx:
        tx.execute("UPDATE users SET email = 'a@example.com'")
    await ids.authenticate(secret)
    assert sum("FROM tokens" in q for q in lookups) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("UPDATE tokens SET revoked_at = 1", "revoked"),
        ("UPDATE tokens SET expires_at = 1", "expired"),
        ("DELETE FROM tokens", "unknown"),
        ("UPDATE users SET disabled_at = 1", "disabled"),
        ("UPDATE agents SET disabled_at = 1", "disabled"),
    ],
)
async def test_a_change_from_another_process_reaches_a_kept_lookup(
    ids: IdentityService, db_url: str, change: str, reason: str
) -> None:
    _, secret = ids.create_token(user="alice", agent="ci-bot", actor=OPERATOR)
    await ids.authenticate(secret)
    other = Database(db_url)  # the CLI, or another replica: its own connection, no word to this service
    try:
        with other.transaction() as tx:
            tx.execute(change)
    finally:
        other.close()
    with pytest.raises(AuthError, match=reason):
        await ids.authenticate(secret)


async def test_team_template_and_policy_version_are_current_for_a_kept_lookup(
    ids: IdentityService, db: Database
) -> None:
    _, secret = ids.create_token(user="alice", agent="ci-bot", actor=OPERATOR)
    first = await ids.authenticate(secret)
    assert (first.team_id, first.template) == (None, None)
    with db.transaction() as tx:
        tx.execute("INSERT INTO teams (id, name, created_at) VALUES ('t1', 'platform', 0)")
        tx.execute(
            "INSERT INTO team_members (user_id, team_id, added_at) VALUES (?, 't1', 0)", (first.user_id,)
        )
        tx.execute("UPDATE tokens SET template = 'readonly'")
        tx.execute("UPDATE policy_state SET version = version + 1")
    now = await ids.authenticate(secret)
    assert (now.team_id, now.template, now.policy_version) == ("t1", "readonly", first.policy_version + 1)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO agent_teams (agent_id, team_id, added_at) VALUES (?, 't1', 0)", (first.agent_id,)
        )
        tx.execute("DELETE FROM team_members")
    assert (await ids.authenticate(secret)).team_id == "t1"  # now through the agent
    with db.transaction() as tx:
        tx.execute("DELETE FROM agent_teams")
    assert (await ids.authenticate(secret)).team_id is None
