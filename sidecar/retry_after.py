"""``Retry-After`` (RFC 9110 section 10.2.3) as seconds to wait: one parser for every server.

The header is either delta-seconds, which RFC 9110 defines as ``1*DIGIT`` (so ``1.5``,
``-3``, ``+5`` and ``1e3`` are not delta-seconds), or an HTTP-date. A date counts only with
``now`` (wall-clock seconds); a past date gives 0. Anything else, and a number too large to
represent, is ``None``: no floor for the backoff. Capping is the caller's business
(``refresh.max_retry_after_seconds``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]

_DELTA_SECONDS = re.compile(r"[0-9]+", re.ASCII)


def parse_retry_after(value: str | None, now: float | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` when it is unusable."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)  # inf for absurdly many digits, never OverflowError
    elif now is None:
        return None
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may omit the zone
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
