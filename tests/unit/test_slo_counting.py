"""What the refresh-success and latency SLIs count: one exchange once, retries inside it included.

The SLO rules divide ``token_sidecar_refresh_total{outcome="success"}`` by all of
``token_sidecar_refresh_total`` and read ``token_sidecar_refresh_duration_seconds`` at the
bucket ``le="0.3"``; these tests hold the refresher and the metrics to that.
"""

from __future__ import annotations

import asyncio
import random

from sidecar.client_auth import ClientTemplate
from sidecar.errors import ResponseLost, SidecarError, TokenEndpointUnavailable
from sidecar.metrics import DURATION_BUCKETS, Metrics
from sidecar.refresher import Refresher
from sidecar.status import StatusBoard
from tests.support import policies
from tests.support.clock import VirtualClock
from tests.unit.fakes import (
    Events,
    FakeExchanger,
    FakeSink,
    FakeStore,
    run_without_leaks,
)


def run(script: list[SidecarError], seconds: float) -> tuple[Metrics, FakeExchanger]:
    events = Events()
    clock = VirtualClock()
    stop = asyncio.Event()
    board = StatusBoard()
    metrics = Metrics(board, clock, ready_margin=5.0)
    exchanger = FakeExchanger(events, expires_in=600)
    exchanger.script = list(script)
    refresher = Refresher(
        store=FakeStore(events, client_id="demo", client_secret="s3cret-value"),
        exchanger=exchanger,
        sink=FakeSink(events),
        client=ClientTemplate(),
        status=board.add("demo"),
        clock=clock,
        stop=stop,
        policy=policies.policy(schedule=policies.schedule(min_margin=5.0), operation_timeout=5.0),
        observer=metrics,
        rng=random.Random(7),
    )
    run_without_leaks(clock.drive(refresher.run(), seconds, stop))
    return metrics, exchanger


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_request_retried_after_a_lost_answer_counts_as_one_refresh() -> None:
    metrics, exchanger = run([ResponseLost("reset")], seconds=1)
    assert len(exchanger.presented) == 2  # the same request, sent twice
    assert sample(metrics, "token_sidecar_refresh_total", credential="demo", outcome="success") == 1
    assert sample(metrics, "token_sidecar_refresh_duration_seconds_count", credential="demo") == 1
    body = metrics.render()[0].decode()
    assert 'outcome="response_lost"' not in body


def test_each_failed_attempt_and_the_success_after_count_once_each() -> None:
    metrics, exchanger = run([TokenEndpointUnavailable("503")] * 2, seconds=30)
    attempts = len(exchanger.presented)
    assert attempts == 3
    ok = sample(metrics, "token_sidecar_refresh_total", credential="demo", outcome="success")
    failed = sample(
        metrics, "token_sidecar_refresh_total", credential="demo", outcome="endpoint_unavailable"
    )
    assert (ok, failed) == (1, 2)
    count = sample(metrics, "token_sidecar_refresh_duration_seconds_count", credential="demo")
    assert count == attempts


def test_the_latency_threshold_is_a_bucket_bound() -> None:
    assert 0.3 in DURATION_BUCKETS
    metrics, _ = run([], seconds=1)
    body = metrics.render()[0].decode()
    assert 'token_sidecar_refresh_duration_seconds_bucket{credential="demo",le="0.3"} 1.0' in body
