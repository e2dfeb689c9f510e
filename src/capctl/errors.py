from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
