"""The test suite. Its shared helpers assert too: pytest rewrites them, so a failed check in a
helper shows the values it compared, as one in a test module does."""

import pytest

pytest.register_assert_rewrite(
    "tests.alerting",
    "tests.booking_checks",
    "tests.command_line",
    "tests.pooler",
    "tests.problems",
    "tests.support",
)
