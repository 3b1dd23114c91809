"""The wiring proposed for server.py, end to end: a request through the Bridge reaches a JSONL sink and
shows in /metrics; the exporter stops cleanly with the app, before the writer and the store close."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest
from pydantic import SecretStr

from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.settings import ExportSettings, JsonlSinkSettings
from gatehouse.config import ProviderSettings, Settings, StoreSettings
from gatehouse.identity.service import Actor
from gatehouse.metrics import MetricsSettings
from gatehouse.server import Gatehouse, build, create_app
from gatehouse.serving import serve_in_thread
from tests.gateway.conftest import UPSTREAM_KEY, Simulator, simulator  # noqa: F401 - fixture


@pytest.fixture
def wired(simulator: Simulator, tmp_path: Path) -> Iterator[tuple[str, Gatehouse, Path, Exporter]]:  # noqa: F811
    simulator.reset()
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'g.db'}"),
        providers={
            "anthropic": ProviderSettings(
                type="anthropic", base_url=simulator.url, api_key=SecretStr(UPSTREAM_KEY)
            )
        },
        export=ExportSettings(
            sinks={"archive": JsonlSinkSettings(type="jsonl", path=tmp_path / "audit.jsonl")}
        ),
        metrics=MetricsSettings(auth="none"),
    )
    gh = build(settings)  # wires the metrics and the exporter as `gatehouse serve` does
    exporter = gh.exporter
    assert exporter is not None and gh.metrics is not None
    operator = Actor()
    gh.identity.create_user("alice", actor=operator)

    with serve_in_thread(lambda: create_app(gh)) as url:
        yield url, gh, tmp_path / "audit.jsonl", exporter
    # The app's cleanup stopped the exporter, which gave its lease back (a restart resumes at once).
    assert exporter.status["archive"].leader is False
    [row] = gh.db.query("SELECT owner, seq FROM export_cursors")
    assert row["owner"] is None and row["seq"] == exporter.status["archive"].cursor
    gh.db.close()


def test_requests_reach_the_sink_and_the_metrics(wired: tuple[str, Gatehouse, Path, Exporter]) -> None:
    url, gh, path, exporter = wired
    token = gh.identity.create_token(user="alice", actor=Actor())[1]
    client = anthropic.Anthropic(base_url=f"{url}/bridge/anthropic", api_key=token, max_retries=0)
    client.messages.create(
        model="claude-sonnet-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    # The call's events reach the sink once they are in the log (with `audit.journal`, once chained).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        head = gh.db.query_one("SELECT seq FROM chain_head")
        lines = path.read_bytes().splitlines() if path.exists() else []
        kinds = [orjson.loads(line)["kind"] for line in lines]
        cursor = exporter.status["archive"].cursor
        if kinds[-2:] == ["llm.request", "llm.response"] and head is not None and cursor == head["seq"]:
            break
        time.sleep(0.02)
    assert kinds[-2:] == ["llm.request", "llm.response"]
    assert head is not None and exporter.status["archive"].cursor == head["seq"]
    text = httpx.get(f"{url}/metrics").text
    series = '{decision="allow",provider="anthropic",route="messages",status="200"}'
    assert f"gatehouse_llm_requests_total{series} 1.0" in text
    assert 'gatehouse_export_lag_events{sink="archive"} 0.0' in text
