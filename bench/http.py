"""The ``http`` contender: wrk against `capctl serve` (the local API Gateway in front of the real
handler), every request a new booking with its own Idempotency-Key."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.harness import API_KEY, DATE, Run, Slot

# Each wrk thread numbers its requests; keys are unique across threads and rounds (prefix).
# The slot is chosen per request the way the Python clients choose it: connection c of the
# thread books slots c, c + clients, ... of the list (no two connections share a slot when
# there are at least twice as many slots as connections).
WRK_SCRIPT = """
local slots = {slots}
local threads = {{}}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  tid = wrk.thread:get("tid")
  n = 0
  created = 0
  other = 0
end

function request()
  n = n + 1
  local slot = slots[(tid * 7919 + n) % #slots + 1]
  local body = '{{"restaurantId":"' .. slot[1] .. '","date":"{date}","time":"' .. slot[2] ..
    '","partySize":1,"guest":{{"name":"Bench Guest"}},"source":"bench"}}'
  local headers = {{}}
  headers["Content-Type"] = "application/json"
  headers["x-api-key"] = "{api_key}"
  headers["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. n
  return wrk.format("POST", "/bookings", headers, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    o = o + t:get("other")
  end
  io.write(string.format('BENCH {{"created": %d, "other": %d, "p50_us": %d, "p99_us": %d, "seconds": %f}}\\n',
    c, o, latency:percentile(50), latency:percentile(99), summary.duration / 1e6))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(base_url: str, slots: Sequence[Slot], clients: int, seconds: float, prefix: str) -> Run:
    lua_slots = "{" + ",".join(f'{{"{s.restaurant}","{s.time}"}}' for s in slots) + "}"
    script = WRK_SCRIPT.format(slots=lua_slots, date=DATE, api_key=API_KEY)
    with tempfile.TemporaryDirectory(prefix="capacity-wrk-") as tmp:
        path = Path(tmp) / "bookings.lua"
        path.write_text(script)
        cmd = [
            "wrk",
            "-t",
            "2",
            "-c",
            str(clients),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "15s",
            "-s",
            str(path),
            base_url,
            "--",
            prefix,
        ]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^BENCH (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-300:]} {done.stdout[-300:]}")
    figures = json.loads(match.group(1))
    # wrk's percentiles cover every response; at these rates nearly all of them are 201s
    return Run(
        bookings=int(figures["created"]),
        seconds=float(figures["seconds"]),
        errors=int(figures["other"]),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
    )
