"""Drop the `interceptions` table: one row and two index entries per LLM call that no query read.

Why. The projector wrote one row per call (from its `llm.request` and `llm.response` events), and only
retention read it back, to re-add a session's sums after pruning some of its calls. Writing it cost about
a tenth of what auditing adds to a proxied call (docs/benchmarks.md, sessions 14 and 15); a session's
sums are now rebuilt from the session's remaining events (`gatehouse.bridge.projection.calls_of`), and a
call is read from its two events, as `gatehouse sessions show` always did.
"""

NAME = "drop the interceptions table (read back from the log instead)"

# Also run on a lost derived file recreated by `migrations.ensure_derived_tables` (m0009's schema has it).
SQL_SQLITE = "DROP TABLE IF EXISTS derived.interceptions"
SQL_POSTGRESQL = "DROP TABLE IF EXISTS interceptions"
