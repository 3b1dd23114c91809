"""A full stack with the policy engine: the simulator upstream, Gatehouse in front, templates applied."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from gatehouse.config import ProviderSettings, Settings, StoreSettings
from gatehouse.identity.service import Actor
from gatehouse.policy.settings import PolicySettings
from gatehouse.policy.templates import TemplateStore
from gatehouse.server import build, create_app
from gatehouse.serving import serve_in_thread
from gatehouse.simulator.app import create_app as create_simulator
from gatehouse.simulator.config import SimulatorConfig
from tests.gateway.conftest import UPSTREAM_KEY, Simulator, Stack, simulator

__all__ = ["simulator"]

OPERATOR = Actor()
REDIS_URL = "redis://127.0.0.1:6379/0"

CI_BOT = """\
name: ci-bot
description: CI pipelines
providers:
  allow: [anthropic, openai]
models:
  allow:
    - "claude-sonnet-*"
    - "claude-haiku-*"
    - "openai/gpt-5*"
  deny:
    - "claude-opus-*"
    - "gpt-5-pro*"
max_tokens_per_request: 4096
tokens:
  max_ttl: 30d
"""


@pytest.fixture(scope="session")
def slow_upstream() -> Iterator[Simulator]:
    """Answers after a pause, so parallel calls all reserve before any settles."""
    config = SimulatorConfig(api_key=UPSTREAM_KEY, latency_ms=1500)
    with serve_in_thread(lambda: create_simulator(config)) as url:
        yield Simulator(url)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"gatehouse-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


PolicyStackFactory = Callable[..., Stack]


@pytest.fixture
def policy_stack(simulator: Simulator, tmp_path: Path) -> Iterator[PolicyStackFactory]:
    """Build a stack. `templates`: YAML texts applied first (as templates/<name>.yaml); `template`: the one
    the agent token (user alice, agent ci-bot) is bound to; `policy`: the policy settings."""
    contexts: list[Any] = []

    def make(
        *,
        templates: tuple[str, ...] = (CI_BOT,),
        template: str | None = "ci-bot",
        policy: PolicySettings | None = None,
        store_url: str | None = None,
        upstream: Simulator | None = None,
        fresh: bool = True,
    ) -> Stack:
        sim = upstream or simulator
        sim.reset()
        settings = Settings(
            store=StoreSettings(
                url=store_url or f"sqlite:///{tmp_path / 'gatehouse.db'}", busy_timeout_ms=2000
            ),
            providers={
                "anthropic": ProviderSettings(
                    type="anthropic", base_url=sim.url, api_key=SecretStr(UPSTREAM_KEY)
                ),
                "openai": ProviderSettings(type="openai", base_url=sim.url, api_key=SecretStr(UPSTREAM_KEY)),
            },
        )
        gh = build(settings, policy=policy)
        token = admin_token = ""
        if fresh:
            gh.identity.create_user("alice", role="member", actor=OPERATOR)
            gh.identity.create_agent("ci-bot", owner="alice", actor=OPERATOR)
            gh.identity.create_user("root", role="admin", actor=OPERATOR)
            store = TemplateStore(gh.db)
            for text in templates:
                name = text.split("name:", 1)[1].split("\n", 1)[0].strip()
                store.apply(text, f"templates/{name}.yaml", actor=OPERATOR)
            _, token = gh.identity.create_token(
                user="alice", agent="ci-bot", template=template, actor=OPERATOR
            )
            _, admin_token = gh.identity.create_token(user="root", actor=OPERATOR)
        ctx = serve_in_thread(lambda: create_app(gh))
        url = ctx.__enter__()
        contexts.append(ctx)
        return Stack(url=url, gh=gh, sim=sim, token=token, admin_token=admin_token)

    yield make
    for ctx in reversed(contexts):
        ctx.__exit__(None, None, None)


def deny_details(stack: Stack) -> dict[str, Any]:
    import orjson

    [row] = stack.log_db.query("SELECT details FROM events WHERE kind = 'llm.request' AND decision = 'deny'")
    details: dict[str, Any] = orjson.loads(row["details"])
    return details
