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
