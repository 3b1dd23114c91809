"""Settings: one TOML file, then environment overrides, validated with messages that name the setting.

Environment variables override the file: `GATEHOUSE_<SECTION>__<KEY>` (double underscore between levels),
e.g. `GATEHOUSE_SERVER__PORT=9000`, `GATEHOUSE_STORE__URL=postgresql://...`,
`GATEHOUSE_PROVIDERS__ANTHROPIC__API_KEY=env:ANTHROPIC_API_KEY`. Values are parsed as TOML scalars when
they look like one (numbers, booleans, arrays), otherwise taken as strings.

Secrets (provider keys, signing keys) are never written in the file in clear if avoidable: a value of
`env:NAME` reads the environment variable NAME, `file:PATH` reads a file. They are held as `SecretStr`,
so they never show in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gatehouse.audit.export.settings import ExportSettings
from gatehouse.audit.settings import RetentionSettings, SigningKey
from gatehouse.identity.oidc_settings import OIDCSettings
from gatehouse.metrics import MetricsSettings
from gatehouse.policy.settings import PolicySettings

ENV_PREFIX = "GATEHOUSE_"
DEFAULT_CONFIG_PATH = Path("gatehouse.toml")


class ConfigError(Exception):
    """The settings are invalid; the message lists every problem with the setting's dotted name."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapturePolicy(StrEnum):
    """How much of each LLM exchange the Bridge keeps."""

    METADATA = "metadata"  # identity, model, usage, tool names and ids, sizes: no prompt or content text
    LAST_PROMPT = "last_prompt"  # plus the last user prompt, tool arguments and tool results (truncated)
    FULL = "full"  # plus the complete request and response bodies


class FailMode(StrEnum):
    CLOSED = "closed"  # refuse the request when the trail cannot be written (default)
    OPEN = "open"  # forward it anyway; the gap is recorded once the store is back


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(gt=0)] = 32 * 1024 * 1024
    base_url: str | None = None  # how clients reach this server; shown in docs and demo output


class StoreSettings(_Section):
    url: str = "sqlite:///gatehouse.db"
    # SQLite only. NORMAL survives a crash of the process (kill -9); FULL also survives power loss.
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 5000

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return url


WRITER_PROCESS_MIN_CPUS = 4


class AuditSettings(_Section):
    fail_mode: FailMode = FailMode.CLOSED
    max_batch: Annotated[int, Field(gt=0, le=100_000)] = 2000
    # Commit in a separate writer process (another core) rather than in the server. Unset: only where
    # there is no journal and a core to spare for it (see `use_writer_process`).
    writer_process: bool | None = None
    # SQLite with `sqlite_synchronous = "normal"`: make events durable in the event journal and chain
    # them after the fact (docs/audit.md, "The journal"); false: commit them on the serving loop.
    journal: bool = True
    # Without the writer process, derived tables are kept up to date by a process of their own (true) or
    # by a thread of the server (false; no extra process, but its CPU is taken from the serving loop).
    projector_process: bool = True
    retention: RetentionSettings = Field(default_factory=RetentionSettings)  # see docs/audit.md
    signing_key: SigningKey = None  # Ed25519 key signing checkpoints (env:/file:)

    def use_writer_process(self, store: StoreSettings) -> bool:
        """The writer process takes a commit's CPU off the serving core but adds an IPC round trip and
        some CPU of its own. Where the journal is on, it takes less of the serving core than sending
        events to the process does (docs/audit.md), so the process is not used there; otherwise it pays
        where a core is free for it (on 2 CPUs, shared with the clients and upstreams, it measured no
        faster than committing in-process: docs/benchmarks.md), from 4 CPUs up."""
        if self.writer_process is not None:
            return self.writer_process
        if self.journal and store.url.startswith("sqlite:") and store.sqlite_synchronous == "normal":
            return False
        return (os.cpu_count() or 1) >= WRITER_PROCESS_MIN_CPUS


class BridgeSettings(_Section):
    capture: CapturePolicy = CapturePolicy.LAST_PROMPT
    # Under `last_prompt`, each captured text (prompt, tool arguments, tool result) is cut to this size.
    capture_max_chars: Annotated[int, Field(gt=0)] = 16_384
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Upper bound on silence from the upstream (no byte received); long generations keep streaming.
    read_timeout_s: Annotated[float, Field(gt=0)] = 600.0


