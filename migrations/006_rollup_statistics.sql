-- The roll-up counts the window's events per (restaurant, UTC hour). Without statistics on that
-- pair the planner guesses hundreds of thousands of groups where a 3-hour window holds a few per
-- restaurant, and sorts every event of the window (or reads them through the (restaurant, time)
-- index in restaurant order, a random heap read per event) instead of hashing them: most of a
-- run at a million events. With the pair's number of distinct values known it hashes.
CREATE STATISTICS IF NOT EXISTS observability_events_restaurant_hour (ndistinct)
    ON restaurant_id, date_trunc('hour', occurred_at, 'UTC') FROM observability_events;
ANALYZE observability_events;
