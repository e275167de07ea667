"""Replicas sharing one secret, on virtual time: one exchange per period, no token reused."""

from __future__ import annotations

import asyncio
import itertools
import random

from sidecar.client_auth import ClientTemplate
from sidecar.coordination import (
    Action,
    SharedState,
    decide,
    failure_release,
    fingerprint,
    with_claim,
    with_release,
)
from sidecar.errors import Severity
from sidecar.refresher import Refresher
from sidecar.status import CredentialStatus, Phase
from tests.support import policies
from tests.support.clock import VirtualClock
from tests.unit.fakes import (
    Events,
    FakeExchanger,
    FakeSink,
    FakeStore,
    run_without_leaks,
)

POLICY = policies.coordination(claim_seconds=30, clock_skew_seconds=5, poll_seconds=1)


def test_decide_reuses_a_fresh_shared_token() -> None:
    decision = decide("rt", SharedState(), now=100, me="a", fresh_until=120, policy=POLICY)
    assert decision.action is Action.REUSE
    assert decision.until == 120


def test_decide_waits_for_a_live_claim_of_another_replica() -> None:
    state = SharedState.parse(with_claim({}, holder="b", until=110))
    assert decide("rt", state, now=100, me="a", fresh_until=None, policy=POLICY).action is (
        Action.WAIT
    )
    # expired past the skew allowance: take over
    assert decide("rt", state, now=116, me="a", fresh_until=None, policy=POLICY).action is (
        Action.CLAIM
    )
    # its own claim (a restarted container) does not block it
    assert decide("rt", state, now=100, me="b", fresh_until=None, policy=POLICY).action is (
        Action.CLAIM
    )


def test_decide_honours_shared_backoff_and_rejection() -> None:
    backoff = SharedState.parse(with_release({}, next_attempt_at=200, failures=3))
    wait = decide("rt", backoff, now=100, me="a", fresh_until=None, policy=POLICY)
    assert wait.action is Action.WAIT
    assert wait.until == 200
    rejected = SharedState.parse(with_release({}, rejected=fingerprint("rt")))
    assert decide("rt", rejected, now=100, me="a", fresh_until=None, policy=POLICY).action is (
        Action.REJECTED
    )
    # an operator re-seed (a different token) clears it
    assert decide("rt2", rejected, now=100, me="a", fresh_until=None, policy=POLICY).action is (
        Action.CLAIM
    )


def test_failure_release_shares_each_severity_and_releases_the_claim() -> None:
    claimed = {"refresh_token": "rt", **with_claim({}, holder="a", until=130)}
    backoff = policies.backoff(initial=1, maximum=60)

    def release(severity: Severity, shared_failures: int = 0) -> SharedState:
        data = failure_release(
            claimed,
            severity,
            token="rt",
            shared_failures=shared_failures,
            now=100,
            backoff=backoff,
            secret_poll=30,
            rng=random.Random(1),
            retry_after=None,
        )
        assert data["refresh_token"] == "rt"
        return SharedState.parse(data)

    rejected = release(Severity.REJECTED)
    assert rejected.claim_holder is None
    assert rejected.rejected == fingerprint("rt")
    assert rejected.next_attempt_at is None
    # retryable: one more shared failure, and the next attempt by the backoff of that count
    retryable = release(Severity.RETRYABLE, shared_failures=3)
    assert retryable.claim_holder is None
    assert retryable.failures == 4
    assert retryable.next_attempt_at is not None
    assert 100 + 4 <= retryable.next_attempt_at <= 100 + 8
    assert retryable.rejected is None
    # final: the secret-poll pace, no failure count to grow
    final = release(Severity.FINAL, shared_failures=3)
    assert final.next_attempt_at == 130
    assert final.failures == 0
    assert final.rejected is None


def test_failure_release_honours_retry_after_as_a_floor() -> None:
    data = failure_release(
        {"refresh_token": "rt"},
        Severity.RETRYABLE,
        token="rt",
        shared_failures=0,
        now=100,
        backoff=policies.backoff(initial=1, maximum=60, max_retry_after=600),
        secret_poll=30,
        rng=random.Random(1),
        retry_after=45,
    )
    assert SharedState.parse(data).next_attempt_at == 145


