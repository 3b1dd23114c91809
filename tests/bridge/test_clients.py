"""Client detection and client session ids, from headers real clients send.

The Claude Code and Codex header sets were captured from the CLIs pinned in tests/agents (Claude Code
2.1.329 `claude -p`, Codex 0.169.0 `codex exec`) against tests/agents/capture_server.py, secrets
removed; the SDK header sets are captured live from the installed SDKs through a mock transport.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gatehouse.bridge.clients import client_session_id, detect_client

CLAUDE_CODE_HEADERS = {
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "claude-cli/2.1.329 (external, sdk-cli)",
    "x-claude-code-session-id": "ffa5707a-f63b-4a4d-b23f-be168ef982c2",
    "x-stainless-arch": "x64",
    "x-stainless-lang": "js",
    "x-stainless-os": "Linux",
    "x-stainless-package-version": "0.128.0",
    "x-stainless-retry-count": "0",
    "x-stainless-runtime": "node",
    "x-stainless-runtime-version": "v26.12.1",
    "x-stainless-timeout": "600",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
    "anthropic-dangerous-direct-browser-access": "true",
    "anthropic-version": "2023-06-01",
    "x-app": "cli",
}

CODEX_HEADERS = {
    "x-codex-beta-features": "remote_compaction_v2",
    "x-codex-window-id": "01a1fb99-517d-7050-824b-939713903892:0",
    "x-client-request-id": "01a1fb99-517d-7050-824b-939713903892",
    "session-id": "01a1fb99-517d-7050-824b-939713903892",
    "thread-id": "01a1fb99-517d-7050-824b-939713903892",
    "accept": "text/event-stream",
    "content-type": "application/json",
    "originator": "codex_exec",
    "user-agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.169.0)",
}


def sdk_headers(client_cls: Any, call: Any) -> dict[str, str]:
    captured: dict[str, str] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured.update(request.headers)
        return httpx2.Response(500, json={"error": {"message": "captured"}})

    client = client_cls(
        api_key="k", max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(handler))
    )
    with contextlib.suppress(anthropic.APIStatusError, openai.APIStatusError):
        call(client)
    return captured


def test_claude_code() -> None:
    assert detect_client(CLAUDE_CODE_HEADERS) == "claude-code"
    assert client_session_id(CLAUDE_CODE_HEADERS) == "ffa5707a-f63b-4a4d-b23f-be168ef982c2"


@pytest.mark.parametrize(
    "user_agent",
    [
        "claude-cli/2.1.90 (external, cli)",
        "claude-cli/2.0.76 (external, sdk-ts)",
        "claude-code/2.1.329",
        "claude-code/2.1.329 (sdk-ts, agent-sdk/0.3.1)",
    ],
)
def test_claude_code_user_agents(user_agent: str) -> None:
    assert detect_client(
        {"User-Agent": user_agent, "x-stainless-lang": "js", "anthropic-version": "2023-06-01"}
    ) == ("claude-code")


def test_claude_code_session_header_alone_is_enough() -> None:
    assert detect_client({"X-Claude-Code-Session-Id": "abc"}) == "claude-code"


def test_codex() -> None:
    assert detect_client(CODEX_HEADERS) == "codex"
    assert client_session_id(CODEX_HEADERS) == "01a1fb99-517d-7050-824b-939713903892"


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": "codex_cli_rs/0.42.0 (Mac OS 15.1.0; arm64) iTerm.app/3.5.10"},
        {"User-Agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.169.0)"},
        {"User-Agent": "codex-tui/0.150.0 (Ubuntu 24.4.0; x86_64) tmux/3.4"},
        {"User-Agent": "reqwest/0.12", "originator": "codex_cli_rs"},
        {"originator": "codex_vscode"},
        {"Originator": "Codex Desktop"},
    ],
)
def test_codex_variants(headers: dict[str, str]) -> None:
    assert detect_client(headers) == "codex"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"session_id": "old-style"}, "old-style"),
        ({"conversation_id": "older"}, "older"),
        ({"thread-id": "t-1"}, "t-1"),
        ({"session-id": "s", "conversation_id": "c", "thread-id": "t"}, "s"),
    ],
)
def test_codex_session_headers_across_versions(headers: dict[str, str], expected: str) -> None:
    assert client_session_id(headers) == expected


def test_anthropic_python_sdk() -> None:
    headers = sdk_headers(
        anthropic.Anthropic,
        lambda c: c.messages.create(
            model="claude-sonnet-4-6", max_tokens=1, messages=[{"role": "user", "content": "x"}]
        ),
    )
    assert headers["user-agent"].startswith("Anthropic/Python ")
    assert detect_client(headers) == "anthropic-sdk-python"
    assert client_session_id(headers) is None


def test_openai_python_sdk() -> None:
    headers = sdk_headers(openai.OpenAI, lambda c: c.responses.create(model="gpt-5", input="x"))
    assert headers["user-agent"].startswith("OpenAI/Python ")
    assert detect_client(headers) == "openai-sdk-python"
    assert client_session_id(headers) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"User-Agent": "AsyncAnthropic/Python 2.11.0", "X-Stainless-Lang": "python"},
            "anthropic-sdk-python",
        ),
        ({"User-Agent": "AnthropicBedrock/Python 0.60.0"}, "anthropic-sdk-python"),
        ({"User-Agent": "Anthropic/JS 0.68.0", "X-Stainless-Lang": "js"}, "anthropic-sdk-typescript"),
        (
            {"User-Agent": "AsyncOpenAI/Python 1.109.1", "X-Stainless-Async": "async:asyncio"},
            "openai-sdk-python",
        ),
        ({"User-Agent": "AzureOpenAI/Python 1.109.1"}, "openai-sdk-python"),
        ({"User-Agent": "OpenAI/JS 5.23.0", "X-Stainless-Lang": "js"}, "openai-sdk-node"),
        # User-Agent overridden by the application: the Stainless headers still tell.
        (
            {"User-Agent": "my-app/1.0", "x-stainless-lang": "python", "anthropic-version": "2023-06-01"},
            "anthropic-sdk-python",
        ),
        ({"User-Agent": "my-app/1.0", "x-stainless-lang": "js"}, "openai-sdk-node"),
        ({"User-Agent": "my-app/1.0", "x-stainless-lang": "go"}, "unknown"),
        ({"User-Agent": "litellm/1.77.7"}, "aider"),
        (
            {"User-Agent": "OpenAI/Python 1.99.0", "X-Title": "Aider", "HTTP-Referer": "https://aider.chat"},
            "aider",
        ),
        ({"User-Agent": "Cursor/1.7.44 (darwin arm64)"}, "cursor"),
        ({"User-Agent": "node", "x-cursor-client-version": "1.7.44"}, "cursor"),
        ({"User-Agent": "curl/8.5.0"}, "curl"),
        ({"User-Agent": "python-requests/2.32.3"}, "unknown"),
        ({"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_other_clients(headers: dict[str, str], expected: str) -> None:
    assert detect_client(headers) == expected


def test_header_names_are_case_insensitive_with_aiohttp_headers() -> None:
    multi = CIMultiDict([("User-Agent", "codex_cli_rs/0.42.0"), ("Session-Id", "from-multidict")])
    proxy = CIMultiDictProxy(multi)
    assert detect_client(proxy) == "codex"
    assert client_session_id(proxy) == "from-multidict"
    assert client_session_id({"X-Claude-Code-Session-Id": "MiXeD"}) == "MiXeD"


def test_explicit_gatehouse_session_wins() -> None:
    headers = {**CLAUDE_CODE_HEADERS, "X-Gatehouse-Session": "pinned"}
    assert client_session_id(headers) == "pinned"
    assert detect_client(headers) == "claude-code"


def test_session_ids_are_trimmed_and_bounded() -> None:
    assert client_session_id({"session-id": "   "}) is None
    assert client_session_id({"session-id": "  abc  "}) == "abc"
    assert client_session_id({"session-id": "x" * 10_000}) == "x" * 256


@pytest.mark.parametrize(
    "headers",
    [
        CODEX_HEADERS,
        {"User-Agent": "curl/8.5.0", "X-Cursor-Checksum": "x"},
        {"user-agent": "claude-cli/2.1.329 (external, sdk-cli)", "X-Claude-Code-Session-Id": "s-1"},
        {"User-Agent": "python-httpx/0.28", "X-Stainless-Lang": "js", "Anthropic-Version": "2023-06-01"},
    ],
)
def test_aiohttp_headers_read_like_a_plain_mapping(headers: dict[str, str]) -> None:
    """The Bridge passes aiohttp's case-insensitive headers, read without copying them."""
    proxy = CIMultiDictProxy(CIMultiDict(headers))
    assert detect_client(proxy) == detect_client(headers) != "unknown"
    assert client_session_id(proxy) == client_session_id(headers)
