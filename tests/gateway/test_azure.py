"""Azure OpenAI through the Bridge, both ways: the official SDK's `AzureOpenAI` client (deployment-style
paths, `api-key` header) against a provider configured as a classic Azure resource, the same client
against a plain OpenAI upstream, and plain OpenAI clients against the Azure resource."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import SecretStr

from gatehouse.config import ProviderSettings
from gatehouse.identity.service import Actor
from gatehouse.policy.templates import TemplateStore
from tests.stack import UPSTREAM_KEY, Simulator, Stack, StackFactory

API_VERSION = "2024-10-21"
CLIENT_API_VERSION = "2024-06-01"  # what the client asks for; the provider's version is what goes upstream
HELLO: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def stack(make_stack: StackFactory, simulator: Simulator) -> Stack:
    azure = ProviderSettings(
        type="openai",
        base_url=simulator.url,
        api_key=SecretStr(UPSTREAM_KEY),
        azure_api_version=API_VERSION,
        azure_deployments={"gpt-4.1": "team-gpt41"},
    )
    return make_stack(providers={"azure": azure})


def azure_client(stack: Stack, provider: str = "azure", **kwargs: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=f"{stack.url}/bridge/{provider}",
        api_key=stack.token,
        api_version=CLIENT_API_VERSION,
        max_retries=0,
        **kwargs,
    )


def upstream_calls(stack: Stack) -> list[dict[str, Any]]:
    """What the simulator saw, after checking that no request carried the Gatehouse token."""
    calls = stack.sim.requests()
    for call in calls:
        assert all(stack.token not in value for value in call["headers"].values()), call["headers"]
    return calls


def request_details(stack: Stack) -> dict[str, Any]:
    [row] = stack.events("llm.request")
    details: dict[str, Any] = orjson.loads(row["details"])
    return details


def test_azure_client_to_an_azure_resource(stack: Stack) -> None:
    completion = azure_client(stack).chat.completions.create(model="gpt-4.1", messages=HELLO)
    assert completion.choices[0].message.content and completion.usage is not None

    [upstream] = upstream_calls(stack)
    assert upstream["path"] == "/openai/deployments/team-gpt41/chat/completions"
    assert upstream["query"] == f"api-version={API_VERSION}"
    assert upstream["headers"]["api-key"] == UPSTREAM_KEY
    assert "authorization" not in upstream["headers"] and "x-api-key" not in upstream["headers"]
    assert upstream["status"] == 200

    [row] = stack.interceptions()
    assert (row["provider"], row["route"], row["model"], row["status"], row["decision"]) == (
        "azure",
        "chat_completions",
        "gpt-4.1",
        200,
        "allow",
    )
    assert (row["input_tokens"], row["output_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row["client"] == "openai-sdk-python" and row["last_prompt"] == "hello there"
    details = request_details(stack)
    assert (details["deployment"], details["upstream_deployment"]) == ("gpt-4.1", "team-gpt41")


def test_azure_client_streaming_records_usage(stack: Stack) -> None:
    stream = azure_client(stack).chat.completions.create(
        model="gpt-4.1", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text and usage is not None

    [upstream] = upstream_calls(stack)
    assert upstream["path"] == "/openai/deployments/team-gpt41/chat/completions"
    assert upstream["stream"] is True and upstream["headers"]["api-key"] == UPSTREAM_KEY
    [row] = stack.interceptions()
    assert (row["model"], row["stream"], row["status"]) == ("gpt-4.1", 1, 200)
    assert (row["input_tokens"], row["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["ttft_ms"] is not None


def test_azure_client_with_a_fixed_deployment(stack: Stack) -> None:
    """`azure_deployment=` puts the deployment in the base URL; the body's model is the one served."""
    client = azure_client(stack, azure_deployment="gpt-4.1")
    completion = client.chat.completions.create(model="gpt-5-mini", messages=HELLO)
    assert completion.choices[0].message.content
    [upstream] = upstream_calls(stack)
    assert upstream["path"] == "/openai/deployments/gpt-5-mini/chat/completions"
    [row] = stack.interceptions()
    assert row["model"] == "gpt-5-mini"
    assert request_details(stack)["deployment"] == "gpt-4.1"


