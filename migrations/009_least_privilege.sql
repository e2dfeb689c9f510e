-- Least privilege in the database, and a capacity history nobody can forge.
--
-- 1. capacity_app (005) had SELECT, INSERT, UPDATE, DELETE on every table, and on every table a
--    later migration would create. It now holds exactly what the three functions use (the
--    booking function, the roll-up, the alert check: their SQL is in layers/capacity/capacity/
--    repository.py, rollup.py, reconcile.py, changes.py, alert_store.py), table by table,
--    column by column where it matters. Anything else is refused (42501): changing a rule, an
--    override or the slot grid, deleting or re-sizing a booking, re-keying a slot's ledger row,
--    rewriting an event, reading a guest's name, email, phone or notes.
--    A LATER MIGRATION THAT CREATES A TABLE THE FUNCTIONS USE GRANTS WHAT THEY NEED ITSELF: the
--    default privileges of 005 are withdrawn (tests/integration/test_db_roles.py lists every
--    table's grants and fails on a table it has no decision for).
-- 2. The history (capacity_changes, 003) is written by the trigger function alone, as its owner
--    (SECURITY DEFINER): no other role needs, or keeps, any right to write it. A row exists only
--    because a rule really changed.
--
-- Re-runnable: every statement revokes, grants or replaces to the same end state.

-- -------------------------------------------------------------------- 1. capacity_app

-- As in 005 (roles are cluster-wide: a database restored onto a new server may lack it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'capacity_app') THEN
        CREATE ROLE capacity_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO capacity_app;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM capacity_app;  -- column grants go with them
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM capacity_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM capacity_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM capacity_app;

-- The rules, the slot grid, the horizon: read to book, to show availability, to reconcile and to
-- roll up; written only by the migrating role and operators (capctl seed, slot close).
GRANT SELECT ON restaurants, weekly_rules, capacity_overrides TO capacity_app;

-- The ledger: the guarded upsert adds a booking's covers, a cancel frees them. Its key (the
-- slot) is never rewritten and no row is deleted.
GRANT SELECT, INSERT ON slot_usage TO capacity_app;
GRANT UPDATE (booked_covers) ON slot_usage TO capacity_app;

-- Bookings: written whole by the guarded insert, cancelled by a status change, never deleted or
-- re-sized. Read back: what a booking's view, the reconciliation and the roll-up read; not the
-- guest's contact details or notes (the functions write them, never read them), nor the key,
-- run id and cancel time.
GRANT SELECT (id, restaurant_id, booking_date, booking_time, party_size, status, source, tenant, created_at,
              guarded, accepted_max_covers)
    ON bookings TO capacity_app;
GRANT INSERT (id, restaurant_id, booking_date, booking_time, party_size, status, source, idempotency_key, tenant,
              run_id, guest_name, guest_email, guest_phone, notes, created_at, guarded, accepted_max_covers)
    ON bookings TO capacity_app;
GRANT UPDATE (status, cancelled_at) ON bookings TO capacity_app;

-- Idempotency records: read, claimed, and deleted once expired (the booking path one key at a
-- time, the roll-up's purge in batches). A stored answer is never rewritten.
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO capacity_app;

-- Events: appended (outcomes, cancellations, overbook_detected), counted by the roll-up and the
-- alert check; never changed or removed. The contract's columns only (id from its sequence; 007's
-- generated columns cannot be written by anyone).
GRANT SELECT ON observability_events TO capacity_app;
GRANT INSERT (event_type, restaurant_id, occurred_at, metadata) ON observability_events TO capacity_app;
GRANT USAGE ON SEQUENCE observability_events_id_seq TO capacity_app;

-- The roll-up's tables are its own: it upserts the window's rows and deletes those with nothing
-- behind them any more.
GRANT SELECT, INSERT, UPDATE, DELETE ON capacity_metrics_hourly, capacity_metrics_hourly_synthetic TO capacity_app;

-- The alert check's state: incidents opened, updated, resolved; notices queued and marked. Kept
-- as a record: nothing is deleted.
GRANT SELECT, INSERT, UPDATE ON alert_state, alert_deliveries TO capacity_app;
GRANT USAGE ON SEQUENCE alert_state_id_seq, alert_deliveries_id_seq TO capacity_app;

-- The history: read by the alert check to name the change behind a slot below its bookings.
GRANT SELECT ON capacity_changes TO capacity_app;

-- schema_migrations: nothing (005 left it SELECT; no function reads it).

-- -------------------------------------------------------------------- 2. the history's writer

