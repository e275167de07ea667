"""Median and spread of repeated measurements, as the report shows them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["summary"]


def summary(values: Sequence[float], *, digits: int = 6) -> dict[str, Any]:
    """``median``, ``min``, ``max``, ``n`` and the raw ``values`` (rounded)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "values": [round(v, digits) for v in values],
    }
