"""The key index keeps runs of seq instead of single events (gatehouse.audit.timemap): `key_ranges`
(key, first_seq, last_seq) replaces `event_keys` (key, seq).

Why. With a row per event and key, a call's two events cost the projector six index rows, most of them
for the agent and the user, who are in nearly every event: 6.4 us per event of the projector's ~26, whose
CPU is taken from the serving loop on a small machine (bench/audit.py). A run of a key's events (each
within RANGE_GAP of the next) is one row: a busy agent has one per batch, an isolated event one of its
own, as before.

Each old row becomes a run of one event; the projector writes runs from here on. SQLite keeps the table
in the derived file (m0009).
"""

NAME = "key index as runs of seq"

# Also what `migrations.ensure_derived_tables` creates in a lost derived file.
DERIVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS derived.key_ranges (
  key TEXT NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  PRIMARY KEY (key, first_seq)
) WITHOUT ROWID
"""

# Emptied first: running this again after a crash that committed the derived file but not the log's. A
# derived file that was lost has no `event_keys` to copy: `ensure_derived_tables` then recreates it all.
SQL_SQLITE = (
    DERIVED_SCHEMA
    + """;
CREATE TABLE IF NOT EXISTS derived.event_keys (key TEXT NOT NULL, seq INTEGER NOT NULL);
DELETE FROM derived.key_ranges;
INSERT INTO derived.key_ranges (key, first_seq, last_seq) SELECT key, seq, seq FROM derived.event_keys;
DROP TABLE IF EXISTS derived.event_keys
"""
)

SQL_POSTGRESQL = """
CREATE TABLE key_ranges (
  key TEXT NOT NULL,
  first_seq BIGINT NOT NULL,
  last_seq BIGINT NOT NULL,
  PRIMARY KEY (key, first_seq)
);
INSERT INTO key_ranges (key, first_seq, last_seq) SELECT key, seq, seq FROM event_keys;
DROP TABLE event_keys
"""
