"""`policy explain`: resolve who is asking (an agent, a user, a token) and what template governs them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatehouse.audit.events import now_us
from gatehouse.identity.service import NotFound
from gatehouse.policy.engine import PolicyEngine, Subject
from gatehouse.policy.templates import PolicyError
from gatehouse.store.db import Database


@dataclass(frozen=True, slots=True)
class Who:
    subject: Subject
    owner_id: str  # the user answering for the calls
    label: str  # `agent ci-bot (owner alice)`
    templates: list[str]  # templates of the active tokens
    names: dict[str, str]  # ids of the agent, user and team -> their names, for people to read


def resolve(db: Database, *, agent: str | None = None, user: str | None = None) -> Who:
    now = now_us()
    if agent is not None:
        row = db.query_one(
            "SELECT a.id, a.name, a.owner_id, u.name AS owner, COALESCE(agt.team_id, tm.team_id) AS team_id,"
            " (SELECT name FROM teams WHERE id = COALESCE(agt.team_id, tm.team_id)) AS team"
            " FROM agents a JOIN users u ON u.id = a.owner_id"
            " LEFT JOIN agent_teams agt ON agt.agent_id = a.id"
            " LEFT JOIN team_members tm ON tm.user_id = a.owner_id"
            " WHERE a.name = ? OR a.id = ?",
            (agent, agent),
        )
        if row is None:
            raise NotFound(f"no agent named {agent!r}")
        templates = db.query(
            "SELECT DISTINCT template FROM tokens WHERE agent_id = ? AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?) AND template IS NOT NULL ORDER BY template",
            (row["id"], now),
        )
        return Who(
            Subject(row["owner_id"], row["id"], None, row["team_id"]),
            row["owner_id"],
            f"agent {row['name']} (owner {row['owner']})",
            [t["template"] for t in templates],
            {row["id"]: row["name"], row["owner_id"]: row["owner"], row["team_id"] or "": row["team"] or ""},
        )
    if user is None:
        raise PolicyError("name an agent or a user")
    row = db.query_one(
        "SELECT u.id, u.name, tm.team_id, t.name AS team FROM users u"
        " LEFT JOIN team_members tm ON tm.user_id = u.id LEFT JOIN teams t ON t.id = tm.team_id"
        " WHERE u.name = ? OR u.id = ?",
        (user, user),
    )
    if row is None:
        raise NotFound(f"no user named {user!r}")
    templates = db.query(
        "SELECT DISTINCT template FROM tokens WHERE user_id = ? AND agent_id IS NULL AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > ?) AND template IS NOT NULL ORDER BY template",
        (row["id"], now),
    )
    return Who(
        Subject(row["id"], None, None, row["team_id"]),
        row["id"],
        f"user {row['name']}",
        [t["template"] for t in templates],
        {row["id"]: row["name"], row["team_id"] or "": row["team"] or ""},
    )


async def explain(
    engine: PolicyEngine,
    who: Who,
    *,
    model: str,
    provider: str | None = None,
    template: str | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    if template is None:
        if len(who.templates) > 1:
            raise PolicyError(
                f"{who.label} has tokens bound to several templates ({', '.join(who.templates)}):"
                " name one with --template"
            )
        template = who.templates[0] if who.templates else None
    result = await engine.explain(
        subject=who.subject, template=template, model=model, provider=provider, max_tokens=max_tokens
    )
    for limit in result["limits"]:
        scope, _, ident = limit["scope"].partition(" ")
        limit["scope"] = f"{scope} {who.names.get(ident) or ident}"
    return {"who": who.label, **result}
