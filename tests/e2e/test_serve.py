"""`capctl serve` through real HTTP on 127.0.0.1, over the real create_booking handler and a real
PostgreSQL: the API's answers, the gateway's own refusals (403, 429, 413), Lambda-like instances
(one request at a time each, own connection, replaced after a crash or a timeout) and a clean
stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from capctl.serve import INSTANCE_HEADER, LocalApi
from tests.e2e.serving import OPENER, PROBLEM, SERVER_ENV
from tests.support import FUTURE_DATE, RESTAURANT_ID, ROOT, booking_body

pytestmark = pytest.mark.e2e

# For tests that hold a table lock: requests wait on it instead of timing out and retrying.
WAIT_ON_LOCKS = {
    "DB_LOCK_TIMEOUT_MS": "60000",
    "DB_STATEMENT_TIMEOUT_MS": "60000",
    "BOOKING_REQUEST_BUDGET_MS": "60000",
}
GUEST = booking_body()["guest"]


@dataclass
class Reply:
    status: int
    headers: Message
    body: Any


def call(
    api: LocalApi,
    method: str,
    path: str,
    *,
    body: Any = None,
    key: str | None = None,
    api_key: str | None = None,
    data: bytes | Iterable[bytes] | None = None,
) -> Reply:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if api_key is not None:
        headers["x-api-key"] = api_key
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(api.base_url + path, data=data, method=method, headers=headers)
    try:
        with OPENER.open(request, timeout=30) as response:
            raw, status, reply_headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        raw, status, reply_headers = exc.read(), exc.code, exc.headers
    return Reply(status, reply_headers, json.loads(raw) if raw else None)


def availability(api: LocalApi, api_key: str | None = None) -> Reply:
    return call(api, "GET", f"/restaurants/{RESTAURANT_ID}/availability?date={FUTURE_DATE}", api_key=api_key)


def slot_row(reply: Reply, time_: str) -> dict[str, Any]:
    return next(s for s in reply.body["slots"] if s["time"] == time_)


def assert_problem(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status
    assert reply.headers["Content-Type"] == PROBLEM
    assert reply.body["status"] == status
    assert reply.body["code"] == code
    assert {"type", "title", "detail"} <= reply.body.keys()


def confirmed(conn: Any, time_: str = "19:00") -> tuple[int, int]:
    """(bookings, covers) confirmed in one slot of FUTURE_DATE, read from the table itself."""
    row = conn.execute(
        "SELECT count(*)::int AS n, coalesce(sum(party_size), 0)::int AS covers FROM bookings "
        "WHERE restaurant_id = %s AND booking_date = %s AND booking_time = %s AND status = 'confirmed'",
        (RESTAURANT_ID, FUTURE_DATE, time_),
    ).fetchone()
    return row["n"], row["covers"]


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")  # exited; only its exit status is left to collect


@pytest.fixture
def table_lock(seeded_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection holding an exclusive lock on `bookings` until it commits: every booking
    request waits inside its instance meanwhile, which makes "busy" observable."""
    lock = psycopg.connect(seeded_db)
    lock.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
    yield lock
    lock.rollback()
    lock.close()


