from __future__ import annotations

from pathlib import Path

import pytest

from gatehouse.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gatehouse.toml"
    path.write_text(text)
    return path


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 9000
[providers.anthropic]
type = "anthropic"
base_url = "http://127.0.0.1:8081/"
api_key = "env:UPSTREAM_KEY"
""",
    )
    settings = load_settings(
        path,
        {"UPSTREAM_KEY": "sk-secret", "GATEHOUSE_SERVER__PORT": "9100", "GATEHOUSE_BRIDGE__CAPTURE": "full"},
    )
    assert settings.server.port == 9100
    assert settings.bridge.capture == "full"
    provider = settings.providers["anthropic"]
    assert provider.base_url == "http://127.0.0.1:8081"
    assert provider.api_key is not None and provider.api_key.get_secret_value() == "sk-secret"
    assert provider.auth_header == "x-api-key"
    assert "sk-secret" not in repr(settings)


def test_errors_name_every_bad_setting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 99999
colour = "blue"
[providers.x]
type = "gemini"
base_url = "ftp://nope"
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {})
    message = str(exc.value)
    assert "server.port" in message
    assert "server.colour: unknown setting" in message
    assert "providers.x.type" in message
    assert "providers.x.base_url: must be an http:// or https:// URL" in message


def test_missing_secret_reference_and_bad_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[providers.a]\ntype = "openai"\nbase_url = "http://x"\napi_key = "env:NOPE_NOT_SET"\n'
    )
    with pytest.raises(ConfigError, match="NOPE_NOT_SET is not set"):
        load_settings(path, {})
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(write(tmp_path, "[server\n"), {})
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "missing.toml", {})


def test_azure_provider(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[providers.azure]
type = "openai"
base_url = "https://res.openai.azure.com/"
api_key = "sk-azure"
azure_deployments = { "gpt-4.1" = "team-gpt41" }
""",
    )
    # From the environment the version reads as a TOML date; it is taken as the text it was.
    settings = load_settings(path, {"GATEHOUSE_PROVIDERS__AZURE__AZURE_API_VERSION": "2024-10-21"})
    provider = settings.providers["azure"]
    assert provider.azure_api_version == "2024-10-21"
    assert provider.auth_header == "api-key"  # Azure's header unless told otherwise
    assert provider.azure_deployment("gpt-4.1") == "team-gpt41"
    assert provider.azure_deployment("o4-mini") == "o4-mini"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            'azure_api_version = "v1"',
            "providers.a.azure_api_version: must be a dated Azure OpenAI API version such as 2024-10-21",
        ),
        ('azure_api_version = "2025-04-01-previewx"', "must be a dated Azure OpenAI API version"),
        ('azure_deployments = { "gpt-4.1" = "x" }', "azure_deployments needs azure_api_version"),
        (
            'azure_api_version = "2024-10-21"\nazure_deployments = { "gpt-4.1" = "../files" }',
            "providers.a.azure_deployments: deployment '../files' (for model 'gpt-4.1') may only use",
        ),
        (
            'azure_api_version = "2024-10-21"\nbase_url = "https://res.openai.azure.com/openai/v1"',
            "base_url is the resource endpoint without /openai",
        ),
        (
            'type = "anthropic"\nazure_api_version = "2024-10-21"',
            "apply to openai-type providers only",
        ),
    ],
)
def test_azure_settings_are_checked(tmp_path: Path, lines: str, message: str) -> None:
    settings = {"type": '"openai"', "base_url": '"https://res.openai.azure.com"'}
    for line in lines.splitlines():
        key, _, value = line.partition(" = ")
        settings[key] = value
    path = write(tmp_path, "[providers.a]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {})
    assert message in str(exc.value)


def test_azure_api_version_accepts_preview_versions() -> None:
    from gatehouse.config import ProviderSettings

    provider = ProviderSettings(
        type="openai", base_url="https://apim.example.com/team", azure_api_version="2025-04-01-preview"
    )
    assert provider.azure_api_version == "2025-04-01-preview"


def test_the_writer_process_is_used_by_default_only_with_cores_to_spare_and_no_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gatehouse.config import WRITER_PROCESS_MIN_CPUS, AuditSettings, StoreSettings

    journaled = StoreSettings(url="sqlite:///tmp/g.db")
    committed = StoreSettings(url="sqlite:///tmp/g.db", sqlite_synchronous="full")
    postgres = StoreSettings(url="postgresql://localhost/test")
    monkeypatch.setattr("os.cpu_count", lambda: WRITER_PROCESS_MIN_CPUS)
    assert not AuditSettings().use_writer_process(journaled)  # the journal is the default
    assert AuditSettings(journal=False).use_writer_process(journaled)
    assert AuditSettings().use_writer_process(committed)
    assert AuditSettings().use_writer_process(postgres)
    monkeypatch.setattr("os.cpu_count", lambda: WRITER_PROCESS_MIN_CPUS - 1)
    assert not AuditSettings().use_writer_process(postgres)
    assert AuditSettings(writer_process=True, journal=True).use_writer_process(journaled)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert not AuditSettings(writer_process=False).use_writer_process(postgres)
