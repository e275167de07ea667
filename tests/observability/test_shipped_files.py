"""The shipped alert rules, dashboard and docs: valid, tested with promtool, and in step.

promtool (Debian package ``prometheus``) parses and unit-tests the rules offline; the
end-to-end behaviour against a real Prometheus is in ``test_prometheus_e2e.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import Metrics
from sidecar.status import Phase, StatusBoard
from tests.observability.prometheus import (
    DASHBOARD_FILE,
    ROOT,
    RULES_FILE,
    RULES_TEST_FILE,
    dashboard_queries,
    require,
    runnable_query,
    shorten_for,
)
from tests.support.clock import VirtualClock

REQUIRED_ALERTS = {
    "TokenSidecarRefreshFailing",
    "TokenSidecarTokenExpiringSoon",
    "TokenSidecarRefreshTokenRejected",
    "TokenSidecarWritebackPending",
    "TokenSidecarRefreshTokenExpiringSoon",
    "TokenSidecarDown",
}
PER_POD_ALERTS = {"TokenSidecarDown", "TokenSidecarVaultLoginFailing"}
"""Alerts about the whole pod rather than one credential."""
RUNBOOK_BASE = "https://github.com/token-sidecar/token-sidecar/blob/main/docs/runbooks.md"
DOCS = ROOT / "docs"
METRIC_NAME = re.compile(r"\b(token_sidecar_[a-z_]+)\b")


def promtool(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def busy_metrics() -> Metrics:
    """Metrics with every family populated, as a sidecar that has seen everything would be."""
    board = StatusBoard()
    status = board.add("billing")
    status.phase = Phase.VALID
    status.issued_at, status.expires_at, status.last_success_at = 100.0, 400.0, 101.0
    status.last_attempt_at = 100.0
    status.refresh_token_obtained_at, status.refresh_token_expires_at = 100.0, 9000.0
    status.secret_version = 3
    metrics = Metrics(board, VirtualClock(start=200.0), ready_margin=5.0)
    metrics.refresh_finished("billing", "invalid_grant", 0.01)
    metrics.vault_request("login", "success")
    metrics.vault_token_lease(5000.0)
    metrics.event_result("RefreshTokenRejected", "sent")
    metrics.token_published("billing", 4)
    metrics.notify_channel("billing", "http")
    metrics.notify_finished("billing", "http", "unreachable", 3, 1)
    return metrics


def exposed_names() -> set[str]:
    """Sample names in the exposition, and histogram family names."""
    body, _ = busy_metrics().render()
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.type == "histogram":
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


# -- alert rules ------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """Each alert fires on its failure and stays silent on a healthy sidecar (synthetic)."""
    result = promtool("test", "rules", RULES_TEST_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST_FILE.read_text()))
    assert {rule["alert"] for rule in rules()} <= tested


def test_every_alert_names_credential_and_pod_and_links_its_runbook() -> None:
    runbooks = (DOCS / "runbooks.md").read_text()
    names = {rule["alert"] for rule in rules()}
    assert names >= REQUIRED_ALERTS
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        for key in ("summary", "description"):
            assert "$labels.pod" in annotations[key], (name, key)
            assert "$labels.namespace" in annotations[key], (name, key)
            if name not in PER_POD_ALERTS:
                assert "$labels.credential" in annotations[key], (name, key)
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", name
        assert re.search(rf"^## {name}$", runbooks, re.MULTILINE), f"no runbook for {name}"


def test_rules_use_only_exposed_metrics() -> None:
    exposed = exposed_names()
    for rule in rules():
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used <= exposed, (rule["alert"], used - exposed)


def test_shortened_rules_differ_only_in_for(tmp_path: Path) -> None:
    shortened = yaml.safe_load(shorten_for(RULES_FILE.read_text(), "1s"))
    original = yaml.safe_load(RULES_FILE.read_text())
    for before, after in zip(
        original["groups"][0]["rules"], shortened["groups"][0]["rules"], strict=True
    ):
        assert {k: v for k, v in before.items() if k != "for"} == {
            k: v for k, v in after.items() if k != "for"
        }
        assert after.get("for", "1s") == "1s"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(shortened))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- dashboard --------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return document


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query (as a recording rule); the e2e test runs them for real."""
    queries = dashboard_queries(dashboard())
    assert len(queries) >= 15
    records = [
        {"record": f"dashboard:query_{i}", "expr": runnable_query(q)} for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_what_on_call_needs() -> None:
    document = dashboard()
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert set(variables) >= {"datasource", "namespace", "pod", "credential"}
    assert variables["datasource"]["type"] == "datasource"
    exposed = exposed_names() | {"token_sidecar_refresh_duration_seconds_bucket"}
    used: set[str] = set()
    for query in dashboard_queries(document):
        used.update(METRIC_NAME.findall(query))
    assert used <= exposed, used - exposed
    for needed in (
        "token_sidecar_access_token_expires_in_seconds",
        "token_sidecar_refresh_total",
        "token_sidecar_refresh_duration_seconds_bucket",
        "token_sidecar_writeback_pending",
        "token_sidecar_vault_requests_total",
        "token_sidecar_consecutive_failures",
        "token_sidecar_state",
    ):
        assert needed in used, needed
    panels = [p for p in document["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel.get("description"), panel["title"]
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))


# -- docs -------------------------------------------------------------------------------------


def test_metrics_catalogue_lists_every_metric() -> None:
    catalogue = (DOCS / "metrics.md").read_text()
    documented = set(METRIC_NAME.findall(catalogue))
    suffixes = ("_created", "_bucket", "_count", "_sum")
    exposed = {name for name in exposed_names() if not name.endswith(suffixes)}
    assert exposed <= documented, exposed - documented


def _log_events() -> set[str]:
    """Event names the code logs: ``log.info("token.refreshed", ...)`` and the refresher's
    ``self._fail(exc, "token.rejected")``."""
    call = re.compile(
        r"""(?:\.(?:debug|info|warning|error|critical|exception)\(|_fail\([^,()]+,)\s*"""
        r""""([a-z][a-z_]*\.[a-z_.]+)\"""",
    )
    events: set[str] = set()
    for path in (ROOT / "sidecar").rglob("*.py"):
        events.update(call.findall(path.read_text()))
    return events


def test_logging_doc_lists_every_event_name() -> None:
    events = _log_events()
    assert {"token.refreshed", "token.rejected", "writeback.failed", "events.emit_failed"} <= (
        events
    )
    documented = set(re.findall(r"`([a-z][a-z_]*\.[a-z_.]+)`", (DOCS / "logging.md").read_text()))
    assert events <= documented, sorted(events - documented)
