"""Hostile answers at the adapter and parser level: fast, in-process, exact.

The whole-program tests beside this one show the outcome in files, Vault and metrics; these
pin the classification of every RFC 6749 §5.2 error code at the statuses servers use, what
the token endpoint adapter does with an answer cut off mid-body, and how a crash is logged.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.adapters.exchange import TokenEndpoint
from sidecar.clock import SystemClock
from sidecar.config import CredentialConfig
from sidecar.errors import (
    ClientRejected,
    InvalidGrant,
    MalformedResponse,
    ResponseLost,
    SidecarError,
    SinkError,
    TokenEndpointUnavailable,
)
from sidecar.logs import configure_logging, log_uncaught
from sidecar.model import ClientCredentials
from sidecar.oauth import parse_token_response, salvage_refresh_token
from sidecar.redact import Redactor
from tests.support.logstate import logging_restored

URL = "https://as.example/token"
CLIENT = ClientCredentials("svc", "client_secret_basic", client_secret="CANARY-CS-adapter-01")
ROTATED = "CANARY-RT-rotated-0001"
GRANT = {
    "access_token": "CANARY-AT-adapter-0001",
    "token_type": "Bearer",
    "refresh_token": ROTATED,
    "expires_in": 300,
}


class _Cut(httpx.AsyncByteStream):
    """A body that delivers ``data`` and then fails as a dropped connection does."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self._data = data
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data
        raise self._error


def exchange(handler: Any, redactor: Redactor | None = None, timeout: float = 5.0) -> Any:
    async def main() -> Any:
        credential = CredentialConfig(
            name="svc", kv_path="apps/svc", output_dir=Path("/x"), token_endpoint=URL
        )
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), timeout=timeout) as h:
            endpoint = TokenEndpoint(
                credential,
                h,
                clock=SystemClock(),
                max_response_bytes=1 << 20,
                redactor=redactor if redactor is not None else Redactor(),
            )
            return await endpoint.refresh("CANARY-RT-presented-01", CLIENT)

    return asyncio.run(main())


def cut_after(size: int, error: Exception | None = None) -> Any:
    body = json.dumps(GRANT).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        failure = error or httpx.RemoteProtocolError("peer closed connection", request=request)
        return httpx.Response(
            200,
            headers={"Content-Length": str(len(body))},
            stream=_Cut(body[:size], failure),
        )

    return handler


def test_an_answer_cut_off_after_the_rotated_token_keeps_it() -> None:
    body = json.dumps(GRANT).encode()
    end = body.index(ROTATED.encode()) + len(ROTATED) + 1
    with pytest.raises(MalformedResponse) as caught:
        exchange(cut_after(end))
    assert caught.value.salvaged_refresh_token == ROTATED
    assert caught.value.message == (
        f"token endpoint as.example: the answer (HTTP 200) was cut off after {end} bytes "
        "(RemoteProtocolError); it carried a rotated refresh token, which is kept instead of "
        "retrying the spent one"
    )
    assert ROTATED not in repr(caught.value)


@pytest.mark.parametrize("size", [0, 10, 60])
def test_an_answer_cut_off_before_a_whole_token_is_lost(size: int) -> None:
    body = json.dumps(GRANT).encode()
    assert size < body.index(ROTATED.encode()) + len(ROTATED) + 1
    with pytest.raises(ResponseLost):
        exchange(cut_after(size))


def test_a_read_timeout_mid_body_keeps_a_whole_token_too() -> None:
    body = json.dumps(GRANT).encode()
    end = body.index(ROTATED.encode()) + len(ROTATED) + 1
    handler = cut_after(end, httpx.ReadTimeout("timed out"))
    with pytest.raises(MalformedResponse) as caught:
        exchange(handler)
    assert caught.value.salvaged_refresh_token == ROTATED


def test_an_error_answer_cut_off_is_still_lost_not_salvaged() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = httpx.RemoteProtocolError("peer closed", request=request)
        return httpx.Response(
            503,
            headers={"Content-Length": "500"},
            stream=_Cut(b'{"refresh_token": "CANARY-RT-from-a-503"}', error),
        )

    with pytest.raises(ResponseLost):
        exchange(handler)


def test_every_token_is_scrubbable_as_soon_as_it_exists() -> None:
    redactor = Redactor()
    exchange(lambda request: httpx.Response(200, json=GRANT), redactor)
    assert redactor.scrub(f"{GRANT['access_token']} {ROTATED}") == "[REDACTED] [REDACTED]"

    redactor = Redactor()
    body = {**GRANT, "access_token": ""}
    with pytest.raises(MalformedResponse):
        exchange(lambda request: httpx.Response(200, json=body), redactor)
    assert redactor.scrub(ROTATED) == "[REDACTED]"


