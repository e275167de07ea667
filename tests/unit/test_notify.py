"""When the app is told: the pure decisions (coalesce, bound the delay, retry, supersede)
and the loop that follows them, on the virtual clock with a scripted sender."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from sidecar.backoff import BackoffPolicy
from sidecar.errors import NotifyFailed
from sidecar.model import Notification
from sidecar.notify import Channel, NotifyLoop, NotifyPolicy, due, failed, rotated, succeeded
from tests.support.clock import VirtualClock
from tests.unit.fakes import run_without_leaks

POLICY = NotifyPolicy(
    min_interval=2.0,
    max_delay=10.0,
    backoff=BackoffPolicy(initial=1.0, maximum=60.0, max_retry_after=60.0),
)
EXPIRES = datetime(2027, 1, 15, tzinfo=UTC)


def change(generation: int) -> Notification:
    return Notification("billing", generation, EXPIRES)


def test_a_change_is_announced_min_interval_after_it() -> None:
    channel = rotated(Channel(), change(2), now=100.0)
    assert due(channel, POLICY) == 102.0
    assert due(Channel(), POLICY) is None


def test_changes_closer_than_min_interval_coalesce_into_the_newest() -> None:
    channel = rotated(Channel(), change(2), now=100.0)
    channel = rotated(channel, change(3), now=101.5)
    channel = rotated(channel, change(4), now=103.0)
    assert channel.pending == change(4)
    assert due(channel, POLICY) == 105.0


def test_a_steady_stream_of_changes_waits_no_longer_than_max_delay() -> None:
    channel = Channel()
    for step in range(20):
        channel = rotated(channel, change(2 + step), now=100.0 + step)
    assert due(channel, POLICY) == 110.0  # first change at 100 + max_delay


def test_a_failure_is_retried_with_growing_backoff() -> None:
    rng = random.Random(1)
    channel = rotated(Channel(), change(2), now=100.0)
    channel = failed(channel, 2, now=102.0, policy=POLICY, rng=rng)
    first = due(channel, POLICY)
    assert first is not None and 102.5 <= first <= 103.0
    channel = failed(channel, 2, now=first, policy=POLICY, rng=rng)
    second = due(channel, POLICY)
    assert second is not None and first + 1.0 <= second <= first + 2.0
    assert channel.failures == 2 and channel.pending == change(2)
    channel = succeeded(channel, 2)
    assert channel == Channel(acknowledged=2)
    assert due(channel, POLICY) is None


def test_a_newer_generation_supersedes_a_failing_one_and_starts_its_own_burst() -> None:
    channel = rotated(Channel(), change(2), now=100.0)
    channel = failed(channel, 2, now=102.0, policy=POLICY, rng=random.Random(1))
    channel = rotated(channel, change(3), now=150.0)
    assert channel.pending == change(3)
    assert channel.retry_at is None
    assert due(channel, POLICY) == 152.0
    assert channel.failures == 1  # still failing, for the alert, until one succeeds


def test_a_change_during_an_attempt_is_not_lost() -> None:
    channel = rotated(Channel(), change(2), now=100.0)
    # generation 3 arrives while 2 is being sent
    channel = rotated(channel, change(3), now=102.5)
    after_success = succeeded(channel, 2)
    assert after_success.pending == change(3) and after_success.acknowledged == 2
    assert due(after_success, POLICY) == 104.5
    after_failure = failed(channel, 2, now=103.0, policy=POLICY, rng=random.Random(1))
    assert after_failure.retry_at is None and due(after_failure, POLICY) == 104.5


def test_nothing_is_announced_twice_or_out_of_order() -> None:
    channel = succeeded(rotated(Channel(), change(5), now=100.0), 5)
    assert rotated(channel, change(5), now=200.0) == channel
    assert rotated(channel, change(4), now=200.0) == channel
    waiting = rotated(channel, change(7), now=200.0)
    assert rotated(waiting, change(6), now=201.0) == waiting


class Sender:
    def __init__(self, clock: VirtualClock, failures: int = 0) -> None:
        self.clock = clock
        self.failures = failures
        self.sent: list[tuple[float, int]] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append((self.clock.monotonic(), notification.generation))
        if self.failures > 0:
            self.failures -= 1
            raise NotifyFailed("unreachable", "refused")


class Observer:
    def __init__(self) -> None:
        self.results: list[tuple[str, int, int]] = []

    def notify_finished(
        self, credential: str, method: str, outcome: str, acknowledged: int, failures: int
    ) -> None:
        self.results.append((outcome, acknowledged, failures))


async def drive(loop: NotifyLoop, clock: VirtualClock, script: list[tuple[float, int]]) -> None:
    """Publish generation g at virtual time t for (t, g) in script, then let the loop finish."""
    stop = asyncio.Event()
    runner = asyncio.ensure_future(loop.run())

    async def publisher() -> None:
        start = clock.monotonic()
        for at, generation in script:
            await clock.wait(asyncio.Event(), start + at - clock.monotonic())
            loop.rotated(change(generation), first=generation == 1)
        await clock.wait(asyncio.Event(), 120)
        loop.close()

    await clock.run(600, stop, [asyncio.ensure_future(publisher()), runner])


@pytest.mark.parametrize("failures", [0, 2])
def test_the_loop_sends_once_per_burst_and_retries(failures: int) -> None:
    clock = VirtualClock()
    sender = Sender(clock, failures=failures)
    observer = Observer()
    loop = NotifyLoop(
        credential="billing",
        method="http",
        sender=sender,
        policy=POLICY,
        clock=clock,
        observer=observer,
        rng=random.Random(3),
    )
    # generation 1 (a fresh volume) is not announced; 2, 3 and 4 come as one burst; 5 later
    run_without_leaks(drive(loop, clock, [(0, 1), (30, 2), (31, 3), (32.5, 4), (60, 5)]))
    generations = [g for _, g in sender.sent]
    assert generations == [4] * (failures + 1) + [5]
    first_try = sender.sent[0][0] - 1000.0
    assert first_try == pytest.approx(34.5)  # 2 s after the last change of the burst
    assert observer.results[-1] == ("success", 5, 0)
    assert [r[0] for r in observer.results] == ["unreachable"] * failures + ["success"] * 2
    assert loop.channel == Channel(acknowledged=5)


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    async def send(self, notification: Notification) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OverflowError("a bug in a sender")


def test_a_sender_bug_is_a_failed_attempt_not_a_crash() -> None:
    clock = VirtualClock()
    sender = Broken()
    observer = Observer()
    loop = NotifyLoop(
        credential="billing",
        method="signal",
        sender=sender,
        policy=POLICY,
        clock=clock,
        observer=observer,
        rng=random.Random(3),
    )
    run_without_leaks(drive(loop, clock, [(0, 1), (10, 2)]))
    assert [r[0] for r in observer.results] == ["error", "success"]
    assert loop.channel == Channel(acknowledged=2)
