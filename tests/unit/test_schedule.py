"""The refresh schedule and backoff are pure: checked with literal inputs and with properties."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from sidecar.backoff import Retry, backoff_delay, plan_retry
from sidecar.errors import Severity
from sidecar.schedule import Answer, effective_lifetime, judge_answer, refresh_delay
from sidecar.status import Phase
from tests.support import policies

POLICY = policies.schedule()


def test_lifetime_clamps_and_defaults() -> None:
    assert effective_lifetime(None, POLICY) == 300.0
    assert effective_lifetime(math.nan, POLICY) == 300.0
    assert effective_lifetime(0, POLICY) == 0.0  # already expired: nothing to plan with
    assert effective_lifetime(-30, POLICY) == 0.0
    assert effective_lifetime(1e300, POLICY) == 86_400.0
    assert effective_lifetime(3600, POLICY) == 3600.0
    assert effective_lifetime(2.5, POLICY) == 2.5  # short is believed, never stretched


def test_refresh_at_about_two_thirds_of_the_lifetime() -> None:
    rng = random.Random(1)
    delays = [refresh_delay(3600, POLICY, rng) for _ in range(1000)]
    assert 0.61 * 3600 <= min(delays) < 0.64 * 3600
    assert 0.69 * 3600 < max(delays) <= 0.72 * 3600


def test_margin_wins_for_short_tokens_and_halves_for_tiny_ones() -> None:
    rng = random.Random(1)
    policy = policies.schedule(min_margin=60)
    assert refresh_delay(120, policy, rng) == 60  # 2/3 would leave only 40 s
    assert refresh_delay(4, policy, rng) == 2  # margin larger than the token: half its life


@given(
    expires_in=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_schedule_is_bounded_for_any_expires_in(expires_in: float | None, seed: int) -> None:
    lifetime = effective_lifetime(expires_in, POLICY)
    delay = refresh_delay(lifetime, POLICY, random.Random(seed))
    assert 0 <= lifetime <= POLICY.max_expires_in
    assert (lifetime == 0) == (expires_in is not None and expires_in <= 0)  # already expired
    if expires_in is not None and 0 < expires_in <= POLICY.max_expires_in:
        assert lifetime == expires_in
    assert delay >= POLICY.min_interval  # never a hot loop
    assert delay <= max(lifetime - POLICY.min_margin, lifetime / 2, POLICY.min_interval)


def test_backoff_grows_and_caps() -> None:
    policy = policies.backoff(initial=1, maximum=60)
    rng = random.Random(3)
    assert 0.5 <= backoff_delay(1, policy, rng) <= 1
    assert 2 <= backoff_delay(3, policy, rng) <= 4
    assert 30 <= backoff_delay(50, policy, rng) <= 60


def test_retry_after_is_a_floor_with_a_cap() -> None:
    policy = policies.backoff(initial=1, maximum=60, max_retry_after=600)
    rng = random.Random(3)
    assert backoff_delay(1, policy, rng, retry_after=120) == 120
    assert backoff_delay(1, policy, rng, retry_after=10_000) == 600
    assert backoff_delay(1, policy, rng, retry_after=-5) <= 1


@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    retry_after=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_bounded_for_any_input(
    attempt: int, retry_after: float | None, seed: int
) -> None:
    policy = policies.backoff()
    delay = backoff_delay(attempt, policy, random.Random(seed), retry_after)
    assert policy.initial / 2 <= delay <= max(policy.maximum, policy.max_retry_after)


def test_judge_answer() -> None:
    """R4: an expired answer is never published; a shorter one never replaces a longer one."""
    assert judge_answer(60, started=100, now=101, published_until=None) is Answer.FRESH
    assert judge_answer(0, started=100, now=101, published_until=None) is Answer.EXPIRED
    assert judge_answer(-5, started=100, now=101, published_until=None) is Answer.EXPIRED
    # spent in transit: valid for 2 s from the request, received 3 s later
    assert judge_answer(2, started=100, now=103, published_until=None) is Answer.EXPIRED
    # the published token lasts longer (until 200): it stays
    assert judge_answer(60, started=100, now=101, published_until=200) is Answer.SHORTER
    # ... unless it has already expired, or the new one lasts at least as long
    assert judge_answer(60, started=100, now=201, published_until=200) is Answer.EXPIRED
    assert judge_answer(60, started=100, now=150, published_until=140) is Answer.FRESH
    assert judge_answer(100, started=100, now=101, published_until=200) is Answer.FRESH


def test_plan_retry_by_severity() -> None:
    policy = policies.backoff(initial=1, maximum=60, max_retry_after=600)

    def plan(
        severity: Severity,
        failures: int = 1,
        *,
        has_token: bool = True,
        retry_after: float | None = None,
    ) -> Retry:
        return plan_retry(
            severity,
            failures,
            has_token=has_token,
            policy=policy,
            secret_poll=30,
            rng=random.Random(2),
            retry_after=retry_after,
        )

    assert plan(Severity.REJECTED) == Retry(Phase.REJECTED, 30, loud=True)
    # final: the secret-poll pace, or the backoff once it has grown past it
    assert plan(Severity.FINAL) == Retry(Phase.FAILED, 30, loud=True)
    slow = plan(Severity.FINAL, failures=10)
    assert slow.phase is Phase.FAILED and 30 <= slow.delay <= 60
    # retryable: quiet backoff; the phase says whether a token was ever published
    fast = plan(Severity.RETRYABLE)
    assert fast.phase is Phase.RETRYING and not fast.loud and 0.5 <= fast.delay <= 1
    assert plan(Severity.RETRYABLE, has_token=False).phase is Phase.STARTING
    assert plan(Severity.RETRYABLE, retry_after=120).delay == 120
    # Retry-After does not shorten a final error's wait
    assert plan(Severity.FINAL, retry_after=1).delay == 30