def test_book_replay_read_cancel_through_http(serve: Callable[..., LocalApi], conn: Any) -> None:
    api = serve(api_keys=["tenant-a", "tenant-b"])

    created = call(api, "POST", "/bookings", body=booking_body(), key="e2e-1", api_key="tenant-a")
    assert created.status == 201
    assert created.headers["Content-Type"] == "application/json"
    booking = created.body["booking"]
    assert booking["status"] == "confirmed"
    assert (booking["restaurantId"], booking["date"], booking["time"], booking["partySize"]) == (
        RESTAURANT_ID,
        FUTURE_DATE,
        "19:00",
        2,
    )
    assert created.body["capacity"] == {"maxCovers": 20, "bookedCovers": 2, "remainingCovers": 18}
    assert created.headers["Location"] == f"/bookings/{booking['id']}"
    assert created.headers[INSTANCE_HEADER] in {str(i["id"]) for i in api.health()["instances"]}
    assert created.headers["Idempotent-Replayed"] is None

    replay = call(api, "POST", "/bookings", body=booking_body(), key="e2e-1", api_key="tenant-a")
    assert replay.status == 201
    assert replay.body == created.body
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert confirmed(conn) == (1, 2)

    assert slot_row(availability(api, "tenant-a"), "19:00") == {
        "time": "19:00",
        "maxCovers": 20,
        "bookedCovers": 2,
        "remainingCovers": 18,
    }

    read = call(api, "GET", f"/bookings/{booking['id']}", api_key="tenant-a")
    assert read.status == 200
    assert read.body == {"booking": booking}
    # A booking belongs to the API key that made it: the tenant is derived from the key.
    assert_problem(call(api, "GET", f"/bookings/{booking['id']}", api_key="tenant-b"), 404, "booking_not_found")

    cancelled = call(api, "DELETE", f"/bookings/{booking['id']}", api_key="tenant-a")
    assert cancelled.status == 200
    assert cancelled.body["booking"] == {**booking, "status": "cancelled"}
    assert (
        conn.execute("SELECT status FROM bookings WHERE id = %s", (booking["id"],)).fetchone()["status"] == "cancelled"
    )
    assert slot_row(availability(api, "tenant-a"), "19:00")["remainingCovers"] == 20

    assert_problem(call(api, "GET", "/no/such/resource", api_key="tenant-a"), 404, "not_found")

    pids = [i["pid"] for i in api.health()["instances"]]
    assert api.stop() == 0
    assert all(pid_gone(pid) for pid in pids)
    log = api.log_text()
    assert "Traceback" not in log
    # One access-log line per request; no guest data anywhere in the server's output.
    assert re.search(r"^capctl serve: POST /bookings 201 [\d.]+ms instance=\d+ request=[0-9a-f-]{36}$", log, re.M)
    assert len(re.findall(r"^capctl serve: (GET|POST|DELETE) ", log, re.M)) == 8
    for value in GUEST.values():
        assert value not in log


def test_api_keys_are_checked_before_the_handler(serve: Callable[..., LocalApi], conn: Any) -> None:
    api = serve(api_keys=["right-key"])

    assert_problem(call(api, "POST", "/bookings", body=booking_body(), key="k1"), 403, "forbidden")
    assert_problem(call(api, "POST", "/bookings", body=booking_body(), key="k2", api_key="wrong-key"), 403, "forbidden")
    assert_problem(availability(api, "Right-Key"), 403, "forbidden")

    assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM observability_events").fetchone()["n"] == 0
    assert sum(i["invocations"] for i in api.health()["instances"]) == 0
    assert availability(api, "right-key").status == 200

    # Ctrl-C stops it cleanly too.
    assert api.process is not None
    api.process.send_signal(signal.SIGINT)
    assert api.process.wait(15) == 0
    assert "Traceback" not in api.log_text()


def test_usage_plan_throttles_each_key_with_retry_after(serve: Callable[..., LocalApi]) -> None:
    # A bucket of 2 that refills once every 100 s: the third request in a row is throttled.
    api = serve(api_keys=["a", "b"], rate=0.01, burst=2)

    assert [availability(api, "a").status for _ in range(2)] == [200, 200]
    throttled = availability(api, "a")
    assert_problem(throttled, 429, "rate_limited")
    assert 1 <= int(throttled.headers["Retry-After"]) <= 100
    assert availability(api, "b").status == 200  # every key has its own bucket
    assert_problem(availability(api, None), 403, "forbidden")  # the key is checked before throttling
    assert sum(i["invocations"] for i in api.health()["instances"]) == 3


