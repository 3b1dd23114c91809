"""Settings of the export sinks: where the trail is copied to, and how.

`[export.sinks.<name>]` tables, one per destination; `type` picks the kind (jsonl, syslog, otlp, webhook).
The name is the sink's identity: its delivery cursor is stored under it, so renaming a sink starts it over.
Secrets (webhook secret, header values, TLS client key) accept `env:NAME` and `file:PATH` references and
are held as SecretStr. Every setting is documented in docs/export.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

# RFC 5424 section 6.2.1 facility codes, by their usual names.
FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}

Facility = Literal[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "audit",
    "alert",
    "clock",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
]


def _environ(info: ValidationInfo) -> Any:
    return (info.context or {}).get("environ", os.environ)


def _secret(value: Any, info: ValidationInfo) -> Any:
    # Imported here: gatehouse.config imports this module to attach `Settings.export`.
    from gatehouse.config import resolve_secret_reference

    return resolve_secret_reference(value, _environ(info)) if isinstance(value, str) else value


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return url


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SinkBase(_Model):
    enabled: bool = True
    # Glob patterns of the event kinds this sink receives (`llm.*`, `admin.*`, `auth.failure`). Events of
    # other kinds are skipped, and the cursor moves past them.
    kinds: list[str] = Field(default_factory=lambda: ["*"])
    # Where a sink seen for the first time starts: `beginning` sends the whole existing log, `end` only
    # what is written from now on.
    start: Literal["beginning", "end"] = "beginning"


class JsonlSinkSettings(_SinkBase):
    type: Literal["jsonl"]
    path: Path
    format: Literal["jsonl", "ocsf"] = "jsonl"
    # Rotate when the file would grow past this size; keep this many rotated files (path.1 is the newest).
    max_bytes: Annotated[int, Field(gt=0)] = 100 * 1024 * 1024
    keep: Annotated[int, Field(ge=0, le=1000)] = 10
    # Flush to disk (fsync) before the cursor moves, so a power loss cannot lose exported lines.
    fsync: bool = True


class SyslogSinkSettings(_SinkBase):
    type: Literal["syslog"]
    host: str
    # Default: 514 for udp and tcp, 6514 for tls (RFC 5425).
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    protocol: Literal["udp", "tcp", "tls"] = "tcp"
    facility: Facility = "local0"
    app_name: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[!-~]+$")] = "gatehouse"
    # HOSTNAME field; default: this machine's name.
    hostname: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[!-~]+$")] | None = None
    # SD-ID of the structured-data element that carries the envelope (`name@<private enterprise number>`;
    # 32473 is the example number reserved for documentation by RFC 5612).
    sd_id: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[!#-<>-\\^-~]+@[0-9.]+$")] = (
        "gatehouse@32473"
    )
    # A message larger than this is sent without its `details` (marked `"details_truncated": true`).
    max_message_bytes: Annotated[int, Field(ge=480, le=65000)] = 60_000
    # Start MSG with the UTF-8 byte order mark, as RFC 5424 asks for UTF-8 text; some receivers mishandle it.
    bom: bool = True
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # TLS only: CA bundle to verify the receiver (default: the system's), client certificate and key for
    # mutual TLS (the key as PEM text, normally `file:/path/key.pem`), and its password if encrypted.
    tls_ca_file: Path | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None
    tls_cert_file: Path | None = None
    tls_key: SecretStr | None = None
    tls_key_password: SecretStr | None = None

    _secrets = field_validator("tls_key", "tls_key_password", mode="before")(_secret)

    @model_validator(mode="after")
    def _defaults(self) -> SyslogSinkSettings:
        if self.port is None:
            object.__setattr__(self, "port", 6514 if self.protocol == "tls" else 514)
        if (self.tls_cert_file is None) != (self.tls_key is None):
            raise ValueError("tls_cert_file and tls_key go together (mutual TLS)")
        return self


class OtlpSinkSettings(_SinkBase):
    type: Literal["otlp"]
    # Base URL of an OTLP/HTTP receiver; logs go to <endpoint>/v1/logs, spans to <endpoint>/v1/traces.
    endpoint: str
    logs: bool = True
    traces: bool = True
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    compression: Literal["none", "gzip"] = "none"
    certificate_file: Path | None = None
    service_name: str = "gatehouse"
    resource_attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        return _http_url(url).rstrip("/")

    @model_validator(mode="after")
    def _something_to_send(self) -> OtlpSinkSettings:
        if not (self.logs or self.traces):
            raise ValueError("logs and traces are both off: nothing to send")
        return self

    @field_validator("headers", mode="before")
    @classmethod
    def _header_secrets(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            return {k: _secret(v, info) for k, v in value.items()}
        return value


class WebhookSinkSettings(_SinkBase):
    type: Literal["webhook"]
    url: str
    # HMAC-SHA256 key for the X-Gatehouse-Signature header (use env: or file:).
    secret: SecretStr
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0)] = 10.0

    _secrets = field_validator("secret", mode="before")(_secret)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _http_url(url)

    @field_validator("headers", mode="before")
    @classmethod
    def _header_secrets(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            return {k: _secret(v, info) for k, v in value.items()}
        return value


SinkSettings = Annotated[
    JsonlSinkSettings | SyslogSinkSettings | OtlpSinkSettings | WebhookSinkSettings,
    Field(discriminator="type"),
]


class ExportSettings(_Model):
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)
    # Most events read from the store and sent in one delivery.
    batch_size: Annotated[int, Field(gt=0, le=100_000)] = 500
    # New events written by this process wake the sinks at once; this poll finds those written by other
    # processes or replicas.
    poll_interval_s: Annotated[float, Field(gt=0)] = 5.0
    # Backoff while a sink fails: first wait, doubling up to the maximum (with +-20% jitter).
    retry_initial_s: Annotated[float, Field(gt=0)] = 1.0
    retry_max_s: Annotated[float, Field(gt=0)] = 60.0
    # On shutdown, how long a delivery in flight may take to finish before it is abandoned (and resent
    # at the next start: delivery is at least once).
    shutdown_timeout_s: Annotated[float, Field(ge=0)] = 5.0

    @field_validator("sinks")
    @classmethod
    def _sink_names(cls, sinks: dict[str, Any]) -> dict[str, Any]:
        for name in sinks:
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"sink name {name!r} may only use letters, digits, - and _")
        return sinks

    @model_validator(mode="after")
    def _retry_order(self) -> ExportSettings:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        return self
