"""Versioned schema migrations, applied in order, each once, under a lock (several replicas may start at
once).

Each migration is a module `mNNNN_<name>.py` in this package defining `NAME` and `SQL`: portable SQL in
which `{bigint}` is spelled per dialect. A migration that needs dialect-specific DDL (an FTS5 table, a GIN
index) defines `SQL_SQLITE` and `SQL_POSTGRESQL` instead of `SQL`. Add a module with the next number;
never edit an applied one. On SQLite, derived tables live in the attached schema `derived` (m0009): a
migration that changes one names it `derived.<table>` in its SQLite script.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass

from gatehouse.store.db import Database, Tx


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str  # portable SQL, or "" when the module gives one script per dialect
    sql_sqlite: str = ""
    sql_postgresql: str = ""

    def script(self, dialect: str) -> str:
        if self.sql:
            return self.sql
        return self.sql_sqlite if dialect == "sqlite" else self.sql_postgresql


def discover() -> tuple[Migration, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.append(
                Migration(
                    int(info.name[1:5]),
                    module.NAME,
                    getattr(module, "SQL", ""),
                    getattr(module, "SQL_SQLITE", ""),
                    getattr(module, "SQL_POSTGRESQL", ""),
                )
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return tuple(found)


MIGRATIONS = discover()

_TYPES = {
    "sqlite": {"bigint": "INTEGER"},
    "postgresql": {"bigint": "BIGINT"},
}


def migrate(db: Database) -> list[int]:
    """Apply pending migrations; return the versions applied. Safe to run from several processes."""
    applied: list[int] = []
    with db.transaction() as tx:
        if db.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(7410001)")
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at BIGINT NOT NULL)"
        )
        done = {r["version"] for r in tx.all("SELECT version FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in _statements(migration.script(db.dialect).format(**_TYPES[db.dialect])):
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, int(time.time())),
            )
            applied.append(migration.version)
        if db.dialect == "sqlite":
            _ensure_derived_tables(tx)
    return applied


def _ensure_derived_tables(tx: Tx) -> None:
    """A SQLite store whose derived file is missing (deleted, lost, or a crash between the two files'
    commits of m0009) gets it back empty, every mark at zero: the projector rebuilds it from the log."""
    from gatehouse.store.migrations import m0009_derived_file, m0011_key_ranges, m0013_drop_interceptions

    if tx.one("SELECT 1 AS found FROM derived.sqlite_master WHERE name = 'projection_state'") is not None:
        return
    for script in (
        m0009_derived_file.DERIVED_SCHEMA,
        m0009_derived_file.DERIVED_INDEXES,
        m0011_key_ranges.DERIVED_SCHEMA,
        m0013_drop_interceptions.SQL_SQLITE,
    ):
        for statement in _statements(script):
            tx.execute(statement)
    tx.execute("INSERT INTO derived.projection_state (name, seq) VALUES ('derived', 0)")
    tx.execute("INSERT INTO derived.audit_search_state (id, seq) VALUES (1, 0)")
    tx.execute("INSERT INTO derived.time_map_state (id, seq) VALUES (1, 0)")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]
