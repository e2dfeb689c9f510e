"""API Gateway REST API (v1) proxy events and Lambda contexts, as API Gateway builds them.

Used by the local emulator (`capctl serve`) and by tests that invoke handlers in-process the
way `sam local invoke -e events/*.json` does.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The REST API's resources (template.yaml); the emulator routes a path to one of these.
RESOURCES = ("/bookings", "/bookings/{id}", "/restaurants/{restaurantId}/availability")
STAGE = "local"


def _resource_regex(resource: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", resource) + "$")


_ROUTES = [(r, _resource_regex(r)) for r in RESOURCES]


def match_resource(path: str) -> tuple[str, dict[str, str]] | None:
    for resource, regex in _ROUTES:
        m = regex.match(path)
        if m:
            return resource, m.groupdict()
    return None


def rest_event(
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    query: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes | str | None = None,
    api_key: str | None = None,
    api_key_id: str | None = None,
    source_ip: str = "127.0.0.1",
    request_id: str | None = None,
) -> dict[str, Any]:
    """A REST API proxy-integration event, single- and multi-value fields both filled."""
    header_items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    query_items = list(query.items()) if isinstance(query, Mapping) else list(query)
    single_headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in header_items:
        single_headers[name] = value  # API Gateway keeps the last value in `headers`
        multi_headers.setdefault(name, []).append(value)
    single_query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for name, value in query_items:
        single_query[name] = value
        multi_query.setdefault(name, []).append(value)
    matched = match_resource(path)
    resource, path_params = matched if matched else (path, {})
    is_base64 = False
    text_body: str | None
    if body is None or body in {b"", ""}:
        text_body = None
    elif isinstance(body, bytes):
        try:
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            text_body, is_base64 = base64.b64encode(body).decode(), True
    else:
        text_body = body
    now = time.time()
    rid = request_id or str(uuid.uuid4())
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method.upper(),
        "headers": single_headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": single_query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_params or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method.upper(),
            "extendedRequestId": rid,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{STAGE}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": "localhost",
            "requestTimeEpoch": int(now * 1000),
            "requestId": rid,
            "identity": {
                "sourceIp": source_ip,
                "apiKey": api_key,
                "apiKeyId": api_key_id,
                "userAgent": single_headers.get("User-Agent") or single_headers.get("user-agent"),
            },
            "domainName": "localhost",
            "apiId": "local",
        },
        "body": text_body,
        "isBase64Encoded": is_base64,
    }


@dataclass
class LambdaContext:
    """The attributes Powertools and handlers read from a Lambda context."""

    function_name: str
    memory_limit_in_mb: int = 512
    timeout_s: float = 10.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:eu-west-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


def response_headers(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten a proxy result's headers and multiValueHeaders into (name, value) pairs."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values:
            pairs.append((name, str(value)))
        seen.add(name.lower())
    for name, value in (result.get("headers") or {}).items():
        if name.lower() not in seen:
            pairs.append((name, str(value)))
    return pairs


def response_body(result: Mapping[str, Any]) -> bytes:
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        return base64.b64decode(body)
    return str(body).encode("utf-8")
