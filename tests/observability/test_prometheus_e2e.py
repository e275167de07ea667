"""The shipped alert rules against a real Prometheus scraping a real sidecar.

The sidecar runs as its own process against the real OpenBao and oidc-provider; Prometheus
(Debian package ``prometheus``) scrapes it every second and evaluates the shipped rules every
second, with ``for:`` durations lowered by :func:`~tests.observability.prometheus.shorten_for`
and nothing else changed. The story, in one test to keep the run short:

1. healthy, through a refresh: no token-sidecar alert is even pending, and every dashboard query
   is accepted;
2. the token endpoint answers 503: ``TokenSidecarRefreshFailing`` fires, and
   ``TokenSidecarTokenExpiringSoon`` fires while the published token is still valid; both
   resolve once the endpoint is back;
3. an administrator revokes the grant: ``TokenSidecarRefreshTokenRejected`` fires within a
   bounded time; re-seeding with ``bao kv patch`` (the runbook's command) resolves it;
4. the sidecar stops: ``TokenSidecarDown`` fires.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.observability.prometheus import (
    DASHBOARD_FILE,
    RULES_FILE,
    PrometheusServer,
    ScrapeTarget,
    dashboard_queries,
    require,
    runnable_query,
    shorten_for,
)
from tests.observability.sidecar import KV_PATH, SidecarProcess, wait_for
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.integration

POD = {"namespace": "e2e", "pod": "billing-api-0"}
RUNBOOKS = "https://github.com/token-sidecar/token-sidecar/blob/main/docs/runbooks.md"


@pytest.fixture
def sidecar(openbao: OpenBaoServer, idp: IdpServer, tmp_path: Path) -> Iterator[SidecarProcess]:
    process = SidecarProcess(openbao=openbao, idp=idp, root=tmp_path / "sidecar")
    process.root.mkdir()
    yield process
    process.stop()


@pytest.fixture
def prometheus(sidecar: SidecarProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(shorten_for(RULES_FILE.read_text(), "1s"))
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(workdir, [ScrapeTarget(sidecar.address, POD)], [rules])
    server.start()
    yield server
    server.stop()


def ours(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"].startswith("TokenSidecar")]


def firing(prometheus: PrometheusServer, name: str) -> dict[str, Any] | None:
    for alert in prometheus.alerts():
        if alert["labels"]["alertname"] == name and alert["state"] == "firing":
            return alert
    return None


def active(prometheus: PrometheusServer, name: str) -> bool:
    return any(a["labels"]["alertname"] == name for a in prometheus.alerts())


def assert_names_credential_and_pod(alert: dict[str, Any]) -> None:
    name = alert["labels"]["alertname"]
    assert alert["labels"]["credential"] == "billing"
    assert alert["labels"]["pod"] == POD["pod"]
    for key in ("summary", "description"):
        assert "billing" in alert["annotations"][key], alert
        assert f"{POD['namespace']}/{POD['pod']}" in alert["annotations"][key], alert
    assert alert["annotations"]["runbook_url"] == f"{RUNBOOKS}#{name.lower()}"


def reseed_with_bao_cli(openbao: OpenBaoServer, refresh_token: str) -> None:
    """The runbook's re-seed: ``bao kv patch`` (``vault kv patch``), the token on stdin."""
    env = {
        **os.environ,
        "BAO_ADDR": openbao.address,
        "BAO_TOKEN": openbao.root_token,
        "VAULT_ADDR": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
    }
    result = subprocess.run(
        [openbao.binary, "kv", "patch", "-mount=secret", KV_PATH, "refresh_token=-"],
        input=refresh_token,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_promtool_accepts_the_real_metrics(
    sidecar: SidecarProcess, openbao: OpenBaoServer, idp: IdpServer
) -> None:
    idp.set_ttl(access_token=4)
    sidecar.provision()
    sidecar.start()
    assert wait_for(sidecar.token_expires_at, timeout=15), sidecar.logs()
    # One failed refresh, so that an error outcome is in the exposition too.
    idp.set_fault(mode="status", status=503, count=1)
    failed = 'token_sidecar_refresh_total{credential="billing",outcome="endpoint_unavailable"}'
    assert wait_for(lambda: failed in sidecar.get("/metrics").text, timeout=10), sidecar.logs()
    body = sidecar.get("/metrics").text
    assert "token_sidecar_access_token_issued_timestamp_seconds" in body
    result = subprocess.run(
        [require("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_on_the_failures_they_name(
    sidecar: SidecarProcess,
    prometheus: PrometheusServer,
    openbao: OpenBaoServer,
    idp: IdpServer,
) -> None:
    # -- 1. healthy, through one refresh -----------------------------------------------------
    idp.set_ttl(access_token=15)
    sidecar.provision()
    sidecar.start()
    assert wait_for(sidecar.token_expires_at, timeout=15), sidecar.logs()
    first = sidecar.token_expires_at()
    # The refresh at about 10 s brings a 30 s token for the outage below.
    idp.set_ttl(access_token=30)
    assert wait_for(prometheus.targets_up, timeout=10), prometheus.logs()
    # Before the sidecar answered, the target was down (TokenSidecarDown, with `for:` cut to
    # 1 s, may have fired); from the first successful scrape on, nothing may stay active.
    assert wait_for(lambda: not ours(prometheus.alerts()), timeout=5), prometheus.describe()
    deadline = time.monotonic() + 20
    while sidecar.token_expires_at() == first:
        assert time.monotonic() < deadline, sidecar.logs()
        assert ours(prometheus.alerts()) == [], prometheus.describe()
        time.sleep(0.25)
    settle = time.monotonic() + 2.5  # two more scrapes and evaluations after the refresh
    while time.monotonic() < settle:
        assert ours(prometheus.alerts()) == [], prometheus.describe()
        time.sleep(0.25)
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    for query in dashboard_queries(dashboard):
        prometheus.query(runnable_query(query))  # raises unless Prometheus accepts it
    for core in (
        "token_sidecar_access_token_expires_in_seconds",
        'count by (namespace) (token_sidecar_build_info{namespace=~".*"})',
        "token_sidecar_state == 1",
    ):
        assert prometheus.query(core), core

    # -- 2. the token endpoint is unavailable ------------------------------------------------
    expires_at = sidecar.token_expires_at()
    assert expires_at is not None
    idp.set_fault(mode="status", status=503, count=-1)
    failing = wait_for(lambda: firing(prometheus, "TokenSidecarRefreshFailing"), timeout=35)
    assert failing, prometheus.describe() + sidecar.logs()
    assert_names_credential_and_pod(failing)
    assert failing["labels"]["severity"] == "warning"
    assert time.time() < expires_at

    expiring = wait_for(
        lambda: firing(prometheus, "TokenSidecarTokenExpiringSoon"), timeout=15, interval=0.2
    )
    observed_at = time.time()
    assert expiring, prometheus.describe() + sidecar.logs()
    assert observed_at < expires_at, f"fired {observed_at - expires_at:.1f}s after expiry"
    assert float(expiring["value"]) > 0, expiring
    assert_names_credential_and_pod(expiring)
    assert expiring["labels"]["severity"] == "critical"

    idp.set_ttl(access_token=6)
    idp.clear_faults()
    assert wait_for(lambda: sidecar.state() == "valid", timeout=10), sidecar.logs()
    assert wait_for(
        lambda: (
            not active(prometheus, "TokenSidecarRefreshFailing")
            and not active(prometheus, "TokenSidecarTokenExpiringSoon")
        ),
        timeout=10,
    ), prometheus.describe()

    # -- 3. the grant is revoked -------------------------------------------------------------
    revoked_at = time.monotonic()
    assert idp.revoke(sidecar.grant_id)
    rejected = wait_for(lambda: firing(prometheus, "TokenSidecarRefreshTokenRejected"), 20)
    assert rejected, prometheus.describe() + sidecar.logs()
    took = time.monotonic() - revoked_at
    assert took < 15, f"took {took:.1f}s"  # one 6 s token's refresh, a scrape, an evaluation
    assert_names_credential_and_pod(rejected)
    assert rejected["labels"]["severity"] == "critical"
    assert not active(prometheus, "TokenSidecarRefreshFailing"), prometheus.describe()

    reseed_with_bao_cli(openbao, idp.seed("client-basic").refresh_token)
    assert wait_for(lambda: sidecar.state() == "valid", timeout=10), sidecar.logs()
    assert wait_for(
        lambda: not active(prometheus, "TokenSidecarRefreshTokenRejected"), timeout=10
    ), prometheus.describe()

    # -- 4. the sidecar stops ------------------------------------------------------------------
    assert sidecar.stop() == 0
    down = wait_for(lambda: firing(prometheus, "TokenSidecarDown"), timeout=15)
    assert down, prometheus.describe()
    assert down["labels"]["pod"] == POD["pod"]
    assert POD["pod"] in down["annotations"]["summary"]
