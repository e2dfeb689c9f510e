-- The event fields every figure reads (capacity.figures: traffic class, conflicts, closed-slot
-- refusals), kept as columns of observability_events that PostgreSQL computes from the event's
-- metadata. The roll-up and the alert check count them for every event of their window; read
-- from the JSON, they made the roll-up's count about twice the bare GROUP BY of the same rows
-- (bench/README.md). Stored generated columns: no writer changes, and every writer (the booking
-- path, the alert check, an operator's SQL, an outside tool) fills them the same way. The
-- contract's columns and metadata are unchanged; a writer cannot set these (GENERATED ALWAYS).
--
--   source    metadata ->> 'source' (NULL when absent; 'load-test' marks synthetic traffic)
--   attempts  metadata's attempts when it is a JSON number, else 1 (absent, a string, null):
--             a malformed event must not stop a run, nor fail its writer's INSERT (numeric takes
--             any JSON number, so the expression cannot raise)
--   reason    metadata ->> 'reason' (a refusal's: 'closed' for a closed slot)
--
-- COST ON A LARGE TABLE. Adding a stored generated column rewrites observability_events under
-- an ACCESS EXCLUSIVE lock, held to the end of the migration's transaction: every booking
-- (which writes its outcome event in its own transaction) waits for it and fails at its lock
-- timeout (DB_LOCK_TIMEOUT_MS, 2 s by default). About 3 s per million events on a laptop. An
-- operator of a big table should, instead of running this in traffic:
--   * shrink it first: events older than what the roll-up re-reads (its window, hours) and the
--     dashboards show are history only; archive and delete them, then VACUUM;
--   * time the migration on a restored copy, and run it in a quiet window with a lock_timeout
--     (ALTER ROLE ... SET lock_timeout, or PGOPTIONS='-c lock_timeout=5s') so it gives up
--     rather than queueing every booking behind a long-running reader;
--   * or, where no window is long enough, do it online by hand and then record 007 as applied:
--     add the three as plain nullable columns (instant), a BEFORE INSERT OR UPDATE trigger that
--     sets them with the expressions below, backfill old rows in batches by id, then
--     INSERT INTO schema_migrations (version, name) VALUES (7, '007_event_columns.sql').
--     (ADD COLUMN IF NOT EXISTS below skips columns that already exist.)
--
-- Grants: capacity_app reads observability_events table-wide (005, and 009 keeps it so) and writes
-- only the contract's columns; nothing to grant for these.
ALTER TABLE observability_events
    ADD COLUMN IF NOT EXISTS source text
        GENERATED ALWAYS AS (metadata ->> 'source') STORED,
    ADD COLUMN IF NOT EXISTS attempts numeric
        GENERATED ALWAYS AS (coalesce(CASE WHEN jsonb_typeof(metadata -> 'attempts') = 'number'
                                           THEN (metadata ->> 'attempts')::numeric END, 1)) STORED,
    ADD COLUMN IF NOT EXISTS reason text
        GENERATED ALWAYS AS (metadata ->> 'reason') STORED;

-- The new columns' statistics; the roll-up's (restaurant, hour) ndistinct of 006 is kept as is:
-- its third grouping key (synthetic or not) is a boolean, which the planner counts as 2 groups.
ANALYZE observability_events;
