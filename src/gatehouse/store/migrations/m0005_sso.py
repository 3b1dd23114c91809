"""Single sign-on: logins in progress, provider identities, team memberships from the provider, and
browser sessions. Secrets (login state, session id) are stored only as SHA-256 hashes."""

NAME = "sso: oidc logins, identities, team memberships, web sessions"

SQL = """
CREATE TABLE oidc_logins (
  state_hash TEXT PRIMARY KEY,
  nonce TEXT NOT NULL,
  code_verifier TEXT NOT NULL,
  return_to TEXT NOT NULL,
  created_at {bigint} NOT NULL,
  expires_at {bigint} NOT NULL
);
CREATE INDEX oidc_logins_expires ON oidc_logins (expires_at);
CREATE TABLE sso_identities (
  issuer TEXT NOT NULL,
  subject TEXT NOT NULL,
  user_id TEXT NOT NULL REFERENCES users(id),
  groups TEXT NOT NULL,
  created_at {bigint} NOT NULL,
  last_login_at {bigint} NOT NULL,
  PRIMARY KEY (issuer, subject)
);
CREATE INDEX sso_identities_user ON sso_identities (user_id);
CREATE TABLE sso_team_memberships (
  user_id TEXT NOT NULL REFERENCES users(id),
  team TEXT NOT NULL,
  source_group TEXT NOT NULL,
  updated_at {bigint} NOT NULL,
  PRIMARY KEY (user_id, team)
);
CREATE INDEX sso_team_memberships_team ON sso_team_memberships (team);
CREATE TABLE web_sessions (
  id TEXT PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  user_id TEXT NOT NULL REFERENCES users(id),
  issuer TEXT NOT NULL,
  subject TEXT NOT NULL,
  created_at {bigint} NOT NULL,
  expires_at {bigint} NOT NULL,
  revoked_at {bigint},
  last_seen_at {bigint},
  user_agent TEXT,
  remote TEXT
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);
"""
