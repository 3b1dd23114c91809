"""The store side of single sign-on: logins in progress, provisioning people from the provider, and
browser sessions.

- A login in progress (state, nonce, PKCE verifier) is a row keyed by the SHA-256 of its state, valid for
  `oidc.login_ttl` and consumed by the callback (deleted in the transaction that reads it), so a callback
  URL works once, on any replica.
- A successful login provisions or updates the user, replaces their SSO team memberships, and opens a
  browser session, all in one transaction with the audit events that describe it.
- A browser session is a 256-bit random secret (`ghs_...`) held in an HttpOnly cookie and stored as its
  SHA-256 hash, with an absolute expiry. Like API tokens, it is checked against the store on every
  request, so logging out, expiry and disabling the user take effect at once everywhere.
- The CSRF token of a session is derived from its secret (SHA-256 with a fixed label): the server needs
  no extra state to check it, and knowing it does not reveal the session secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gatehouse.audit.events import Event, new_id, now_us
from gatehouse.audit.writer import append_events
from gatehouse.identity.oidc import Mapped, OIDCError
from gatehouse.identity.service import Role
from gatehouse.store.db import Database, Row, Tx

SESSION_SCHEME = "ghs_"
_LAST_SEEN_EVERY_US = 60_000_000
_KEEP_EXPIRED_US = (
    86_400_000_000  # expired sessions stay a day, so their holders get "expired", not "unknown"
)
SSO_ACTOR = "sso"


class SessionError(Exception):
    """The session cookie does not authenticate. `reason` is for the audit trail and logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class PendingLogin:
    nonce: str
    code_verifier: str
    return_to: str


@dataclass(frozen=True, slots=True)
class LoginResult:
    user_id: str
    user_name: str
    role: Role
    session_id: str
    secret: str
    expires_at: int
    provisioned: bool


