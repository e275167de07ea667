"""The SLO rules against a real Prometheus scraping a real sidecar, on a 60-fold time scale.

The burn-rate windows are hours and days; no test can wait for them. The rules are therefore
rendered by the same generator that writes the shipped file (``scripts/slo_rules.py``) with
``scale=60``: every window and the budget group's interval divided by 60 (5m becomes 5s, 1h
becomes 1m, 30d becomes 12h) and nothing else changed: the same expressions, the same burn-rate
thresholds, the same targets, labels and annotations (``test_slo_rules.py`` checks that the
scaled file differs only in its durations). Prometheus scrapes and evaluates every second.

The story: a healthy sidecar burns no budget; the authorization server answers 503 and
``TokenSidecarRefreshSuccessFastBurn`` pages while the published token, still valid, keeps
token availability whole (its alert stays silent); the server recovers and the page resolves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.observability.prometheus import ROOT, PrometheusServer, ScrapeTarget
from tests.observability.sidecar import SidecarProcess, wait_for
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

sys.path.insert(0, str(ROOT / "scripts"))
import slo_rules  # the generator lives in scripts/, not in the package

pytestmark = pytest.mark.integration

POD = {"namespace": "e2e", "pod": "billing-api-0"}
SCALE = 60.0
RUNBOOKS = "https://github.com/token-sidecar/token-sidecar/blob/main/docs/runbooks.md"


@pytest.fixture
def sidecar(openbao: OpenBaoServer, idp: IdpServer, tmp_path: Path) -> Iterator[SidecarProcess]:
    process = SidecarProcess(openbao=openbao, idp=idp, root=tmp_path / "sidecar")
    process.root.mkdir()
    yield process
    process.stop()


@pytest.fixture
def prometheus(sidecar: SidecarProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    rules = tmp_path / "slo-rules.yaml"
    rules.write_text(slo_rules.render(scale=SCALE))
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(workdir, [ScrapeTarget(sidecar.address, POD)], [rules])
    server.start()
    yield server
    server.stop()


def alert(prometheus: PrometheusServer, name: str, state: str = "firing") -> dict[str, Any] | None:
    for found in prometheus.alerts():
        if found["labels"]["alertname"] == name and found["state"] == state:
            return found
    return None


def slo_alerts(prometheus: PrometheusServer) -> list[str]:
    names = set(slo_rules.alert_names())
    return [
        a["labels"]["alertname"] for a in prometheus.alerts() if a["labels"]["alertname"] in names
    ]


def value(prometheus: PrometheusServer, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


def test_fast_burn_pages_while_the_authorization_server_fails_and_resolves_after(
    sidecar: SidecarProcess, prometheus: PrometheusServer, idp: IdpServer
) -> None:
    # -- healthy: refreshes succeed, the token is valid, nothing burns -----------------------
    idp.set_ttl(access_token=4)
    sidecar.provision()
    sidecar.start()
    assert wait_for(sidecar.token_expires_at, timeout=15), sidecar.logs()
    assert wait_for(prometheus.targets_up, timeout=10), prometheus.logs()
    success_1m = 'token_sidecar:slo_error_ratio:1m{slo="refresh_success"}'
    availability_1m = 'token_sidecar:slo_error_ratio:1m{slo="availability"}'
    # A refresh every 2.7 s: within 10 s the windows hold successes and nothing else.
    assert wait_for(lambda: value(prometheus, success_1m) == 0, timeout=20), prometheus.describe()
    assert value(prometheus, 'token_sidecar:slo_burn_rate:1m{slo="refresh_success"}') == 0
    assert wait_for(
        lambda: (
            value(
                prometheus, 'token_sidecar:slo_error_budget_remaining:ratio{slo="refresh_success"}'
            )
            == 1
        ),
        timeout=15,
    ), prometheus.describe()
    assert slo_alerts(prometheus) == [], prometheus.describe()

    # -- the authorization server fails: the page fires, availability does not burn ----------
    idp.set_ttl(access_token=30)  # the token published next outlives the outage
    first = sidecar.token_expires_at()
    assert wait_for(lambda: sidecar.token_expires_at() != first, timeout=10), sidecar.logs()
    expires_at = sidecar.token_expires_at()
    assert expires_at is not None
    idp.set_fault(mode="status", status=503, count=-1)
    failing_since = time.monotonic()
    # The next refresh is due about 20 s into the 30 s token; it fails, and retries every
    # 0.5 to 2 s: the 5 s and 1 m windows then show far more than 14.4 x 0.1 % failed.
    page = wait_for(
        lambda: alert(prometheus, "TokenSidecarRefreshSuccessFastBurn"), timeout=45, interval=0.2
    )
    assert page, prometheus.describe() + sidecar.logs()
    assert page["labels"]["credential"] == "billing"
    assert page["labels"]["pod"] == POD["pod"]
    assert page["labels"]["severity"] == "critical"
    assert page["labels"]["slo"] == "refresh_success"
    assert "billing" in page["annotations"]["summary"]
    assert f"{POD['namespace']}/{POD['pod']}" in page["annotations"]["summary"]
    assert page["annotations"]["runbook_url"] == f"{RUNBOOKS}#tokensidecarrefreshsuccessfastburn"
    assert float(page["value"]) > 14.4 * 0.001
    assert time.time() < expires_at, "the page should come while the token is still valid"
    assert value(prometheus, availability_1m) == 0
    assert alert(prometheus, "TokenSidecarTokenAvailabilityFastBurn", "pending") is None
    assert alert(prometheus, "TokenSidecarTokenAvailabilityFastBurn") is None
    assert time.monotonic() - failing_since < 45

    # -- the server recovers: refreshes succeed again and the page resolves -------------------
    idp.set_ttl(access_token=4)
    idp.clear_faults()
    assert wait_for(lambda: sidecar.state() == "valid", timeout=15), sidecar.logs()
    # Both page conditions need their short window (5 s, 30 s) to be burning: once 30 s of
    # refreshes have succeeded, neither is.
    assert wait_for(
        lambda: "TokenSidecarRefreshSuccessFastBurn" not in slo_alerts(prometheus), timeout=60
    ), prometheus.describe()
    remaining = value(
        prometheus, 'token_sidecar:slo_error_budget_remaining:ratio{slo="refresh_success"}'
    )
    assert remaining is not None and remaining < 1, "the outage spent budget"
