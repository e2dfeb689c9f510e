"""Small helpers for the words the command line prints."""

from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """``1 slot``, ``2 slots``: a count with its noun in the right number."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