def test_oversized_body_is_refused_before_the_handler(serve: Callable[..., LocalApi], conn: Any) -> None:
    api = serve()
    big = booking_body(notes="x" * 10_240)

    assert_problem(call(api, "POST", "/bookings", body=big, key="big-1"), 413, "payload_too_large")
    chunked = iter([json.dumps(big).encode()])  # no Content-Length: the stream itself is counted
    assert_problem(call(api, "POST", "/bookings", data=chunked, key="big-2"), 413, "payload_too_large")

    assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 0
    assert sum(i["invocations"] for i in api.health()["instances"]) == 0
    assert call(api, "POST", "/bookings", body=booking_body(notes="x" * 1000), key="ok-1").status == 201


async def _post_many(base_url: str, bodies: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, str, Any]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post(key: str, body: dict[str, Any]) -> tuple[int, str, Any]:
            headers = {"Idempotency-Key": key, "x-api-key": "load"}
            async with session.post(base_url + "/bookings", json=body, headers=headers) as response:
                return response.status, response.headers[INSTANCE_HEADER], await response.json(content_type=None)

        return await asyncio.gather(*(post(key, body) for key, body in bodies))


def test_hot_slot_under_100_concurrent_requests_never_overbooks(serve: Callable[..., LocalApi], conn: Any) -> None:
    api = serve(instances=4)
    bodies = [(f"hot-{n}", booking_body(partySize=1)) for n in range(100)]

    results = asyncio.run(_post_many(api.base_url, bodies))

    statuses = Counter(status for status, _, _ in results)
    assert statuses == {201: 20, 409: 80}
    assert {body["code"] for status, _, body in results if status == 409} == {"capacity_exceeded"}
    assert confirmed(conn) == (20, 20)
    health = api.health()
    ids = {str(i["id"]) for i in health["instances"]}
    assert len(ids) == 4
    assert {instance for _, instance, _ in results} == ids  # the queue fed every instance
    assert sum(i["invocations"] for i in health["instances"]) == 100
    assert [i["maxConcurrency"] for i in health["instances"]] == [1, 1, 1, 1]


def test_each_instance_handles_one_request_at_a_time(
    serve: Callable[..., LocalApi], conn: Any, table_lock: psycopg.Connection[Any]
) -> None:
    api = serve(instances=2, env=WAIT_ON_LOCKS)
    times = ["17:00", "17:15", "17:30", "17:45", "18:00", "18:15"]
    own_pids = (conn.info.backend_pid, table_lock.info.backend_pid)

    with ThreadPoolExecutor(len(times)) as pool:
        futures = [
            pool.submit(call, api, "POST", "/bookings", body=booking_body(time=t), key=f"iso-{t}") for t in times
        ]
        # Two requests wait on the lock, each inside its own instance on its own connection;
        # the other four wait in the gateway, not inside an instance.
        health = wait_for(lambda: (h := api.health())["queued"] == 4 and h, "four queued requests")
        assert [i["busy"] for i in health["instances"]] == [True, True]
        wait_for(lambda: _lock_waiters(conn, own_pids) == 2, "two backends waiting on the lock")
        assert _app_backends(conn, own_pids) == 2
        table_lock.commit()
        replies = [f.result(timeout=60) for f in futures]

    assert [r.status for r in replies] == [201] * 6
    health = api.health()
    assert Counter(r.headers[INSTANCE_HEADER] for r in replies).keys() == {str(i["id"]) for i in health["instances"]}
    assert [i["maxConcurrency"] for i in health["instances"]] == [1, 1]
    assert [confirmed(conn, t) for t in times] == [(1, 2)] * 6


def _lock_waiters(conn: Any, exclude: tuple[int, ...]) -> int:
    return conn.execute(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> ALL(%s)",
        (list(exclude),),
    ).fetchone()["n"]


def _app_backends(conn: Any, exclude: tuple[int, ...]) -> int:
    """Client connections to the test database other than the test's own."""
    return conn.execute(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> ALL(%s)",
        (list(exclude),),
    ).fetchone()["n"]


def _in_background(fn: Callable[[], Reply]) -> Future[Reply]:
    future: Future[Reply] = Future()
    threading.Thread(target=lambda: future.set_result(fn()), daemon=True).start()
    return future


