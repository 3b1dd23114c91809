"""Sink settings: the type picks the model, secrets come from env:/file:, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gatehouse.audit.export.settings import (
    ExportSettings,
    JsonlSinkSettings,
    OtlpSinkSettings,
    SyslogSinkSettings,
    WebhookSinkSettings,
)


def test_sinks_by_type_with_secret_references(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    settings = ExportSettings.model_validate(
        {
            "sinks": {
                "archive": {"type": "jsonl", "path": "/var/log/gatehouse/audit.jsonl", "format": "ocsf"},
                "siem": {
                    "type": "syslog",
                    "host": "siem.internal",
                    "protocol": "tls",
                    "tls_cert_file": "/etc/gatehouse/client.crt",
                    "tls_key": f"file:{key}",
                },
                "otel": {"type": "otlp", "endpoint": "http://collector:4318/", "headers": {"x-key": "env:K"}},
                "hook": {"type": "webhook", "url": "https://hooks.example.com/g", "secret": "env:S"},
            }
        },
        context={"environ": {"K": "otel-key", "S": "hook-secret"}},
    )
    archive, siem, otel, hook = settings.sinks.values()
    assert isinstance(archive, JsonlSinkSettings) and archive.format == "ocsf" and archive.keep == 10
    assert isinstance(siem, SyslogSinkSettings) and siem.port == 6514  # the TLS default
    assert siem.tls_key is not None and "BEGIN PRIVATE KEY" in siem.tls_key.get_secret_value()
    assert isinstance(otel, OtlpSinkSettings) and otel.endpoint == "http://collector:4318"
    assert otel.headers["x-key"].get_secret_value() == "otel-key"
    assert isinstance(hook, WebhookSinkSettings) and hook.secret.get_secret_value() == "hook-secret"
    assert "hook-secret" not in repr(settings) and "otel-key" not in repr(settings)
    udp = SyslogSinkSettings(type="syslog", host="h", protocol="udp")
    assert udp.port == 514


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"type": "kafka"}, "does not match any of the expected tags"),
        ({"type": "jsonl", "path": "x", "colour": "red"}, "Extra inputs are not permitted"),
        ({"type": "syslog", "host": "h", "facility": "local9"}, "facility"),
        ({"type": "syslog", "host": "h", "tls_key": "pem"}, "tls_cert_file and tls_key go together"),
        ({"type": "syslog", "host": "h", "app_name": "has space"}, "app_name"),
        ({"type": "webhook", "url": "ftp://x", "secret": "s"}, "http:// or https://"),
        ({"type": "webhook", "url": "https://x"}, "secret"),
        ({"type": "webhook", "url": "https://x", "secret": "env:NOPE"}, "NOPE is not set"),
        ({"type": "otlp", "endpoint": "collector:4318"}, "http:// or https://"),
        ({"type": "otlp", "endpoint": "http://c", "logs": False, "traces": False}, "nothing to send"),
    ],
)
def test_mistakes_are_named(sink: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExportSettings.model_validate({"sinks": {"s": sink}}, context={"environ": {}})
    assert message in str(info.value)


def test_sink_names_and_retry_bounds() -> None:
    with pytest.raises(ValidationError, match="may only use letters"):
        ExportSettings.model_validate({"sinks": {"a b": {"type": "jsonl", "path": "x"}}})
    with pytest.raises(ValidationError, match="retry_max_s"):
        ExportSettings(retry_initial_s=10, retry_max_s=1)
