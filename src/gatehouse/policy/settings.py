"""Settings of the policy layer (`[policy]`): where counters live, how reservations are estimated, alerts.

Attach as `Settings.policy: PolicySettings = Field(default_factory=PolicySettings)`; until then the
composition root uses the defaults (`policy_settings(settings)`).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where budget and rate-limit counters live: `memory` (one process; fastest) or `redis` (several
    # replicas share them; reserve and settle are atomic Lua scripts).
    counters: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "gatehouse:"
    # Connections to Redis per process; a burst of calls beyond this waits for a free one.
    redis_max_connections: Annotated[int, Field(gt=0, le=10_000)] = 64
    # The template that governs tokens bound to none. None: such tokens are governed only by the
    # provider's `models` globs and their team's limits (unless `require_template`).
    default_template: str | None = None
    # Refuse calls from tokens bound to no template (and no `default_template`): least privilege.
    require_template: bool = False
    # Reservation of a call's input before it is made: request body bytes / this = input tokens assumed.
    # Lower is safer (never under-reserves); 2 bytes per token over-estimates every text tokenizer.
    input_bytes_per_token: Annotated[float, Field(gt=0)] = 2.0
    # Output tokens reserved when a request does not say its maximum (OpenAI allows omitting it).
    assumed_max_output_tokens: Annotated[int, Field(gt=0)] = 32_000
    # Calendar budgets (day, week, month) start at midnight in this time zone.
    timezone: str = "UTC"
    # Spend thresholds (percent of a budget) that raise a `policy.budget.threshold` event.
    alert_thresholds: list[Annotated[int, Field(gt=0, le=1000)]] = Field(default_factory=lambda: [80, 100])
    # Where to POST threshold alerts (JSON, HMAC-SHA256 signed with the secret). None: events only.
    alert_webhook_url: str | None = None
    alert_webhook_secret: SecretStr | None = None

    @field_validator("alert_webhook_secret", mode="before")
    @classmethod
    def _resolve_secret(cls, value: Any, info: ValidationInfo) -> Any:
        from gatehouse.config import resolve_secret_reference

        environ = (info.context or {}).get("environ", os.environ)
        return resolve_secret_reference(value, environ) if isinstance(value, str) else value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("alert_thresholds")
    @classmethod
    def _sorted(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @field_validator("alert_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


def policy_settings(settings: Any) -> PolicySettings:
    """`settings.policy` once it is attached to `Settings`, else the defaults."""
    found = getattr(settings, "policy", None)
    return found if isinstance(found, PolicySettings) else PolicySettings()
