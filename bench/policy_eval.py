"""Policy evaluation cost per request: what the policy engine adds to one Bridge call.

Measures `PolicyEngine.admit` (and `settle` where there is a reservation) in-process, on the paths a
call takes:

* allow    - template rules only (provider and model globs, max_tokens);
* deny     - a model outside the template (the refusal object is built, as the Bridge does);
* limits   - allow plus reserve + settle on 2 rate limits and 2 budgets (memory counters);
* team     - the same plus a team's budget and rate limit (6 counters);
* redis    - `limits` with the counters in Redis (one round trip to reserve; settle is off the hot path);
* explain  - not on the hot path, for reference.

Target: <= 0.1 ms (100 us) per request for the in-process paths.

`--e2e N` also drives a real stack (simulator upstream, Gatehouse on SQLite, both in threads) with N
sequential requests per path, alternating request by request between a token bound to no template, one
bound to a rules-only template, one bound to a template with budgets and rate limits, and a denied model;
it reports the p50 wall time of each, so the difference between paths is what the policy adds end to end.

Usage: python -m bench.policy_eval [--n 20000] [--redis redis://127.0.0.1:6379/0] [--e2e 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gatehouse.bridge.facts import RequestFacts, Usage
from gatehouse.identity.service import Actor, IdentityService, Principal
from gatehouse.policy.engine import PolicyEngine, PolicyRefusal
from gatehouse.policy.settings import PolicySettings
from gatehouse.policy.teams import TeamService
from gatehouse.policy.templates import TemplateStore
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate

TARGET_US = 100.0
OPERATOR = Actor()

RULES = """\
name: bench
providers:
  allow: [anthropic, openai]
models:
  allow: ["claude-sonnet-*", "claude-haiku-*", "openai/gpt-5*", "claude-3-*", "claude-4-*"]
  deny: ["claude-opus-*", "gpt-5-pro*", "*-preview"]
max_tokens_per_request: 8192
"""
LIMITS = (
    RULES.replace("name: bench", "name: metered")
    + """\
rate_limits:
  - {per: agent, requests_per_minute: 100000000, tokens_per_minute: 1000000000000}
budgets:
  - {per: agent, usd: 1000000000, period: day}
  - {per: template, usd: 1000000000, period: month, window: rolling}
