-- Hourly roll-up of booking outcomes and the alert state machine (contract sections 3 and 5).

-- One row per (restaurant, UTC hour) of live traffic: the contract's table. Counters come from
-- observability_events by occurred_at; covers/capacity/utilization describe the slots whose
-- local start falls in the hour, from bookings and the rules. Rates are ratios (0.05 = 5 %),
-- NULL when their denominator is 0.
CREATE TABLE IF NOT EXISTS capacity_metrics_hourly (
    restaurant_id       uuid NOT NULL REFERENCES restaurants(id) ON DELETE CASCADE,
    hour                timestamptz NOT NULL,
    requests            integer NOT NULL DEFAULT 0,  -- outcome events: success + capacity_exceeded + retry_exhausted
    successes           integer NOT NULL DEFAULT 0,
    capacity_exceeded   integer NOT NULL DEFAULT 0,  -- refusals, slot_closed included
    slot_closed         integer NOT NULL DEFAULT 0,  -- refusals with reason 'closed'
    retry_exhausted     integer NOT NULL DEFAULT 0,
    overbook_prevented  integer NOT NULL DEFAULT 0,  -- lost races the guard refused
    retried_failures    integer NOT NULL DEFAULT 0,  -- booking.conflict events (one per retried failure)
    conflicts           integer NOT NULL DEFAULT 0,  -- requests that met a conflict (lost race or retry)
    cancellations       integer NOT NULL DEFAULT 0,
    overbook_detected   integer NOT NULL DEFAULT 0,
    conflict_rate       numeric(10, 6),
    success_rate        numeric(10, 6),
    covers_booked       integer NOT NULL DEFAULT 0,  -- confirmed covers in the hour's finite-capacity slots
    capacity_covers     integer NOT NULL DEFAULT 0,  -- sum of maxCovers of those slots
    utilization         numeric(10, 6),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (restaurant_id, hour),
    CHECK (hour = date_trunc('hour', hour, 'UTC'))
);
CREATE INDEX IF NOT EXISTS capacity_metrics_hourly_hour ON capacity_metrics_hourly (hour);

-- The same figures for synthetic traffic (source = 'load-test'), kept out of the live table so
-- a reader of capacity_metrics_hourly never has to remember a filter.
CREATE TABLE IF NOT EXISTS capacity_metrics_hourly_synthetic (LIKE capacity_metrics_hourly INCLUDING ALL);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conname = 'capacity_metrics_hourly_synthetic_restaurant_fk') THEN
        ALTER TABLE capacity_metrics_hourly_synthetic
            ADD CONSTRAINT capacity_metrics_hourly_synthetic_restaurant_fk
            FOREIGN KEY (restaurant_id) REFERENCES restaurants(id) ON DELETE CASCADE;
    END IF;
END $$;

-- One row per incident: (restaurant, kind, incident_key) while open; a new row when it recurs
-- after resolving. incident_key is the slot ('YYYY-MM-DD HH:MM', local) for overbooking and ''
-- for the per-restaurant rate alerts.
CREATE TABLE IF NOT EXISTS alert_state (
    id                  bigserial PRIMARY KEY,
    restaurant_id       uuid NOT NULL REFERENCES restaurants(id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('overbooking', 'conflict_rate', 'retry_exhaustion')),
    incident_key        text NOT NULL DEFAULT '',
    severity            text NOT NULL CHECK (severity IN ('critical', 'warning')),
    status              text NOT NULL CHECK (status IN ('open', 'resolved')),
    opened_at           timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    last_notified_at    timestamptz NOT NULL,  -- the cooldown runs from here
    resolved_at         timestamptz,
    figures             jsonb NOT NULL DEFAULT '{}'::jsonb,
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_state_one_open
    ON alert_state (restaurant_id, kind, incident_key) WHERE status = 'open';

-- One row per notice (opened | reminder | resolved) per channel. A row is 'sent' only after the
-- channel accepted it; 'pending' and 'failed' rows are retried by the next run, 'expired' ones
-- (older than the retry horizon) are not. message is the rendered notice, so a retry sends the
-- same words.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id                  bigserial PRIMARY KEY,
    alert_id            bigint NOT NULL REFERENCES alert_state(id) ON DELETE CASCADE,
    notice              text NOT NULL CHECK (notice IN ('opened', 'reminder', 'resolved')),
    channel             text NOT NULL CHECK (channel IN ('sns', 'webhook')),
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'expired')),
    attempts            integer NOT NULL DEFAULT 0,
    message             jsonb NOT NULL,
    created_at          timestamptz NOT NULL,
    last_attempt_at     timestamptz,
    sent_at             timestamptz,
    last_error          text,
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS alert_deliveries_unsent
    ON alert_deliveries (channel, created_at) WHERE status IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS alert_deliveries_alert ON alert_deliveries (alert_id);
