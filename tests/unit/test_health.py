"""Health endpoints from the status board: /livez, /readyz, /healthz."""

from __future__ import annotations

import json

from sidecar import __version__
from sidecar.health import JSON, TEXT, healthz, livez, readyz
from sidecar.status import Phase, StatusBoard

NOW = 1_800_000_000.0
MONO = 5_000.0
MARGIN = 5.0


def board_with_tokens() -> StatusBoard:
    board = StatusBoard()
    app = board.add("app")
    app.phase = Phase.VALID
    app.expires_at = NOW + 300
    app.last_success_at = NOW - 10
    optional = board.add("optional", required=False)
    optional.phase = Phase.RETRYING
    optional.last_error = "endpoint_unavailable"
    return board


def test_livez_ok() -> None:
    board = board_with_tokens()
    board.credentials["app"].alive_until = MONO + 30
    assert livez(board, MONO) == (200, TEXT, b"ok\n")


def test_livez_names_stuck_loops() -> None:
    board = board_with_tokens()
    board.credentials["app"].alive_until = MONO - 42
    status, content_type, body = livez(board, MONO)
    assert (status, content_type) == (503, TEXT)
    assert body.decode() == "stuck:\n  app: no progress for 42s past its deadline\n"


def test_livez_ignores_token_state() -> None:
    board = board_with_tokens()
    board.credentials["app"].phase = Phase.REJECTED
    board.credentials["app"].expires_at = NOW - 1
    assert livez(board, MONO)[0] == 200


def test_readyz_ok_while_required_tokens_are_valid() -> None:
    assert readyz(board_with_tokens(), NOW, MARGIN) == (200, TEXT, b"ok\n")


def test_readyz_lists_each_reason() -> None:
    board = board_with_tokens()
    app = board.credentials["app"]
    app.phase = Phase.RETRYING
    app.expires_at = NOW + 3
    app.last_error = "endpoint_unavailable"
    app.consecutive_failures = 4
    other = board.add("other")
    other.last_error = "vault_forbidden"
    other.phase = Phase.FAILED
    gone = board.add("gone")
    gone.phase = Phase.REJECTED
    gone.expires_at = NOW - 61
    gone.last_error = "invalid_grant"

    status, content_type, body = readyz(board, NOW, MARGIN)

    assert (status, content_type) == (503, TEXT)
    assert body.decode().splitlines() == [
        "not ready:",
        "  app: phase=retrying, token expires in 3s, last_error=endpoint_unavailable,"
        " consecutive_failures=4",
        "  other: phase=failed, no token published yet, last_error=vault_forbidden",
        "  gone: phase=rejected, token expired 61s ago, last_error=invalid_grant",
    ]


def test_readyz_starting() -> None:
    board = StatusBoard()
    board.add("app")
    status, _, body = readyz(board, NOW, MARGIN)
    assert status == 503
    assert body == b"not ready:\n  app: phase=starting, no token published yet\n"


def test_readyz_with_only_optional_credentials() -> None:
    board = StatusBoard()
    board.add("optional", required=False)
    assert readyz(board, NOW, MARGIN)[0] == 200


def test_healthz_ready() -> None:
    board = board_with_tokens()
    status, content_type, body = healthz(board, NOW, MONO, MARGIN)
    assert (status, content_type) == (200, JSON)
    document = json.loads(body)
    assert document["version"] == __version__
    assert document["ready"] is True
    assert document["live"] is True
    assert document["credentials"]["app"] == {
        "state": "valid",
        "grant": "refresh_token",
        "required": True,
        "expires_at": "2027-01-15T08:05:00Z",
        "expires_in_seconds": 300.0,
        "last_success_at": "2027-01-15T07:59:50Z",
        "last_error": None,
        "consecutive_failures": 0,
        "writeback_pending": False,
        "secret_version": None,
    }
    assert document["credentials"]["optional"]["last_error"] == "endpoint_unavailable"


def test_healthz_unready_and_stuck() -> None:
    board = board_with_tokens()
    board.credentials["app"].expires_at = NOW + 1
    board.credentials["app"].alive_until = MONO - 1
    status, _, body = healthz(board, NOW, MONO, MARGIN)
    document = json.loads(body)
    assert status == 503
    assert document["ready"] is False
    assert document["live"] is False
