"""Which paths each provider type serves, and which wire-format module reads them.

Only these routes exist: anything else is a 404 in the provider's format, so the Bridge is never an open
proxy to the upstream's other endpoints.

Besides its own paths, an `openai` provider answers the Azure OpenAI dialect of Chat Completions
(`openai/deployments/{deployment}/chat/completions`, what `AzureOpenAI` clients call): the same route,
`chat_completions`, flagged `azure`, with the deployment read by `azure_deployment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from gatehouse.bridge import anthropic, openai_chat, openai_responses
from gatehouse.bridge.errors import BridgeError, Flavor
from gatehouse.bridge.sse import SSEEvent


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    flavor: Flavor
    wire: ModuleType | None  # the parser of a model call; None for metadata calls (models, count_tokens)
    azure: bool = False  # the client spoke Azure's deployment-style dialect

    def is_terminal(self, event: SSEEvent) -> bool:
        """The last event of a complete stream: the Bridge holds it back until the call's end is durable."""
        if self.name == "messages":
            return event.event == "message_stop"
        if self.name == "chat_completions":
            return event.data == b"[DONE]"
        return event.event in ("response.completed", "response.failed", "response.incomplete")


_ROUTES: dict[tuple[str, str, str], Route] = {
    ("anthropic", "POST", "v1/messages"): Route("messages", "anthropic", anthropic),
    ("anthropic", "POST", "v1/messages/count_tokens"): Route("count_tokens", "anthropic", None),
    ("anthropic", "GET", "v1/models"): Route("models", "anthropic", None),
    ("openai", "POST", "v1/chat/completions"): Route("chat_completions", "openai", openai_chat),
    ("openai", "POST", "v1/responses"): Route("responses", "openai", openai_responses),
    ("openai", "GET", "v1/models"): Route("models", "openai", None),
}
_AZURE_CHAT = Route("chat_completions", "openai", openai_chat, azure=True)
_AZURE_PREFIX, _AZURE_SUFFIX = "openai/deployments/", "/chat/completions"


def match_route(provider_type: str, method: str, tail: str) -> Route:
    tail = tail.strip("/")
    route = _ROUTES.get((provider_type, method, tail))
    if route is None and method == "GET" and tail.startswith("v1/models/") and tail.count("/") == 2:
        route = _ROUTES[(provider_type, "GET", "v1/models")]
    if route is None and provider_type == "openai" and method == "POST" and azure_deployment(tail):
        route = _AZURE_CHAT
    if route is None:
        raise BridgeError("not_found", f"{method} /{tail} is not a route of this {provider_type} provider")
    return route


def azure_deployment(tail: str) -> str | None:
    """The deployment of an Azure-style `openai/deployments/{deployment}/chat/completions` path, else None."""
    tail = tail.strip("/")
    if not (tail.startswith(_AZURE_PREFIX) and tail.endswith(_AZURE_SUFFIX)):
        return None
    deployment = tail[len(_AZURE_PREFIX) : -len(_AZURE_SUFFIX)]
    return deployment if deployment and "/" not in deployment else None


def guess_flavor(tail: str) -> Flavor:
    """For errors before the provider is known: answer in the format the path suggests."""
    return "anthropic" if "messages" in tail else "openai"