def test_azure_client_to_a_plain_openai_upstream(stack: Stack) -> None:
    completion = azure_client(stack, provider="openai").chat.completions.create(
        model="gpt-5-mini", messages=HELLO
    )
    assert completion.choices[0].message.content
    [upstream] = upstream_calls(stack)
    assert (upstream["path"], upstream["query"]) == ("/v1/chat/completions", "")  # no api-version
    assert upstream["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "api-key" not in upstream["headers"]
    [row] = stack.interceptions()
    assert (row["provider"], row["route"], row["model"]) == ("openai", "chat_completions", "gpt-5-mini")


@pytest.mark.parametrize("provider", ["azure", "openai"])
def test_a_body_without_model_takes_the_deployment(stack: Stack, provider: str) -> None:
    response = httpx.post(
        f"{stack.url}/bridge/{provider}/openai/deployments/gpt-4.1/chat/completions",
        params={"api-version": CLIENT_API_VERSION},
        headers={"api-key": stack.token},
        json={"messages": HELLO},
    )
    assert response.status_code == 200, response.text
    [upstream] = upstream_calls(stack)
    expected_path = (
        "/openai/deployments/team-gpt41/chat/completions" if provider == "azure" else "/v1/chat/completions"
    )
    assert upstream["path"] == expected_path
    # A plain OpenAI upstream needs the model in the body: Gatehouse added it.
    assert upstream["model"] == ("team-gpt41" if provider == "azure" else "gpt-4.1")
    [row] = stack.interceptions()
    assert (row["model"], row["status"]) == ("gpt-4.1", 200)


def test_openai_clients_to_an_azure_resource(stack: Stack) -> None:
    """The standard paths work against an Azure resource too: chat completions go to the deployment,
    Responses to Azure's v1 API (whose body names the deployment), models to the resource's list."""
    client = openai.OpenAI(base_url=f"{stack.url}/bridge/azure/v1", api_key=stack.token, max_retries=0)
    assert client.chat.completions.create(model="gpt-4.1", messages=HELLO).choices[0].message.content
    with client.responses.stream(model="gpt-4.1", input="Explain the plan") as stream:
        final = stream.get_final_response()
    assert final.output_text and final.usage is not None
    assert "gpt-5-mini" in [m.id for m in client.models.list()]

    chat, responses, models = upstream_calls(stack)
    assert (chat["path"], chat["query"]) == (
        "/openai/deployments/team-gpt41/chat/completions",
        f"api-version={API_VERSION}",
    )
    assert (responses["path"], responses["query"], responses["model"]) == (
        "/openai/v1/responses",
        "",
        "team-gpt41",
    )
    assert (models["path"], models["query"]) == ("/openai/models", f"api-version={API_VERSION}")
    assert all(c["headers"]["api-key"] == UPSTREAM_KEY for c in (chat, responses, models))
    _, row = stack.interceptions()
    assert (row["route"], row["model"], row["stream"]) == ("responses", "gpt-4.1", 1)
    assert (row["input_tokens"], row["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_unknown_deployment_is_the_upstreams_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        azure_client(stack).chat.completions.create(model="sim-unknown-model", messages=HELLO)
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "DeploymentNotFound"
    [row] = stack.interceptions()
    assert (row["model"], row["status"]) == ("sim-unknown-model", 404)
    assert "deployment" in row["error"]


def test_unrouted_azure_paths_are_404_in_openai_format(stack: Stack) -> None:
    client = azure_client(stack)
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model="gpt-4.1", input="hello")  # /openai/deployments/gpt-4.1/embeddings
    body = exc.value.body
    assert isinstance(body, dict) and (body["type"], body["code"]) == ("invalid_request_error", "not_found")
    for path in (
        "/openai/deployments/gpt-4.1/completions",
        "/openai/deployments//chat/completions",
        "/openai/deployments/a/b/chat/completions",
        "/openai/deployments/a%2Fb/chat/completions",
    ):
        response = httpx.post(
            f"{stack.url}/bridge/azure{path}?api-version={CLIENT_API_VERSION}",
            headers={"api-key": stack.token},
            json={"model": "gpt-4.1", "messages": HELLO},
        )
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    # Anthropic providers do not speak Azure.
    response = httpx.post(
        f"{stack.url}/bridge/anthropic/openai/deployments/gpt-4.1/chat/completions",
        headers={"api-key": stack.token},
        json={"messages": HELLO},
    )
    assert response.status_code == 404 and response.json()["type"] == "error"
    assert upstream_calls(stack) == [] and stack.interceptions() == []


def test_a_model_that_cannot_name_a_deployment_is_refused(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        openai.OpenAI(
            base_url=f"{stack.url}/bridge/azure/v1", api_key=stack.token, max_retries=0
        ).chat.completions.create(model="../../files", messages=HELLO)
    assert "cannot name an Azure deployment" in str(exc.value.body)
    assert upstream_calls(stack) == []
    [row] = stack.interceptions()
    assert (row["decision"], row["status"]) == ("deny", 400)


def test_missing_or_wrong_token_is_401(stack: Stack) -> None:
    url = f"{stack.url}/bridge/azure/openai/deployments/gpt-4.1/chat/completions?api-version=2024-10-21"
    response = httpx.post(url, json={"messages": HELLO})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and "api-key" in error["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.AzureOpenAI(
            azure_endpoint=f"{stack.url}/bridge/azure",
            api_key="gth_not-a-real-token",
            api_version=CLIENT_API_VERSION,
            max_retries=0,
        ).chat.completions.create(model="gpt-4.1", messages=HELLO)
    deadline = time.monotonic() + 5  # failures are written without waiting for the commit
    while not (failures := stack.events("auth.failure")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [orjson.loads(f["details"])["route"] for f in failures] == ["chat_completions"]
    assert upstream_calls(stack) == []


AZURE_BOT = """\
name: azure-bot
description: one model, on the Azure resource only
providers:
  allow: [azure]
models:
  allow:
    - "azure/gpt-4.1"
"""


def test_templates_see_the_model_named_by_the_deployment(stack: Stack) -> None:
    operator = Actor()
    TemplateStore(stack.db).apply(AZURE_BOT, "templates/azure-bot.yaml", actor=operator)
    _, token = stack.gh.identity.create_token(
        user="alice", agent="ci-bot", template="azure-bot", actor=operator
    )

    def call(deployment: str) -> httpx.Response:
        return httpx.post(
            f"{stack.url}/bridge/azure/openai/deployments/{deployment}/chat/completions",
            params={"api-version": CLIENT_API_VERSION},
            headers={"api-key": token},
            json={"messages": HELLO},  # no model: the deployment names it
        )

    refused = call("gpt-5-mini")
    assert refused.status_code == 403
    assert 'no allow rule matches "gpt-5-mini"' in refused.json()["error"]["message"]
    assert upstream_calls(stack) == []
    assert call("gpt-4.1").status_code == 200
    [upstream] = upstream_calls(stack)
    assert upstream["path"] == "/openai/deployments/team-gpt41/chat/completions"
    denied, allowed = stack.interceptions()
    assert (denied["model"], denied["decision"], allowed["model"], allowed["decision"]) == (
        "gpt-5-mini",
        "deny",
        "gpt-4.1",
        "allow",
    )
