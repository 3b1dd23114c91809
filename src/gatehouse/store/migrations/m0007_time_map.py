"""The time map (gatehouse.audit.timemap): for each 10-minute bucket of `ts`, the lowest and highest seq of
the events created in it, so that a timeline with a time window reads only the part of the log that
holds the window. Filled here from the existing events, then kept up to date by catch-up.

Why a map and not indexes. A windowed timeline ("agent X, last 7 days") walked the actor's (actor, seq)
index from the actor's first event and read each row for its ts: on 5 million events (bench/timeline.py)
a busy agent's or user's window took 400-900 ms at p95. (actor, ts) indexes beside the (actor, seq) ones
answer it too (12 ms), but four of them (agent, user, on-behalf-of, workspace) cost the audit writer
22-27 % of its events/s on a realistic mix, for every event, on the request path. The map costs the
writer nothing: it is built in bulk, off the request path, and is a few hundred rows per week.

Integer division rounds toward zero in SQLite and PostgreSQL alike, as `timemap.bucket` does. The mark is
taken before the buckets: an event another replica commits in between is then both in a bucket and after
the mark, which is harmless, rather than in neither.
"""

NAME = "time map: seq range of each 10 minutes of the log, for timeline windows"

SQL = """
CREATE TABLE time_map (
  bucket {bigint} PRIMARY KEY,
  first_seq {bigint} NOT NULL,
  last_seq {bigint} NOT NULL
);
CREATE TABLE time_map_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq {bigint} NOT NULL
);
INSERT INTO time_map_state (id, seq) SELECT 1, coalesce(max(seq), 0) FROM events;
INSERT INTO time_map (bucket, first_seq, last_seq)
  SELECT ts / 600000000, min(seq), max(seq) FROM events GROUP BY ts / 600000000
"""