def test_decide_reports_a_token_this_replica_saw_refused_instead_of_claiming_it() -> None:
    mine = {fingerprint("rt")}
    decision = decide("rt", SharedState(), now=100, me="a", fresh_until=None, policy=POLICY)
    assert decision.action is Action.CLAIM
    refused = decide(
        "rt", SharedState(), now=100, me="a", fresh_until=None, policy=POLICY, rejected=mine
    )
    assert refused.action is Action.REJECTED
    # a re-seeded token is claimed; a shared token still fresh is reused, refused or not
    assert decide(
        "rt2", SharedState(), now=100, me="a", fresh_until=None, policy=POLICY, rejected=mine
    ).action is (Action.CLAIM)
    assert decide(
        "rt", SharedState(), now=100, me="a", fresh_until=120, policy=POLICY, rejected=mine
    ).action is (Action.REUSE)


def test_decide_spreads_replicas_with_the_draw() -> None:
    reuse = decide(
        "rt",
        SharedState(),
        now=100,
        me="a",
        fresh_until=120,
        policy=POLICY,
        reuse_spread=10,
        draw=0.5,
    )
    assert (reuse.action, reuse.until) == (Action.REUSE, 125)
    backoff = SharedState.parse(with_release({}, next_attempt_at=200, failures=3))
    wait = decide("rt", backoff, now=100, me="a", fresh_until=None, policy=POLICY, draw=0.5)
    assert (wait.action, wait.until) == (Action.WAIT, 100 + 100 * 1.1)


def test_decide_looks_again_soon_while_another_replica_refreshes_a_shared_token() -> None:
    """A claimant's result must be picked up well before the shared token expires: the wait
    is at most 5 % of that token's lifetime (at least 50 ms)."""
    access = {"access_token": "at", "token_type": "Bearer", "issued_at": 0, "expires_at": 10}
    claimed = with_claim({"token_sidecar": {"access": access}}, holder="b", until=130)
    state = SharedState.parse(claimed)
    assert state.access is not None
    wait = decide("rt", state, now=100, me="a", fresh_until=None, policy=POLICY)
    assert (wait.action, wait.until) == (Action.WAIT, 100.5)
    # without a shared token: up to the poll interval
    bare = SharedState.parse(with_claim({}, holder="b", until=130))
    assert decide("rt", bare, now=100, me="a", fresh_until=None, policy=POLICY).until == 101


def test_malformed_shared_state_counts_as_absent() -> None:
    for junk in ("x", 1, {"claim": "x", "access": {"access_token": 1}, "failures": "many"}):
        assert SharedState.parse({"token_sidecar": junk}) == SharedState()


class Fleet:
    def __init__(self, replicas: int, *, expires_in: float = 30.0) -> None:
        self.events = Events()
        self.clock = VirtualClock()
        self.stop = asyncio.Event()
        self.store = FakeStore(self.events, client_id="demo", client_secret="s3cret-value")
        self.exchanger = FakeExchanger(self.events, expires_in=expires_in)
        self.sinks = [FakeSink(self.events) for _ in range(replicas)]
        self.statuses = [CredentialStatus(name="demo") for _ in range(replicas)]
        policy = policies.policy(
            schedule=policies.schedule(min_margin=5.0),
            coordination=POLICY,
            secret_poll=30.0,
            operation_timeout=5.0,
            exchange_timeout=5.0,
        )
        self.refreshers = [
            Refresher(
                store=self.store,
                exchanger=self.exchanger,
                sink=sink,
                client=ClientTemplate(),
                status=status,
                clock=self.clock,
                stop=self.stop,
                holder=f"replica-{i}",
                policy=policy,
                rng=random.Random(i),
            )
            for i, (sink, status) in enumerate(zip(self.sinks, self.statuses, strict=True))
        ]

    def run_for(self, seconds: float) -> None:
        async def main() -> None:
            tasks = [asyncio.create_task(r.run()) for r in self.refreshers]
            await self.clock.run(seconds, self.stop, tasks)
            await asyncio.gather(*tasks)

        run_without_leaks(main())


def test_replicas_share_one_exchange_per_rotation_period() -> None:
    fleet = Fleet(5, expires_in=30)
    fleet.run_for(600)
    presented = fleet.exchanger.presented
    assert len(presented) == len(set(presented)), "a refresh token was presented twice"
    # one replica alone would refresh every ~20 s: 30 times in 600 s
    assert 27 <= len(presented) <= 36
    for sink in fleet.sinks:
        published = sink.published
        assert len(published) >= 25
        for earlier, later in itertools.pairwise(published):
            assert later.issued_at < earlier.expires_at  # never a gap without a valid token
    assert fleet.store.data["refresh_token"] in fleet.exchanger.valid


