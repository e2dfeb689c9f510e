"""How a rate reads wherever a person sees it (alert notices, the dashboard's cards, the roll-up's
hour lines): ``capacity.figures.percent_text``."""

from __future__ import annotations

from decimal import Decimal

import pytest

from capacity.figures import percent_text


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (None, "-"),
        (0, "0.0%"),
        (0.0005, "0.05%"),  # the demo's threshold, not "0.1%"
        (4 / 2661, "0.15%"),
        (0.0099, "0.99%"),
        (0.01, "1.0%"),
        (0.05, "5.0%"),
        (Decimal("0.767"), "76.7%"),
        (1, "100.0%"),
    ],
)
def test_a_rate_keeps_one_decimal_and_two_under_one_percent(rate, text):
    assert percent_text(rate) == text
