-- Capacity history and the capacity each booking was accepted under, so reconciliation can tell
-- a guard failure (overbooked: CRITICAL) from a capacity lowered below bookings already taken
-- (capacity_below_bookings: WARNING). Also the per-restaurant booking horizon.

-- How far ahead a restaurant takes bookings: a date beyond today + horizon is refused (422).
ALTER TABLE restaurants
    ADD COLUMN IF NOT EXISTS booking_horizon_days integer NOT NULL DEFAULT 365
        CHECK (booking_horizon_days BETWEEN 1 AND 3660);

-- Written by the guarded insert: guarded = true says the engine's guard accepted the booking with
-- accepted_max_covers in force (NULL = unlimited). A row inserted any other way (plain SQL)
-- keeps guarded = false: its capacity is unknown, so reconciliation holds it to the capacity in
-- force now.
ALTER TABLE bookings ADD COLUMN IF NOT EXISTS guarded boolean NOT NULL DEFAULT false;
ALTER TABLE bookings ADD COLUMN IF NOT EXISTS accepted_max_covers integer;

-- Who manages an override: 'seed' (the restaurant's seed file: `capctl seed` makes the rows
-- match it; the default, so rows seeded before this column stay the seed's) or 'operator'
-- (`capctl slot close`, or an operator's SQL that sets it): a later seed leaves those alone, so a
-- deploy never reopens a slot an operator closed.
ALTER TABLE capacity_overrides ADD COLUMN IF NOT EXISTS managed_by text NOT NULL DEFAULT 'seed'
    CHECK (managed_by IN ('seed', 'operator'));

-- Every change of a restaurant's capacity rules, however it was made (capctl seed, capctl slot
-- close, a future admin path, an operator's SQL session): recorded by triggers, append-only.
-- No foreign key: the history outlives the rows it describes.
CREATE TABLE IF NOT EXISTS capacity_changes (
    id              bigserial PRIMARY KEY,
    restaurant_id   uuid NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    kind            text NOT NULL,   -- <subject>.<insert|update|delete>: weekly_rule, override, restaurant
    before          jsonb,           -- the row before (NULL for an insert)
    after           jsonb,           -- the row after (NULL for a delete)
    reason          text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS capacity_changes_restaurant_time ON capacity_changes (restaurant_id, changed_at);

-- Who: the application names itself with SET LOCAL capacity.actor (capctl seed --actor); anyone
-- else is the database role in effect (current_user, "via" the login role when SET ROLE changed
-- it). Why: an inserted or changed override's own reason, else SET LOCAL capacity.reason; for a
-- removal, capacity.reason (why it was removed), else the removed row's reason, marked as such.
CREATE OR REPLACE FUNCTION record_capacity_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    subject     text := TG_ARGV[0];
    old_row     jsonb;
    new_row     jsonb;
    -- Columns that are bookkeeping, not capacity: a change of only these is not recorded.
    ignored     text[] := ARRAY['id', 'name', 'created_at', 'updated_at', 'managed_by'];
    restaurant  uuid;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    IF TG_OP = 'UPDATE' AND (old_row - ignored) = (new_row - ignored) THEN
        RETURN NULL;
    END IF;
    restaurant := (coalesce(new_row, old_row) ->> CASE subject WHEN 'restaurant' THEN 'id' ELSE 'restaurant_id' END)::uuid;
    INSERT INTO capacity_changes (restaurant_id, actor, kind, before, after, reason)
    VALUES (
        restaurant,
        coalesce(nullif(current_setting('capacity.actor', true), ''),
                 current_user || CASE WHEN session_user <> current_user THEN ' via ' || session_user ELSE '' END),
        subject || '.' || lower(TG_OP),
        old_row,
        new_row,
        CASE WHEN TG_OP = 'DELETE'
             THEN coalesce(nullif(current_setting('capacity.reason', true), ''),
                           'removed; it said: ' || nullif(old_row ->> 'reason', ''), '')
             ELSE coalesce(nullif(new_row ->> 'reason', ''), nullif(current_setting('capacity.reason', true), ''), '')
        END
    );
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS weekly_rules_history ON weekly_rules;
CREATE TRIGGER weekly_rules_history AFTER INSERT OR UPDATE OR DELETE ON weekly_rules
    FOR EACH ROW EXECUTE FUNCTION record_capacity_change('weekly_rule');
DROP TRIGGER IF EXISTS capacity_overrides_history ON capacity_overrides;
CREATE TRIGGER capacity_overrides_history AFTER INSERT OR UPDATE OR DELETE ON capacity_overrides
    FOR EACH ROW EXECUTE FUNCTION record_capacity_change('override');
DROP TRIGGER IF EXISTS restaurants_history ON restaurants;
CREATE TRIGGER restaurants_history AFTER INSERT OR UPDATE OR DELETE ON restaurants
    FOR EACH ROW EXECUTE FUNCTION record_capacity_change('restaurant');

-- TRUNCATE bypasses row triggers: a capacity wiped that way would leave no history. Refused.
CREATE OR REPLACE FUNCTION capacity_rules_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % would change capacity without a record: delete the rows instead', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS weekly_rules_no_truncate ON weekly_rules;
CREATE TRIGGER weekly_rules_no_truncate BEFORE TRUNCATE ON weekly_rules
    FOR EACH STATEMENT EXECUTE FUNCTION capacity_rules_no_truncate();
DROP TRIGGER IF EXISTS capacity_overrides_no_truncate ON capacity_overrides;
CREATE TRIGGER capacity_overrides_no_truncate BEFORE TRUNCATE ON capacity_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION capacity_rules_no_truncate();

CREATE OR REPLACE FUNCTION capacity_changes_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'capacity_changes is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS capacity_changes_append_only ON capacity_changes;
CREATE TRIGGER capacity_changes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON capacity_changes
    FOR EACH STATEMENT EXECUTE FUNCTION capacity_changes_append_only();

-- A second kind of incident: a slot whose capacity was lowered below bookings already accepted.
ALTER TABLE alert_state DROP CONSTRAINT IF EXISTS alert_state_kind_check;
ALTER TABLE alert_state ADD CONSTRAINT alert_state_kind_check
    CHECK (kind IN ('overbooking', 'capacity_below_bookings', 'conflict_rate', 'retry_exhaustion'));