@dataclass(frozen=True, slots=True)
class WebSession:
    id: str
    user_id: str
    user_name: str
    role: Role
    email: str | None
    created_at: int
    expires_at: int


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(session_secret: str) -> str:
    digest = hashlib.sha256(b"gatehouse-csrf\0" + session_secret.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def csrf_matches(session_secret: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(session_secret).encode(), presented.encode())


def looks_like_session(value: str) -> bool:
    return value.startswith(SESSION_SCHEME) and 40 <= len(value) <= 100


class SSOStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_seen: dict[str, int] = {}

    # -- logins in progress ------------------------------------------------------------------------

    def begin_login(self, *, state: str, nonce: str, code_verifier: str, return_to: str, ttl_s: int) -> None:
        now = now_us()
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM oidc_logins WHERE expires_at < ?", (now,))
            tx.execute(
                "INSERT INTO oidc_logins (state_hash, nonce, code_verifier, return_to, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (hash_secret(state), nonce, code_verifier, return_to, now, now + ttl_s * 1_000_000),
            )

    def consume_login(self, state: str) -> PendingLogin:
        """The login started with `state`, which can be consumed once."""
        key = hash_secret(state)
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT nonce, code_verifier, return_to, expires_at FROM oidc_logins WHERE state_hash = ?",
                (key,),
            )
            deleted = tx.execute("DELETE FROM oidc_logins WHERE state_hash = ?", (key,))
        if row is None or deleted != 1:
            raise OIDCError(
                400,
                "state_unknown",
                "this login was already completed, or never started here (unknown state); start again at"
                " /auth/login",
            )
        if row["expires_at"] <= now_us():
            raise OIDCError(
                400, "state_expired", "this login took too long and has expired; start again at /auth/login"
            )
        return PendingLogin(
            nonce=row["nonce"], code_verifier=row["code_verifier"], return_to=row["return_to"]
        )

    # -- a successful login ------------------------------------------------------------------------

    def complete_login(
        self,
        *,
        issuer: str,
        subject: str,
        mapped: Mapped,
        ttl_s: int,
        link_existing: bool,
        user_agent: str | None = None,
        remote: str | None = None,
    ) -> LoginResult:
        """Provision or update the user, replace their SSO teams, open a session; audit it all together.
        Raises OIDCError (403) when the person may not log in."""
        now = now_us()
        secret = SESSION_SCHEME + secrets.token_urlsafe(32)
        session_id = new_id()
        expires = now + ttl_s * 1_000_000
        events: list[Event] = []
        with self.db.transaction() as tx:
            user, provisioned = self._find_or_create(tx, issuer, subject, mapped, link_existing, now, events)
            if user["disabled_at"] is not None:
                raise OIDCError(403, "user_disabled", f"the Gatehouse user {user['name']!r} is disabled")
            changes: dict[str, Any] = {}
            if not provisioned and user["role"] != mapped.role:
                changes["role"] = {"from": user["role"], "to": mapped.role}
            if not provisioned and mapped.email is not None and user["email"] != mapped.email:
                changes["email"] = {"from": user["email"], "to": mapped.email}
            if changes:
                tx.execute(
                    "UPDATE users SET role = ?, email = ? WHERE id = ?",
                    (mapped.role, mapped.email if "email" in changes else user["email"], user["id"]),
                )
            teams = _replace_teams(tx, user["id"], mapped.teams, now)
            if teams and not provisioned:  # a new user's teams are in its admin.user.create event
                changes["teams"] = teams
            if changes:
                events.append(
                    _event(
                        "admin.user.update",
                        user["id"],
                        user["name"],
                        {
                            "id": user["id"],
                            "name": user["name"],
                            "changes": changes,
                            "issuer": issuer,
                            "by": SSO_ACTOR,
                        },
                        now,
                    )
                )
            tx.execute(
                "UPDATE sso_identities SET groups = ?, last_login_at = ? WHERE issuer = ? AND subject = ?",
                (orjson.dumps(mapped.groups).decode(), now, issuer, subject),
            )
            tx.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now - _KEEP_EXPIRED_US,))
            tx.execute(
                "INSERT INTO web_sessions (id, hash, user_id, issuer, subject, created_at, expires_at,"
                " user_agent, remote) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    hash_secret(secret),
                    user["id"],
                    issuer,
                    subject,
                    now,
                    expires,
                    user_agent,
                    remote,
                ),
            )
            events.append(
                _event(
                    "auth.login",
                    user["id"],
                    user["name"],
                    {
                        "method": "oidc",
                        "issuer": issuer,
                        "subject": subject,
                        "user": user["name"],
                        "role": mapped.role,
                        "groups": mapped.groups,
                        "role_groups": mapped.matched_role_groups,
                        "teams": sorted(mapped.teams),
                        "provisioned": provisioned,
                        "web_session": session_id,
                        "expires_at": expires,
                        "remote": remote,
                        "user_agent": user_agent,
                    },
                    now,
                )
            )
            append_events(tx, events)
        return LoginResult(
            user_id=user["id"],
            user_name=user["name"],
            role=mapped.role,
            session_id=session_id,
            secret=secret,
            expires_at=expires,
            provisioned=provisioned,
        )

    def _find_or_create(
        self,
        tx: Tx,
        issuer: str,
        subject: str,
        mapped: Mapped,
        link_existing: bool,
        now: int,
        events: list[Event],
    ) -> tuple[Row, bool]:
        select_user = "SELECT id, name, email, role, disabled_at FROM users"
        linked = tx.one(
            "SELECT user_id FROM sso_identities WHERE issuer = ? AND subject = ?", (issuer, subject)
        )
        if linked is not None:
            user = tx.one(select_user + " WHERE id = ?", (linked["user_id"],))
            assert user is not None  # foreign key
            return user, False
        user = tx.one(select_user + " WHERE name = ?", (mapped.name,))
        provisioned = user is None
        if user is not None:
            if not link_existing:
                raise OIDCError(
                    403,
                    "name_taken",
                    f"a Gatehouse user named {mapped.name!r} already exists and is not linked to this"
                    " identity provider account; an administrator can allow linking with"
                    " oidc.link_existing_users",
                )
            other = tx.one(
                "SELECT subject FROM sso_identities WHERE user_id = ? AND issuer = ?", (user["id"], issuer)
            )
            if other is not None:
                raise OIDCError(
                    403,
                    "name_taken",
                    f"the Gatehouse user {mapped.name!r} is already linked to another account at this"
                    " provider",
                )
        else:
            user = {
                "id": new_id(),
                "name": mapped.name,
                "email": mapped.email,
                "role": mapped.role,
                "disabled_at": None,
            }
            tx.execute(
                "INSERT INTO users (id, name, email, role, created_at) VALUES (?, ?, ?, ?, ?)",
                (user["id"], mapped.name, mapped.email, mapped.role, now),
            )
            events.append(
                _event(
                    "admin.user.create",
                    user["id"],
                    mapped.name,
                    {
                        "id": user["id"],
                        "name": mapped.name,
                        "email": mapped.email,
                        "role": mapped.role,
                        "created_at": now,
                        "teams": sorted(mapped.teams),
                        "issuer": issuer,
                        "subject": subject,
                        "by": SSO_ACTOR,
                    },
                    now,
                )
            )
        tx.execute(
            "INSERT INTO sso_identities (issuer, subject, user_id, groups, created_at, last_login_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (issuer, subject, user["id"], "[]", now, now),
        )
        return user, provisioned

    # -- sessions ----------------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> WebSession:
        if not looks_like_session(secret):
            raise SessionError(
                "malformed session", "the session cookie is malformed; log in again at /auth/login"
            )
        row = await self.db.aquery_one(_SESSION_SELECT, (hash_secret(secret),))
        if row is None:
            raise SessionError("unknown session", "the session is unknown; log in again at /auth/login")
        now = now_us()
        if row["revoked_at"] is not None:
            raise SessionError(
                "ended session", "the session was ended (logged out); log in again at /auth/login"
            )
        if row["expires_at"] <= now:
            raise SessionError("expired session", "the session has expired; log in again at /auth/login")
        if row["disabled_at"] is not None:
            raise SessionError("disabled identity", "the user is disabled")
        if now - self._last_seen.get(row["id"], 0) > _LAST_SEEN_EVERY_US:
            self._last_seen[row["id"]] = now
            self._touch(row["id"], now)
        return _web_session(row)

    def end_session(self, secret: str, *, remote: str | None = None) -> WebSession | None:
        """Log out: revoke the session and audit it. None when the cookie named no live session."""
        if not looks_like_session(secret):
            return None
        now = now_us()
        with self.db.transaction() as tx:
            row = tx.one(_SESSION_SELECT, (hash_secret(secret),))
            if row is None or row["revoked_at"] is not None or row["expires_at"] <= now:
                return None
            tx.execute("UPDATE web_sessions SET revoked_at = ? WHERE id = ?", (now, row["id"]))
            append_events(
                tx,
                [
                    _event(
                        "auth.logout",
                        row["user_id"],
                        row["user_name"],
                        {"web_session": row["id"], "remote": remote},
                        now,
                    )
                ],
            )
        self._last_seen.pop(row["id"], None)
        return _web_session(row)

    def teams_of(self, user_id: str) -> list[str]:
        rows = self.db.query(
            "SELECT team FROM sso_team_memberships WHERE user_id = ? ORDER BY team", (user_id,)
        )
        return [r["team"] for r in rows]

    def _touch(self, session_id: str, when: int) -> None:
        try:
            with self.db.transaction() as tx:
                tx.execute("UPDATE web_sessions SET last_seen_at = ? WHERE id = ?", (when, session_id))
        except Exception:  # noqa: S110 - last-seen is informative; never fail a request over it
            pass


