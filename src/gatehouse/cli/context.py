"""What every command shares: the settings (read once, on first use) and an opened store."""

from __future__ import annotations

from pathlib import Path

import click

from gatehouse.config import ConfigError, Settings, load_settings
from gatehouse.identity.service import Actor, IdentityService
from gatehouse.store.db import Database


class Context:
    def __init__(self, config: Path | None) -> None:
        self.config_path = config
        self._settings: Settings | None = None
        self._db: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._settings

    @property
    def db(self) -> Database:
        if self._db is None:
            from gatehouse.audit.journal import drain_all
            from gatehouse.server import open_store
            from gatehouse.store.migrations import migrate

            self._db = open_store(self.settings)
            migrate(self._db)
            # What a running server acknowledged but has not chained yet belongs in what the CLI reads.
            drain_all(self._db)
        return self._db

    @property
    def derived_db(self) -> Database:
        """The store, with its derived tables (sessions, tool calls, spend) brought up to date with
        the log first: a running server does it in the background, but may be a moment behind."""
        from gatehouse.policy.settings import policy_settings
        from gatehouse.server import derived_tables

        derived_tables(policy_settings(self.settings).timezone).catch_up(self.db)
        return self.db

    @property
    def identity(self) -> IdentityService:
        return IdentityService(self.db)

    # The CLI acts as the operator of the machine it runs on; the trail says so.
    actor = Actor(user_id=None, name="cli")


pass_context = click.make_pass_decorator(Context)
