-- Incidents keyed field by field, and a capacity-below-bookings incident per capacity change.
--
-- Until now an incident's key was its label: incident_key 'YYYY-MM-DD HH:MM' (a slot) or '' (a
-- rate alert), read back by splitting the text. The key's fields get columns of their own:
--   slot_date, slot_time  the slot of a per-slot incident (overbooking), the restaurant's local time
--   change_id             the capacity_changes row behind a capacity-below-bookings incident
--                         (NULL for one without a recorded change: one per restaurant)
--   slots                 the slots a grouped (per-change) incident names, as last seen:
--                         [{"date": "YYYY-MM-DD", "time": "HH:MM"}, ...]
-- incident_key stays: the label people read ('2030-06-14 19:00', 'change 42', 'no recorded change'),
-- which the one-open-incident index still uses; nothing parses it any more.
--
-- No foreign key on change_id: capacity_changes is append-only and outlives what it describes,
-- and an incident must not stop a restaurant's deletion.
--
-- Open per-slot capacity-below-bookings incidents of before this migration get their slot
-- columns here; the next alert check closes each one into the incident of the change behind its
-- slot (action 'supersede', no notice of its own; the group's notice says how many it replaces),
-- or resolves it with a notice when its slot is back within capacity.
--
-- Grants: capacity_app's table-wide rights on alert_state (005) cover new columns.
ALTER TABLE alert_state
    ADD COLUMN IF NOT EXISTS slot_date date,
    ADD COLUMN IF NOT EXISTS slot_time time,
    ADD COLUMN IF NOT EXISTS change_id bigint,
    ADD COLUMN IF NOT EXISTS slots jsonb NOT NULL DEFAULT '[]'::jsonb;

UPDATE alert_state
   SET slot_date = split_part(incident_key, ' ', 1)::date,
       slot_time = split_part(incident_key, ' ', 2)::time
 WHERE kind IN ('overbooking', 'capacity_below_bookings')
   AND slot_date IS NULL
   AND incident_key ~ '^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$';
