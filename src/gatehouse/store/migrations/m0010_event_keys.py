"""The key index (gatehouse.audit.timemap): one row per (key, seq) for each event's session, agent, user
(as actor or on-behalf-of) and workspace, kept in bulk by the time map's catch-up, replaces the six
secondary indexes on `events`, which are dropped.

Why. Every index on `events` is maintained inside each commit on the request path: with (ts), (session,
seq), (agent, seq), (user, seq), (on-behalf-of, seq) and (workspace, seq), an event cost the serving loop
~19 µs to insert instead of ~9 µs without them, and at 16 clients auditing took 25 % of the Bridge's
throughput instead of 16 % (bench/audit.py). Timelines read the key index up to the map's mark and the
few events after it directly; windows come from the time map, as before.

Filled here from the events the time map already covers (its mark); catch-up does the rest. SQLite keeps
it in the derived file (m0009).
"""

NAME = "key index for timelines; drop the secondary indexes on events"

_FILL = """
INSERT INTO {schema}event_keys (key, seq)
  SELECT 's:' || session, seq FROM events WHERE session IS NOT NULL AND seq <= {mark};
INSERT INTO {schema}event_keys (key, seq)
  SELECT 'a:' || actor_agent, seq FROM events WHERE actor_agent IS NOT NULL AND seq <= {mark};
INSERT INTO {schema}event_keys (key, seq)
  SELECT 'u:' || actor_user, seq FROM events WHERE actor_user IS NOT NULL AND seq <= {mark};
INSERT INTO {schema}event_keys (key, seq)
  SELECT 'u:' || on_behalf_of, seq FROM events WHERE on_behalf_of IS NOT NULL
  AND (actor_user IS NULL OR actor_user <> on_behalf_of) AND seq <= {mark};
INSERT INTO {schema}event_keys (key, seq)
  SELECT 'w:' || workspace, seq FROM events WHERE workspace IS NOT NULL AND seq <= {mark};
DROP INDEX events_ts;
DROP INDEX events_session;
DROP INDEX events_agent_seq;
DROP INDEX events_user_seq;
DROP INDEX events_on_behalf;
DROP INDEX events_workspace
"""
_MARK = "(SELECT seq FROM time_map_state WHERE id = 1)"

# Also what `migrations.ensure_derived_tables` creates in a lost derived file.
DERIVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS derived.event_keys (
  key TEXT NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (key, seq)
) WITHOUT ROWID
"""

# Emptied first: running this again after a crash that committed the derived file but not the log's.
SQL_SQLITE = (
    DERIVED_SCHEMA + ";\nDELETE FROM derived.event_keys;" + _FILL.format(schema="derived.", mark=_MARK)
)

SQL_POSTGRESQL = """
CREATE TABLE event_keys (
  key TEXT NOT NULL,
  seq BIGINT NOT NULL,
  PRIMARY KEY (key, seq)
);""" + _FILL.format(schema="", mark=_MARK)
