"""Drop the (actor, ts) indexes of the first schema: the partial (actor, seq) indexes of m0002 serve the
timelines, and every index is one more page written in each commit on the request path."""

NAME = "drop events (actor, ts) indexes superseded by (actor, seq)"

SQL = """
DROP INDEX events_agent;
DROP INDEX events_user;
"""
