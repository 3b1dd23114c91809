"""Which agent or SDK sent a request, and its own session id, read from the request headers.

What the known clients send (from their public source, and captured from the CLIs pinned in
`tests/agents`):

* Claude Code: `User-Agent: claude-cli/<version> (external, <entrypoint>)`, the entry point being
  `cli` interactively and `sdk-cli` / `sdk-ts` / ... otherwise (Claude Code 2.1.329 with `-p`:
  `claude-cli/2.1.329 (external, sdk-cli)`); its non-model requests say `claude-code/<version>`.
  It also sends `x-app: cli` and `x-claude-code-session-id`. It is built on the Anthropic TypeScript
  SDK, so it sends the `x-stainless-*` headers too: it must be recognised before the SDK rule.
* Codex (codex-rs): `User-Agent: <originator>/<version> (<os> <os version>; <arch>) <terminal>` and an
  `originator` header, where the originator is `codex_cli_rs` by default, `codex_exec` for
  `codex exec`, `codex-tui`, `codex_vscode`, or `Codex <app>`; e.g. Codex 0.169 as `codex exec`:
  `codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.169.0)`. The conversation id is
  sent as `session-id` (with `thread-id`, equal for a top-level session); earlier builds sent
  `session_id` and, before that, `conversation_id`.
* Stainless-generated SDKs: `User-Agent: <ClientClass>/<Lang> <version>` (`Anthropic/Python 0.x`,
  `AsyncAnthropic/Python`, `Anthropic/JS`, `OpenAI/Python`, `AsyncOpenAI/Python`, `AzureOpenAI/Python`,
  `OpenAI/JS`) plus `x-stainless-lang` (`python`, `js`), `x-stainless-package-version`, ... When the
  User-Agent was overridden, `x-stainless-lang` still tells the language and `anthropic-version`
  (always sent by Anthropic's SDKs) tells the vendor.
* Aider goes through LiteLLM, whose own HTTP calls say `User-Agent: litellm/<version>`; towards
  OpenRouter Aider adds `X-Title: Aider` / `HTTP-Referer: https://aider.chat`. Aider calling an
  OpenAI-compatible endpoint through LiteLLM's OpenAI path looks like the OpenAI Python SDK.
* Cursor: no documented User-Agent; matched on "cursor" in the User-Agent or `x-cursor-*` headers.
* curl: `User-Agent: curl/<version>`.

Header names are compared case-insensitively; the proxy passes aiohttp's `CIMultiDictProxy`, but any
`Mapping[str, str]` works.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["client_session_id", "detect_client"]

# Most specific first: an explicit Gatehouse session wins over what the agent says about itself.
_SESSION_HEADERS = (
    "x-gatehouse-session",
    "x-claude-code-session-id",
    "session-id",
    "session_id",
    "conversation_id",
    "thread-id",
)
# A session id is a grouping key stored with every call; a client cannot make it arbitrarily large.
_MAX_SESSION_ID = 256


def _lowered(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers to look up by lower-case name: aiohttp's are case-insensitive already."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers
    return {k.lower(): v for k, v in headers.items()}


def detect_client(headers: Mapping[str, str]) -> str:
    """A short name for the client: claude-code, codex, anthropic-sdk-python, anthropic-sdk-typescript,
    openai-sdk-python, openai-sdk-node, cursor, aider, curl, or unknown."""
    h = _lowered(headers)
    ua = h.get("user-agent", "").strip()
    ua_lower = ua.lower()
    product = ua_lower.split("/", 1)[0] if "/" in ua_lower else ua_lower.split(" ", 1)[0]

    if product == "claude-cli" or "claude-code" in ua_lower or "x-claude-code-session-id" in h:
        return "claude-code"
    originator = h.get("originator", "").strip().lower()
    if product.startswith("codex") or originator.startswith("codex"):
        return "codex"
    if "cursor" in ua_lower or any(k.lower().startswith("x-cursor-") for k in h):
        return "cursor"
    if (
        product == "litellm"
        or "aider" in ua_lower
        or h.get("x-title", "").strip().lower() == "aider"
        or "aider.chat" in h.get("http-referer", "").lower()
    ):
        return "aider"

    # Stainless SDKs: "<ClientClass>/<Lang> <version>", e.g. "AsyncAnthropic/Python 0.40.0".
    lang = ""
    vendor = ""
    if "/" in ua:
        cls, _, rest = ua.partition("/")
        lang = rest.split(" ", 1)[0].lower()
        cls_lower = cls.lower()
        if "anthropic" in cls_lower:
            vendor = "anthropic"
        elif "openai" in cls_lower:
            vendor = "openai"
    if not vendor and "x-stainless-lang" in h:
        lang = h["x-stainless-lang"].strip().lower()
        vendor = "anthropic" if "anthropic-version" in h else "openai"
    if vendor and lang in ("python", "js"):
        if vendor == "anthropic":
            return "anthropic-sdk-python" if lang == "python" else "anthropic-sdk-typescript"
        return "openai-sdk-python" if lang == "python" else "openai-sdk-node"

    if product == "curl":
        return "curl"
    return "unknown"


def client_session_id(headers: Mapping[str, str]) -> str | None:
    """The session/conversation id the client declares for itself, if any."""
    h = _lowered(headers)
    for name in _SESSION_HEADERS:
        value = h.get(name, "").strip()
        if value:
            return value[:_MAX_SESSION_ID]
    return None
