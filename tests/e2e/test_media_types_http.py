"""The media-type refusals through real HTTP (`capctl serve`), as curl sends them."""

from __future__ import annotations

import json
import subprocess

import pytest

from capctl.serve import LocalApi
from tests.e2e.serving import SERVER_ENV
from tests.support import booking_body

pytestmark = pytest.mark.e2e


def curl(url: str, *args: str) -> tuple[int, dict[str, str], dict[str, object]]:
    out = subprocess.run(
        ["curl", "-s", "-i", "--noproxy", "*", "--max-time", "20", *args, url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.skipif(subprocess.run(["which", "curl"], capture_output=True, check=False).returncode, reason="no curl")
def test_curl_d_is_415_and_json_in_capitals_books(seeded_db):
    with LocalApi(database_url=seeded_db, instances=1, env=SERVER_ENV, function_logs=False) as api:
        url = f"{api.base_url}/bookings"
        body = json.dumps(booking_body())
        # curl -d: application/x-www-form-urlencoded
        status, headers, problem = curl(url, "-H", "Idempotency-Key: curl-1", "-d", body)
        assert (status, problem["code"]) == (415, "unsupported_media_type")
        assert headers["accept-post"] == "application/json"
        assert headers["content-type"] == "application/problem+json"
        status, _, problem = curl(url, "-H", "Idempotency-Key: curl-2", "-F", f"booking={body}")  # multipart
        assert (status, problem["code"]) == (415, "unsupported_media_type")
        status, _, created = curl(
            url, "-H", "Idempotency-Key: curl-3", "-H", "Content-Type: APPLICATION/JSON; charset=UTF-8", "-d", body
        )
        assert status == 201 and created["booking"]["status"] == "confirmed"
