"""Logging with redaction (R5): the Redactor and key redaction, then the rendered output.

The output tests configure the real handler and read what it writes, since the guarantee that
matters (no secret in a rendered line, whatever produced it) can only be checked there.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog
from structlog.testing import capture_logs

from sidecar.logs import configure_logging
from sidecar.redact import REDACTED, Redactor, encoded_forms, is_secret_key, redact_mapping
from tests.support.logstate import logging_restored

# -- Redactor -------------------------------------------------------------------------------

SECRET = "rt-Zm9v/YmFy+baz=qux~0123"


@pytest.fixture
def redactor() -> Redactor:
    redactor = Redactor()
    redactor.add(SECRET)
    return redactor


def b64(data: bytes, *, urlsafe: bool = False, pad: bool = True) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    return text if pad else text.rstrip("=")


@pytest.mark.parametrize(
    "form",
    [
        SECRET,
        b64(SECRET.encode()),
        b64(SECRET.encode(), pad=False),
        b64(SECRET.encode(), urlsafe=True),
        b64(SECRET.encode(), urlsafe=True, pad=False),
        quote(SECRET, safe=""),
        quote_plus(SECRET),
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe="")),
        json.dumps(SECRET)[1:-1],
    ],
    ids=[
        "plain",
        "base64",
        "base64-unpadded",
        "urlsafe",
        "urlsafe-unpadded",
        "percent",
        "form",
        "percent-lower",
        "json",
    ],
)
def test_every_form_is_scrubbed(redactor: Redactor, form: str) -> None:
    assert redactor.scrub(f"before {form} after") == f"before {REDACTED} after"


@pytest.mark.parametrize("prefix", ["", "c", "cl", "client-id:"])
def test_base64_inside_a_longer_value(redactor: Redactor, prefix: str) -> None:
    # Basic auth: base64("client_id:secret"), with the secret at any byte alignment.
    header = "Authorization: Basic " + b64(f"{prefix}{SECRET}".encode())
    assert "[REDACTED]" in redactor.scrub(header)
    for form in encoded_forms(SECRET):
        assert form not in redactor.scrub(header)


def test_no_tail_of_a_padded_encoding_survives(redactor: Redactor) -> None:
    assert redactor.scrub(f"<{b64(SECRET.encode())}>") == f"<{REDACTED}>"


def test_short_values_are_ignored() -> None:
    redactor = Redactor()
    redactor.add("short", "", None, "1234567")
    assert len(redactor) == 0
    assert redactor.scrub("short 1234567") == "short 1234567"


def test_discard_stops_scrubbing(redactor: Redactor) -> None:
    redactor.discard(SECRET)
    redactor.discard("never-added-value")
    redactor.discard(None)
    assert redactor.scrub(SECRET) == SECRET


def test_text_without_secrets_is_unchanged(redactor: Redactor) -> None:
    text = "token.refreshed credential=app expires_in=300 " + "x" * 1000
    assert redactor.scrub(text) == text
    assert Redactor().scrub(text) == text


def test_longest_match_wins() -> None:
    redactor = Redactor()
    redactor.add("abcdefgh", "abcdefghijkl")
    assert redactor.scrub("abcdefghijkl abcdefghij") == f"{REDACTED} {REDACTED}ij"


def test_many_values_stay_scrubbed() -> None:
    redactor = Redactor()
    values = [f"token-{index:06d}-abcdef" for index in range(500)]
    redactor.add(*values)
    text = " ".join(values[::50])
    assert redactor.scrub(text) == " ".join([REDACTED] * 10)


def test_bound_drops_the_oldest_and_counts() -> None:
    redactor = Redactor(max_values=2)
    redactor.add("first-secret-1", "second-secret-2")
    redactor.add("first-secret-1")  # re-adding makes it the newest again
    redactor.add("third-secret-3")
    assert redactor.evicted == 1
    assert redactor.scrub("first-secret-1 second-secret-2 third-secret-3") == (
        f"{REDACTED} second-secret-2 {REDACTED}"
    )


def test_repr_shows_no_value(redactor: Redactor) -> None:
    assert SECRET not in repr(redactor)


@pytest.mark.parametrize(
    "key",
    [
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "client_assertion",
        "password",
        "secret_id",
        "jwt",
        "token",
        "Authorization",
        "private_key",
        "X-Vault-Token",
        "vault_token",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["credential", "token_type", "token_endpoint", "secret_version", "expires_in", "event"],
)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_mapping_is_recursive_and_copies() -> None:
    data = {
        "credential": "app",
        "refresh_token": "rt-1",
        "absent_token": None,
        "response": {"access_token": "at-1", "token_type": "Bearer"},
        "headers": [{"Authorization": "Bearer at-1"}, ("keep", {"client_secret": "s"})],
        "count": 3,
    }
    assert redact_mapping(data) == {
        "credential": "app",
        "refresh_token": REDACTED,
        "absent_token": None,
        "response": {"access_token": REDACTED, "token_type": "Bearer"},
        "headers": [{"Authorization": REDACTED}, ("keep", {"client_secret": REDACTED})],
        "count": 3,
    }
    assert data["refresh_token"] == "rt-1"


# -- rendered output ------------------------------------------------------------------------

CANARY = "canary-7f3a9c1e5b2d"


@pytest.fixture
def output() -> Iterator[tuple[io.StringIO, Redactor]]:
    """A stream the logging writes to and the redactor it uses; everything restored after."""
    stream = io.StringIO()
    redactor = Redactor()
    redactor.add(CANARY)
    with logging_restored():
        yield stream, redactor


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def fail_with(message: str) -> None:
    secret_local = CANARY[::-1]  # noqa: F841  # a local no redactor knows: never to be rendered
    raise RuntimeError(message)


def test_json_lines(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)
    log = structlog.get_logger("sidecar.test")
    log.info("token.refreshed", credential="app", expires_in=300)
    log.debug("token.ignored")

    [line] = lines(stream)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert line["event"] == "token.refreshed"
    assert line["level"] == "info"
    assert line["logger"] == "sidecar.test"
    assert line["credential"] == "app"
    assert line["expires_in"] == 300
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", str(line["timestamp"]))


def test_debug_level(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("DEBUG", "json", stream=stream, redactor=redactor)
    structlog.get_logger("sidecar.test").debug("detail.shown")
    assert [line["event"] for line in lines(stream)] == ["detail.shown"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("verbose", "json")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


def test_secret_keys_and_values_are_redacted(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)
    structlog.get_logger("sidecar.test").info(
        "token.debugging",
        refresh_token="rt-not-registered",
        response={"access_token": "at-not-registered", "token_type": "Bearer"},
        url=f"https://idp.example/cb?code={CANARY}",
    )
    text = stream.getvalue()
    assert "not-registered" not in text
    assert CANARY not in text
    [line] = lines(stream)
    assert line["refresh_token"] == REDACTED
    assert line["response"] == {"access_token": REDACTED, "token_type": "Bearer"}
    assert line["url"] == f"https://idp.example/cb?code={REDACTED}"


def test_exception_is_data_without_locals(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)
    try:
        fail_with("refresh failed")
    except RuntimeError:
        structlog.get_logger("sidecar.test").exception("token.crashed", credential="app")

    [line] = lines(stream)
    [exception] = line["exception"]
    assert exception["exc_type"] == "RuntimeError"
    assert exception["exc_value"].startswith("refresh failed")
    assert [frame["name"] for frame in exception["frames"]][-1] == "fail_with"
    assert all("locals" not in frame for frame in exception["frames"])
    assert CANARY[::-1] not in stream.getvalue()


def test_secret_in_exception_message_is_scrubbed(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)
    try:
        fail_with(f"server said: bad token {CANARY} (base64 {b64(CANARY.encode())})")
    except RuntimeError:
        structlog.get_logger("sidecar.test").exception("token.crashed")

    text = stream.getvalue()
    assert CANARY not in text
    assert b64(CANARY.encode()) not in text
    assert f"bad token {REDACTED}" in text


def test_scrubbing_happens_after_rendering(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)

    class Opaque:
        """Rendered through ``repr`` by the JSON renderer: only the final scrub sees it."""

        def __repr__(self) -> str:
            return f"<Opaque {CANARY}>"

    structlog.get_logger("sidecar.test").info("thing.seen", thing=Opaque())
    [line] = lines(stream)
    assert line["thing"] == f"<Opaque {REDACTED}>"


def test_console_format(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "console", stream=stream, redactor=redactor)
    log = structlog.get_logger("sidecar.test")
    log.info("token.refreshed", credential="app", client_secret="cs-not-registered")
    try:
        fail_with(f"leaked {CANARY}")
    except RuntimeError:
        log.exception("token.crashed")

    text = stream.getvalue()
    assert "token.refreshed" in text
    assert "credential=app" in text
    assert "\x1b[" not in text  # no colours on a stream that is not a terminal
    assert "Traceback (most recent call last)" in text
    assert f"RuntimeError: leaked {REDACTED}" in text
    assert CANARY not in text
    assert CANARY[::-1] not in text
    assert "cs-not-registered" not in text


def test_stdlib_records_are_routed_at_warning(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("debug", "json", stream=stream, redactor=redactor)
    library = logging.getLogger("httpx")
    library.info("HTTP Request: GET https://idp.example/?token=%s", CANARY)
    library.warning("retrying https://idp.example/?token=%s", CANARY)

    [line] = lines(stream)
    assert line["logger"] == "httpx"
    assert line["level"] == "warning"
    assert line["event"] == f"retrying https://idp.example/?token={REDACTED}"


def test_stdlib_exception_is_scrubbed(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)
    try:
        fail_with(f"httpcore said {CANARY}")
    except RuntimeError:
        logging.getLogger("httpcore").exception("request failed")

    [line] = lines(stream)
    assert line["exception"][0]["exc_value"].startswith(f"httpcore said {REDACTED}")
    assert CANARY not in stream.getvalue()


def test_python_warnings_are_routed(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    configure_logging("info", "json", stream=stream, redactor=redactor)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"unverified request to https://x/?t={CANARY}", UserWarning, stacklevel=1)

    [line] = lines(stream)
    assert line["logger"] == "py.warnings"
    assert CANARY not in stream.getvalue()


def test_reconfiguring_replaces_the_handler(output: tuple[io.StringIO, Redactor]) -> None:
    stream, redactor = output
    first = io.StringIO()
    configure_logging("info", "json", stream=first, redactor=redactor)
    configure_logging("info", "json", stream=stream, redactor=redactor)
    structlog.get_logger("sidecar.test").info("once")
    assert first.getvalue() == ""
    assert len(lines(stream)) == 1


def test_capture_logs_sees_events() -> None:
    with capture_logs() as captured:
        structlog.get_logger("sidecar.test").info("token.refreshed", credential="app")
    assert captured == [{"event": "token.refreshed", "credential": "app", "log_level": "info"}]
