"""7. The audit timeline over millions of events: how long one page of `gatehouse audit timeline` (and
GET /api/v1/audit/timeline) takes on a large store.

The store is a SQLite file in a temporary directory, built with every migration and then filled directly
(executemany in large transactions, not through the writer, which would take hours at 5 million) with a
valid hash chain: rows are chained with `gatehouse.audit.chain.event_hash` exactly as the writer chains
them, the tail is verified, and the time map and key index are caught up as the projector would have.
It looks like a busy deployment over 60 days: a few hundred users and agents with a skewed (Zipf) share of the
traffic, ~180,000 sessions of heavy-tailed length, working hours and weekends, workspaces for most
sessions, agents acting on behalf of people, the Bridge's `llm.request` / `llm.response` pairs with MCP
tool calls, failed logins and admin changes in between, and three outages whose events are retried late,
so that ts and seq disagree. The store is deleted afterwards.

Each query shape runs many times, with random windows and entities, through `gatehouse.audit.queries.
timeline` (what the CLI and the API call), on a fresh `Database` every few queries so that some pages
start from an empty SQLite page cache. Every page is checked for order and filter, and a sample is
compared with plain SQL. Target: p95 <= 50 ms for every shape.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import orjson

from bench.common import Check, Options, Outcome, chain_links, filler, percentile, table

FULL_EVENTS = 5_000_000
QUICK_EVENTS = 500_000
FULL_QUERIES = 200  # per shape
QUICK_QUERIES = 60
TARGET_P95_MS = 50.0
PAGE_SIZE = 100  # the API's and the CLI's default
FRESH_CONNECTION_EVERY = 4  # every 4th query of a shape runs on a new connection (empty page cache)

SPAN_DAYS = 60
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, a Thursday
USERS = 200
AGENTS = 300
WORKSPACES = 60
SESSION_SECONDS_BETWEEN_EVENTS = 20  # sets how many sessions are active at once
OUTAGES = (0.31, 0.57, 0.83)  # where in the span the store is down for a while (events retried after)

_MODELS = ("claude-sonnet-4-6", "claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5")
_CLIENTS = ("claude-code", "codex", "anthropic-sdk-python", "openai-python", "cursor")
_MCP_TOOLS = (
    ("github", "create_issue"),
    ("github", "get_pull_request"),
    ("filesystem", "read_file"),
    ("filesystem", "write_file"),
    ("postgres", "query"),
    ("jira", "search"),
)
_TOOLS = ("read_file", "run_shell_command", "edit_file", "grep", "list_dir")
_ADMIN_KINDS = ("admin.token.create", "admin.token.revoke", "admin.hold.add", "admin.template.apply")
_INSERT = (
    "INSERT INTO events (seq, id, ts, kind, actor_user, actor_agent, actor_token, on_behalf_of, workspace,"
    " session, parent, decision, resource, details, prev_hash, hash) VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the population ----------------------------------------------------------------------------------


def _uuid7(rng: random.Random, ts_us: int) -> str:
    """A UUIDv7 as `gatehouse.audit.events.new_id` makes them, for a given time (ids sort by time)."""
    value = ((ts_us // 1000) << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62)
    value |= rng.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _zipf_cumulative(n: int, s: float) -> list[float]:
    total = 0.0
    out = []
    for k in range(1, n + 1):
        total += 1 / k**s
        out.append(total)
    return out


@dataclass
class Population:
    """Who acts, and how much: agents and users are listed busiest first (Zipf weights)."""

    users: list[tuple[str, str]]  # (id, name)
    agents: list[tuple[str, str, str]]  # (id, name, owner id)
    tokens: dict[str, str]  # agent id or user id -> its token id
    on_behalf: set[str]  # agents that act for whoever asked them (a review bot), not for their owner
    workspaces: list[str]
    admin: str  # the admin user's id
    agent_cum: list[float]
    user_cum: list[float]
    workspace_cum: list[float]


def _population(rng: random.Random) -> Population:
    t = START_US - 30 * DAY_US
    users = [(_uuid7(rng, t), f"user-{i:03d}") for i in range(USERS)]
    user_cum = _zipf_cumulative(USERS, 1.0)
    agents = []
    for i in range(AGENTS):
        owner = rng.choices(users, cum_weights=user_cum)[0][0]
        agents.append((_uuid7(rng, t), f"agent-{i:03d}", owner))
    tokens = {key: _uuid7(rng, t) for key in [a[0] for a in agents] + [u[0] for u in users]}
    on_behalf = {a[0] for i, a in enumerate(agents) if i % 5 == 2}  # every fifth, from the third busiest
    return Population(
        users=users,
        agents=agents,
        tokens=tokens,
        on_behalf=on_behalf,
        workspaces=[f"ws-{i:02d}" for i in range(WORKSPACES)],
        admin=users[0][0],
        agent_cum=_zipf_cumulative(AGENTS, 1.1),
        user_cum=user_cum,
        workspace_cum=_zipf_cumulative(WORKSPACES, 0.9),
    )


def _hour_weight(hour: int) -> float:
    """Relative traffic in an hour of the span: working hours on weekdays, a trickle at night."""
    day, hod = divmod(hour, 24)
    weekend = (day + 3) % 7 >= 5  # START_US is a Thursday
    daytime = 1.0 if 8 <= hod < 19 else 0.25 if 6 <= hod < 22 else 0.08
    return daytime * (0.3 if weekend else 1.0)


# -- sessions ----------------------------------------------------------------------------------------


class _Session:
    __slots__ = (
        "agent",
        "behalf",
        "client",
        "count",
        "id",
        "model",
        "pending",
        "request",
        "token",
        "turns",
        "user",
        "workspace",
    )

    def __init__(self, pop: Population, rng: random.Random, ts: int) -> None:
        if rng.random() < 0.12:  # a person with their own token, no agent
            self.agent = None
            self.user = rng.choices(pop.users, cum_weights=pop.user_cum)[0][0]
            self.behalf = None
            self.token = pop.tokens[self.user]
        else:
            agent_id, _, owner = rng.choices(pop.agents, cum_weights=pop.agent_cum)[0]
            self.agent = agent_id
            self.user = owner
            self.token = pop.tokens[agent_id]
            self.behalf = (
                rng.choices(pop.users, cum_weights=pop.user_cum)[0][0] if agent_id in pop.on_behalf else None
            )
        self.workspace = (
            rng.choices(pop.workspaces, cum_weights=pop.workspace_cum)[0] if rng.random() < 0.7 else None
        )
        self.id = _uuid7(rng, ts)
        self.client = rng.choice(_CLIENTS)
        self.model = rng.choice(_MODELS)
        # Turns (request + response, maybe a tool call): heavy-tailed, mean ~15, a few run to thousands.
        self.turns = min(3000, int(rng.paretovariate(1.2) * 2.5))
        self.pending: list[tuple[str, str, Any, str | None]] = []  # (kind, resource, details, parent)
        self.request: str | None = None
        self.count = 0


class _Events:
    """The event stream, in seq order: (kind, actor_user, actor_agent, actor_token, on_behalf_of, workspace,
    session, parent, decision, resource, details) with ts and id chosen by the caller."""

    def __init__(self, pop: Population, rng: random.Random) -> None:
        self.pop = pop
        self.rng = rng
        self.prompts = [filler(rng.randint(60, 320), seed) for seed in range(97)]
        self.arguments = [orjson.dumps({"path": f"src/app/module_{i}.py"}).decode() for i in range(50)]

    def next_for(self, s: _Session, ts: int, event_id: str) -> tuple[Any, ...]:
        rng = self.rng
        s.count += 1
        if s.pending:
            kind, resource, details, parent = s.pending.pop(0)
            decision = "allow"
        elif s.request is None:
            s.turns -= 1
            s.request = event_id
            kind, resource, parent = "llm.request", f"llm:anthropic/{s.model}", None
            denied = rng.random() < 0.01
            decision = "deny" if denied else "allow"
            details = {
                "route": "messages",
                "provider": "anthropic",
                "client": s.client,
                "client_session": None,
                "model": s.model,
                "stream": rng.random() < 0.7,
                "parent_interception": None,
                "max_tokens": 8192,
                "tools_offered": 12,
                "last_prompt": self.prompts[rng.randrange(97)],
                "tool_results": [],
                "request_bytes": rng.randint(2_000, 400_000),
                "policy": {"rule": "default", "template": "engineering", "reserved_usd": 0.05},
            }
            if denied:
                details["status"] = 429
                details["error"] = "budget exceeded"
                s.request = None
        else:
            kind, resource, parent, decision = "llm.response", f"llm:anthropic/{s.model}", s.request, "allow"
            s.request = None
            tool_calls = []
            if rng.random() < 0.55:
                call_id = f"toolu_{rng.getrandbits(64):016x}"
                tool_calls.append(
                    {
                        "id": call_id,
                        "name": rng.choice(_TOOLS),
                        "arguments": self.arguments[rng.randrange(50)],
                    }
                )
                if s.workspace is not None and rng.random() < 0.5:
                    server, tool = rng.choice(_MCP_TOOLS)
                    call = {"server": server, "tool": tool, "call_id": call_id, "arguments_bytes": 180}
                    s.pending.append(("mcp.tool.call", f"mcp:{server}/{tool}", call, event_id))
                    result = {"server": server, "tool": tool, "call_id": call_id, "is_error": False}
                    result["content_bytes"] = rng.randint(100, 50_000)
                    s.pending.append(("mcp.tool.result", f"mcp:{server}/{tool}", result, event_id))
            details = {
                "status": 200,
                "error": None,
                "latency_ms": round(rng.uniform(400, 30_000), 3),
                "ttft_ms": round(rng.uniform(200, 2_000), 3),
                "response_id": f"msg_{rng.getrandbits(96):024x}",
                "model": s.model,
                "stop_reason": "tool_use" if tool_calls else "end_turn",
                "usage": {
                    "input_tokens": rng.randint(1_000, 150_000),
                    "output_tokens": rng.randint(10, 4_000),
                    "cache_read_tokens": rng.randint(0, 100_000),
                    "cache_write_tokens": 0,
                    "reasoning_tokens": 0,
                },
                "tool_calls": tool_calls,
                "thinking": [],
            }
            if rng.random() < 0.01:
                decision, details["status"], details["error"] = "error", 529, "upstream overloaded"
        return (
            kind,
            s.user,
            s.agent,
            s.token,
            s.behalf,
            s.workspace,
            s.id,
            parent,
            decision,
            resource,
            orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode(),
        )

    def gap(self, first_ts: int, last_ts: int, retried: int) -> tuple[Any, ...]:
        """The `audit.gap` event written once an outage's events have been retried."""
        details = {
            "from_ts": first_ts,
            "to_ts": last_ts,
            "refused_events": 0,
            "retried_events": retried,
            "dropped_events": 0,
            "fail_mode": "open",
            "reason": "database is locked",
        }
        text = orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()
        return ("audit.gap", None, None, None, None, None, None, None, "error", None, text)

    def outside_sessions(self) -> tuple[Any, ...]:
        """A failed login or an admin change: no agent, no session."""
        rng = self.rng
        if rng.random() < 0.8:
            details: dict[str, Any] = {
                "reason": rng.choice(("unknown token", "expired token", "revoked token")),
                "route": "messages",
                "client": rng.choice(_CLIENTS),
                "remote": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                "token_prefix": f"gh_{rng.getrandbits(24):06x}",
            }
            kind, user, decision, resource = "auth.failure", None, "deny", None
        else:
            target = rng.choice(self.pop.users)
            details = {"id": target[0], "name": target[1], "by": "user-000", "reason": "rotation"}
            kind, user, decision, resource = rng.choice(_ADMIN_KINDS), self.pop.admin, "allow", None
        details_text = orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()
        return (kind, user, None, None, None, None, None, None, decision, resource, details_text)


