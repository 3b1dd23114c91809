"""SQLite: the derived tables move to their own file (`gatehouse.derived.db` beside `gatehouse.db`, attached
to every connection as the schema `derived`; see `gatehouse.store.db`). One write lock per file: with
the projector's batches in the log's file, each batch held up the log's commits, and every request
waiting for its event to be durable with them (measured: ~470 lock waits in 7 s at 2,600 calls/s).

The tables are created in `derived` as they stood, then copied and dropped from `main`. Each copy first
empties its target, so that running this again after a crash that committed the derived file but not
the log's completes the move. Later migrations that change a derived table name it `derived.<table>` in
their SQLite script. `DERIVED_SCHEMA` also serves `ensure_derived_tables`, which recreates a missing or
deleted derived file empty, its marks at zero: the projector then rebuilds it from the log.

PostgreSQL keeps them where they are: it has no database-wide write lock.
"""

NAME = "sqlite: derived tables in their own file"

DERIVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS derived.interceptions (
  id TEXT PRIMARY KEY,
  session_id TEXT NOT NULL,
  parent_id TEXT,
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
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
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  cache_read_tokens INTEGER NOT NULL DEFAULT 0,
  cache_write_tokens INTEGER NOT NULL DEFAULT 0,
  reasoning_tokens INTEGER NOT NULL DEFAULT 0,
  last_prompt TEXT
);
CREATE TABLE IF NOT EXISTS derived.tool_calls (
  tool_call_id TEXT NOT NULL,
  interception_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  name TEXT NOT NULL,
  PRIMARY KEY (tool_call_id, interception_id)
);
CREATE TABLE IF NOT EXISTS derived.sessions (
  id TEXT PRIMARY KEY,
  user_id TEXT,
  agent_id TEXT,
  client TEXT,
  provider TEXT,
  model TEXT,
  started_at INTEGER NOT NULL,
  last_at INTEGER NOT NULL,
  interceptions INTEGER NOT NULL DEFAULT 0,
  errors INTEGER NOT NULL DEFAULT 0,
  tool_calls INTEGER NOT NULL DEFAULT 0,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  cache_read_tokens INTEGER NOT NULL DEFAULT 0,
  cache_write_tokens INTEGER NOT NULL DEFAULT 0,
  reasoning_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS derived.spend (
  interception_id TEXT PRIMARY KEY,
  ts INTEGER NOT NULL,
  day TEXT NOT NULL,
  user_id TEXT,
  agent_id TEXT,
  token_id TEXT,
  team_id TEXT,
  template TEXT,
  provider TEXT,
  model TEXT,
  route TEXT,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  cache_read_tokens INTEGER NOT NULL DEFAULT 0,
  cache_write_tokens INTEGER NOT NULL DEFAULT 0,
  cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
  price_model TEXT,
  settled INTEGER NOT NULL DEFAULT 0
);
CREATE VIRTUAL TABLE IF NOT EXISTS derived.audit_search
  USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS derived.audit_search_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS derived.time_map (
  bucket INTEGER PRIMARY KEY,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS derived.time_map_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS derived.projection_state (
  name TEXT PRIMARY KEY,
  seq INTEGER NOT NULL
)
"""

# Created after the copies, so that each is built once.
DERIVED_INDEXES = """
CREATE INDEX IF NOT EXISTS derived.interceptions_session ON interceptions (session_id, started_at);
CREATE INDEX IF NOT EXISTS derived.sessions_last_at ON sessions (last_at);
CREATE INDEX IF NOT EXISTS derived.spend_ts ON spend (ts)
"""

_TABLES = (
    "interceptions",
    "tool_calls",
    "sessions",
    "spend",
    "audit_search",
    "audit_search_state",
    "time_map",
    "time_map_state",
    "projection_state",
)


def _move(table: str) -> str:
    # The full-text table's rows are its rowid (the event's seq) and its text; the others copy whole.
    into, columns = ("(rowid, body)", "rowid, body") if table == "audit_search" else ("", "*")
    return (
        f"DELETE FROM derived.{table};\n"
        f"INSERT INTO derived.{table} {into} SELECT {columns} FROM main.{table};\n"
        f"DROP TABLE main.{table}"
    )


SQL_SQLITE = ";\n".join([DERIVED_SCHEMA.strip(), *map(_move, _TABLES), DERIVED_INDEXES.strip()])
SQL_POSTGRESQL = ""
