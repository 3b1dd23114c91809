"""Identity, the event log with its chain head, and the Bridge's projections."""

from gatehouse.audit.chain import GENESIS_HASH

NAME = "identity, event log, bridge projections"

SQL = f"""
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  email TEXT,
  role TEXT NOT NULL,
  created_at {{bigint}} NOT NULL,
  disabled_at {{bigint}}
);
CREATE TABLE agents (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  owner_id TEXT NOT NULL REFERENCES users(id),
  description TEXT,
  created_at {{bigint}} NOT NULL,
  disabled_at {{bigint}}
);
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  prefix TEXT NOT NULL,
  name TEXT,
  user_id TEXT NOT NULL REFERENCES users(id),
  agent_id TEXT REFERENCES agents(id),
  created_at {{bigint}} NOT NULL,
  expires_at {{bigint}},
  revoked_at {{bigint}},
  last_used_at {{bigint}}
);
CREATE TABLE events (
  seq {{bigint}} PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  ts {{bigint}} NOT NULL,
  kind TEXT NOT NULL,
  actor_user TEXT,
  actor_agent TEXT,
  actor_token TEXT,
  on_behalf_of TEXT,
  workspace TEXT,
  session TEXT,
  parent TEXT,
  decision TEXT NOT NULL,
  resource TEXT,
  details TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_session ON events (session, seq);
CREATE INDEX events_agent ON events (actor_agent, ts);
CREATE INDEX events_user ON events (actor_user, ts);
CREATE TABLE chain_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq {{bigint}} NOT NULL,
  hash TEXT NOT NULL
);
INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
CREATE TABLE interceptions (
  id TEXT PRIMARY KEY,
  session_id TEXT NOT NULL,
  parent_id TEXT,
  started_at {{bigint}} NOT NULL,
  ended_at {{bigint}},
  user_id TEXT,
  agent_id TEXT,
  token_id TEXT,
  client TEXT,
  client_session TEXT,
  provider TEXT NOT NULL,
  model TEXT,
  route TEXT NOT NULL,
  stream INTEGER NOT NULL,
  decision TEXT NOT NULL,
  status INTEGER,
  error TEXT,
  latency_ms DOUBLE PRECISION,
  ttft_ms DOUBLE PRECISION,
  input_tokens {{bigint}} NOT NULL DEFAULT 0,
  output_tokens {{bigint}} NOT NULL DEFAULT 0,
  cache_read_tokens {{bigint}} NOT NULL DEFAULT 0,
  cache_write_tokens {{bigint}} NOT NULL DEFAULT 0,
  reasoning_tokens {{bigint}} NOT NULL DEFAULT 0,
  last_prompt TEXT
);
CREATE INDEX interceptions_session ON interceptions (session_id, started_at);
CREATE TABLE tool_calls (
  tool_call_id TEXT NOT NULL,
  interception_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  name TEXT NOT NULL,
  PRIMARY KEY (tool_call_id, interception_id)
);
CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  user_id TEXT,
  agent_id TEXT,
  client TEXT,
  provider TEXT,
  model TEXT,
  started_at {{bigint}} NOT NULL,
  last_at {{bigint}} NOT NULL,
  interceptions {{bigint}} NOT NULL DEFAULT 0,
  errors {{bigint}} NOT NULL DEFAULT 0,
  tool_calls {{bigint}} NOT NULL DEFAULT 0,
  input_tokens {{bigint}} NOT NULL DEFAULT 0,
  output_tokens {{bigint}} NOT NULL DEFAULT 0,
  cache_read_tokens {{bigint}} NOT NULL DEFAULT 0,
  cache_write_tokens {{bigint}} NOT NULL DEFAULT 0,
  reasoning_tokens {{bigint}} NOT NULL DEFAULT 0
);
CREATE INDEX sessions_last_at ON sessions (last_at);
"""
