"""Properties that hold for any input: the response parser, the schedule, the backoff.

Hypothesis generates what a hostile or broken server, Vault or configuration could send. For
every input the pure functions either answer or raise one of the project's errors (never a
``KeyError``, ``TypeError`` or ``RecursionError``), never refresh later than the safety margin,
never wait zero (no hot loop), never wait without bound, never salvage half a token, and
never echo a token in a message.
"""

from __future__ import annotations

import base64
import json
import math
import random
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sidecar.adapters.vault import secret_from_kv
from sidecar.adapters.vault.api import UnexpectedResponse
from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.config import RefreshConfig
from sidecar.configload import load_settings
from sidecar.discovery import parse_discovery
from sidecar.errors import (
    ClientRejected,
    ConfigError,
    MalformedResponse,
    SidecarError,
    TokenEndpointUnavailable,
)
from sidecar.model import TokenGrant
from sidecar.oauth import KNOWN_ERRORS, parse_token_response, salvage_refresh_token
from sidecar.policies import backoff_policy, schedule_policy
from sidecar.redact import Redactor
from sidecar.retry_after import parse_retry_after
from sidecar.schedule import (
    SchedulePolicy,
    effective_lifetime,
    ready_margin_cap,
    refresh_delay,
    refresh_window,
)

PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

VSCHAR = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)
TOKEN = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\[]'),
    min_size=8,
    max_size=60,
)
JSON_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "refresh_expires_in",
        "error",
        "error_description",
        "id_token",
    ]
)
RESPONSE_OBJECT = st.dictionaries(FIELDS | st.text(max_size=10), JSON_VALUE, max_size=8)


def encode(document: Any) -> bytes:
    # Python's json writes NaN and Infinity, as some broken servers do.
    return json.dumps(document).encode()


BODIES = (
    st.binary(max_size=300)
    | RESPONSE_OBJECT.map(encode)
    | st.builds(
        lambda doc, cut: encode(doc)[:cut], RESPONSE_OBJECT, st.integers(min_value=0, max_value=80)
    )
    | st.just(b"[" * 100_000)  # nesting deep enough to exhaust the recursion limit
)
HEADERS = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "Content-Type", "X-Other"]),
    st.text(max_size=40),
    max_size=3,
)


# -- the token endpoint response -------------------------------------------------------------------


@PROPERTY
@given(
    status=st.integers(min_value=100, max_value=699),
    headers=HEADERS,
    body=BODIES,
    now=st.none() | st.floats(min_value=0, max_value=4e9),
)
@example(
    status=200,
    headers={},
    body=b'{"access_token":"a","token_type":"x","expires_in":1e400}',
    now=None,
)
def test_any_answer_is_a_grant_or_a_project_error(
    status: int, headers: dict[str, str], body: bytes, now: float | None
) -> None:
    try:
        grant = parse_token_response(status, headers, body, now=now)
    except SidecarError as exc:
        assert exc.retry_after is None or (math.isfinite(exc.retry_after) and exc.retry_after >= 0)
        if 300 <= status < 400:
            assert isinstance(exc, ClientRejected)
        if status in (408, 429) or 500 <= status < 600:
            assert isinstance(exc, TokenEndpointUnavailable)
        if isinstance(exc, MalformedResponse) and exc.salvaged_refresh_token is not None:
            assert 200 <= status < 300  # only an answer that claims success was rotated
            assert exc.salvaged_refresh_token == salvage_refresh_token(body)
        return
    assert 200 <= status < 300
    assert isinstance(grant, TokenGrant)
    assert grant.access_token and grant.access_token.isprintable()
    assert all(0x20 <= ord(c) <= 0x7E for c in grant.access_token)
    assert grant.token_type.strip()
    assert grant.expires_in is None or math.isfinite(grant.expires_in)
    assert grant.refresh_token is None or all(0x20 <= ord(c) <= 0x7E for c in grant.refresh_token)


@PROPERTY
@given(
    status=st.sampled_from([200, 400, 401, 403, 429, 500, 503]),
    token=TOKEN,
    field=FIELDS,
    document=RESPONSE_OBJECT,
)
def test_messages_never_echo_what_the_server_sent(
    status: int, token: str, field: str, document: dict[str, Any]
) -> None:
    assume(token not in ("Bearer", "bearer") and not token.isdigit())
    # A known RFC 6749 error code in "error" is named on purpose: public vocabulary, no echo.
    assume(not (field == "error" and token in KNOWN_ERRORS))
    # Our own words (an error class name such as TokenEndpointUnavailable, "unavailable") are
    # no echo: what the same answer with a neutral value in place of the token produces.
    assume(token not in _error_text(status, {**document, field: "Q" * len(token)}))
    assert token not in _error_text(status, {**document, field: token})


