"""The real agent CLIs, pointed at a recording fake upstream, complete one turn offline.

These pin down what Claude Code and Codex CLI actually send to a base URL (route, auth header,
session header) so the gateway can rely on it, and prove the harness keeps them off the internet.
The same harness is later pointed at Gatehouse itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from capture_server import CaptureServer

pytestmark = pytest.mark.cli

REPLY = "Gatehouse capture says hello 7f3a"


@pytest.fixture(scope="module", autouse=True)
def _clis() -> None:
    harness.require_agent_clis()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with CaptureServer(REPLY) as server:
        yield server


def _key(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@pytest.mark.timeout(180)
def test_claude_code_one_turn_x_api_key(capture: CaptureServer, tmp_path: Path) -> None:
    key = _key("sk-gh-test")
    run = harness.run_claude_code(
        capture.url("/bridge/anthropic"), key, "Reply with a greeting.", tmp_path / "work", timeout=120
    )
    records = capture.snapshot()
    assert run.returncode == 0, run.describe()
    assert REPLY in run.stdout
    assert run.text == REPLY
    assert run.json["is_error"] is False

    messages = [r for r in records if r["method"] == "POST" and r["path"] == "/bridge/anthropic/v1/messages"]
    assert messages, capture.summarize()
    for rec in messages:
        h = rec["headers"]
        assert h["x-api-key"] == key
        assert "authorization" not in h
        assert h["anthropic-version"] == "2023-06-01"
        assert h["x-claude-code-session-id"] == run.session_id
        assert h["user-agent"].startswith("claude-cli/")
        assert rec["query"].get("beta") == ["true"]
        assert rec["json"]["stream"] is True
    # Every request stayed under the base URL; nothing tried to leave the machine.
    assert all(r["path"].startswith("/bridge/anthropic/") for r in records), capture.summarize()
    assert run.egress == []
    assert run.home is None  # throwaway HOME was cleaned up


@pytest.mark.timeout(180)
def test_claude_code_auth_token_is_bearer(capture: CaptureServer, tmp_path: Path) -> None:
    key = _key("gh-bearer")
    run = harness.run_claude_code(
        capture.url("/bridge/anthropic"), key, "Reply with a greeting.", tmp_path / "work", auth="bearer"
    )
    assert run.returncode == 0, run.describe()
    assert run.text == REPLY
    messages = capture.by_kind("anthropic.messages")
    assert messages
    for rec in messages:
        assert rec["headers"]["authorization"] == f"Bearer {key}"
        assert "x-api-key" not in rec["headers"]
    assert run.egress == []


@pytest.mark.timeout(240)
def test_codex_one_turn_responses(capture: CaptureServer, tmp_path: Path) -> None:
    key = _key("gh-codex")
    run = harness.run_codex(
        capture.url("/bridge/openai/v1"),
        key,
        "Reply with a greeting.",
        tmp_path / "work",
        model="gpt-5.5",
        timeout=180,
    )
    records = capture.snapshot()
    assert run.returncode == 0, run.describe()
    assert REPLY in run.stdout
    assert run.text == REPLY
    assert any(ev.get("type") == "turn.completed" for ev in run.json)

    responses = [r for r in records if r["method"] == "POST" and r["path"] == "/bridge/openai/v1/responses"]
    assert responses, capture.summarize()
    for rec in responses:
        h = rec["headers"]
        assert h["authorization"] == f"Bearer {key}"
        assert h["session-id"] == run.session_id
        assert h["originator"] == "codex_exec"
        assert h["user-agent"].startswith("codex_exec/")
        assert rec["json"]["model"] == "gpt-5.5"
        assert rec["json"]["stream"] is True
    assert all(r["path"].startswith("/bridge/openai/v1/") for r in records), capture.summarize()
    assert not [r for r in records if r["headers"].get("upgrade", "").lower() == "websocket"]
    assert run.egress == []


@pytest.mark.timeout(180)
def test_egress_trap_sees_claude_code_phoning_home_when_not_silenced(
    capture: CaptureServer, tmp_path: Path
) -> None:
    """Control experiment: with the quiet switches turned off, the trap records the attempts.

    Proves that ``run.egress == []`` above means "nothing tried", not "the trap is blind".
    Claude Code treats any non-empty value (even "0" or "false") as "on", so blank them.
    """
    loud = {name: "" for name in harness.CLAUDE_QUIET_ENV}
    run = harness.run_claude_code(
        capture.url("/bridge/anthropic"), _key("sk-loud"), "Reply with a greeting.", tmp_path, extra_env=loud
    )
    assert run.returncode == 0, run.describe()
    assert run.text == REPLY
    assert any("api.anthropic.com:443" in line for line in run.egress), run.egress


@pytest.mark.timeout(240)
def test_egress_trap_sees_codex_phoning_home_when_not_silenced(
    capture: CaptureServer, tmp_path: Path
) -> None:
    """Control experiment for Codex: analytics (ab.chatgpt.com) and the curated-plugins sync
    (github.com via git, api.github.com, chatgpt.com) are what the harness config switches off."""
    run = harness.run_codex(
        capture.url("/bridge/openai/v1"),
        _key("gh-loud"),
        "Reply with a greeting.",
        tmp_path,
        model="gpt-5.5",
        extra_args=["-c", "analytics.enabled=true", "--enable", "plugins"],
    )
    assert run.returncode == 0, run.describe()
    assert run.text == REPLY
    hosts = {line.split()[1] for line in run.egress if line.startswith("CONNECT ")}
    assert "ab.chatgpt.com:443" in hosts, run.egress
    # The plugin sync starts with git (github.com) and may or may not reach the API before Codex exits.
    assert hosts & {"github.com:443", "api.github.com:443"}, run.egress
