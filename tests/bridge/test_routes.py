"""Route matching, including the Azure OpenAI dialect of Chat Completions."""

from __future__ import annotations

import pytest

from gatehouse.bridge.errors import BridgeError
from gatehouse.bridge.routes import azure_deployment, match_route


def test_azure_deployment_paths() -> None:
    assert azure_deployment("openai/deployments/gpt-4.1/chat/completions") == "gpt-4.1"
    assert azure_deployment("/openai/deployments/my_dep-1/chat/completions/") == "my_dep-1"
    for tail in (
        "openai/deployments//chat/completions",
        "openai/deployments/a/b/chat/completions",
        "openai/deployments/gpt-4.1/embeddings",
        "openai/deployments/chat/completions",
        "v1/chat/completions",
    ):
        assert azure_deployment(tail) is None, tail


def test_azure_chat_is_the_chat_completions_route_of_openai_providers_only() -> None:
    route = match_route("openai", "POST", "openai/deployments/gpt-4.1/chat/completions")
    plain = match_route("openai", "POST", "v1/chat/completions")
    assert (route.name, route.wire, route.azure, plain.azure) == ("chat_completions", plain.wire, True, False)
    for provider, method in (("anthropic", "POST"), ("openai", "GET")):
        with pytest.raises(BridgeError) as exc:
            match_route(provider, method, "openai/deployments/gpt-4.1/chat/completions")
        assert exc.value.status == 404
