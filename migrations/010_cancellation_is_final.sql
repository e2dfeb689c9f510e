-- A cancellation is final: a cancelled booking never becomes confirmed again.
--
-- Cancelling frees the booking's covers in slot_usage in the same statement. Confirming it again
-- by an UPDATE would put the guests back in the slot without the guarded write ever checking the
-- capacity: an overbooking the guard never saw (and a ledger that no longer matches). No path of
-- the engine does it; this makes sure no bug, script or hand-written SQL can, whatever the role.
-- To restore a guest, book again through the API (or capctl): the guard decides.
--
-- Re-runnable: the function is replaced and the trigger made again.

CREATE OR REPLACE FUNCTION bookings_cancellation_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'cancelled' AND NEW.status IS DISTINCT FROM 'cancelled' THEN
        RAISE EXCEPTION 'booking % is cancelled, and a cancellation is final: book again (the guard decides)', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS bookings_cancellation_is_final ON bookings;
CREATE TRIGGER bookings_cancellation_is_final
    BEFORE UPDATE OF status ON bookings
    FOR EACH ROW EXECUTE FUNCTION bookings_cancellation_is_final();
