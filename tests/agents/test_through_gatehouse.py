"""The real Claude Code and Codex CLIs, configured with nothing but a base URL and a Gatehouse token,
work through the Bridge, and what they did is recorded and attributed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.stack import StackFactory

import harness

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module", autouse=True)
def _clis() -> None:
    harness.require_agent_clis()


@pytest.mark.timeout(180)
def test_claude_code_through_the_bridge(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = make_stack()
    run = harness.run_claude_code(stack.anthropic_url, stack.token, "Say hello to the auditors", tmp_path)
    assert run.returncode == 0, run.describe()
    assert run.text, run.describe()
    assert run.egress == [], "Claude Code tried to reach the internet around the gateway"

    [upstream] = [r for r in stack.sim.requests() if r["path"].endswith("/v1/messages")]
    assert stack.token not in str(upstream)
    rows = stack.interceptions()
    assert rows and all(r["status"] == 200 for r in rows)
    row = rows[-1]
    assert row["client"] == "claude-code"
    assert row["client_session"] == run.session_id and row["session_id"] == run.session_id
    assert row["last_prompt"] == "Say hello to the auditors"
    assert row["stream"] == 1 and row["output_tokens"] > 0


@pytest.mark.timeout(240)
def test_codex_through_the_bridge(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = make_stack()
    run = harness.run_codex(
        stack.openai_url, stack.token, "Say hello to the auditors", tmp_path, model="gpt-5.5"
    )
    assert run.returncode == 0, run.describe()
    assert run.text, run.describe()
    assert run.egress == [], "Codex tried to reach the internet around the gateway"

    rows = stack.interceptions()
    assert rows and rows[-1]["route"] == "responses" and rows[-1]["status"] == 200
    row = rows[-1]
    assert row["client"] == "codex"
    assert row["client_session"]  # Codex names its session in a header
    assert row["last_prompt"] and "Say hello to the auditors" in row["last_prompt"]
    details = orjson.loads(stack.events("llm.response")[-1]["details"])
    assert details["usage"]["input_tokens"] == row["input_tokens"] > 0
