"""The refresh loop on fakes: journal faults, dead claimants, expired answers, readiness."""

from __future__ import annotations

import math

import pytest

from sidecar.coordination import FIELD
from sidecar.errors import ExpiredAnswer, JournalBusy, JournalError, VaultUnavailable
from sidecar.model import JournalEntry
from sidecar.schedule import ready_margin_cap
from sidecar.status import CredentialStatus, Phase
from tests.support import policies
from tests.unit.fakes import FakeJournal
from tests.unit.test_refresher import Rig


class Outcomes:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def refresh_finished(self, credential: str, outcome: str, seconds: float) -> None:
        self.outcomes.append(outcome)

    def phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        return None


def journal(rig: Rig) -> FakeJournal:
    assert rig.journal is not None
    return rig.journal


# -- journal faults are sink errors: nothing lost --------------------------------------------


def test_a_journal_that_cannot_be_written_keeps_the_token_in_memory_until_vault_has_it() -> None:
    rig = Rig(journal=True)
    journal(rig).fail["save"] = JournalError("journal: cannot write: Read-only file system")
    rig.store.fail_writes = [VaultUnavailable("down")] * 2
    rig.run_for(60)
    kinds = rig.events.kinds()
    writes = [i for i, k in enumerate(kinds) if k == "write"]
    assert writes[2] < kinds.index("publish")  # published only once Vault held the token
    presented = rig.exchanger.presented
    assert len(presented) == len(set(presented)) >= 3
    assert rig.store.data["refresh_token"] in rig.exchanger.valid


def test_a_journal_that_cannot_be_cleared_stops_nothing() -> None:
    rig = Rig(journal=True)
    journal(rig).fail["clear"] = JournalError("journal: cannot remove: Permission denied")
    rig.run_for(60)
    assert len(rig.exchanger.presented) >= 3
    assert rig.store.data["refresh_token"] in rig.exchanger.valid
    assert rig.status.phase is Phase.STOPPED


def test_an_unreadable_journal_holds_back_every_exchange_until_it_can_be_read() -> None:
    """It may hold the live refresh token: presenting Vault's could present a spent one."""
    rig = Rig(journal=True)
    journal(rig).fail["load"] = JournalError("journal: cannot read: Input/output error")
    journal(rig).entry = JournalEntry("secret/apps/demo", 1, "rt-journalled", 0.0)
    rig.exchanger.valid = {"rt-journalled"}

    def readable_again(_: str) -> None:
        raise AssertionError("exchanged before the journal was read")

    rig.exchanger.script = [readable_again]
    rig.run_for(5)
    assert rig.exchanger.presented == []
    assert rig.status.last_error == "journal_error"

    # Readable again: the journalled token goes to Vault first, Vault's spent one never out.
    rig.exchanger.script = []
    del journal(rig).fail["load"]
    rig.stop.clear()
    rig.run_for(60)
    assert rig.exchanger.presented[0] == "rt-journalled"
    assert "rt-0000000001" not in rig.exchanger.presented


def test_a_busy_journal_is_not_shared() -> None:
    """A second process on the journal (a `once` beside `run`) runs without it."""
    rig = Rig(journal=True)
    journal(rig).fail["open"] = JournalBusy("journal: locked by another live process")
    rig.store.fail_writes = [VaultUnavailable("down")]
    rig.run_for(5)
    kinds = rig.events.kinds()
    assert "journal" not in kinds and "journal_clear" not in kinds
    assert [i for i, k in enumerate(kinds) if k == "write"][1] < kinds.index("publish")


# -- claims of processes that ended ------------------------------------------------------------


def _claimed_by(rig: Rig, holder: str) -> None:
    until = rig.clock.time() + 30
    rig.store.data = {**rig.store.data, FIELD: {"claim": {"holder": holder, "until": until}}}


def test_a_claim_of_a_process_that_used_this_journal_before_is_taken_over() -> None:
    rig = Rig(journal=True)
    rig.refresher._holder = "app-0_new"
    journal(rig).claimants = ["app-0_gone"]
    _claimed_by(rig, "app-0_gone")
    rig.run_for(1)
    assert rig.exchanger.presented == ["rt-0000000001"]
    assert journal(rig).claimants == ["app-0_gone", "app-0_new"]


def test_a_claim_of_any_other_process_is_waited_out() -> None:
    rig = Rig(journal=True)
    rig.refresher._holder = "app-0_new"
    journal(rig).claimants = ["app-0_gone"]
    _claimed_by(rig, "app-0_alive")  # same pod name, another process: alive as far as we know
    claimed_at = rig.clock.monotonic()
    at: list[float] = []
    rig.exchanger.script = [lambda _: at.append(rig.clock.monotonic())]
    rig.run_for(45)
    assert rig.exchanger.presented[0] == "rt-0000000001"
    # not before claim_seconds (30) + clock_skew_seconds (5) have passed
    assert 35 <= at[0] - claimed_at <= 37


# -- answers that are already expired ----------------------------------------------------------