def test_a_crashed_instance_is_replaced_and_its_request_gets_502(
    serve: Callable[..., LocalApi], table_lock: psycopg.Connection[Any]
) -> None:
    api = serve(instances=1, env=WAIT_ON_LOCKS)
    first = api.health()["instances"][0]

    pending = _in_background(lambda: call(api, "POST", "/bookings", body=booking_body(), key="crash-1"))
    wait_for(lambda: api.health()["instances"][0]["busy"], "the instance to be busy")
    os.kill(first["pid"], signal.SIGKILL)
    reply = pending.result(timeout=30)

    assert reply.status == 502
    assert reply.headers["Content-Type"] == PROBLEM
    assert reply.body["status"] == 502 and reply.body["code"] == "bad_gateway"
    assert reply.headers[INSTANCE_HEADER] == str(first["id"])
    table_lock.commit()
    replacement = wait_for(lambda: api.health()["instances"], "a replacement instance")[0]
    assert (replacement["id"], replacement["pid"]) != (first["id"], first["pid"])
    after = call(api, "POST", "/bookings", body=booking_body(time="20:00"), key="crash-2")
    assert after.status == 201
    assert after.headers[INSTANCE_HEADER] == str(replacement["id"])


def test_a_timed_out_instance_is_killed_replaced_and_answered_504(
    serve: Callable[..., LocalApi], table_lock: psycopg.Connection[Any]
) -> None:
    api = serve(instances=1, timeout_s=1, env=WAIT_ON_LOCKS)
    first = api.health()["instances"][0]

    reply = call(api, "POST", "/bookings", body=booking_body(), key="slow-1")

    assert reply.status == 504
    assert reply.headers["Content-Type"] == PROBLEM
    assert reply.body["status"] == 504 and reply.body["code"] == "gateway_timeout"
    replacement = wait_for(lambda: api.health()["instances"], "a replacement instance")[0]
    assert replacement["id"] != first["id"]
    wait_for(lambda: pid_gone(first["pid"]), "the timed-out instance to be gone")
    table_lock.commit()
    after = call(api, "POST", "/bookings", body=booking_body(time="20:00"), key="slow-2")
    assert after.status == 201
    assert after.headers[INSTANCE_HEADER] == str(replacement["id"])


def test_a_port_in_use_is_a_one_line_error(seeded_db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "capctl.cli", "serve", "--port", str(port)],
            check=False,
            env={**os.environ, "DATABASE_URL": seeded_db},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"capctl: error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_an_instance_that_died_while_idle_is_replaced_before_the_next_request(
    serve: Callable[..., LocalApi],
) -> None:
    api = serve(instances=1)
    first = api.health()["instances"][0]
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: pid_gone(first["pid"]), "the instance to be gone")

    reply = call(api, "POST", "/bookings", body=booking_body(), key="idle-death-1")

    assert reply.status == 201  # a cold start on a fresh instance, not an error
    (replacement,) = api.health()["instances"]
    assert replacement["id"] != first["id"]
    assert reply.headers[INSTANCE_HEADER] == str(replacement["id"])


def test_stopping_answers_what_is_in_flight_or_queued_and_exits_0(
    serve: Callable[..., LocalApi], table_lock: psycopg.Connection[Any]
) -> None:
    api = serve(instances=1, env=WAIT_ON_LOCKS)
    pid = api.health()["instances"][0]["pid"]
    pending = [
        _in_background(lambda n=n: call(api, "POST", "/bookings", body=booking_body(), key=f"stop-{n}"))
        for n in range(3)
    ]
    wait_for(lambda: api.health()["queued"] == 2, "one request in flight and two queued")

    assert api.stop() == 0

    for future in pending:
        assert_problem(future.result(timeout=30), 503, "service_unavailable")
    assert pid_gone(pid)
    assert "Traceback" not in api.log_text()


