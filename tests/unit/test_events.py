"""Kubernetes Events: which phase changes become Events, and the requests the adapter makes.

No API server runs here, so the real ``kubernetes`` client talks to a stand-in HTTP server on
127.0.0.1 that records every request and answers like the API server's ``create`` would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sidecar.adapters.events import (
    EventsApi,
    KubernetesEvents,
    PodRef,
    plan_event,
    safe_kind,
)
from sidecar.errors import ConfigError

try:
    import kubernetes.client as kubernetes_client
except ImportError as exc:  # pragma: no cover - a broken test environment
    raise ImportError(
        "the Events tests need the kubernetes client: pip install -e '.[kubernetes,test]'"
    ) from exc

POD = PodRef(name="billing-api-7d9f8-x2x4q", namespace="team-billing", uid="0f0e-uid")
CANARY = "rt-CANARY-8c1f0e5d2b"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.raw)
        return document


@dataclass
class StandIn:
    """Answers ``POST /api/v1/namespaces/{ns}/events`` like the API server; records requests."""

    status: int = 201
    delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                stand_in.requests.append(
                    Recorded("POST", self.path, dict(self.headers.items()), raw)
                )
                time.sleep(stand_in.delay)
                answer = raw if stand_in.status < 300 else b'{"kind":"Status","code":500}'
                self.send_response(stand_in.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    server.start()
    yield server
    server.stop()


def api_for(url: str) -> Callable[[], EventsApi]:
    def build() -> EventsApi:
        configuration = kubernetes_client.Configuration(host=url)
        api: EventsApi = kubernetes_client.CoreV1Api(kubernetes_client.ApiClient(configuration))
        return api

    return build


class Results:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, reason: str, outcome: str) -> None:
        self.seen.append((reason, outcome))


class Ticker:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(url: str, **kwargs: Any) -> tuple[KubernetesEvents, Results]:
    results = Results()
    events = KubernetesEvents(
        POD, api_factory=api_for(url), on_result=results, node_name="node-1", **kwargs
    )
    events.start()
    return events, results


# -- decisions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "reason", "expected"),
    [
        ("valid", "rejected", "invalid_grant", ("Warning", "RefreshTokenRejected")),
        ("starting", "rejected", "invalid_grant", ("Warning", "RefreshTokenRejected")),
        ("retrying", "rejected", "response_lost_twice", ("Warning", "RefreshTokenRejected")),
        ("valid", "failed", "client_rejected", ("Warning", "RefreshFailed")),
        ("starting", "failed", "vault_forbidden", ("Warning", "RefreshFailed")),
        ("rejected", "valid", None, ("Normal", "TokenRecovered")),
        ("failed", "valid", None, ("Normal", "TokenRecovered")),
        ("retrying", "valid", None, ("Normal", "TokenRecovered")),
        ("starting", "valid", None, None),
        ("valid", "retrying", "endpoint_unavailable", None),
        ("starting", "starting", "vault_unavailable", None),
        ("valid", "stopped", None, None),
    ],
)
def test_which_changes_become_events(
    old: str, new: str, reason: str | None, expected: tuple[str, str] | None
) -> None:
    plan = plan_event("billing", old, new, reason)
    assert (None if plan is None else (plan.type, plan.reason)) == expected
    if plan is not None:
        assert plan.message.startswith("credential billing: ")


def test_messages_carry_error_kinds_only() -> None:
    assert safe_kind("invalid_grant") == "invalid_grant"
    assert safe_kind("vault_unavailable") == "vault_unavailable"
    assert safe_kind(CANARY) == "error"
    assert safe_kind("some free text") == "error"
    assert safe_kind(None) == "error"
    rejected = plan_event("billing", "valid", "rejected", CANARY)
    failed = plan_event("billing", "valid", "failed", CANARY)
    recovered = plan_event("billing", "failed", "valid", None, last_failure=CANARY)
    for plan in (rejected, failed, recovered):
        assert plan is not None
        assert CANARY not in plan.message
    assert rejected is not None and "(error)" in rejected.message
    served = plan_event("billing", "valid", "rejected", "invalid_grant")
    never = plan_event("billing", "starting", "rejected", "invalid_grant")
    assert served is not None and "served until it expires" in served.message
    assert never is not None and "no access token was published yet" in never.message


def test_pod_from_downward_api(tmp_path: Path) -> None:
    env = {"POD_NAME": "app-1", "POD_NAMESPACE": "ns", "POD_UID": "u-1"}
    assert PodRef.from_environ(env) == PodRef("app-1", "ns", "u-1")
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("from-sa\n")
    pod = PodRef.from_environ({"POD_NAME": "app-1"}, namespace_file=namespace_file)
    assert pod == PodRef("app-1", "from-sa", None)
    with pytest.raises(ConfigError) as caught:
        PodRef.from_environ({}, namespace_file=tmp_path / "missing")
    assert caught.value.problems == [
        "events.enabled: needs the POD_NAME environment variable (downward API)",
        "events.enabled: needs the POD_NAMESPACE environment variable (downward API)",
    ]


def test_importing_the_adapter_does_not_load_kubernetes() -> None:
    code = (
        "import sys, sidecar.adapters.events, sidecar.metrics\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- requests to the API server -----------------------------------------------------------------


def test_rejection_and_recovery_are_posted_on_the_pod(stand_in: StandIn) -> None:
    events, results = make(stand_in.url)
    events.phase_changed("billing", "valid", "rejected", "invalid_grant")
    events.phase_changed("billing", "rejected", "valid", None)
    events.close(timeout=10)

    assert [r.path for r in stand_in.requests] == ["/api/v1/namespaces/team-billing/events"] * 2
    first, second = (r.body for r in stand_in.requests)
    assert first["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": POD.name,
        "namespace": POD.namespace,
        "uid": POD.uid,
    }
    assert first["metadata"]["namespace"] == POD.namespace
    assert first["metadata"]["name"].startswith(f"{POD.name}.")
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert (first["type"], first["reason"]) == ("Warning", "RefreshTokenRejected")
    assert "invalid_grant" in first["message"]
    assert "billing" in first["message"]
    assert first["source"] == {"component": "token-sidecar", "host": "node-1"}
    assert first["reportingComponent"] == "token-sidecar"
    assert first["reportingInstance"] == POD.name
    assert first["count"] == 1
    assert first["firstTimestamp"]
    assert (second["type"], second["reason"]) == ("Normal", "TokenRecovered")
    assert "invalid_grant" in second["message"]
    assert results.seen == [("RefreshTokenRejected", "sent"), ("TokenRecovered", "sent")]


def test_no_secret_reaches_the_api_server(stand_in: StandIn) -> None:
    events, _ = make(stand_in.url)
    events.phase_changed("billing", "valid", "rejected", CANARY)
    events.phase_changed("billing", "rejected", "valid", CANARY)
    events.phase_changed("billing", "valid", "failed", f"client_rejected {CANARY}")
    events.close(timeout=10)
    assert len(stand_in.requests) == 3
    for request in stand_in.requests:
        assert CANARY.encode() not in request.raw
        assert CANARY not in json.dumps(request.headers)
        assert CANARY not in request.path


def test_identical_events_are_sent_once_per_window(stand_in: StandIn) -> None:
    ticker = Ticker()
    events, results = make(stand_in.url, dedupe_seconds=60, monotonic=ticker)
    for _ in range(3):
        events.phase_changed("billing", "valid", "failed", "client_rejected")
        events.phase_changed("billing", "failed", "valid", None)
    ticker.now += 61
    events.phase_changed("billing", "valid", "failed", "client_rejected")
    events.phase_changed("other", "valid", "failed", "client_rejected")
    events.close(timeout=10)

    reasons = [r.body["reason"] for r in stand_in.requests]
    assert reasons == ["RefreshFailed", "TokenRecovered", "RefreshFailed", "RefreshFailed"]
    assert results.seen.count(("RefreshFailed", "suppressed")) == 2
    assert results.seen.count(("TokenRecovered", "suppressed")) == 2


def test_api_errors_are_logged_and_counted_never_raised(stand_in: StandIn) -> None:
    stand_in.status = 500
    with capture_logs() as logs:
        events, results = make(stand_in.url)
        events.phase_changed("billing", "valid", "rejected", "invalid_grant")
        events.close(timeout=10)
    assert len(stand_in.requests) >= 1
    assert results.seen == [("RefreshTokenRejected", "failed")]
    failures = [e for e in logs if e["event"] == "events.emit_failed"]
    assert failures
    assert failures[0]["status"] == 500
    assert failures[0]["credential"] == "billing"


def test_an_unreachable_api_server_is_counted() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    events, results = make(f"http://127.0.0.1:{closed_port}")
    events.phase_changed("billing", "valid", "failed", "client_rejected")
    events.close(timeout=30)
    assert results.seen == [("RefreshFailed", "failed")]


def test_a_failing_client_factory_is_counted() -> None:
    def broken() -> EventsApi:
        raise RuntimeError("not in a cluster")

    results = Results()
    events = KubernetesEvents(POD, api_factory=broken, on_result=results)
    events.start()
    events.phase_changed("billing", "valid", "rejected", "invalid_grant")
    events.close(timeout=10)
    assert results.seen == [("RefreshTokenRejected", "failed")]


def test_a_slow_api_server_never_blocks_the_caller(stand_in: StandIn) -> None:
    stand_in.delay = 0.3
    events, results = make(stand_in.url, queue_size=1)
    started = time.monotonic()
    for credential in ("a", "b", "c", "d"):
        events.phase_changed(credential, "valid", "rejected", "invalid_grant")
    elapsed = time.monotonic() - started
    assert elapsed < 0.1, f"phase_changed blocked for {elapsed:.3f}s"
    events.close(timeout=10)
    outcomes = [outcome for _, outcome in results.seen]
    assert "dropped" in outcomes
    assert outcomes.count("sent") + outcomes.count("dropped") == 4


def test_an_observer_failure_never_reaches_the_refresh_loop() -> None:
    def explode(reason: str, outcome: str) -> None:
        raise RuntimeError("metrics broke")

    events = KubernetesEvents(POD, on_result=explode, queue_size=1)
    # Not started: the queue fills, and the failing result hook is swallowed.
    events.phase_changed("billing", "valid", "rejected", "invalid_grant")
    events.phase_changed("other", "valid", "rejected", "invalid_grant")
    events.refresh_finished("billing", "success", 0.01)
    events.close()
