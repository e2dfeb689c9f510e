"""What the tests know of a problem body (RFC 9457) independently of the code that builds it."""

from __future__ import annotations

# Its members, in the order every body sends them: RFC 9457's first, then ours.
PROBLEM_MEMBERS = (
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "code",
    "errors",
    "requested",
    "remainingCovers",
    "alternatives",
)
