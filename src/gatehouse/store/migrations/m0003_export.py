"""Export cursors: how far each sink has been delivered, and which process delivers it now (a lease, so
that of several replicas only one sends to a given sink at a time)."""

NAME = "export cursors"

SQL = """
CREATE TABLE export_cursors (
  sink TEXT PRIMARY KEY,
  seq {bigint} NOT NULL,
  updated_at {bigint} NOT NULL,
  owner TEXT,
  lease_until {bigint}
);
"""
