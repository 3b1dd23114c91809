"""The docs are part of the contract: every setting and every command is documented."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import BaseModel

from gatehouse.cli.main import cli
from gatehouse.config import ProviderSettings, Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _settings(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _settings(annotation, f"{prefix}{name}.")
        elif name != "providers":
            names.append(prefix + name)
    return names


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    names = _settings(Settings, "") + [f"providers.<name>.{n}" for n in ProviderSettings.model_fields]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_every_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()

    def walk(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += walk(command, f"{prefix}{name} ")
            else:
                found.append(prefix + name)
        return found

    missing = [c for c in walk(cli, "gatehouse ") if f"`{c}" not in text]
    assert not missing, f"undocumented commands: {missing}"
