"""Audit integrity: tombstones for pruned events, checkpoints (signed or not), legal holds, the search index.

- Timeline indexes: (actor, seq) for agents, users, on-behalf-of users and workspaces, so a page of a
  long timeline is read in causal order without sorting; partial (rows with the column set), so they cost
  nothing for events that do not have one.
- `events.pruned_by`: set on a pruned event (a tombstone): the seq of the `audit.prune` event that pruned it.
  The row keeps seq, id, ts, kind, decision, prev_hash and hash; who/where/what is blanked.
- `checkpoints`: assertions "event `seq` had hash `hash`" made at `ts`, optionally signed with Ed25519. An
  `anchor` checkpoint marks where the retained chain starts after its prefix was deleted; its `event_seq`
  is the `audit.compact` event written with it.
- `legal_holds`: sessions, users and agents whose events retention must not prune.
- `audit_search` (FTS5 on SQLite, tsvector + GIN on PostgreSQL) and `audit_search_state` (how far the index
  is known to be complete).
"""

NAME = "audit integrity: tombstones, checkpoints, legal holds, search index"

_COMMON = """
ALTER TABLE events ADD COLUMN pruned_by {bigint};
CREATE INDEX events_agent_seq ON events (actor_agent, seq) WHERE actor_agent IS NOT NULL;
CREATE INDEX events_user_seq ON events (actor_user, seq) WHERE actor_user IS NOT NULL;
CREATE INDEX events_on_behalf ON events (on_behalf_of, seq) WHERE on_behalf_of IS NOT NULL;
CREATE INDEX events_workspace ON events (workspace, seq) WHERE workspace IS NOT NULL;
CREATE TABLE checkpoints (
  id TEXT PRIMARY KEY,
  seq {bigint} NOT NULL,
  hash TEXT NOT NULL,
  ts {bigint} NOT NULL,
  kind TEXT NOT NULL,
  key_id TEXT,
  signature TEXT,
  created_by TEXT,
  event_seq {bigint}
);
CREATE INDEX checkpoints_seq ON checkpoints (seq);
CREATE TABLE legal_holds (
  id TEXT PRIMARY KEY,
  scope TEXT NOT NULL CHECK (scope IN ('session', 'user', 'agent')),
  target TEXT NOT NULL,
  target_name TEXT,
  reason TEXT NOT NULL,
  created_at {bigint} NOT NULL,
  created_by TEXT NOT NULL,
  released_at {bigint},
  released_by TEXT
);
CREATE INDEX legal_holds_active ON legal_holds (released_at);
CREATE TABLE audit_search_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq {bigint} NOT NULL
);
INSERT INTO audit_search_state (id, seq) VALUES (1, 0);
"""

SQL_SQLITE = (
    _COMMON
    + """
CREATE VIRTUAL TABLE audit_search USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
"""
)

SQL_POSTGRESQL = (
    _COMMON
    + """
CREATE TABLE audit_search (
  seq BIGINT PRIMARY KEY,
  tsv TSVECTOR NOT NULL
);
CREATE INDEX audit_search_tsv ON audit_search USING GIN (tsv);
"""
)
