"""The policy layer: templates and their versions, token binding, teams, the price book, spend."""

NAME = "policy: templates, teams, prices, spend"

SQL = """
ALTER TABLE tokens ADD COLUMN template TEXT;
CREATE TABLE policy_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version {bigint} NOT NULL
);
INSERT INTO policy_state (id, version) VALUES (1, 1);
CREATE TABLE templates (
  name TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  hash TEXT NOT NULL,
  max_token_ttl_s {bigint},
  updated_at {bigint} NOT NULL,
  updated_by TEXT NOT NULL
);
CREATE TABLE template_versions (
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  hash TEXT NOT NULL,
  source TEXT,
  content TEXT NOT NULL,
  document TEXT NOT NULL,
  lines TEXT NOT NULL,
  created_at {bigint} NOT NULL,
  created_by TEXT NOT NULL,
  event_id TEXT,
  PRIMARY KEY (name, version)
);
CREATE TABLE teams (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  description TEXT,
  limits TEXT,
  created_at {bigint} NOT NULL
);
CREATE TABLE team_members (
  user_id TEXT PRIMARY KEY REFERENCES users(id),
  team_id TEXT NOT NULL REFERENCES teams(id),
  added_at {bigint} NOT NULL
);
CREATE INDEX team_members_team ON team_members (team_id);
CREATE TABLE agent_teams (
  agent_id TEXT PRIMARY KEY REFERENCES agents(id),
  team_id TEXT NOT NULL REFERENCES teams(id),
  added_at {bigint} NOT NULL
);
CREATE TABLE prices (
  model TEXT NOT NULL,
  effective_from {bigint} NOT NULL,
  input_usd DOUBLE PRECISION NOT NULL,
  output_usd DOUBLE PRECISION NOT NULL,
  cache_read_usd DOUBLE PRECISION NOT NULL,
  cache_write_usd DOUBLE PRECISION NOT NULL,
  created_at {bigint} NOT NULL,
  created_by TEXT NOT NULL,
  PRIMARY KEY (model, effective_from)
);
CREATE TABLE spend (
  interception_id TEXT PRIMARY KEY,
  ts {bigint} NOT NULL,
  day TEXT NOT NULL,
  user_id TEXT,
  agent_id TEXT,
  token_id TEXT,
  team_id TEXT,
  template TEXT,
  provider TEXT,
  model TEXT,
  route TEXT,
  input_tokens {bigint} NOT NULL DEFAULT 0,
  output_tokens {bigint} NOT NULL DEFAULT 0,
  cache_read_tokens {bigint} NOT NULL DEFAULT 0,
  cache_write_tokens {bigint} NOT NULL DEFAULT 0,
  cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
  price_model TEXT,
  settled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX spend_ts ON spend (ts)
"""
