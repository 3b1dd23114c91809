"""The policy settings validate like the rest, and everything the lead merges into the docs is written."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from pydantic import ValidationError

from gatehouse.cli.policy import policy
from gatehouse.cli.prices import prices
from gatehouse.cli.spend import spend
from gatehouse.cli.teams import teams
from gatehouse.cli.templates import templates
from gatehouse.policy.settings import PolicySettings, policy_settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()


def test_settings_are_strict_frozen_and_resolve_secrets() -> None:
    with pytest.raises(ValidationError, match="extra"):
        PolicySettings.model_validate({"counter": "memory"})
    with pytest.raises(ValidationError, match="unknown time zone"):
        PolicySettings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        PolicySettings(redis_url="http://nope")
    s = PolicySettings.model_validate(
        {"alert_webhook_secret": "env:HOOK_SECRET", "alert_thresholds": [100, 80, 80]},
        context={"environ": {"HOOK_SECRET": "s3cr3t-value"}},
    )
    assert s.alert_webhook_secret is not None and s.alert_webhook_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t" not in repr(s) and s.alert_thresholds == [80, 100]
    with pytest.raises(ValidationError):
        s.counters = "redis"  # type: ignore[misc]
    assert policy_settings(object()) == PolicySettings()


def test_every_setting_is_documented_for_configuration_md() -> None:
    missing = [n for n in PolicySettings.model_fields if f"| `policy.{n}` |" not in DOC]
    assert not missing


def test_every_command_is_documented_for_cli_md() -> None:
    def walk(group: click.Group, prefix: str) -> list[str]:
        return [f"{prefix}{name}" for name in group.commands]

    commands = [c for g in (templates, policy, prices, spend, teams) for c in walk(g, f"gatehouse {g.name} ")]
    missing = [c for c in commands if f"`{c}" not in DOC]
    assert not missing
