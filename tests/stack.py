"""An end-to-end stack for gateway tests: the simulator as the upstream, Gatehouse in front of it, each
serving on a loopback port in its own thread, so the official SDKs drive them like real clients do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gatehouse.audit.events import ROW_COLUMNS, event_from_row
from gatehouse.audit.journal import drain_all
from gatehouse.bridge.projection import calls_of
from gatehouse.config import (
    AuditSettings,
    BridgeSettings,
    ProviderSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from gatehouse.identity.service import Actor
from gatehouse.server import Gatehouse, build, create_app
from gatehouse.serving import serve_in_thread
from gatehouse.simulator.app import create_app as create_simulator
from gatehouse.simulator.config import SimulatorConfig
from gatehouse.store.db import Database

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"


@dataclass
class Simulator:
    url: str

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_sim/requests").json()["requests"]  # type: ignore[no-any-return]

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/_sim/stats").json()  # type: ignore[no-any-return]

    def fault(self, fault: str, count: int = 1, after_events: int = 0) -> None:
        httpx.post(
            f"{self.url}/_sim/faults", json={"fault": fault, "count": count, "after_events": after_events}
        ).raise_for_status()

    def reset(self) -> None:
        httpx.delete(f"{self.url}/_sim/faults")
        httpx.delete(f"{self.url}/_sim/requests")


@dataclass
class Stack:
    url: str
    gh: Gatehouse
    sim: Simulator
    token: str  # an agent's token (user alice, agent ci-bot)
    admin_token: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.gh.db

    @property
    def derived_db(self) -> Database:
        """The store with its derived tables (interceptions, sessions, spend) caught up with the log, as
        every reader of them does first."""
        self.gh.derived.catch_up(self.gh.db)
        return self.gh.db

    @property
    def log_db(self) -> Database:
        """The store with what the journal holds chained into the log, as every reader of it does first."""
        drain_all(self.gh.db)
        return self.gh.db

    @property
    def anthropic_url(self) -> str:
        return f"{self.url}/bridge/anthropic"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/bridge/openai/v1"

    def interceptions(self) -> list[dict[str, Any]]:
        """Each recorded LLM call as one record, from its events (`calls_of`), in the order they started."""
        rows = self.log_db.query(f"SELECT {ROW_COLUMNS} FROM events ORDER BY seq")
        events = [event_from_row(r) for r in rows]
        return sorted(calls_of(events), key=lambda c: c["started_at"])

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if kind is None:
            return self.log_db.query("SELECT * FROM events ORDER BY seq")
        return self.log_db.query("SELECT * FROM events WHERE kind = ? ORDER BY seq", (kind,))


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    config = SimulatorConfig(api_key=UPSTREAM_KEY)
    with serve_in_thread(lambda: create_simulator(config)) as url:
        yield Simulator(url)


@pytest.fixture(scope="session")
def slow_simulator() -> Iterator[Simulator]:
    """A model that writes a long answer slowly, to hang up on in the middle."""
    config = SimulatorConfig(api_key=UPSTREAM_KEY, chunk_delay_ms=20, output_words=3000, words_per_chunk=1)
    with serve_in_thread(lambda: create_simulator(config)) as url:
        yield Simulator(url)


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(simulator: Simulator, tmp_path: Path) -> Iterator[StackFactory]:
    """Build a stack; keyword arguments override settings sections (bridge=, audit=, store_url=, ...);
    `providers` adds provider instances to the `anthropic` and `openai` ones (or replaces them by name)."""
    contexts: list[Any] = []

    def make(
        *,
        store_url: str | None = None,
        bridge: BridgeSettings | None = None,
        audit: AuditSettings | None = None,
        server: ServerSettings | None = None,
        anthropic_models: list[str] | None = None,
        upstream: Simulator | None = None,
        providers: dict[str, ProviderSettings] | None = None,
    ) -> Stack:
        sim = upstream or simulator
        sim.reset()
        settings = Settings(
            server=server or ServerSettings(),
            store=StoreSettings(
                url=store_url or f"sqlite:///{tmp_path / 'gatehouse.db'}", busy_timeout_ms=200
            ),
            audit=audit or AuditSettings(),
            bridge=bridge or BridgeSettings(),
            providers={
                "anthropic": ProviderSettings(
                    type="anthropic",
                    base_url=sim.url,
                    api_key=SecretStr(UPSTREAM_KEY),
                    models=anthropic_models or ["*"],
                ),
                "openai": ProviderSettings(type="openai", base_url=sim.url, api_key=SecretStr(UPSTREAM_KEY)),
                **(providers or {}),
            },
        )
        gh = build(settings)
        operator = Actor()
        gh.identity.create_user("alice", role="member", actor=operator)
        gh.identity.create_agent("ci-bot", owner="alice", actor=operator)
        gh.identity.create_user("root", role="admin", actor=operator)
        _, token = gh.identity.create_token(user="alice", agent="ci-bot", actor=operator)
        _, admin_token = gh.identity.create_token(user="root", actor=operator)
        ctx = serve_in_thread(lambda: create_app(gh))
        url = ctx.__enter__()
        contexts.append(ctx)
        return Stack(url=url, gh=gh, sim=sim, token=token, admin_token=admin_token)

    yield make
    for ctx in reversed(contexts):
        ctx.__exit__(None, None, None)


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack()
