"""``Retry-After`` (RFC 9110 section 10.2.3): delta-seconds are digits only, or an HTTP-date."""

from __future__ import annotations

import pytest

from sidecar.retry_after import parse_retry_after

RFC9110_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
RFC9110_EPOCH = 1445412480.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("007", 7.0),
        ("", None),
        ("soon", None),
        # Not 1*DIGIT, so not delta-seconds, and not a date either:
        ("-5", None),
        ("+5", None),
        ("1.5", None),
        ("1e3", None),
        ("0x10", None),
        ("nan", None),
        ("inf", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to RFC 9110
        ("9" * 400, None),  # too large to represent: no floor rather than forever
        (RFC9110_DATE, 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("Wed, 21 Oct 2015 07:28:30", 60.0),  # no zone: taken as GMT
        ("Mon, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, RFC9110_EPOCH - 30) == expected


def test_a_date_counts_only_with_the_wall_clock() -> None:
    assert parse_retry_after(RFC9110_DATE, None) is None
    assert parse_retry_after("3", None) == 3.0
