"""The client_credentials loop against fakes of its ports, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from sidecar.client_auth import ClientTemplate
from sidecar.client_grant import ClientCredentialsLoop
from sidecar.errors import (
    ClientCertificateInvalid,
    ClientRejected,
    ResponseLost,
    SecretNotFound,
    SidecarError,
    SinkError,
    TokenEndpointUnavailable,
    VaultUnavailable,
)
from sidecar.model import ClientCredentials, TokenGrant
from sidecar.status import CredentialStatus, Phase
from tests.support import policies
from tests.support.clock import VirtualClock
from tests.unit.fakes import Events, FakeSink, FakeStore, run_without_leaks


class FakeClientGrant:
    """An authorization server for client_credentials: every call issues a new token."""

    def __init__(self, events: Events, expires_in: float | None = 30.0) -> None:
        self.events = events
        self.expires_in = expires_in
        self.clients: list[ClientCredentials] = []
        self.script: list[SidecarError] = []
        self.count = 0

    async def client_credentials(self, client: ClientCredentials) -> TokenGrant:
        self.clients.append(client)
        self.events.add("exchange", client.client_id)
        if self.script:
            raise self.script.pop(0)
        self.count += 1
        return TokenGrant(
            access_token=f"cc-access-{self.count:06d}",
            token_type="Bearer",
            expires_in=self.expires_in,
            refresh_token="cc-refresh-ignored" if self.count == 1 else None,
            scope="api:read",
        )


class Observer:
    def __init__(self, phases: list[str]) -> None:
        self.phases = phases

    def refresh_finished(self, credential: str, outcome: str, seconds: float) -> None:
        pass

    def phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        self.phases.append(new)


class Rig:
    def __init__(self, *, vault: bool = True, template: ClientTemplate | None = None) -> None:
        self.phases: list[str] = []
        self.events = Events()
        self.clock = VirtualClock()
        self.stop = asyncio.Event()
        self.store = FakeStore(self.events, "", client_id="svc", client_secret="svc-secret-1")
        self.exchanger = FakeClientGrant(self.events)
        self.sink = FakeSink(self.events)
        self.status = CredentialStatus(name="svc", grant="client_credentials")
        self.loop = ClientCredentialsLoop(
            store=self.store if vault else None,
            exchanger=self.exchanger,
            sink=self.sink,
            client=template or ClientTemplate(),
            status=self.status,
            clock=self.clock,
            stop=self.stop,
            policy=policies.policy(
                schedule=policies.schedule(min_margin=5.0), secret_poll=30.0, operation_timeout=5.0
            ),
            observer=Observer(self.phases),
            rng=random.Random(3),
        )

    def run_for(self, seconds: float) -> None:
        run_without_leaks(self.clock.drive(self.loop.run(), seconds, self.stop))

    def once(self) -> None:
        run_without_leaks(self.clock.drive(self.loop.once(), 86_400, self.stop))


def test_obtains_publishes_and_never_writes_to_vault() -> None:
    rig = Rig()
    rig.run_for(1)
    assert rig.events.kinds() == ["prepare", "read", "exchange", "publish"]
    assert rig.exchanger.clients[0].client_secret == "svc-secret-1"
    token = rig.sink.published[0]
    assert token.access_token == "cc-access-000001"
    assert token.scope == "api:read"
    assert (token.expires_at - token.issued_at).total_seconds() == 30
    assert rig.status.phase is Phase.STOPPED
    assert rig.status.last_error is None


def test_refreshes_at_about_two_thirds_of_the_lifetime() -> None:
    rig = Rig()
    published_at: list[float] = []
    publish = rig.sink.publish

    def stamped(token: object) -> None:
        published_at.append(rig.clock.monotonic())
        publish(token)  # type: ignore[arg-type]

    rig.sink.publish = stamped  # type: ignore[method-assign]
    rig.run_for(300)
    gaps = [b - a for a, b in itertools.pairwise(published_at)]
    assert len(gaps) >= 10
    assert all(18 <= gap <= 22 for gap in gaps), gaps  # 2/3 of 30 s, plus or minus jitter
    assert "write" not in rig.events.kinds() and "claim" not in rig.events.kinds()


def test_reads_the_secret_every_cycle_and_uses_a_rotated_client_secret() -> None:
    rig = Rig()
    rig.run_for(1)
    rig.store.data["client_secret"] = "svc-secret-2"
    rig.store.version += 1
    rig.stop.clear()
    rig.run_for(25)
    assert rig.exchanger.clients[-1].client_secret == "svc-secret-2"
    assert rig.status.secret_version == 2


def test_vault_down_keeps_refreshing_with_the_secret_read_before() -> None:
    rig = Rig()
    rig.run_for(1)
    rig.store.down = True
    rig.stop.clear()
    rig.run_for(100)
    assert len(rig.sink.published) >= 5
    assert rig.status.last_error is None


def test_without_vault_everything_comes_from_configuration() -> None:
    rig = Rig(vault=False, template=ClientTemplate(client_id="svc", client_secret="from-file-1"))
    rig.run_for(1)
    assert "read" not in rig.events.kinds()
    assert rig.exchanger.clients[0].client_secret == "from-file-1"
    assert rig.status.secret_version is None


def test_a_final_error_waits_for_the_secret_poll_then_recovers() -> None:
    rig = Rig()
    rig.exchanger.script = [ClientRejected("rejected (invalid_client, HTTP 401)")]
    rig.run_for(10)
    assert rig.status.last_error == "client_rejected"
    assert rig.sink.published == []
    assert rig.events.kinds().count("exchange") == 1  # nothing within the poll interval
    rig.stop.clear()
    rig.run_for(40)
    assert rig.sink.published and rig.status.last_error is None


def test_an_unusable_certificate_is_final_and_tried_again_after_the_poll() -> None:
    rig = Rig()
    rig.exchanger.script = [ClientCertificateInvalid("client_cert_file /c.pem: expired")]
    rig.run_for(29)
    assert rig.phases == ["failed", "stopped"]
    assert rig.status.last_error == "client_certificate"
    assert rig.events.kinds().count("exchange") == 1
    rig.stop.clear()
    rig.run_for(5)
    assert rig.events.kinds().count("exchange") == 2
    assert rig.sink.published


@pytest.mark.parametrize(
    "error",
    [
        TokenEndpointUnavailable("down", retry_after=7.0),
        ResponseLost("lost"),
        SinkError("disk full"),
    ],
)
def test_transient_failures_back_off_and_recover(error: SidecarError) -> None:
    rig = Rig()
    if isinstance(error, SinkError):
        rig.sink.fail = [error]
    else:
        rig.exchanger.script = [error]
    rig.run_for(60)
    assert rig.sink.published
    assert rig.status.last_error is None
    exchanges = rig.events.kinds().count("exchange")
    assert exchanges >= 2


def test_retry_after_is_honoured() -> None:
    rig = Rig()
    rig.exchanger.script = [TokenEndpointUnavailable("down", retry_after=7.0)]
    rig.run_for(6.5)
    assert rig.events.kinds().count("exchange") == 1
    assert rig.status.phase is Phase.STOPPED
    rig.stop.clear()
    rig.run_for(5)
    assert rig.events.kinds().count("exchange") == 2


def test_once_publishes_and_returns() -> None:
    rig = Rig()
    rig.once()
    assert len(rig.sink.published) == 1


@pytest.mark.parametrize(
    "error", [VaultUnavailable("sealed"), SecretNotFound("secret/apps/demo: no secret")]
)
def test_once_raises_the_first_failure(error: SidecarError) -> None:
    rig = Rig()
    rig.store.fail_reads = [error]
    with pytest.raises(type(error)):
        rig.once()


def test_a_secret_without_what_the_method_needs_is_reported() -> None:
    rig = Rig()
    del rig.store.data["client_secret"]
    rig.run_for(1)
    assert rig.status.last_error == "secret_invalid"
    assert "exchange" not in rig.events.kinds()


def test_an_expired_answer_is_never_published() -> None:
    rig = Rig()
    rig.run_for(1)
    rig.exchanger.expires_in = -5  # already expired: the valid token stays in the file
    rig.stop.clear()
    rig.run_for(60)
    assert [t.access_token for t in rig.sink.published] == ["cc-access-000001"]
    assert rig.status.last_error == "expired_answer"
    assert rig.status.expires_at is not None
    assert rig.status.ready_margin_cap == pytest.approx(4.25)  # half of 30 s * (1 - 2/3 - 0.05)
