"""Users, agents and tokens: create, list, revoke, authenticate.

Every change is written in the same transaction as its audit event, so the trail and the state never
disagree. Authentication reads the store on every call: a revoked or expired token stops working at once,
on every replica, at the cost of one indexed read.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gatehouse.audit.events import Event, new_id, now_us
from gatehouse.audit.writer import append_events
from gatehouse.identity.tokens import generate_token, hash_token, looks_like_token, token_prefix
from gatehouse.store.db import Database, Row

Role = Literal["owner", "admin", "auditor", "template_admin", "member"]
ROLES: tuple[Role, ...] = ("owner", "admin", "auditor", "template_admin", "member")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_KEPT_LOOKUPS = 10_000  # token lookups kept (one per token in use), emptied when full
_LAST_USED_EVERY_US = 60_000_000  # last_used_at is informative; writing it on every call is not worth it


class IdentityError(Exception):
    """A request about identities that cannot be carried out; the message says why."""


class NotFound(IdentityError):
    pass


class Conflict(IdentityError):
    pass


class AuthError(Exception):
    """The presented credential is not valid. `reason` is for the audit trail, not for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an admin change: a user (through the API) or the local operator (the CLI)."""

    user_id: str | None = None
    name: str = "local-operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity behind an authenticated request."""

    token_id: str
    user_id: str
    user_name: str
    role: Role
    agent_id: str | None
    agent_name: str | None
    # Policy: the template the token is bound to, the team its calls count for (the agent's team, else
    # the user's), and the policy version the store was at when the request came: a replica whose
    # compiled policy is older reloads it before deciding.
    template: str | None = None
    team_id: str | None = None
    policy_version: int = 0


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    prefix: str
    name: str | None
    user: str
    agent: str | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    last_used_at: int | None
    template: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class IdentityService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_used: dict[str, int] = {}
        # Token hash -> (identity_state.version when read, the lookup's row): see `authenticate`.
        self._lookups: dict[str, tuple[int, Row]] = {}

    # -- admin changes -----------------------------------------------------------------------------

    def create_user(self, name: str, *, role: str = "member", email: str | None = None, actor: Actor) -> Row:
        _check_name(name, "user")
        if role not in ROLES:
            raise IdentityError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        row = {"id": new_id(), "name": name, "email": email, "role": role, "created_at": now_us()}
        with self.db.transaction() as tx:
            if tx.one("SELECT id FROM users WHERE name = ?", (name,)):
                raise Conflict(f"user {name!r} already exists")
            tx.execute(
                "INSERT INTO users (id, name, email, role, created_at) VALUES (?, ?, ?, ?, ?)",
                (row["id"], name, email, role, row["created_at"]),
            )
            append_events(tx, [_admin_event("admin.user.create", actor, f"user:{name}", row)])
        return row

    def create_agent(self, name: str, *, owner: str, description: str | None = None, actor: Actor) -> Row:
        _check_name(name, "agent")
        with self.db.transaction() as tx:
            user = _find(
                tx.one("SELECT id, name FROM users WHERE name = ? OR id = ?", (owner, owner)), "user", owner
            )
            if tx.one("SELECT id FROM agents WHERE name = ?", (name,)):
                raise Conflict(f"agent {name!r} already exists")
            row = {
                "id": new_id(),
                "name": name,
                "owner": user["name"],
                "description": description,
                "created_at": now_us(),
            }
            tx.execute(
                "INSERT INTO agents (id, name, owner_id, description, created_at) VALUES (?, ?, ?, ?, ?)",
                (row["id"], name, user["id"], description, row["created_at"]),
            )
            append_events(tx, [_admin_event("admin.agent.create", actor, f"agent:{name}", row)])
        return row

    def create_token(
        self,
        *,
        user: str,
        agent: str | None = None,
        name: str | None = None,
        ttl_seconds: int | None = None,
        template: str | None = None,
        actor: Actor,
    ) -> tuple[TokenInfo, str]:
        """Return the token's description and the secret itself, which is never retrievable again.

        A token bound to a template may live at most the template's `tokens.max_ttl`, which is also its
        default time to live."""
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise IdentityError("the token's time to live must be positive")
        secret = generate_token()
        created = now_us()
        with self.db.transaction() as tx:
            if template is not None:
                bound = tx.one("SELECT name, max_token_ttl_s FROM templates WHERE name = ?", (template,))
                if bound is None:
                    raise NotFound(
                        f"no template named {template!r} (apply it with `gatehouse templates apply`)"
                    )
                max_ttl = bound["max_token_ttl_s"]
                if max_ttl is not None:
                    if ttl_seconds is None:
                        ttl_seconds = int(max_ttl)
                    elif ttl_seconds > max_ttl:
                        raise IdentityError(
                            f"a token bound to template {template!r} may live at most {_seconds(max_ttl)}"
                            f" (tokens.max_ttl); asked for {_seconds(ttl_seconds)}"
                        )
            expires = created + ttl_seconds * 1_000_000 if ttl_seconds else None
            u = _find(
                tx.one("SELECT id, name FROM users WHERE name = ? OR id = ?", (user, user)), "user", user
            )
            a = None
            if agent is not None:
                a = _find(
                    tx.one("SELECT id, name, owner_id FROM agents WHERE name = ? OR id = ?", (agent, agent)),
                    "agent",
                    agent,
                )
                if a["owner_id"] != u["id"]:
                    raise IdentityError(f"agent {a['name']!r} is not owned by user {u['name']!r}")
            info = TokenInfo(
                id=new_id(),
                prefix=token_prefix(secret),
                name=name,
                user=u["name"],
                agent=a["name"] if a else None,
                created_at=created,
                expires_at=expires,
                revoked_at=None,
                last_used_at=None,
                template=template,
            )
            tx.execute(
                "INSERT INTO tokens (id, hash, prefix, name, user_id, agent_id, created_at, expires_at,"
                " template) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.id,
                    hash_token(secret),
                    info.prefix,
                    name,
                    u["id"],
                    a["id"] if a else None,
                    created,
                    expires,
                    template,
                ),
            )
            append_events(tx, [_admin_event("admin.token.create", actor, f"token:{info.id}", info.as_dict())])
        return info, secret

    def revoke_token(self, token: str, *, actor: Actor) -> TokenInfo:
        """Revoke by id or visible prefix. Revoking twice is an error, so scripts notice typos."""
        with self.db.transaction() as tx:
            rows = tx.all(_LIST_SQL + " WHERE t.id = ? OR t.prefix = ?", (token, token))
            if not rows:
                raise NotFound(f"no token with id or prefix {token!r}")
            if len(rows) > 1:
                raise IdentityError(f"prefix {token!r} matches {len(rows)} tokens; use the token id")
            info = _token_info(rows[0])
            if info.revoked_at is not None:
                raise Conflict(f"token {info.prefix} is already revoked")
            revoked = now_us()
            tx.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (revoked, info.id))
            info = TokenInfo(**{**info.as_dict(), "revoked_at": revoked})
            append_events(tx, [_admin_event("admin.token.revoke", actor, f"token:{info.id}", info.as_dict())])
        return info

    # -- reading -----------------------------------------------------------------------------------

    def list_users(self) -> list[Row]:
        return self.db.query("SELECT id, name, email, role, created_at, disabled_at FROM users ORDER BY name")

    def list_agents(self, owner: str | None = None) -> list[Row]:
        query = (
            "SELECT a.id, a.name, u.name AS owner, a.description, a.created_at, a.disabled_at"
            " FROM agents a JOIN users u ON u.id = a.owner_id"
        )
        if owner is None:
            return self.db.query(query + " ORDER BY a.name")
        return self.db.query(query + " WHERE u.name = ? ORDER BY a.name", (owner,))

    def list_tokens(self, user: str | None = None, *, include_revoked: bool = False) -> list[TokenInfo]:
        clauses, params = [], []
        if user is not None:
            clauses.append("u.name = ?")
            params.append(user)
        if not include_revoked:
            clauses.append("t.revoked_at IS NULL")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return [_token_info(r) for r in self.db.query(_LIST_SQL + where + " ORDER BY t.created_at", params)]

    # -- authentication ----------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Principal:
        """The principal behind a token, as the store says now. A token looked up before is not looked up
        again while `identity_state.version` (moved by triggers on every change authentication depends
        on, m0012) stands still: one row read instead of a five-table join. The version is read first,
        so a row kept under it is never older than it."""
        if not looks_like_token(secret):
            raise AuthError("malformed token")
        digest = hash_token(secret)
        versions = await self.db.aquery_one(_VERSIONS_SELECT)
        identity_version = int(versions["identity_version"]) if versions else None
        kept = self._lookups.get(digest)
        if kept is not None and identity_version is not None and kept[0] == identity_version:
            row = kept[1]
        else:
            found = await self.db.aquery_one(_AUTH_SELECT, (digest,))
            if found is None:
                raise AuthError("unknown token")  # not kept: a guessed token must not fill memory
            row = found
            if identity_version is not None:
                if len(self._lookups) >= _KEPT_LOOKUPS:
                    self._lookups.clear()
                self._lookups[digest] = (identity_version, row)
        now = now_us()
        if row["revoked_at"] is not None:
            raise AuthError("revoked token")
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise AuthError("expired token")
        if row["user_disabled"] is not None or row["agent_disabled"] is not None:
            raise AuthError("disabled identity")
        if now - self._last_used.get(row["token_id"], 0) > _LAST_USED_EVERY_US:
            self._last_used[row["token_id"]] = now
            self._touch(row["token_id"], now)
        return Principal(
            token_id=row["token_id"],
            user_id=row["user_id"],
            user_name=row["user_name"],
            role=row["role"],
            agent_id=row["agent_id"],
            agent_name=row["agent_name"],
            template=row["template"],
            team_id=row["team_id"],
            policy_version=int(versions["policy_version"] or 0) if versions else 0,
        )

    def _touch(self, token_id: str, when: int) -> None:
        try:
            with self.db.transaction() as tx:
                tx.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (when, token_id))
        except Exception:  # noqa: S110 - last-used is informative; never fail a request over it
            pass