@pytest.mark.parametrize(
    ("code", "status", "error", "message"),
    [
        ("invalid_grant", 400, InvalidGrant, "token endpoint refused the refresh token"),
        ("invalid_grant", 401, InvalidGrant, "token endpoint refused the refresh token"),
        ("invalid_request", 400, ClientRejected, "token endpoint rejected the request"),
        ("invalid_client", 401, ClientRejected, "token endpoint rejected the request"),
        ("invalid_client", 400, ClientRejected, "token endpoint rejected the request"),
        ("unauthorized_client", 400, ClientRejected, "token endpoint rejected the request"),
        ("unsupported_grant_type", 400, ClientRejected, "token endpoint rejected the request"),
        ("invalid_scope", 400, ClientRejected, "token endpoint rejected the request"),
        ("invalid_target", 400, ClientRejected, "token endpoint rejected the request"),
        ("access_denied", 403, ClientRejected, "token endpoint rejected the request"),
        ("temporarily_unavailable", 400, TokenEndpointUnavailable, "token endpoint unavailable"),
        ("server_error", 400, TokenEndpointUnavailable, "token endpoint unavailable"),
        ("slow_down", 400, TokenEndpointUnavailable, "token endpoint unavailable"),
        ("invalid_grant", 429, TokenEndpointUnavailable, "token endpoint unavailable"),
        ("invalid_grant", 500, TokenEndpointUnavailable, "token endpoint unavailable"),
        ("invalid_client", 503, TokenEndpointUnavailable, "token endpoint unavailable"),
    ],
)
def test_every_rfc6749_error_code(
    code: str, status: int, error: type[SidecarError], message: str
) -> None:
    body = json.dumps({"error": code, "error_description": "CANARY-RT-in-description"})
    with pytest.raises(error) as caught:
        parse_token_response(status, {"Retry-After": "7"}, body.encode())
    assert type(caught.value) is error
    assert caught.value.message == f"{message} ({code}, HTTP {status})"
    assert "CANARY" not in caught.value.message
    if error is TokenEndpointUnavailable:
        assert caught.value.retry_after == 7.0
    if error is ClientRejected:
        assert isinstance(caught.value, ClientRejected)
        assert caught.value.oauth_error == code


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("-5", None),  # RFC 9110 delta-seconds are digits only
        ("2.5", None),
        ("Thu, 01 Jan 2026 00:01:00 GMT", 60.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("", None),
        ("1e400", None),
        ("Thu, 99 Foo 2026 00:01:00 GMT", None),
    ],
)
def test_retry_after_forms(value: str, seconds: float | None) -> None:
    with pytest.raises(TokenEndpointUnavailable) as caught:
        parse_token_response(503, {"retry-after": value}, b"", now=1_767_225_600.0)
    assert caught.value.retry_after == seconds


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"refresh_token": "A-1", "access_token": ', "A-1"),
        (b'{"access_token": "x", "refresh_token": "A-1"', "A-1"),
        (b'{"refresh_token": "A-1', None),  # unfinished: never half a token
        (b'{"refresh_token": "A-1", "x": {"refresh_token": "B-2"', None),  # ambiguous
        (b'{"refresh_token": "A-1", "refresh_token": "A-1", ', "A-1"),
        (b'{"refresh_token": "bad\\u0000", ', None),  # not VSCHAR
        (b'{"error_description": "\\"refresh_token\\": \\"Q\\"", ', None),  # quoted text
        (b"<html>refresh_token</html>", None),
        (b'[{"refresh_token": "A-1"}]', None),  # valid JSON, but not the answer's object
    ],
)
def test_salvage_from_a_body_that_does_not_parse(body: bytes, expected: str | None) -> None:
    assert salvage_refresh_token(body) == expected


# -- a crash ---------------------------------------------------------------------------------------


@pytest.fixture
def crash_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[io.StringIO, Redactor]]:
    """Logging configured into a stream (restored after, with ``sys.excepthook``)."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with logging_restored():
        yield io.StringIO(), Redactor()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_an_uncaught_exception_is_logged_as_an_event_and_scrubbed(
    crash_log: tuple[io.StringIO, Redactor], fmt: str
) -> None:
    stream, redactor = crash_log
    secret = "CANARY-RT-crash-0123456789"
    redactor.add(secret)
    configure_logging("info", fmt, stream=stream, redactor=redactor)
    assert sys.excepthook is log_uncaught
    failure = SinkError("cannot write in directory /x: Read-only file system (EROFS)")

    def crash() -> None:
        raise ExceptionGroup("unhandled", [failure, RuntimeError(f"boom {secret}")])

    try:
        crash()
    except ExceptionGroup as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    text = stream.getvalue()
    assert secret not in text
    assert "boom [REDACTED]" in text
    if fmt == "json":
        [event] = [json.loads(line) for line in text.splitlines()]
        assert (event["event"], event["level"], event["error"]) == (
            "sidecar.crashed",
            "critical",
            "sink_error",
        )
        assert event["message"] == failure.message
    else:
        assert "sidecar.crashed" in text
