"""Where the alert check keeps its state: ``alert_state`` (one row per incident: its key one column
per field, ``slots`` the slots of a grouped incident) and
``alert_deliveries`` (one row per notice and channel, 'sent' only once the channel accepted it).
Every statement of the alert check, in one place. Parameterised SQL only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from capacity.figures import COUNTERS_SQL, SYNTHETIC_SQL
from capacity.incidents import SEVERITY, IncidentKey, SlotTime

RESTAURANTS = "SELECT id, name, timezone FROM restaurants ORDER BY id"

RATES = f"""
SELECT e.restaurant_id, {COUNTERS_SQL}
  FROM observability_events e
 WHERE e.occurred_at > %(start)s AND e.occurred_at <= %(end)s
   -- events outlive a deleted restaurant; an incident needs a restaurant to belong to
   AND EXISTS (SELECT 1 FROM restaurants r WHERE r.id = e.restaurant_id)
   AND (%(include_load_test)s OR NOT {SYNTHETIC_SQL})
 GROUP BY e.restaurant_id
 ORDER BY e.restaurant_id
"""

OPEN_ALERTS = """
SELECT a.id, a.restaurant_id, a.kind, a.incident_key, a.slot_date, a.slot_time, a.change_id, a.slots,
       a.opened_at, a.last_notified_at, a.figures, r.name
  FROM alert_state a JOIN restaurants r ON r.id = a.restaurant_id
 WHERE a.status = 'open'
 ORDER BY a.id
"""

INSERT_ALERT = """
INSERT INTO alert_state (restaurant_id, kind, incident_key, slot_date, slot_time, change_id, slots, severity,
                         status, opened_at, last_seen_at, last_notified_at, figures)
VALUES (%(restaurant_id)s, %(kind)s, %(incident)s, %(slot_date)s, %(slot_time)s, %(change_id)s, %(slots)s,
        %(severity)s, 'open', %(now)s, %(now)s, %(now)s, %(figures)s)
RETURNING id
"""

REMIND_ALERT = """
UPDATE alert_state SET last_seen_at = %(now)s, last_notified_at = %(now)s, figures = %(figures)s, slots = %(slots)s
 WHERE id = %(id)s AND status = 'open'
"""

UPDATE_ALERT = """
UPDATE alert_state SET last_seen_at = %(now)s, figures = %(figures)s, slots = %(slots)s
 WHERE id = %(id)s AND status = 'open'
"""

# The slots it named last stay with a resolved incident (its history).
RESOLVE_ALERT = """
UPDATE alert_state SET status = 'resolved', resolved_at = %(now)s, figures = %(figures)s
 WHERE id = %(id)s AND status = 'open'
"""

QUEUE = """
INSERT INTO alert_deliveries (alert_id, notice, channel, status, message, created_at)
VALUES (%(alert_id)s, %(notice)s, %(channel)s, 'pending', %(message)s, %(now)s)
"""

# An incident opened while a channel was not configured (or before it was added) is announced
# to that channel by the next run that still sees it: once, as an 'opened' notice.
QUEUE_UNANNOUNCED = """
INSERT INTO alert_deliveries (alert_id, notice, channel, status, message, created_at)
SELECT %(alert_id)s, 'opened', %(channel)s, 'pending', %(message)s, %(now)s
 WHERE NOT EXISTS (SELECT 1 FROM alert_deliveries WHERE alert_id = %(alert_id)s AND channel = %(channel)s)
"""

DETECTED_EVENT = """
INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata)
VALUES (%(event_type)s, %(restaurant_id)s, %(now)s, %(metadata)s)
"""

UNSENT = """
SELECT d.id, d.channel, d.notice, d.message, d.created_at, a.kind, a.restaurant_id, a.incident_key
  FROM alert_deliveries d JOIN alert_state a ON a.id = d.alert_id
 WHERE d.status IN ('pending', 'failed')
 ORDER BY d.created_at, d.id
"""

MARK_SENT = """
UPDATE alert_deliveries SET status = 'sent', attempts = attempts + 1, last_attempt_at = %(now)s,
       sent_at = %(now)s, last_error = NULL
 WHERE id = %(id)s
"""

MARK_FAILED = """
UPDATE alert_deliveries SET status = 'failed', attempts = attempts + 1, last_attempt_at = %(now)s,
       last_error = %(error)s
 WHERE id = %(id)s
"""

MARK_EXPIRED = "UPDATE alert_deliveries SET status = 'expired' WHERE id = %(id)s"


def key_params(key: IncidentKey) -> dict[str, Any]:
    """An incident's key as ``alert_state`` stores it: one column per field, and its label."""
    date, time = key.slot or (None, None)
    return {
        "restaurant_id": key.restaurant_id,
        "kind": key.kind.value,
        "incident": key.incident,
        "slot_date": date,
        "slot_time": time,
        "change_id": key.change_id,
        "severity": SEVERITY[key.kind].value,
    }


def members_json(members: Iterable[SlotTime]) -> list[dict[str, str]]:
    """A grouped incident's slots as ``alert_state.slots`` keeps them, oldest first."""
    return [{"date": d.isoformat(), "time": t.strftime("%H:%M")} for d, t in sorted(members)]


def members_of(stored: list[dict[str, str]] | None) -> list[SlotTime]:
    return [(dt.date.fromisoformat(m["date"]), dt.time.fromisoformat(m["time"])) for m in stored or []]