"""
)


def _setup(root: Path) -> tuple[Database, dict[str, Principal]]:
    db = Database(f"sqlite:///{root / 'bench.db'}")
    migrate(db)
    ids = IdentityService(db)
    ids.create_user("alice", actor=OPERATOR)
    agent = ids.create_agent("bot", owner="alice", actor=OPERATOR)
    store = TemplateStore(db)
    store.apply(RULES, "templates/bench.yaml", actor=OPERATOR)
    store.apply(LIMITS, "templates/metered.yaml", actor=OPERATOR)
    teams = TeamService(db)
    team = teams.create("platform", actor=OPERATOR)
    teams.set_limits(
        "platform",
        {"budgets": [{"usd": 1e9, "period": "day"}], "rate_limits": {"requests_per_minute": 10**8}},
        actor=OPERATOR,
    )
    user = db.query_one("SELECT id FROM users WHERE name = 'alice'")
    version = db.query_one("SELECT version FROM policy_state")
    assert user is not None and version is not None

    def principal(template: str, team_id: str | None = None) -> Principal:
        return Principal(
            token_id="tok",
            user_id=user["id"],
            user_name="alice",
            role="member",
            agent_id=agent["id"],
            agent_name="bot",
            template=template,
            team_id=team_id,
            policy_version=int(version["version"]),
        )

    return db, {
        "rules": principal("bench"),
        "limits": principal("metered"),
        "team": principal("metered", team["id"]),
    }


async def _measure(n: int, op: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(min(1000, n)):  # warm up: memo tables, counters, caches
        await op()
    rounds = []
    per_round = max(1, n // 20)
    for _ in range(20):
        started = time.perf_counter()
        for _ in range(per_round):
            await op()
        rounds.append((time.perf_counter() - started) / per_round * 1e6)
    return rounds


async def run(n: int, redis_url: str | None) -> list[tuple[str, float, float]]:
    results: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as root:
        db, principals = _setup(Path(root))
        allowed = RequestFacts(model="claude-sonnet-4-6", stream=False, max_tokens=1024, last_user_prompt="x")
        denied = RequestFacts(model="claude-opus-4-7", stream=False, max_tokens=1024, last_user_prompt="x")
        usage = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=5000)

        async def baseline() -> None:
            return None

        engines = [("memory", PolicyEngine(db, PolicySettings()))]
        if redis_url:
            engines.append(
                (
                    "redis",
                    PolicyEngine(
                        db, PolicySettings(counters="redis", redis_url=redis_url, redis_prefix="bench:")
                    ),
                )
            )
        for backend, engine in engines:
            await engine.start()

            async def allow(engine: PolicyEngine = engine) -> None:
                await engine.admit(principals["rules"], "anthropic", allowed, 4000, openai=False)

            async def deny(engine: PolicyEngine = engine) -> None:
                try:
                    await engine.admit(principals["rules"], "anthropic", denied, 4000, openai=False)
                except PolicyRefusal:
                    return
                raise AssertionError("expected a refusal")

            def with_limits(who: str, engine: PolicyEngine = engine) -> Callable[[], Awaitable[None]]:
                async def admit_settle() -> None:
                    admission = await engine.admit(principals[who], "anthropic", allowed, 4000, openai=False)
                    engine.settle(admission, usage)

                return admit_settle

            paths: list[tuple[str, Callable[[], Awaitable[None]]]] = []
            if backend == "memory":
                paths += [("baseline (empty coroutine)", baseline), ("allow", allow), ("deny", deny)]
            paths += [
                (f"limits ({backend})", with_limits("limits")),
                (f"team ({backend})", with_limits("team")),
            ]
            for name, op in paths:
                rounds = await _measure(n if backend == "memory" else max(200, n // 10), op)
                results.append((name, statistics.median(rounds), max(rounds)))
            await engine.close()
        db.close()
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter("bench:*"))
        if keys:
            client.delete(*keys)
        client.close()
    return results


def e2e(n: int) -> list[tuple[str, float]]:
    import httpx
    from pydantic import SecretStr

    from gatehouse.config import ProviderSettings, Settings, StoreSettings
    from gatehouse.server import build, create_app
    from gatehouse.serving import serve_in_thread
    from gatehouse.simulator.app import create_app as create_simulator
    from gatehouse.simulator.config import SimulatorConfig

    key = "sk-bench-upstream-0123456789abcdef"
    with (
        tempfile.TemporaryDirectory() as root,
        serve_in_thread(lambda: create_simulator(SimulatorConfig(api_key=key))) as sim,
    ):
        settings = Settings(
            store=StoreSettings(url=f"sqlite:///{Path(root) / 'e2e.db'}"),
            providers={"anthropic": ProviderSettings(type="anthropic", base_url=sim, api_key=SecretStr(key))},
        )
        gh = build(settings)
        ids = IdentityService(gh.db)
        ids.create_user("alice", actor=OPERATOR)
        ids.create_agent("bot", owner="alice", actor=OPERATOR)
        TemplateStore(gh.db).apply(RULES, "templates/bench.yaml", actor=OPERATOR)
        TemplateStore(gh.db).apply(LIMITS, "templates/metered.yaml", actor=OPERATOR)
        tokens = {
            "no template": ids.create_token(user="alice", agent="bot", actor=OPERATOR)[1],
            "rules only": ids.create_token(user="alice", agent="bot", template="bench", actor=OPERATOR)[1],
            "rules + 4 limits": ids.create_token(
                user="alice", agent="bot", template="metered", actor=OPERATOR
            )[1],
        }
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }
        denied = {**body, "model": "claude-opus-4-7"}
        paths = [(name, token, body) for name, token in tokens.items()]
        paths.append(("denied (403)", tokens["rules only"], denied))
        samples: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        with serve_in_thread(lambda: create_app(gh)) as url, httpx.Client(base_url=url, timeout=30) as http:
            for i in range(n + 200):
                for name, token, payload in paths:
                    started = time.perf_counter()
                    r = http.post(
                        "/bridge/anthropic/v1/messages",
                        json=payload,
                        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
                    )
                    elapsed = (time.perf_counter() - started) * 1000
                    assert r.status_code == (403 if payload is denied else 200), r.text
                    if i >= 200:  # warm-up
                        samples[name].append(elapsed)
    return [(name, statistics.median(ms)) for name, ms in samples.items()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="calls per path")
    parser.add_argument("--redis", default=None, help="also measure Redis counters at this URL")
    parser.add_argument("--e2e", type=int, default=0, help="also N requests per path through a real stack")
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        results = runner.run(run(args.n, args.redis))
    print(f"{'path':<28} {'median us/call':>15} {'worst round':>12}  target <= {TARGET_US:.0f} us")
    failed = False
    for name, median, worst in results:
        in_process = "redis" not in name
        verdict = "" if not in_process or "baseline" in name else ("ok" if median <= TARGET_US else "OVER")
        failed = failed or verdict == "OVER"
        print(f"{name:<28} {median:>15.2f} {worst:>12.2f}  {verdict}")
    if args.e2e:
        print(f"\n{'end to end (sequential)':<28} {'p50 ms':>15}")
        for name, p50 in e2e(args.e2e):
            print(f"{name:<28} {p50:>15.3f}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
