"""Health endpoints as pure functions of the status board and the time.

Each function returns ``(http_status, content_type, body)`` for the server to send:

``/livez``
    200 while every credential loop keeps the promise it made to act again
    (:meth:`StatusBoard.live`); 503 naming the stuck loops. A kubelet restarts the container
    on failure, so this says nothing about tokens: an IdP outage is not a reason to restart.
``/readyz``
    200 while every required credential has a published token that is valid now and for at
    least its ready margin more (``ready_margin_seconds``, scaled down for short tokens: see
    :func:`sidecar.schedule.ready_margin_cap`), and its loop is on schedule (it has not overrun
    the time by which it promised to act again); 503 listing each one that is not, with its
    phase, the time left and the kind of its last error.
``/healthz``
    the full board as JSON, for people and dashboards; 200 when ready, else 503.

Bodies carry credential names, phases, times and error kinds: never a token, a secret or an
error message from the other side (the status holds none of those).
"""

from __future__ import annotations

import json

from sidecar import __version__
from sidecar.status import CredentialStatus, StatusBoard

__all__ = ["JSON", "TEXT", "Response", "healthz", "livez", "readyz"]

Response = tuple[int, str, bytes]
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def _text(status: int, lines: list[str]) -> Response:
    return status, TEXT, ("\n".join(lines) + "\n").encode("utf-8")


def livez(board: StatusBoard, monotonic_now: float) -> Response:
    """200 ``ok`` when no credential loop is stuck, else 503 naming the stuck ones."""
    if board.live(monotonic_now):
        return _text(200, ["ok"])
    lines = ["stuck:"]
    for name, status in board.credentials.items():
        if monotonic_now > status.alive_until:
            overdue = monotonic_now - status.alive_until
            lines.append(f"  {name}: no progress for {overdue:.0f}s past its deadline")
    return _text(503, lines)


def _why_not_ready(status: CredentialStatus, now: float, monotonic_now: float | None) -> str:
    if not status.on_schedule(monotonic_now):
        what = "refresh loop behind schedule"
    elif status.expires_at is None:
        what = "no token published yet"
    else:
        left = status.expires_at - now
        what = f"token expired {-left:.0f}s ago" if left < 0 else f"token expires in {left:.0f}s"
    parts = [f"phase={status.phase.value}", what]
    if status.last_error:
        parts.append(f"last_error={status.last_error}")
    if status.consecutive_failures:
        parts.append(f"consecutive_failures={status.consecutive_failures}")
    return ", ".join(parts)


def readyz(
    board: StatusBoard, now: float, margin: float, monotonic_now: float | None = None
) -> Response:
    """200 ``ok`` when every required token is valid for its margin and its loop on
    schedule, else 503."""
    if board.ready(now, margin, monotonic_now):
        return _text(200, ["ok"])
    lines = ["not ready:"]
    for name, status in board.credentials.items():
        if status.required and not status.ready(now, margin, monotonic_now):
            lines.append(f"  {name}: {_why_not_ready(status, now, monotonic_now)}")
    return _text(503, lines)


def healthz(board: StatusBoard, now: float, monotonic_now: float, margin: float) -> Response:
    """The board's snapshot as JSON with the version and liveness; 200 when ready, else 503."""
    snapshot = board.snapshot(now, margin, monotonic_now)
    document = {
        "version": __version__,
        "ready": snapshot["ready"],
        "live": board.live(monotonic_now),
        "credentials": snapshot["credentials"],
    }
    body = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    return (200 if document["ready"] else 503), JSON, body
