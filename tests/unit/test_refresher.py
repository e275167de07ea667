"""The refresh loop against fakes of its ports, on a fake clock: order, schedule, errors (R1-R6)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from sidecar.client_auth import ClientTemplate
from sidecar.errors import (
    InvalidGrant,
    ResponseLost,
    SecretNotFound,
    SecretRetired,
    TokenEndpointUnavailable,
    VaultUnavailable,
)
from sidecar.model import JournalEntry
from sidecar.ports import RefreshObserver
from sidecar.refresher import Refresher
from sidecar.status import CredentialStatus, Phase
from tests.support import policies
from tests.support.clock import VirtualClock
from tests.unit.fakes import (
    Events,
    FakeExchanger,
    FakeJournal,
    FakeSink,
    FakeStore,
    run_without_leaks,
)

DAY = 86_400.0


class Rig:
    def __init__(
        self,
        *,
        journal: bool = False,
        expires_in: float = 30.0,
        exclusive: bool = False,
        observer: RefreshObserver | None = None,
    ) -> None:
        self.events = Events()
        self.clock = VirtualClock()
        self.stop = asyncio.Event()
        self.store = FakeStore(self.events, client_id="demo", client_secret="s3cret-value")
        self.exchanger = FakeExchanger(self.events, expires_in=expires_in)
        self.sink = FakeSink(self.events)
        self.journal = FakeJournal(self.events) if journal else None
        self.status = CredentialStatus(name="demo")
        self.policy = policies.policy(
            schedule=policies.schedule(min_margin=5.0),
            secret_poll=30.0,
            operation_timeout=5.0,
            coordination=policies.coordination(exclusive=exclusive),
        )
        self.refresher = Refresher(
            store=self.store,
            exchanger=self.exchanger,
            sink=self.sink,
            client=ClientTemplate(),
            status=self.status,
            clock=self.clock,
            stop=self.stop,
            policy=self.policy,
            journal=self.journal,
            rng=random.Random(7),
            observer=observer,
        )

    def run_for(self, seconds: float) -> None:
        run_without_leaks(self.clock.drive(self.refresher.run(), seconds, self.stop))

    def once(self) -> None:
        run_without_leaks(self.clock.drive(self.refresher.once(), DAY, self.stop))

    def exchanges(self) -> list[object]:
        return [d for k, d in self.events.log if k == "exchange"]


def test_rotated_token_reaches_vault_before_the_access_token_is_published() -> None:
    rig = Rig()
    rig.run_for(1)
    assert rig.events.kinds()[:6] == ["prepare", "read", "claim", "exchange", "write", "publish"]
    assert rig.store.data["refresh_token"] == "rt-0000000002"
    assert rig.store.data["client_secret"] == "s3cret-value"
    assert rig.status.phase is Phase.STOPPED
    assert rig.status.writeback_pending is False


def test_refreshes_ahead_of_expiry_and_never_presents_a_token_twice() -> None:
    rig = Rig(expires_in=30)
    rig.run_for(300)
    presented = rig.exchanger.presented
    assert len(presented) == len(set(presented))
    # 2/3 of 30 s with 5 % jitter: one exchange every 18.5-21.5 s.
    assert 13 <= len(presented) <= 17
    published = rig.sink.published
    for earlier, later in itertools.pairwise(published):
        gap = (later.issued_at - earlier.issued_at).total_seconds()
        assert 18 <= gap <= 22
        assert later.issued_at < earlier.expires_at
    assert rig.store.data["refresh_token"] in rig.exchanger.valid


def test_invalid_grant_is_final_for_that_token_until_an_operator_reseeds() -> None:
    rig = Rig()
    rig.exchanger.valid = set()
    rig.run_for(100)
    assert rig.exchanger.presented == ["rt-0000000001"]
    assert rig.status.phase is Phase.STOPPED
    assert rig.status.last_error == "invalid_grant"

    rig2 = Rig()
    rig2.exchanger.valid = {"rt-reseeded-01"}

    def reseed_later(token: str) -> None:
        rig2.store.operator_write("rt-reseeded-01")

    rig2.exchanger.script = [reseed_later]
    rig2.run_for(100)
    assert rig2.exchanger.presented[:2] == ["rt-0000000001", "rt-reseeded-01"]
    assert rig2.exchanger.presented.count("rt-0000000001") == 1
    assert rig2.status.last_error is None
    assert rig2.sink.published


def test_without_a_journal_publishing_waits_for_vault() -> None:
    rig = Rig()
    rig.store.fail_writes = [VaultUnavailable("down"), VaultUnavailable("down")]
    rig.run_for(10)
    kinds = rig.events.kinds()
    first_publish = kinds.index("publish")
    writes = [i for i, k in enumerate(kinds) if k == "write"]
    assert len(writes) >= 3
    assert writes[2] < first_publish
    assert rig.store.data["refresh_token"] == "rt-0000000002"


def test_with_a_journal_vault_outage_does_not_stop_publishing() -> None:
    rig = Rig(journal=True)
    rig.store.fail_writes = [VaultUnavailable("down")] * 3
    rig.run_for(60)
    kinds = rig.events.kinds()
    assert kinds.index("journal") < kinds.index("publish") < kinds.index("journal_clear")
    assert rig.journal is not None and rig.journal.entry is None
    assert rig.store.data["refresh_token"] in rig.exchanger.valid
    assert len(set(rig.exchanger.presented)) == len(rig.exchanger.presented)


def test_lost_response_is_retried_once_with_the_same_token() -> None:
    rig = Rig()
    rig.exchanger.script = [ResponseLost("reset")]
    rig.run_for(1)
    assert rig.exchanger.presented[:2] == ["rt-0000000001", "rt-0000000001"]
    assert rig.sink.published


def test_twice_lost_response_never_presents_that_token_again() -> None:
    rig = Rig()
    rig.exchanger.script = [ResponseLost("reset"), ResponseLost("reset")]
    rig.run_for(200)
    assert rig.exchanger.presented == ["rt-0000000001", "rt-0000000001"]
    assert rig.status.last_error == "response_lost_twice"


def test_operator_write_during_rotation_is_adopted_not_overwritten() -> None:
    rig = Rig()
    rig.exchanger.valid.add("rt-operator-01")

    def operator_writes(token: str) -> None:
        rig.store.operator_write("rt-operator-01")

    rig.exchanger.script = [operator_writes]
    rig.run_for(25)
    writes = [d for k, d in rig.events.log if k == "write"]
    assert writes[0] == "rt-0000000002"  # lost the CAS race
    assert rig.exchanger.presented[1] == "rt-operator-01"
    assert rig.store.version >= 3


def test_retire_during_rotation_stops_presenting_and_drops_the_write_back() -> None:
    """``token-sidecar retire`` marks the secret while this replica exchanges: its write-back
    loses the check-and-set, the fresh read says retired, and nothing is presented again."""
    rig = Rig()

    def operator_retires(token: str) -> None:
        rig.store.operator_write(token)
        rig.store.fail_reads = [SecretRetired("secret/apps/demo: retired")] * 50

    rig.exchanger.script = [operator_retires]
    rig.run_for(120)
    assert len(rig.exchanges()) == 1
    assert rig.status.last_error == "retired"
    assert rig.status.writeback_pending is False
    assert rig.store.data["refresh_token"] == "rt-0000000001"  # the write-back never landed


def test_retry_after_is_honoured() -> None:
    rig = Rig()
    rig.exchanger.script = [TokenEndpointUnavailable("429", retry_after=120)]
    rig.run_for(119)
    assert rig.exchanger.presented == ["rt-0000000001"]
    rig2 = Rig()
    rig2.exchanger.script = [TokenEndpointUnavailable("429", retry_after=120)]
    rig2.run_for(125)
    assert len(rig2.exchanger.presented) == 2


def test_transient_failures_back_off_without_a_hot_loop() -> None:
    rig = Rig()
    rig.exchanger.script = [TokenEndpointUnavailable("503")] * 50
    rig.run_for(600)
    # capped exponential backoff: far fewer than one attempt a second
    assert 5 <= len(rig.exchanger.presented) <= 15
    assert rig.status.last_error == "endpoint_unavailable"


def test_stop_starts_no_exchange_but_finishes_the_write_back() -> None:
    rig = Rig()
    rig.store.fail_writes = [VaultUnavailable("down")] * 3

    def stop_now(token: str) -> None:
        rig.stop.set()

    rig.exchanger.script = [stop_now]
    rig.run_for(DAY)
    assert rig.exchanger.presented == ["rt-0000000001"]
    assert rig.store.data["refresh_token"] == "rt-0000000002"
    assert rig.status.writeback_pending is False


def test_journal_entry_from_a_crash_is_written_back_before_any_exchange() -> None:
    rig = Rig(journal=True)
    assert rig.journal is not None
    rig.exchanger.valid = {"rt-journalled"}
    rig.journal.entry = JournalEntry("secret/apps/demo", 1, "rt-journalled", 0.0)
    rig.run_for(1)
    kinds = rig.events.kinds()
    assert kinds[:4] == ["prepare", "read", "write", "journal_clear"]
    assert rig.exchanger.presented[0] == "rt-journalled"
    assert "rt-0000000001" not in rig.exchanger.presented


def test_superseded_journal_entry_is_dropped() -> None:
    rig = Rig(journal=True)
    assert rig.journal is not None
    rig.store.version = 5
    rig.journal.entry = JournalEntry("secret/apps/demo", 3, "rt-old-journal", 0.0)
    rig.run_for(1)
    assert rig.exchanger.presented[0] == "rt-0000000001"
    assert rig.journal.entry is None or rig.journal.entry.refresh_token != "rt-old-journal"


def test_once_raises_the_failure() -> None:
    rig = Rig()
    rig.store.fail_reads = [SecretNotFound("secret/apps/demo: no secret")]
    with pytest.raises(SecretNotFound):
        rig.once()
    rig2 = Rig()
    rig2.exchanger.valid = set()
    with pytest.raises(InvalidGrant):
        rig2.once()


def test_once_refreshes_one_time() -> None:
    rig = Rig()
    rig.once()
    assert len(rig.exchanger.presented) == 1
    assert len(rig.sink.published) == 1


def test_missing_client_secret_is_reported_not_exchanged() -> None:
    rig = Rig()
    del rig.store.data["client_secret"]
    rig.run_for(5)
    assert rig.exchanger.presented == []
    assert rig.status.last_error == "secret_invalid"


def test_rotated_token_in_a_malformed_answer_is_kept() -> None:
    from sidecar.errors import MalformedResponse  # noqa: PLC0415
    from sidecar.oauth import parse_token_response  # noqa: PLC0415

    rig = Rig()
    try:
        parse_token_response(200, {}, b'{"refresh_token": "rt-salvaged-01", "token_type": 1}')
    except MalformedResponse as exc:
        malformed = exc
    rig.exchanger.valid = {"rt-salvaged-01"}
    rig.exchanger.script = [malformed]
    rig.run_for(10)
    assert rig.store.data["refresh_token"] != "rt-0000000001"
    assert rig.exchanger.presented[:2] == ["rt-0000000001", "rt-salvaged-01"]
    assert rig.sink.published


@pytest.mark.parametrize("journal", [True, False])
def test_vault_outage_never_stops_refreshes_from_memory_when_alone(journal: bool) -> None:
    rig = Rig(journal=journal, expires_in=30, exclusive=True)

    def outage(token: str) -> None:
        count = len(rig.exchanger.presented)
        if count == 3:
            rig.store.down = True
        if count == 9:
            rig.store.down = False

    rig.exchanger.script = [outage] * 100
    rig.run_for(300)
    presented = rig.exchanger.presented
    assert len(presented) == len(set(presented))
    assert len(presented) >= 13  # one every ~20 s, outage or not
    if journal:  # without a journal, publishing waits for Vault (R2)
        for earlier, later in itertools.pairwise(rig.sink.published):
            assert later.issued_at < earlier.expires_at
    assert rig.store.data["refresh_token"] in rig.exchanger.valid
    assert rig.status.writeback_pending is False


@pytest.mark.parametrize("journal", [True, False])
def test_with_replicas_a_vault_outage_stops_refreshes_once_the_claim_runs_out(
    journal: bool,
) -> None:
    """Another replica may claim Vault's token once the claim has run out: a rotation from
    memory after that would leave Vault holding a spent token (R1 over R6)."""
    rig = Rig(journal=journal, expires_in=60)
    during: list[int] = []

    def outage(token: str) -> None:
        if len(rig.exchanger.presented) == 3:
            rig.store.down = True

    async def vault_returns() -> None:
        await rig.clock.wait(asyncio.Event(), 200)  # the outage starts at about 80 s
        during.extend([len(rig.exchanger.presented), rig.status.writeback_pending])
        rig.store.down = False

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(rig.refresher.run()), asyncio.ensure_future(vault_returns())]
        await rig.clock.run(350, rig.stop, tasks)

    rig.exchanger.script = [outage] * 100
    run_without_leaks(scenario())
    assert during == [3, True]  # nothing presented while Vault was down; the rotation waited
    presented = rig.exchanger.presented
    assert len(presented) >= 5
    assert len(presented) == len(set(presented))
    assert rig.store.data["refresh_token"] in rig.exchanger.valid
    assert rig.status.writeback_pending is False


def test_with_replicas_a_replica_that_wrote_last_does_not_refresh_while_vault_is_down() -> None:
    """Having written the version it last read proves nothing: another replica may have
    claimed and rotated since, and the token in memory would be spent."""
    rig = Rig(expires_in=60)
    seen: list[object] = []

    async def outage() -> None:
        # one rotation at 0 s, written back: this replica wrote the version it holds
        await rig.clock.wait(asyncio.Event(), 30)
        rig.store.down = True
        await rig.clock.wait(asyncio.Event(), 120)
        seen.extend([len(rig.exchanger.presented), rig.status.last_error])
        rig.store.down = False

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(rig.refresher.run()), asyncio.ensure_future(outage())]
        await rig.clock.run(200, rig.stop, tasks)

    run_without_leaks(scenario())
    assert seen == [1, "vault_unavailable"]
    assert len(rig.exchanger.presented) >= 2  # and on again once Vault is back