_LIST_SQL = (
    "SELECT t.id, t.prefix, t.name, u.name AS user_name, a.name AS agent_name, t.created_at, t.expires_at,"
    " t.revoked_at, t.last_used_at, t.template FROM tokens t JOIN users u ON u.id = t.user_id"
    " LEFT JOIN agents a ON a.id = t.agent_id"
)

# Read before every authentication; the policy version tells a replica whose compiled policy is older to
# reload it before deciding.
_VERSIONS_SELECT = (
    "SELECT i.version AS identity_version, (SELECT version FROM policy_state WHERE id = 1) AS policy_version"
    " FROM identity_state i WHERE i.id = 1"
)

_AUTH_SELECT = (
    "SELECT t.id AS token_id, t.expires_at, t.revoked_at, u.id AS user_id, u.name AS user_name, u.role,"
    " u.disabled_at AS user_disabled, a.id AS agent_id, a.name AS agent_name,"
    " a.disabled_at AS agent_disabled, t.template, COALESCE(agt.team_id, tm.team_id) AS team_id"
    " FROM tokens t JOIN users u ON u.id = t.user_id LEFT JOIN agents a ON a.id = t.agent_id"
    " LEFT JOIN agent_teams agt ON agt.agent_id = t.agent_id"
    " LEFT JOIN team_members tm ON tm.user_id = t.user_id"
    " WHERE t.hash = ?"
)


def _token_info(row: Row) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        prefix=row["prefix"],
        name=row["name"],
        user=row["user_name"],
        agent=row["agent_name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        template=row["template"],
    )


def _seconds(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise IdentityError(
            f"invalid {what} name {name!r}: use 1-128 letters, digits, '.', '_', '@' or '-', starting with"
            " a letter or digit"
        )


def _find(row: Row | None, what: str, key: str) -> Row:
    if row is None:
        raise NotFound(f"no {what} named {key!r}")
    return row


def _admin_event(kind: str, actor: Actor, resource: str, details: dict[str, Any]) -> Event:
    return Event(
        kind=kind,
        actor_user=actor.user_id,
        resource=resource,
        details={"by": actor.name, **details},
        ts=time.time_ns() // 1000,
    )
