"""`identity_state.version`: a counter that every change to what authentication reads moves, so a replica
can keep the tokens it has looked up and check one row per request instead of joining five tables.

Why. The lookup joins tokens, users, agents and both team tables, and on SQLite it runs after almost
every audit commit, which empties the reading connection's page cache: ~22 us of the serving loop per
request, against ~9 us for reading one row. Triggers, not the code that makes changes, move the counter:
a change from any path (the CLI, the API, another replica, a hand-written UPDATE) is seen by the next
request. `tokens.last_used_at`, written once a minute per token, is not watched.
"""

NAME = "identity version for cached token lookups"

_WATCHED = [
    ("tokens", "UPDATE OF hash, user_id, agent_id, expires_at, revoked_at, template"),
    ("tokens", "DELETE"),
    ("users", "UPDATE"),
    ("users", "DELETE"),
    ("agents", "UPDATE"),
    ("agents", "DELETE"),
    ("team_members", "INSERT"),
    ("team_members", "UPDATE"),
    ("team_members", "DELETE"),
    ("agent_teams", "INSERT"),
    ("agent_teams", "UPDATE"),
    ("agent_teams", "DELETE"),
]


def _name(table: str, event: str) -> str:
    return f"identity_changed_{table}_{event.split()[0].lower()}"


_TABLE = """
CREATE TABLE identity_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version {bigint} NOT NULL
);
INSERT INTO identity_state (id, version) VALUES (1, 0)"""

# One statement per line: the migration runner splits scripts at ";" + newline.
SQL_SQLITE = ";\n".join(
    [
        _TABLE,
        *(
            f"CREATE TRIGGER {_name(table, event)} AFTER {event} ON {table} BEGIN"
            " UPDATE identity_state SET version = version + 1 WHERE id = 1; END"
            for table, event in _WATCHED
        ),
    ]
)

SQL_POSTGRESQL = ";\n".join(
    [
        _TABLE,
        "CREATE FUNCTION identity_changed() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN UPDATE identity_state SET version = version + 1 WHERE id = 1; RETURN NULL; END $$",
        *(
            f"CREATE TRIGGER {_name(table, event)} AFTER {event} ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION identity_changed()"
            for table, event in _WATCHED
        ),
    ]
)
