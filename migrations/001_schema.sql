-- Core schema: restaurants and their capacity rules, the per-slot usage ledger that the guarded
-- write updates, bookings, idempotency records and observability events.

CREATE TABLE IF NOT EXISTS restaurants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    timezone        text NOT NULL DEFAULT 'UTC',
    slot_minutes    integer NOT NULL DEFAULT 15 CHECK (slot_minutes BETWEEN 1 AND 1440),
    max_party_size  integer NOT NULL DEFAULT 50 CHECK (max_party_size BETWEEN 1 AND 50),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Weekly rules: ISO weekday 1-7, [start_time, end_time), max_covers (NULL = unlimited, 0 = closed).
CREATE TABLE IF NOT EXISTS weekly_rules (
    id              bigserial PRIMARY KEY,
    restaurant_id   uuid NOT NULL REFERENCES restaurants(id) ON DELETE CASCADE,
    weekday         smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_time      time NOT NULL,
    end_time        time NOT NULL,
    max_covers      integer CHECK (max_covers >= 0)
);
CREATE INDEX IF NOT EXISTS weekly_rules_restaurant_weekday ON weekly_rules (restaurant_id, weekday);

-- Overrides: a date, optionally a [start_time, end_time) range (both NULL = whole date).
CREATE TABLE IF NOT EXISTS capacity_overrides (
    id              bigserial PRIMARY KEY,
    restaurant_id   uuid NOT NULL REFERENCES restaurants(id) ON DELETE CASCADE,
    override_date   date NOT NULL,
    start_time      time,
    end_time        time,
    max_covers      integer CHECK (max_covers >= 0),
    reason          text NOT NULL DEFAULT '',
    CHECK ((start_time IS NULL) = (end_time IS NULL))
);
CREATE INDEX IF NOT EXISTS capacity_overrides_restaurant_date ON capacity_overrides (restaurant_id, override_date);

-- The ledger the guarded write updates: one row per slot that has ever been booked.
-- The conditional UPDATE on this row is the only serialisation point of the booking path.
CREATE TABLE IF NOT EXISTS slot_usage (
    restaurant_id   uuid NOT NULL,
    slot_date       date NOT NULL,
    slot_time       time NOT NULL,
    booked_covers   integer NOT NULL CHECK (booked_covers >= 0),
    PRIMARY KEY (restaurant_id, slot_date, slot_time)
);

CREATE TABLE IF NOT EXISTS bookings (
    id              uuid PRIMARY KEY,
    restaurant_id   uuid NOT NULL REFERENCES restaurants(id),
    booking_date    date NOT NULL,
    booking_time    time NOT NULL,
    party_size      integer NOT NULL CHECK (party_size BETWEEN 1 AND 50),
    status          text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    source          text NOT NULL DEFAULT 'api',
    idempotency_key text,
    tenant          text NOT NULL DEFAULT '',
    run_id          text,
    guest_name      text NOT NULL DEFAULT '',
    guest_email     text,
    guest_phone     text,
    notes           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    cancelled_at    timestamptz
);
CREATE INDEX IF NOT EXISTS bookings_slot ON bookings (restaurant_id, booking_date, booking_time) WHERE status = 'confirmed';
CREATE INDEX IF NOT EXISTS bookings_source_run ON bookings (source, run_id) WHERE source <> 'api';

-- Idempotency records, scoped per tenant (API key). Written in the same statement as the outcome.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant          text NOT NULL,
    key             text NOT NULL,
    fingerprint     text NOT NULL,
    status_code     integer NOT NULL,
    response        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE TABLE IF NOT EXISTS observability_events (
    id              bigserial PRIMARY KEY,
    event_type      text NOT NULL,
    restaurant_id   uuid,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS observability_events_time ON observability_events (occurred_at);
CREATE INDEX IF NOT EXISTS observability_events_restaurant_time ON observability_events (restaurant_id, occurred_at);