-- capacity.actor is whatever the session says (any role may set it): db_role records, beside it,
-- the database role that made the change, which no session can choose. NULL on rows before 009.
ALTER TABLE capacity_changes ADD COLUMN IF NOT EXISTS db_role text;

-- Who: capacity.actor when the application names itself (capctl seed --actor); else the role in
-- effect and the login it came through ("ops_alice via postgres" after SET ROLE), which is also
-- db_role. current_user would be this function's owner here (SECURITY DEFINER), so the role in
-- effect is read from the session: the `role` setting (what SET ROLE set, 'none' when nothing
-- did) and session_user.
-- The subject comes from the table the trigger fired on, not from an argument: attached to any
-- other table (it cannot be: EXECUTE is revoked below, and CREATE TRIGGER needs it) it refuses.
-- search_path fixed and every relation qualified, as PostgreSQL requires of a SECURITY DEFINER
-- function: no caller's schema or temporary table can stand in for capacity_changes.
CREATE OR REPLACE FUNCTION record_capacity_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    subject     text;
    old_row     jsonb;
    new_row     jsonb;
    -- Columns that are bookkeeping, not capacity: a change of only these is not recorded.
    ignored     text[] := ARRAY['id', 'name', 'created_at', 'updated_at', 'managed_by'];
    restaurant  uuid;
    role_set    text := current_setting('role');
    in_effect   text;  -- the role in effect, and the login it came through
BEGIN
    subject := CASE TG_RELID
                   WHEN 'public.weekly_rules'::regclass THEN 'weekly_rule'
                   WHEN 'public.capacity_overrides'::regclass THEN 'override'
                   WHEN 'public.restaurants'::regclass THEN 'restaurant'
               END;
    IF subject IS NULL OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'record_capacity_change records changes of the capacity rules only, not of %', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    IF TG_OP = 'UPDATE' AND (old_row - ignored) = (new_row - ignored) THEN
        RETURN NULL;
    END IF;
    in_effect := CASE WHEN role_set IN ('none', session_user::text) THEN session_user::text
                      ELSE role_set || ' via ' || session_user END;
    restaurant := (coalesce(new_row, old_row) ->> CASE subject WHEN 'restaurant' THEN 'id' ELSE 'restaurant_id' END)::uuid;
    INSERT INTO public.capacity_changes (restaurant_id, actor, db_role, kind, before, after, reason)
    VALUES (
        restaurant,
        coalesce(nullif(current_setting('capacity.actor', true), ''), in_effect),
        in_effect,
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

-- A trigger function is never called directly, and firing a trigger needs no EXECUTE right;
-- attaching one does. Nobody but the owner may attach this one (to a temporary table of their
-- own, say, to write history rows through it).
REVOKE ALL ON FUNCTION record_capacity_change() FROM PUBLIC;

DO $$
DECLARE
    history  regclass := 'public.capacity_changes'::regclass;
    counter  regclass := pg_get_serial_sequence('public.capacity_changes', 'id')::regclass;
    owner    oid;
    grantee  text;
BEGIN
    -- The function writes as its owner: the migrating role, which must own the history (or be
    -- able to write it), else every change of a rule would fail.
    SELECT proowner INTO owner FROM pg_proc WHERE oid = 'public.record_capacity_change()'::regprocedure;
    IF NOT has_table_privilege(owner, history, 'INSERT') OR NOT has_sequence_privilege(owner, counter, 'USAGE') THEN
        RAISE EXCEPTION 'record_capacity_change is owned by %, which cannot write capacity_changes', owner::regrole;
    END IF;

    -- Every right to write the history, table-wide or on a column, from everyone but its owner
    -- (PUBLIC included). Reading stays as it was.
    FOR grantee IN
        SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = history AND a.grantee <> c.relowner AND a.privilege_type <> 'SELECT'
        UNION
        SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
          FROM pg_class c, pg_attribute att, aclexplode(att.attacl) a
         WHERE c.oid = history AND att.attrelid = c.oid AND a.grantee <> c.relowner
           AND a.privilege_type <> 'SELECT'
    LOOP
        -- a table-wide REVOKE takes the same rights off every column too
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON %s FROM %s', history, grantee);
    END LOOP;

    -- nextval() of the history's ids: the owner's alone.
    FOR grantee IN
        SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = counter AND a.grantee <> c.relowner AND a.privilege_type IN ('USAGE', 'UPDATE')
    LOOP
        EXECUTE format('REVOKE USAGE, UPDATE ON SEQUENCE %s FROM %s', counter, grantee);
    END LOOP;
END
$$;