def _error_text(status: int, document: dict[str, Any]) -> str:
    try:
        parse_token_response(status, {}, encode(document))
    except SidecarError as exc:
        return f"{exc.message}\n{exc!r}"
    return ""


@PROPERTY
@given(document=RESPONSE_OBJECT, token=TOKEN, cut=st.integers(min_value=0, max_value=400))
def test_a_cut_off_answer_never_yields_half_a_token(
    document: dict[str, Any], token: str, cut: int
) -> None:
    document.pop("refresh_token", None)
    body = json.dumps({"refresh_token": token, **document}).encode()
    token_end = body.index(json.dumps(token).encode()) + len(json.dumps(token))
    salvaged = salvage_refresh_token(body[:cut])
    if cut >= token_end:
        assert salvaged == token
    else:
        assert salvaged is None


@PROPERTY
@given(body=BODIES)
def test_salvage_never_raises(body: bytes) -> None:
    salvaged = salvage_refresh_token(body)
    assert salvaged is None or (salvaged and all(0x20 <= ord(c) <= 0x7E for c in salvaged))


@PROPERTY
@given(
    value=st.none()
    | st.text(max_size=60)
    | st.sampled_from(
        ["120", " 5 ", "-3", "1e9", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT", "0x10"]
    ),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_retry_after_is_never_negative_or_infinite(value: str | None, now: float) -> None:
    for parsed in (parse_retry_after(value, now), parse_retry_after(value, None)):
        assert parsed is None or (math.isfinite(parsed) and parsed >= 0)


@PROPERTY
@given(body=BODIES, issuer=st.sampled_from(["https://as.example", "https://as.example/t/"]))
def test_any_discovery_document_is_accepted_or_a_project_error(body: bytes, issuer: str) -> None:
    try:
        info = parse_discovery(body, issuer)
    except SidecarError:
        return
    assert info.token_endpoint.startswith("https://")


@PROPERTY
@given(response=JSON_VALUE)
def test_any_kv_answer_is_a_secret_or_an_error(response: Any) -> None:
    try:
        secret = secret_from_kv(response, "secret/app")
    except (SidecarError, UnexpectedResponse):
        return
    assert secret.refresh_token.strip()
    assert secret.version >= 1


# -- the schedule ----------------------------------------------------------------------------------


@st.composite
def schedule_policies(draw: st.DrawFn) -> SchedulePolicy:
    """Policies from any configuration the validation accepts."""
    low = draw(st.floats(min_value=0.001, max_value=1e6))
    high = draw(st.floats(min_value=low, max_value=1e7))
    config = RefreshConfig(
        fraction=draw(st.floats(min_value=0.1001, max_value=0.9499)),
        jitter=draw(st.floats(min_value=0, max_value=0.2)),
        min_margin_seconds=draw(st.floats(min_value=0, max_value=1e5)),
        min_interval_seconds=draw(st.floats(min_value=0.1, max_value=100)),
        min_expires_in=low,
        max_expires_in=high,
        default_expires_in=draw(st.floats(min_value=low, max_value=high)),
    )
    return schedule_policy(config)


EXPIRES_IN = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10**9)


@PROPERTY
@given(policy=schedule_policies(), expires_in=EXPIRES_IN, seed=st.integers())
def test_refresh_is_never_later_than_the_margin_and_never_a_hot_loop(
    policy: SchedulePolicy, expires_in: float | None, seed: int
) -> None:
    sent = None if expires_in is None else float(expires_in)
    lifetime = effective_lifetime(sent, policy)
    assert math.isfinite(lifetime)
    assert 0 <= lifetime <= max(policy.max_expires_in, policy.default_expires_in)
    # 0 exactly when the server said the token is already expired: nothing stretches it.
    assert (lifetime == 0) == (sent is not None and not math.isnan(sent) and sent <= 0)
    if sent is not None and math.isfinite(sent) and sent > 0:
        assert lifetime <= sent  # never believed longer than the server said

    low, high = refresh_window(lifetime, policy)
    delay = refresh_delay(lifetime, policy, random.Random(seed))
    assert policy.min_interval <= low <= delay <= high  # bounded below: no hot loop
    # Never later than the safety margin: min_margin before expiry, or half the lifetime
    # for a token too short for that margin. Only the minimum interval may push past it.
    latest = max(lifetime - min(policy.min_margin, lifetime / 2), policy.min_interval)
    assert high <= latest + 1e-9 * max(1.0, latest)


@PROPERTY
@given(policy=schedule_policies(), lifetime=st.floats(min_value=1, max_value=1e6))
def test_a_token_refreshed_in_time_leaves_the_margin(
    policy: SchedulePolicy, lifetime: float
) -> None:
    assume(lifetime >= 2 * policy.min_margin and lifetime >= 2 * policy.min_interval)
    _, high = refresh_window(lifetime, policy)
    assert lifetime - high >= min(policy.min_margin, lifetime / 2) - 1e-6 * lifetime


@PROPERTY
@given(policy=schedule_policies(), lifetime=st.floats(min_value=0.001, max_value=1e6))
def test_readiness_never_asks_for_what_a_token_on_schedule_lacks(
    policy: SchedulePolicy, lifetime: float
) -> None:
    """At the latest scheduled refresh the token still has more than the readiness cap left."""
    _, high = refresh_window(lifetime, policy)
    cap = ready_margin_cap(lifetime, policy)
    assert cap >= 0
    left = lifetime - high
    assert cap < left or (cap == 0 and left <= 0)


# -- the backoff -----------------------------------------------------------------------------------


@st.composite
def backoff_policies(draw: st.DrawFn) -> BackoffPolicy:
    initial = draw(st.floats(min_value=0.001, max_value=1e4))
    config = RefreshConfig(
        backoff_initial_seconds=initial,
        backoff_max_seconds=draw(st.floats(min_value=initial, max_value=1e5)),
        max_retry_after_seconds=draw(st.floats(min_value=0.001, max_value=1e5)),
    )
    return backoff_policy(config)


@PROPERTY
@given(
    policy=backoff_policies(),
    attempt=st.integers(min_value=-5, max_value=10**6),
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    seed=st.integers(),
)
def test_backoff_waits_are_positive_and_bounded(
    policy: BackoffPolicy, attempt: int, retry_after: float | None, seed: int
) -> None:
    delay = backoff_delay(attempt, policy, random.Random(seed), retry_after)
    assert math.isfinite(delay)
    assert delay >= policy.initial / 2 > 0  # never zero: no hot loop
    assert delay <= max(policy.maximum, policy.max_retry_after)  # bounded, whatever was sent
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        assert delay >= min(retry_after, policy.max_retry_after)  # the server's floor


@PROPERTY
@given(policy=backoff_policies(), seed=st.integers())
def test_backoff_grows_to_its_cap_for_a_persistent_fault(policy: BackoffPolicy, seed: int) -> None:
    rng = random.Random(seed)
    waits = [backoff_delay(n, policy, rng) for n in range(1, 80)]
    assert max(waits) <= policy.maximum
    assert waits[-1] >= policy.maximum / 2


# -- redaction -------------------------------------------------------------------------------------


@PROPERTY
@given(
    secret=TOKEN, before=st.text(max_size=20), after=st.text(max_size=20), form=st.integers(0, 5)
)
def test_a_known_secret_never_survives_the_scrubber(
    secret: str, before: str, after: str, form: int
) -> None:
    encoded = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
    ][form]
    redactor = Redactor()
    redactor.add(secret)
    scrubbed = redactor.scrub(before + encoded + after)
    assert secret not in scrubbed
    assert encoded not in scrubbed or len(encoded) < 8


# -- configuration ---------------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "vault",
        "credentials",
        "refresh",
        "http",
        "server",
        "log",
        "journal",
        "coordination",
        "address",
        "auth",
        "method",
        "role",
        "name",
        "kv_path",
        "token_endpoint",
        "issuer",
        "output_dir",
        "file_mode",
        "file_group",
        "timeout_seconds",
        "min_expires_in",
        "max_expires_in",
        "claim_seconds",
    ]
)
YAML_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=15,
)


@pytest.fixture(scope="module")
def config_file() -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=".yaml", delete=False)  # noqa: SIM115
    handle.close()
    return Path(handle.name)


@settings(deadline=None, max_examples=120, suppress_health_check=list(HealthCheck))
@given(data=st.dictionaries(KEYS, YAML_VALUE, max_size=6))
def test_any_configuration_loads_or_lists_its_problems(
    config_file: Path, data: dict[str, Any]
) -> None:
    config_file.write_text(yaml.safe_dump(data))
    try:
        load_settings(config_file)
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and ": " in p for p in exc.problems)
        assert len(exc.problems) == len(set(exc.problems))
