"""Idempotency-Key handling (IETF httpapi-idempotency-key draft semantics).

A key is scoped to the tenant (the API key that sent it). The request fingerprint is a hash of
the validated request, so two bodies that mean the same (key order, whitespace, an omitted
default) are the same request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from capacity.models import BookingRequest

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # 1-255 visible ASCII characters
ANONYMOUS_TENANT = "anonymous"


def fingerprint(request: BookingRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def tenant_of(request_context: Mapping[str, Any]) -> str:
    """The tenant is API Gateway's API key id; the key itself is never stored, only a digest of it."""
    identity = request_context.get("identity") or {}
    key_id = identity.get("apiKeyId")
    if key_id:
        return str(key_id)
    api_key = identity.get("apiKey")
    if api_key:
        return "key-sha256:" + hashlib.sha256(str(api_key).encode()).hexdigest()[:32]
    return ANONYMOUS_TENANT