def under_subreaper(seeded_db: str, log: Path, stop: str) -> dict[str, Any]:
    """`capctl serve` run and stopped under a child-subreaper parent (tests/e2e/subreaper.py):
    whatever it leaves behind, alive or a zombie, becomes that parent's child, where it is seen."""
    options = {"database_url": seeded_db, "env": SERVER_ENV, "instances": 3, "log_path": str(log), "stop": stop}
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.subreaper", json.dumps(options)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    assert len(report["control"]) == 1  # a deliberate orphan was seen: the check can see orphans
    return report


def assert_quiet_stop(log: Path) -> None:
    """Stopped with public APIs only, so nothing complains on the way out."""
    text = log.read_text()
    for noise in ("Traceback", "Warning", "BrokenPipe", "leaked", "resource_tracker", "Exception ignored"):
        assert noise not in text


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a child subreaper is a Linux prctl")


@LINUX_ONLY
def test_a_stopped_server_leaves_no_process_behind_not_even_a_zombie(seeded_db: str, tmp_path: Path) -> None:
    """Where PID 1 does not reap orphans (a container), whatever `capctl serve` leaves running or
    unreaped (its forkserver, resource tracker, an instance) stays as a zombie."""
    report = under_subreaper(seeded_db, tmp_path / "serve.log", "when_ready")

    assert len(report["instances"]) == 3
    assert report["exit"] == 0
    assert report["leftover"] == []
    assert_quiet_stop(tmp_path / "serve.log")


@LINUX_ONLY
def test_a_server_stopped_while_its_instances_start_leaves_no_process_behind(seeded_db: str, tmp_path: Path) -> None:
    """SIGTERM while the first instance is being launched (its forkserver just started): that
    instance, launched after the stop, is stopped too."""
    report = under_subreaper(seeded_db, tmp_path / "serve.log", "while_starting")

    assert (report["exit"], report["stdout"]) == (0, "")  # stopped before it served
    assert report["leftover"] == []
    assert_quiet_stop(tmp_path / "serve.log")


def _raw_request(api: LocalApi, method: str, raw_path: bytes) -> tuple[int, str, bytes]:
    """One request with the path sent byte for byte (urllib would quote or refuse it)."""
    host, port = api.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(method.encode() + b" " + raw_path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers.get("content-type", ""), body


def test_a_booking_path_with_control_characters_or_bad_utf8_is_a_problem_404(
    serve: Callable[..., LocalApi],
) -> None:
    api = serve()
    raw_paths = [
        b"/bookings/%00",
        b"/bookings/abc%0Adef",  # a newline: no route matches, aiohttp's own 404 was text/plain
        b"/bookings/%1B%5B31m",
        b"/bookings/%FF%FE",
        b"/bookings/%C3%28",
        b"/bookings/caf%C3%A9%7F",
    ]
    for method in ("GET", "DELETE"):
        for raw_path in raw_paths:
            status, content_type, body = _raw_request(api, method, raw_path)

            assert status == 404, (method, raw_path, body)
            assert content_type == PROBLEM, (method, raw_path, content_type, body)
            problem = json.loads(body)
            assert problem["status"] == 404
            assert problem["code"] in ("not_found", "booking_not_found")
    # the access log stays one line per request
    assert "abc\\ndef" in api.log_text()


def test_a_host_that_does_not_resolve_is_a_one_line_error(seeded_db: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "capctl.cli", "serve", "--host", "nosuchhost.invalid", "--port", "0"],
        check=False,
        env={**os.environ, "DATABASE_URL": seeded_db},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "capctl: error: cannot listen on nosuchhost.invalid:0: the host name does not resolve\n"


def test_the_gateways_own_answers_name_their_request(serve: Any) -> None:
    api = serve(instances=1, api_keys=["the-key"])
    request = urllib.request.Request(f"{api.base_url}/bookings", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    body = json.loads(refused.value.read())
    assert (refused.value.code, body["code"]) == (403, "forbidden")
    assert body["instance"] == refused.value.headers["x-amzn-RequestId"]