@pytest.mark.parametrize("expires_in", [0, -5])
def test_an_expired_answer_never_replaces_the_published_token(expires_in: float) -> None:
    outcomes = Outcomes()
    rig = Rig(expires_in=30, observer=outcomes)

    def expire_answers(_: str) -> None:
        rig.exchanger.expires_in = expires_in

    def valid_answers(_: str) -> None:
        rig.exchanger.expires_in = 30

    rig.exchanger.script = [lambda _: None, expire_answers, valid_answers]
    rig.run_for(60)
    assert outcomes.outcomes[:3] == ["success", "expired_answer", "success"]
    published = [t.access_token for t in rig.sink.published]
    assert "at-0000000003" not in published  # the expired one
    assert published[:2] == ["at-0000000002", "at-0000000004"]
    # the rotation the expired answer carried reached Vault, and the chain went on from it
    assert rig.exchanger.presented[:3] == ["rt-0000000001", "rt-0000000002", "rt-0000000003"]
    assert rig.store.data["refresh_token"] in rig.exchanger.valid
    writes = [d for k, d in rig.events.log if k == "write"]
    assert "rt-0000000003" in writes


def test_an_expired_first_answer_publishes_nothing_and_backs_off() -> None:
    outcomes = Outcomes()
    rig = Rig(expires_in=0, observer=outcomes)
    rig.run_for(20)
    assert rig.sink.published == []
    assert set(outcomes.outcomes) == {"expired_answer"}
    assert 3 <= len(outcomes.outcomes) <= 6  # backoff: 1, 2, 4, 8 s with jitter
    assert rig.status.last_error == "expired_answer"
    assert rig.status.expires_at is None
    presented = rig.exchanger.presented
    assert len(presented) == len(set(presented))  # each rotation persisted and used once
    assert rig.store.data["refresh_token"] in rig.exchanger.valid


def test_an_answer_expiring_before_the_published_token_does_not_replace_it() -> None:
    outcomes = Outcomes()
    rig = Rig(expires_in=300, observer=outcomes)

    def shorten(_: str) -> None:
        rig.exchanger.expires_in = 10  # the server's lifetime was cut: 10 s < what is left

    rig.exchanger.script = [lambda _: None, shorten]
    rig.run_for(300)
    assert outcomes.outcomes[:2] == ["success", "expired_answer"]
    assert rig.sink.published[0].access_token == "at-0000000002"
    assert rig.status.last_error is None  # not a failure: a valid token is published
    # the 300 s token is replaced once its remaining life falls below the new lifetime
    later = rig.sink.published[1:]
    assert later, "the shorter tokens never took over"
    first_expiry = rig.sink.published[0].expires_at
    assert all(t.expires_at >= first_expiry for t in later)
    presented = rig.exchanger.presented
    assert len(presented) == len(set(presented))


def test_once_writes_the_rotation_of_an_expired_answer_to_vault_before_failing() -> None:
    rig = Rig(expires_in=-5)
    rig.store.fail_writes = [VaultUnavailable("down")] * 2
    with pytest.raises(ExpiredAnswer):
        rig.once()
    assert rig.store.data["refresh_token"] == "rt-0000000002"
    assert rig.sink.published == []


# -- readiness scales with the token's lifetime ------------------------------------------------


def test_readiness_margin_shrinks_for_short_tokens() -> None:
    policy = policies.schedule(min_margin=60)
    assert ready_margin_cap(300, policy) == pytest.approx((300 - 300 * (2 / 3 + 0.05)) / 2)
    assert ready_margin_cap(2, policy) == 0.5  # refreshed at 1 s at the latest
    assert ready_margin_cap(0, policy) == 0
    status = CredentialStatus(name="demo", expires_at=1002.0, issued_at=1000.0)
    status.ready_margin_cap = ready_margin_cap(2, policy)
    assert status.ready(1001.4, margin=5.0)  # 0.6 s left, the refresh is due now
    assert not status.ready(1001.6, margin=5.0)
    long = CredentialStatus(name="demo", expires_at=1300.0, issued_at=1000.0)
    long.ready_margin_cap = ready_margin_cap(300, policy)
    assert long.ready(1294.0, margin=5.0) and not long.ready(1296.0, margin=5.0)


def test_ready_needs_a_token_valid_now_and_a_loop_on_schedule() -> None:
    status = CredentialStatus(name="demo", expires_at=1002.0, issued_at=1000.0)
    status.ready_margin_cap = 0.0
    assert not status.ready(1002.0, margin=5.0)  # valid now means before expires_at
    status.alive_until = 50.0
    assert status.ready(1001.0, margin=5.0, monotonic_now=50.0)
    assert not status.ready(1001.0, margin=5.0, monotonic_now=50.1)


def test_the_refresher_sets_the_margin_for_what_it_publishes() -> None:
    rig = Rig(expires_in=2)
    rig.run_for(0.5)
    assert rig.status.ready_margin_cap == ready_margin_cap(2, rig.policy.schedule)
    assert not math.isinf(rig.status.ready_margin_cap)
