"""How far the event journal has been chained into the log (gatehouse.audit.journal): one row, moved in
the same transaction as the events a drain appends. PostgreSQL has no journal; the row stays at zero."""

NAME = "event journal state"

SQL = """
CREATE TABLE journal_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  segment {bigint} NOT NULL,
  byte_offset {bigint} NOT NULL
);
INSERT INTO journal_state (id, segment, byte_offset) VALUES (1, 0, 0)
"""