class ProviderSettings(_Section):
    type: Literal["anthropic", "openai"]
    base_url: str
    api_key: SecretStr | None = None
    # Models this instance may serve (glob patterns). Templates narrow this per agent.
    models: list[str] = Field(default_factory=lambda: ["*"])
    # openai-type only: how to send the key. `bearer` (OpenAI, vLLM, OpenRouter) or `api-key` (Azure).
    auth_header: Literal["bearer", "api-key", "x-api-key"] | None = None
    # openai-type only: a classic Azure OpenAI resource, reached at its deployment-style paths
    # (`/openai/deployments/{deployment}/chat/completions?api-version=...`). `base_url` is then the
    # resource endpoint (https://RES.openai.azure.com); the key goes in `api-key` unless told otherwise.
    azure_api_version: str | None = None
    # model -> Azure deployment name; a model not listed goes to the deployment of the same name.
    azure_deployments: dict[str, str] = Field(default_factory=dict)

    def azure_deployment(self, model: str) -> str:
        """The Azure deployment serving `model` (an Azure provider only)."""
        return self.azure_deployments.get(model, model)

    @staticmethod
    def is_azure_deployment_name(name: str) -> bool:
        """ASCII letters, digits, `.`, `-` and `_`, from a letter or digit: safe as one URL path segment."""
        return (
            bool(name)
            and name[0].isalnum()
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
        )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url.rstrip("/")

    @field_validator("azure_api_version", mode="before")
    @classmethod
    def _dated_api_version(cls, value: Any) -> str | None:
        if value is None:
            return None
        # str(): unquoted in TOML, or from GATEHOUSE_PROVIDERS__<NAME>__AZURE_API_VERSION, it reads as a date.
        version = str(value)
        date = version.removesuffix("-preview")
        digits = date[:4] + date[5:7] + date[8:]
        if len(date) != 10 or date[4] != "-" or date[7] != "-" or not (digits.isascii() and digits.isdigit()):
            raise ValueError(
                "must be a dated Azure OpenAI API version such as 2024-10-21 or 2025-04-01-preview;"
                " for Azure's v1 API leave it unset and use base_url = https://RES.openai.azure.com/openai/v1"
                ' with auth_header = "api-key"'
            )
        return version

    @field_validator("azure_deployments")
    @classmethod
    def _deployment_names(cls, deployments: dict[str, str]) -> dict[str, str]:
        for model, deployment in deployments.items():
            if not model:
                raise ValueError("a model name may not be empty")
            if not cls.is_azure_deployment_name(deployment):
                raise ValueError(
                    f"deployment {deployment!r} (for model {model!r}) may only use letters, digits,"
                    " ., - and _"
                )
        return deployments

    @field_validator("api_key", mode="before")
    @classmethod
    def _resolve_secret(cls, value: Any, info: ValidationInfo) -> Any:
        environ = (info.context or {}).get("environ", os.environ)
        return resolve_secret_reference(value, environ) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _azure_and_auth_header(self) -> ProviderSettings:
        azure = self.azure_api_version is not None
        if self.type != "openai" and (azure or self.azure_deployments):
            raise ValueError("azure_api_version and azure_deployments apply to openai-type providers only")
        if self.azure_deployments and not azure:
            raise ValueError("azure_deployments needs azure_api_version (a classic Azure OpenAI resource)")
        path = self.base_url.partition("://")[2].partition("/")[2]
        if azure and "/openai/" in f"/{path}/":
            raise ValueError(
                "with azure_api_version, base_url is the resource endpoint without /openai,"
                " e.g. https://RES.openai.azure.com (Gatehouse adds /openai/deployments/...)"
            )
        if self.auth_header is None:
            header = "x-api-key" if self.type == "anthropic" else "api-key" if azure else "bearer"
            object.__setattr__(self, "auth_header", header)
        return self


class Settings(_Section):
    oidc: OIDCSettings | None = None  # single sign-on for people; see docs/sso.md
    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    export: ExportSettings = Field(default_factory=ExportSettings)  # SIEM sinks; see docs/export.md
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # Prometheus; see docs/metrics.md
    policy: PolicySettings = Field(default_factory=PolicySettings)  # see docs/policy.md

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, providers: dict[str, ProviderSettings]) -> dict[str, ProviderSettings]:
        for name in providers:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"provider name {name!r} may only use letters, digits, - and _")
        return providers


def resolve_secret_reference(value: str, environ: Mapping[str, str]) -> str:
    """`env:NAME` and `file:PATH` point at the secret instead of holding it."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set")
        return environ[name]
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (if it exists, or if it was named explicitly), apply env overrides, validate."""
    environ = dict(os.environ if environ is None else environ)
    explicit = path is not None or f"{ENV_PREFIX}CONFIG" in environ
    path = path or Path(environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG_PATH))
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    elif explicit:
        raise ConfigError(f"{path}: no such configuration file")
    _apply_env_overrides(data, environ)
    try:
        return Settings.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> None:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: cannot set a key inside a non-table setting")
        node[parts[-1]] = _parse_env_value(raw)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _describe(exc: ValidationError, path: Path) -> str:
    lines = [f"invalid settings ({path} and {ENV_PREFIX}* environment variables):"]
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