def test_rejection_is_shared_so_replicas_stop_together() -> None:
    fleet = Fleet(3)
    fleet.exchanger.valid = set()
    fleet.run_for(120)
    assert fleet.exchanger.presented == ["rt-0000000001"]
    assert all(s.last_error == "invalid_grant" for s in fleet.statuses)


def test_shared_backoff_limits_the_fleet_to_one_attempt_at_a_time() -> None:
    from sidecar.errors import TokenEndpointUnavailable  # noqa: PLC0415

    fleet = Fleet(5)
    fleet.exchanger.script = [TokenEndpointUnavailable("503")] * 8
    fleet.run_for(300)
    failures = 8
    # with shared backoff, 5 replicas make about as many attempts as one would
    assert len(fleet.exchanger.presented) <= failures + 12
    assert len(set(fleet.exchanger.presented)) == len(fleet.exchanger.presented) - failures


def test_a_replica_stalled_past_its_claim_never_presents_the_token() -> None:
    events = Events()
    clock = VirtualClock()
    stop = asyncio.Event()
    store = FakeStore(events, client_id="demo", client_secret="s3cret-value")
    exchanger = FakeExchanger(events)
    original_write = store.write

    async def stall_after_claiming(secret, data):  # type: ignore[no-untyped-def]
        stored = await original_write(secret, data)
        if "claim" in data.get("token_sidecar", {}):
            clock.advance(40)  # paused (GC, SIGSTOP, partition) right after winning the claim
        return stored

    store.write = stall_after_claiming  # type: ignore[method-assign]
    status = CredentialStatus(name="demo")
    refresher = Refresher(
        store=store,
        exchanger=exchanger,
        sink=FakeSink(events),
        client=ClientTemplate(),
        status=status,
        clock=clock,
        stop=stop,
        holder="stalled",
        policy=policies.policy(
            coordination=POLICY, operation_timeout=5.0, exchange_timeout=5.0, secret_poll=30
        ),
        rng=random.Random(1),
    )

    async def main() -> None:
        task = asyncio.create_task(refresher.run())
        await clock.run(5, stop, [task])
        await task

    run_without_leaks(main())
    assert exchanger.presented == []
    assert status.phase is Phase.STOPPED
    assert status.last_error == "claim_expired"


def test_refresh_token_facts_follow_the_token() -> None:
    from sidecar.coordination import jwt_expiry, with_result  # noqa: PLC0415
    from sidecar.model import TokenGrant  # noqa: PLC0415

    grant = TokenGrant("at-0123456789", "Bearer", 60, "rt-new-0001", refresh_expires_in=3600)
    rotated = SharedState.parse(
        with_result(
            {"refresh_token": "rt-old-0001"},
            refresh_token="rt-new-0001",
            grant=grant,
            issued_at=100,
            expires_at=160,
        )
    ).refresh
    assert rotated is not None and rotated.describes("rt-new-0001")
    assert (rotated.obtained_at, rotated.expires_at) == (100, 3700)

    same = TokenGrant("at-0123456780", "Bearer", 60, None)
    kept = SharedState.parse(
        with_result(
            {"refresh_token": "rt-new-0001", "token_sidecar": {"refresh": rotated.dump()}},
            refresh_token="rt-new-0001",
            grant=same,
            issued_at=200,
            expires_at=260,
        )
    ).refresh
    assert kept is not None and (kept.obtained_at, kept.expires_at) == (100, 3700)

    # Keycloak-style refresh tokens are JWTs: their exp is the expiry when nothing else says
    payload = "eyJleHAiOjE5MDAwMDAwMDB9"  # {"exp":1900000000}
    assert jwt_expiry(f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln") == 1_900_000_000
    assert jwt_expiry("opaque-token-value") is None
    assert jwt_expiry("a.!!!.c") is None


def test_status_knows_the_refresh_token_age() -> None:
    fleet = Fleet(1)
    fleet.run_for(30)
    status = fleet.statuses[0]
    assert status.refresh_token_obtained_at is not None
    obtained = status.refresh_token_obtained_at
    assert obtained > fleet.clock.time() - 30