_SESSION_SELECT = (
    "SELECT s.id, s.created_at, s.expires_at, s.revoked_at, u.id AS user_id, u.name AS user_name, u.role,"
    " u.email, u.disabled_at FROM web_sessions s JOIN users u ON u.id = s.user_id WHERE s.hash = ?"
)


def _web_session(row: Row) -> WebSession:
    return WebSession(
        id=row["id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        role=row["role"],
        email=row["email"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


def _replace_teams(tx: Tx, user_id: str, teams: dict[str, str], now: int) -> dict[str, list[str]]:
    """Make the user's SSO memberships exactly `teams`; return what changed (empty: nothing)."""
    old = {
        r["team"]: r["source_group"]
        for r in tx.all("SELECT team, source_group FROM sso_team_memberships WHERE user_id = ?", (user_id,))
    }
    removed = sorted(set(old) - set(teams))
    added = sorted(set(teams) - set(old))
    for team in removed:
        tx.execute("DELETE FROM sso_team_memberships WHERE user_id = ? AND team = ?", (user_id, team))
    tx.executemany(
        "INSERT INTO sso_team_memberships (user_id, team, source_group, updated_at) VALUES (?, ?, ?, ?)",
        [(user_id, team, teams[team], now) for team in added],
    )
    return {"added": added, "removed": removed} if added or removed else {}


def _event(kind: str, user_id: str, user_name: str, details: dict[str, Any], ts: int) -> Event:
    return Event(kind=kind, actor_user=user_id, resource=f"user:{user_name}", details=details, ts=ts)
