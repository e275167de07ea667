"""The Publisher: what both loops show the app and the operator, the same way for each grant."""

from __future__ import annotations

import random

import structlog

from sidecar.coordination import SharedAccess
from sidecar.errors import Severity, TokenEndpointUnavailable, VaultUnavailable
from sidecar.publisher import Publisher
from sidecar.redact import Redactor
from sidecar.status import CredentialStatus, Phase
from tests.support import policies
from tests.support.clock import VirtualClock
from tests.unit.fakes import Events, FakeSink


def _publisher() -> tuple[Publisher, FakeSink, VirtualClock]:
    clock = VirtualClock()
    sink = FakeSink(Events())
    publisher = Publisher(
        sink=sink,
        status=CredentialStatus("demo"),
        clock=clock,
        policy=policies.policy(secret_poll=30),
        rng=random.Random(3),
        redactor=Redactor(),
        log=structlog.get_logger("test"),
    )
    return publisher, sink, clock


def _access(token: str, now: float, lifetime: float) -> SharedAccess:
    return SharedAccess(
        access_token=token,
        token_type="Bearer",
        issued_at=now,
        expires_at=now + lifetime,
        scope=None,
    )


def test_offer_never_moves_the_published_expiry_backwards() -> None:
    publisher, sink, clock = _publisher()
    now = clock.time()
    publisher.offer(_access("long", now, 300), reused=False)
    publisher.offer(_access("short", now, 100), reused=True)  # a replica's, expiring sooner
    publisher.offer(_access("expired", now - 50, 10), reused=True)
    assert [t.access_token for t in sink.published] == ["long"]
    publisher.offer(_access("longer", now, 400), reused=True)
    assert publisher.published == "longer"
    assert publisher.status.expires_at == now + 400
    # once the published token has expired, any valid one is better than none
    clock.mono += 401
    publisher.offer(_access("fresh", clock.time(), 50), reused=False)
    assert publisher.published == "fresh"


def test_failed_counts_reports_and_paces_by_severity() -> None:
    publisher, _, _ = _publisher()
    status = publisher.status
    first = publisher.failed(VaultUnavailable("down"), "secret.read_failed", Severity.RETRYABLE)
    assert (status.phase, status.last_error, status.consecutive_failures) == (
        Phase.STARTING,
        "vault_unavailable",
        1,
    )
    second = publisher.failed(
        TokenEndpointUnavailable("busy", retry_after=90), "token.refresh_failed", Severity.RETRYABLE
    )
    assert first <= 1 and second == 90
    assert status.consecutive_failures == 2
    assert publisher.failed(VaultUnavailable("x"), "e", Severity.REJECTED) == 30
    assert status.phase is Phase.REJECTED
    # a working exchange ends the run of failures, whether or not its token is published yet
    publisher.exchanged()
    assert (status.last_error, status.consecutive_failures) == (None, 0)
