"""Derived tables (interceptions, sessions, tool calls, spend) leave the request's transaction: a
projector (`gatehouse.audit.projector`) brings them up to date in batches, after the fact, and records
how far it got here. Until now they were written with their events, so they are complete up to the
current chain head."""

NAME = "projection state: how far the derived tables reflect the log"

SQL = """
CREATE TABLE projection_state (
  name TEXT PRIMARY KEY,
  seq {bigint} NOT NULL
);
INSERT INTO projection_state (name, seq) SELECT 'derived', seq FROM chain_head WHERE id = 1
"""
