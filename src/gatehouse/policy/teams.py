"""Teams: groups of users whose calls are counted together. A user belongs to at most one team; an agent
counts for its own team if it has one, else for its owner's. A team may carry its own budgets and rate
limits, which apply to every call counted for it, whatever the token's template.

One team per user keeps attribution unambiguous: each call's spend lands in exactly one team.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from gatehouse.audit.events import Event, new_id, now_us
from gatehouse.audit.writer import append_events
from gatehouse.identity.service import Actor, Conflict, NotFound
from gatehouse.policy.templates import PolicyError, bump_policy_version, lock_policy
from gatehouse.store.db import Database, Row, Tx

_PERIODS = ("day", "week", "month")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


def validate_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """A team's limits: {"budgets": [{"usd", "period", "window"?}], "rate_limits": {"requests_per_minute"?,
    "tokens_per_minute"?}}. Returns the normalised form; raises PolicyError naming the bad value."""
    if not isinstance(limits, dict):
        raise PolicyError("limits must be an object")
    unknown = set(limits) - {"budgets", "rate_limits"}
    if unknown:
        raise PolicyError(f"unknown limit {sorted(unknown)[0]!r}: use budgets and rate_limits")
    budgets = []
    seen = set()
    for i, b in enumerate(limits.get("budgets") or []):
        if not isinstance(b, dict) or set(b) - {"usd", "period", "window"}:
            raise PolicyError(f"budgets[{i}]: use usd, period and window")
        usd, period, window = b.get("usd"), b.get("period"), b.get("window", "calendar")
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) or usd <= 0:
            raise PolicyError(f"budgets[{i}].usd must be a positive number")
        if period not in _PERIODS:
            raise PolicyError(f"budgets[{i}].period must be one of day, week, month")
        if window not in ("calendar", "rolling"):
            raise PolicyError(f"budgets[{i}].window must be calendar or rolling")
        if (period, window) in seen:
            raise PolicyError(f"budgets[{i}]: a {window} budget per {period} is already set")
        seen.add((period, window))
        budgets.append({"usd": usd, "period": period, "window": window})
    rates = limits.get("rate_limits") or {}
    if not isinstance(rates, dict) or set(rates) - {"requests_per_minute", "tokens_per_minute"}:
        raise PolicyError("rate_limits: use requests_per_minute and tokens_per_minute")
    for key, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PolicyError(f"rate_limits.{key} must be a positive integer")
    out: dict[str, Any] = {}
    if budgets:
        out["budgets"] = budgets
    if rates:
        out["rate_limits"] = dict(rates)
    return out


class TeamService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, *, description: str | None = None, actor: Actor) -> Row:
        if not _NAME.match(name):
            raise PolicyError(
                f"invalid team name {name!r}: use 1-128 letters, digits, '.', '_', '@' or '-', starting with"
                " a letter or digit"
            )
        row = {"id": new_id(), "name": name, "description": description, "created_at": now_us()}
        with self.db.transaction() as tx:
            if tx.one("SELECT id FROM teams WHERE name = ?", (name,)):
                raise Conflict(f"team {name!r} already exists")
            tx.execute(
                "INSERT INTO teams (id, name, description, created_at) VALUES (?, ?, ?, ?)",
                (row["id"], name, description, row["created_at"]),
            )
            _event(tx, "admin.team.create", actor, name, row)
        return row

    def add_member(self, team: str, user: str, *, actor: Actor) -> Row:
        """Put `user` in `team` (out of any other team: one team per user)."""
        with self.db.transaction() as tx:
            t = _team(tx, team)
            u = _one(tx, "SELECT id, name FROM users WHERE name = ? OR id = ?", (user, user), "user", user)
            before = tx.one(
                "SELECT t.name FROM team_members m JOIN teams t ON t.id = m.team_id WHERE m.user_id = ?",
                (u["id"],),
            )
            tx.execute("DELETE FROM team_members WHERE user_id = ?", (u["id"],))
            tx.execute(
                "INSERT INTO team_members (user_id, team_id, added_at) VALUES (?, ?, ?)",
                (u["id"], t["id"], now_us()),
            )
            details = {
                "team": t["name"],
                "user": u["name"],
                "previous_team": before["name"] if before else None,
            }
            _event(tx, "admin.team.member.add", actor, t["name"], details)
        return details

    def remove_member(self, team: str, user: str, *, actor: Actor) -> Row:
        with self.db.transaction() as tx:
            t = _team(tx, team)
            u = _one(tx, "SELECT id, name FROM users WHERE name = ? OR id = ?", (user, user), "user", user)
            if not tx.execute(
                "DELETE FROM team_members WHERE user_id = ? AND team_id = ?", (u["id"], t["id"])
            ):
                raise NotFound(f"user {u['name']!r} is not in team {t['name']!r}")
            details = {"team": t["name"], "user": u["name"]}
            _event(tx, "admin.team.member.remove", actor, t["name"], details)
        return details

    def set_agent_team(self, agent: str, team: str | None, *, actor: Actor) -> Row:
        """Count an agent for `team` (None: for its owner's team again)."""
        with self.db.transaction() as tx:
            a = _one(
                tx, "SELECT id, name FROM agents WHERE name = ? OR id = ?", (agent, agent), "agent", agent
            )
            tx.execute("DELETE FROM agent_teams WHERE agent_id = ?", (a["id"],))
            t = None
            if team is not None:
                t = _team(tx, team)
                tx.execute(
                    "INSERT INTO agent_teams (agent_id, team_id, added_at) VALUES (?, ?, ?)",
                    (a["id"], t["id"], now_us()),
                )
            details = {"agent": a["name"], "team": t["name"] if t else None}
            _event(tx, "admin.team.agent", actor, t["name"] if t else "-", details)
        return details

    def set_limits(self, team: str, limits: dict[str, Any], *, actor: Actor) -> Row:
        normalised = validate_limits(limits)
        with self.db.transaction() as tx:
            lock_policy(tx)
            t = _team(tx, team)
            tx.execute(
                "UPDATE teams SET limits = ? WHERE id = ?",
                (orjson.dumps(normalised).decode() if normalised else None, t["id"]),
            )
            bump_policy_version(tx)
            details = {"team": t["name"], "limits": normalised}
            _event(tx, "admin.team.limits", actor, t["name"], details)
        return details

    def list(self) -> list[Row]:
        rows = self.db.query(
            "SELECT t.id, t.name, t.description, t.limits, t.created_at,"
            " (SELECT COUNT(*) FROM team_members m WHERE m.team_id = t.id) AS members,"
            " (SELECT COUNT(*) FROM agent_teams g WHERE g.team_id = t.id) AS agents"
            " FROM teams t ORDER BY t.name"
        )
        for r in rows:
            r["limits"] = orjson.loads(r["limits"]) if r["limits"] else {}
        return rows

    def show(self, name: str) -> Row:
        team = self.db.query_one(
            "SELECT id, name, description, limits, created_at FROM teams WHERE name = ? OR id = ?",
            (name, name),
        )
        if team is None:
            raise NotFound(f"no team named {name!r}")
        team["limits"] = orjson.loads(team["limits"]) if team["limits"] else {}
        team["members"] = [
            r["name"]
            for r in self.db.query(
                "SELECT u.name FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team_id = ?"
                " ORDER BY u.name",
                (team["id"],),
            )
        ]
        team["agents"] = [
            r["name"]
            for r in self.db.query(
                "SELECT a.name FROM agents a LEFT JOIN agent_teams g ON g.agent_id = a.id"
                " LEFT JOIN team_members m ON m.user_id = a.owner_id"
                " WHERE COALESCE(g.team_id, m.team_id) = ? ORDER BY a.name",
                (team["id"],),
            )
        ]
        return team

    def team_of_user(self, user_id: str) -> str | None:
        row = self.db.query_one("SELECT team_id FROM team_members WHERE user_id = ?", (user_id,))
        return row["team_id"] if row else None


def _one(tx: Tx, sql: str, params: tuple[Any, ...], what: str, key: str) -> Row:
    row = tx.one(sql, params)
    if row is None:
        raise NotFound(f"no {what} named {key!r}")
    return row


def _team(tx: Tx, name: str) -> Row:
    return _one(tx, "SELECT id, name FROM teams WHERE name = ? OR id = ?", (name, name), "team", name)


def _event(tx: Tx, kind: str, actor: Actor, team: str, details: dict[str, Any]) -> None:
    append_events(
        tx,
        [
            Event(
                kind=kind,
                actor_user=actor.user_id,
                resource=f"team:{team}",
                details={"by": actor.name, **details},
            )
        ],
    )