# -- the store -----------------------------------------------------------------------------------------


@dataclass
class Store:
    """What was generated, and the counts the query mix picks its entities from."""

    path: Path
    events: int
    seconds: float
    first_ts: int
    last_ts: int
    population: Population
    map_seconds: float = 0.0
    retried: int = 0  # events written after an outage, out of ts order
    per_agent: dict[str, int] = field(default_factory=dict)
    per_user: dict[str, int] = field(default_factory=dict)  # as actor or on behalf
    per_workspace: dict[str, int] = field(default_factory=dict)
    per_session: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"


def generate(
    path: Path, events: int, *, seed: int = 7, batch: int = 50_000, progress: Callable[[str], None] = _log
) -> Store:
    """Create a migrated SQLite store at `path` holding `events` chained events over SPAN_DAYS days."""
    from gatehouse.audit.chain import GENESIS_HASH, event_hash
    from gatehouse.store.db import Database
    from gatehouse.store.migrations import migrate

    started = time.perf_counter()
    rng = random.Random(seed)
    pop = _population(rng)
    db = Database(f"sqlite:///{path}")
    migrate(db)
    db.close()

    # Events per hour of the span, following _hour_weight; `bounds[h]` is the first index of hour h + 1.
    hours = SPAN_DAYS * 24
    weights = [_hour_weight(h) for h in range(hours)]
    total_weight = sum(weights)
    bounds: list[int] = []
    acc = 0.0
    for w in weights:
        acc += w
        bounds.append(round(events * acc / total_weight))
    bounds[-1] = events

    gen = _Events(pop, rng)
    store = Store(path, events, 0.0, START_US, START_US, pop)
    per_agent, per_user, per_ws, per_session = (
        store.per_agent,
        store.per_user,
        store.per_workspace,
        store.per_session,
    )
    active: list[_Session] = []
    prev = GENESIS_HASH
    conn = apsw.Connection(str(path))
    try:
        # Bulk load only: no journal, no fsync, a large page cache. Gatehouse's settings come back below.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        conn.execute("BEGIN")
        joined = START_US - 30 * DAY_US
        conn.executemany(
            "INSERT INTO users (id, name, email, role, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (uid, name, f"{name}@example.com", "admin" if uid == pop.admin else "member", joined)
                for uid, name in pop.users
            ],
        )
        conn.executemany(
            "INSERT INTO agents (id, name, owner_id, description, created_at) VALUES (?, ?, ?, ?, ?)",
            [(aid, name, owner, None, joined) for aid, name, owner in pop.agents],
        )
        conn.execute("COMMIT")

        seq = 0  # the chain's order
        created = 0  # the clock: ts follows creation, which an outage's retried events break from seq
        hour = 0
        hour_start = 0
        ts = last_ts = START_US
        rows: list[tuple[Any, ...]] = []
        random_ = rng.random
        outages = [(int(events * at), int(events * at) + max(20, events // 2000)) for at in OUTAGES]
        retry: deque[tuple[str, int, tuple[Any, ...]]] = deque()
        gap = [0, 0, 0]  # the outage being retried: first ts, last ts, events
        gap_due = False
        while seq < events:
            outage = next(((a, b) for a, b in outages if a <= created < b), None)
            if retry and outage is None and random_() < 0.5:
                # Fail open: what the store refused during the outage is retried after it, between new events.
                event_id, ts, fields = retry.popleft()
                gap_due = not retry  # the last one is in: the gap is recorded next
            elif gap_due:
                gap_due = False
                ts = last_ts + 1
                event_id = _uuid7(rng, ts)
                fields = gen.gap(*gap)
            else:
                while hour + 1 < hours and bounds[hour] <= created:
                    hour_start = bounds[hour]
                    hour += 1
                in_hour = bounds[hour] - hour_start
                ideal = START_US + hour * HOUR_US + (created - hour_start) * HOUR_US // max(1, in_hour)
                created += 1
                # Created up to 2 ms before it entered the chain (the writer's queue).
                ts = last_ts = ideal - int(random_() * 2000)
                event_id = _uuid7(rng, ts)
                if random_() < 0.004:
                    fields = gen.outside_sessions()
                else:
                    # As many sessions at once as keeps each at about one event per 20 s at this hour's rate.
                    wanted = max(2, round(in_hour * SESSION_SECONDS_BETWEEN_EVENTS / 3600))
                    while len(active) < wanted:
                        active.append(_Session(pop, rng, ts))
                    k = int(random_() * len(active))
                    session = active[k]
                    fields = gen.next_for(session, ts, event_id)
                    if session.turns <= 0 and session.request is None and not session.pending:
                        active[k] = active[-1]
                        active.pop()
                        per_session[session.id] = session.count
                if outage is not None:  # the store is down: kept for retry, not in the chain yet
                    gap[:] = [gap[0] if retry else ts, ts, gap[2] + 1 if retry else 1]
                    store.retried += 1
                    retry.append((event_id, ts, fields))
                    continue
            seq += 1
            user, agent, _token, behalf, ws = fields[1:6]
            if agent is not None:
                per_agent[agent] = per_agent.get(agent, 0) + 1
            if user is not None:
                per_user[user] = per_user.get(user, 0) + 1
            if behalf is not None and behalf != user:
                per_user[behalf] = per_user.get(behalf, 0) + 1
            if ws is not None:
                per_ws[ws] = per_ws.get(ws, 0) + 1
            values = (seq, event_id, ts, *fields, prev)
            prev = event_hash(values)
            rows.append((*values, prev))
            if len(rows) >= batch:
                _insert(conn, rows)
                rows = []
                if seq % 500_000 == 0:
                    progress(f"  generated {seq:,} events ({time.perf_counter() - started:.0f} s)")
        _insert(conn, rows)
        for session in active:  # still running at the end of the span
            per_session[session.id] = session.count
        conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    store.last_ts = last_ts
    store.seconds = time.perf_counter() - started
    # The time map and key index, as the background catch-up would have built them along the way.
    from gatehouse.audit import timemap

    started = time.perf_counter()
    db = Database(store.url)
    try:
        timemap.catch_up(db)
    finally:
        db.close()
    store.map_seconds = time.perf_counter() - started
    return store


def _insert(conn: apsw.Connection, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")


def verify_tail(url: str, rows: int = 5000) -> bool:
    """Recompute the last rows' hashes and links, and check the chain head: the store is a valid trail."""
    from gatehouse.store.db import Database

    db = Database(url)
    try:
        tail = db.query("SELECT * FROM events ORDER BY seq DESC LIMIT ?", (rows,))
        head = db.query_one("SELECT seq, hash FROM chain_head WHERE id = 1")
    finally:
        db.close()
    tail.reverse()
    if not tail or head is None or (head["seq"], head["hash"]) != (tail[-1]["seq"], tail[-1]["hash"]):
        return False
    return chain_links(tail)


# -- the query mix -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One kind of timeline question: whose events (picked at random from a group), over what window, and
    which page (1 = the first; n = follow the cursor n - 1 times, untimed, then time that page)."""

    name: str
    scope: str  # agent, user, session, workspace, all
    group: str  # busy, quiet, any, long
    window_us: int | None  # None: no window (a whole session, an agent's whole history)
    page: int = 1
    open_end: bool = False  # `--from` without `--to`: from the window's start to now


SHAPES = (
    Shape("agent, busy, 1 h", "agent", "busy", HOUR_US),
    Shape("agent, busy, 1 day", "agent", "busy", DAY_US),
    Shape("agent, busy, 7 days", "agent", "busy", 7 * DAY_US),
    Shape("agent, busy, 1 day, page 3", "agent", "busy", DAY_US, page=3),
    Shape("agent, busy, from 30 days ago", "agent", "busy", 30 * DAY_US, open_end=True),
    Shape("agent, busy, no window", "agent", "busy", None),
    Shape("agent, quiet, 1 day", "agent", "quiet", DAY_US),
    Shape("agent, quiet, 7 days", "agent", "quiet", 7 * DAY_US),
    Shape("user, busy, 1 day", "user", "busy", DAY_US),
    Shape("user, busy, 7 days, page 3", "user", "busy", 7 * DAY_US, page=3),
    Shape("user, quiet, 7 days", "user", "quiet", 7 * DAY_US),
    Shape("session, whole", "session", "any", None),
    Shape("session, long, page 3", "session", "long", None, page=3),
    Shape("workspace, 1 h", "workspace", "any", HOUR_US),
    Shape("workspace, 1 day", "workspace", "any", DAY_US),
    Shape("all actors, 1 h", "all", "any", HOUR_US),
)


def _groups(store: Store) -> dict[tuple[str, str], list[str]]:
    """Entities by scope and group: busy = the three with the most events, quiet = the less busy half of
    those with any, long = sessions of more than 300 events."""

    def ranked(counts: dict[str, int]) -> list[str]:
        return sorted(counts, key=lambda k: (-counts[k], k))

    agents, users = ranked(store.per_agent), ranked(store.per_user)
    sessions = sorted(store.per_session)
    return {
        ("agent", "busy"): agents[:3],
        ("agent", "quiet"): agents[len(agents) // 2 :],
        ("user", "busy"): users[:3],
        ("user", "quiet"): users[len(users) // 2 :],
        ("session", "any"): sessions,
        ("session", "long"): [s for s in sessions if store.per_session[s] > 300] or sessions,
        ("workspace", "any"): sorted(store.per_workspace),
        ("all", "any"): [""],
    }


def _names(store: Store) -> dict[str, str]:
    """Agents and users are asked for by name, as people do (`--agent ci-bot`)."""
    return {i: n for i, n in store.population.users} | {a[0]: a[1] for a in store.population.agents}


def question(store: Store, shape: Shape, rng: random.Random, groups: dict[tuple[str, str], list[str]]) -> Any:
    """A random EventFilter of this shape."""
    from gatehouse.audit.queries import EventFilter

    key = rng.choice(groups[(shape.scope, shape.group)])
    since = until = None
    if shape.window_us is not None:
        if shape.open_end:  # "the last N days", asked at some time of the last day
            since = store.last_ts - shape.window_us - rng.randrange(DAY_US)
        else:
            since = rng.randrange(store.first_ts, max(store.first_ts + 1, store.last_ts - shape.window_us))
            until = since + shape.window_us
    names = _names(store)
    return EventFilter(
        agent=names[key] if shape.scope == "agent" else None,
        user=names[key] if shape.scope == "user" else None,
        session=key if shape.scope == "session" else None,
        workspace=key if shape.scope == "workspace" else None,
        since_us=since,
        until_us=until,
        limit=PAGE_SIZE,
    )


@dataclass
class ShapeResult:
    shape: Shape
    ms: list[float] = field(default_factory=list)
    fresh_ms: list[float] = field(default_factory=list)  # the queries on a new connection
    events: int = 0  # returned, over all timed pages
    wrong: int = 0  # pages out of seq order or with an event outside the filter

    def row(self) -> list[Any]:
        return [
            self.shape.name,
            len(self.ms),
            self.events / len(self.ms) if self.ms else 0.0,
            percentile(self.ms, 50),
            percentile(self.ms, 95),
            percentile(self.ms, 99),
            max(self.ms, default=float("nan")),
            percentile(self.fresh_ms, 95),
        ]


def _sound(page: Any, f: Any, ids: dict[str, str]) -> bool:
    """The page is in causal order and every event matches the filter."""
    seqs = [e["seq"] for e in page.events]
    if seqs != sorted(set(seqs)):
        return False
    for e in page.events:
        actor = e["actor"]
        if f.agent and actor["agent"] != ids[f.agent]:
            return False
        if f.user and ids[f.user] not in (actor["user"], actor["on_behalf_of"]):
            return False
        if (f.session and e["session"] != f.session) or (f.workspace and e["workspace"] != f.workspace):
            return False
        if (f.since_us is not None and e["ts"] < f.since_us) or (
            f.until_us is not None and e["ts"] >= f.until_us
        ):
            return False
    return True


def measure(
    store: Store, queries: int, *, seed: int = 11, shapes: tuple[Shape, ...] = SHAPES
) -> list[ShapeResult]:
    """Run `queries` random questions of every shape, interleaved round by round, through `timeline`."""
    from dataclasses import replace

    from gatehouse.audit.queries import timeline
    from gatehouse.store.db import Database

    rng = random.Random(seed)
    groups = _groups(store)
    ids = {name: i for i, name in _names(store).items()}
    results = [ShapeResult(s) for s in shapes]
    db = Database(store.url)
    try:
        for n in range(queries):
            fresh = n % FRESH_CONNECTION_EVERY == 0
            if fresh:
                db.close()
                db = Database(store.url)
                db.query("SELECT 1")  # connected, with an empty page cache
            for result in results:
                f = question(store, result.shape, rng, groups)
                for _ in range(result.shape.page - 1):
                    cursor = timeline(db, f).next_cursor
                    if cursor is None:
                        break
                    f = replace(f, cursor=cursor)
                t0 = time.perf_counter()
                page = timeline(db, f)
                ms = (time.perf_counter() - t0) * 1000
                result.ms.append(ms)
                if fresh:
                    result.fresh_ms.append(ms)
                result.events += len(page.events)
                result.wrong += not _sound(page, f, ids)
    finally:
        db.close()
    return results


def reference(db: Any, f: Any, ids: dict[str, str]) -> list[int]:
    """Every seq the filter selects, in order, straight from SQL (no time map, no paging): what the
    timeline's pages must add up to."""
    where: list[str] = []
    params: list[Any] = []
    if f.agent:
        where.append("actor_agent = ?")
        params.append(ids[f.agent])
    if f.user:
        where.append("(actor_user = ? OR on_behalf_of = ?)")
        params += [ids[f.user], ids[f.user]]
    for column, value in (("session", f.session), ("workspace", f.workspace)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if f.since_us is not None:
        where.append("ts >= ?")
        params.append(f.since_us)
    if f.until_us is not None:
        where.append("ts < ?")
        params.append(f.until_us)
    sql = "SELECT seq FROM events" + (" WHERE " + " AND ".join(where) if where else "")
    return sorted(int(r["seq"]) for r in db.query(sql, params))


def check(
    store: Store,
    questions: int,
    *,
    pages: int | None = None,
    limit: int = PAGE_SIZE,
    seed: int = 13,
    shapes: tuple[Shape, ...] = SHAPES,
) -> list[str]:
    """Walk `pages` pages (None: all) of random questions of every shape through `timeline`, and compare
    the events with `reference`. Returns what disagreed, for people; empty when everything matched."""
    from dataclasses import replace

    from gatehouse.audit.queries import timeline
    from gatehouse.store.db import Database

    rng = random.Random(seed)
    groups = _groups(store)
    ids = {name: i for i, name in _names(store).items()}
    problems: list[str] = []
    db = Database(store.url)
    try:
        for shape in shapes:
            for _ in range(questions):
                f = replace(question(store, shape, rng, groups), limit=limit)
                want = reference(db, f, ids)
                got: list[int] = []
                page_no = 0
                while pages is None or page_no < pages:
                    page = timeline(db, f)
                    got += [int(e["seq"]) for e in page.events]
                    page_no += 1
                    if page.next_cursor is None:
                        break
                    f = replace(f, cursor=page.next_cursor)
                expected = want if pages is None else want[: pages * limit]
                if got != expected:
                    problems.append(f"{shape.name}: {f} gave {len(got)} events, expected {len(expected)}")
    finally:
        db.close()
    return problems


def _explain(url: str, f: Any) -> list[str]:
    """The plans SQLite chose for the statements `timeline` runs for this filter."""
    from gatehouse.audit import queries
    from gatehouse.store.db import Database

    db = Database(url)
    plans: list[str] = []
    original = db.query

    def spy(sql: str, params: Any = ()) -> list[dict[str, Any]]:
        if sql.lstrip().upper().startswith("SELECT") and "FROM events" in sql:
            plan = original("EXPLAIN QUERY PLAN " + sql, params)
            plans.append("; ".join(str(r["detail"]) for r in plan))
        return original(sql, params)

    setattr(db, "query", spy)  # noqa: B010 (an instance attribute, for this one Database)
    try:
        queries.timeline(db, f)
    finally:
        db.close()
    return plans


# -- the bench -----------------------------------------------------------------------------------------


def run(opts: Options) -> Outcome:
    out = Outcome("timeline")
    n_events = QUICK_EVENTS if opts.quick else FULL_EVENTS
    n_queries = QUICK_QUERIES if opts.quick else FULL_QUERIES
    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-bench-timeline-"))
    try:
        _log(f"  generating {n_events:,} events")
        store = generate(tmp / "audit.db", n_events)
        size_mb = store.path.stat().st_size / 1e6
        chain_ok = verify_tail(store.url)
        _log(
            f"  generated in {store.seconds:.0f} s ({size_mb:,.0f} MB), time map in"
            f" {store.map_seconds:.1f} s; chain tail verified: {chain_ok}"
        )
        _log(f"  {n_queries} queries of each of {len(SHAPES)} shapes")
        t0 = time.perf_counter()
        results = measure(store, n_queries)
        measure_s = time.perf_counter() - t0
        _log(f"  measured in {measure_s:.0f} s; comparing pages with plain SQL")
        t0 = time.perf_counter()
        problems = check(store, 1, pages=3)
        check_s = time.perf_counter() - t0
        rng = random.Random(3)
        groups = _groups(store)
        plans = {s.name: _explain(store.url, question(store, s, rng, groups)) for s in SHAPES}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for problem in problems:
        _log(f"  MISMATCH {problem}")

    all_ms = [ms for r in results for ms in r.ms]
    all_fresh = [ms for r in results for ms in r.fresh_ms]
    rows = [r.row() for r in results]
    rows.append(
        [
            "all shapes",
            len(all_ms),
            sum(r.events for r in results) / len(all_ms),
            percentile(all_ms, 50),
            percentile(all_ms, 95),
            percentile(all_ms, 99),
            max(all_ms),
            percentile(all_fresh, 95),
        ]
    )
    wrong = sum(r.wrong for r in results)
    out.tables.append(
        table(
            "Timeline store (SQLite, every migration)",
            ["", "value"],
            [
                ["events, days", f"{n_events:,} over {SPAN_DAYS} days"],
                ["file size", f"{size_mb:,.0f} MB"],
                ["generated in", f"{store.seconds:.1f} s ({n_events / store.seconds:,.0f} events/s)"],
                ["time map caught up in", f"{store.map_seconds:.1f} s"],
                [
                    "agents / users / workspaces / sessions",
                    f"{len(store.per_agent)} / {len(store.per_user)} / {len(store.per_workspace)} /"
                    f" {len(store.per_session):,}",
                ],
                ["events retried after outages (ts out of seq order)", f"{store.retried:,}"],
                ["chain tail verified", chain_ok],
                ["pages out of order or off the filter", wrong],
                [
                    "pages differing from plain SQL (1 question x 3 pages per shape)",
                    f"{len(problems)} ({check_s:.0f} s)",
                ],
            ],
        )
    )
    out.tables.append(
        table(
            f"Timeline page ({PAGE_SIZE} events) latency in ms, {n_queries} random questions per shape",
            ["shape", "queries", "events/page", "p50", "p95", "p99", "max", "p95 fresh conn."],
            rows,
        )
    )
    out.data = {
        "events": n_events,
        "span_days": SPAN_DAYS,
        "store_mb": size_mb,
        "generate_s": store.seconds,
        "time_map_s": store.map_seconds,
        "measure_s": measure_s,
        "check_s": check_s,
        "chain_tail_verified": chain_ok,
        "wrong_pages": wrong,
        "mismatches": problems,
        "shapes": {
            r.shape.name: {
                "p50_ms": percentile(r.ms, 50),
                "p95_ms": percentile(r.ms, 95),
                "p99_ms": percentile(r.ms, 99),
                "max_ms": max(r.ms),
                "fresh_p95_ms": percentile(r.fresh_ms, 95),
                "events_per_page": r.events / len(r.ms),
                "ms": r.ms,
                "plan": plans[r.shape.name],
            }
            for r in results
        },
        "overall": {
            "p50_ms": percentile(all_ms, 50),
            "p95_ms": percentile(all_ms, 95),
            "p99_ms": percentile(all_ms, 99),
        },
    }
    worst = max(results, key=lambda r: percentile(r.ms, 95))
    worst_p95 = percentile(worst.ms, 95)
    out.checks.append(
        Check(
            f"timeline p95 at {n_events:,} events, worst shape ({worst.shape.name})",
            worst_p95,
            f"<= {TARGET_P95_MS:.0f} ms",
            worst_p95 <= TARGET_P95_MS,
            " ms",
        )
    )
    out.checks.append(
        Check(
            "timeline pages wrong (order, filter, plain SQL)",
            float(wrong + len(problems)),
            "0",
            wrong == 0 and not problems and chain_ok,
        )
    )
    return out
