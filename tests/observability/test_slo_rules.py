"""The SLO rules: generated from one definition, tested with promtool, in step with the chart.

``scripts/slo_rules.py`` is the one definition of each SLO; ``make manifests`` writes the
plain rule file (default targets) and the chart's copy (placeholders), and ``--check`` in
``make lint`` catches drift. Here: promtool accepts and unit-tests the plain file (every SLO
alert fires on a fast and a slow burn and stays silent on a blip and when healthy), the
chart with default values ships exactly the plain rules, and changing one target in the
chart's values changes every rule that depends on it and nothing else.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from prometheus_client.utils import floatToGoString

from sidecar.metrics import DURATION_BUCKETS
from tests.observability.prometheus import ROOT
from tests.observability.test_shipped_files import (
    METRIC_NAME,
    RUNBOOK_BASE,
    exposed_names,
    promtool,
)

sys.path.insert(0, str(ROOT / "scripts"))
import slo_rules  # the generator lives in scripts/, not in the package

SLO_FILE = ROOT / "manifests" / "prometheus" / "token-sidecar-slo-rules.yaml"
SLO_TEST_FILE = ROOT / "manifests" / "prometheus" / "tests" / "token-sidecar-slo-rules.test.yaml"
CHART = ROOT / "charts" / "token-sidecar"


def rules(text: str) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def chart_groups(slo: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    values: dict[str, Any] = {"monitoring": {"prometheusRule": {"enabled": True}}}
    if slo is not None:
        values["monitoring"]["slo"] = slo
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="shop", namespace="team-a")
    [text] = [t for name, t in rendered.items() if name.endswith("prometheusrule.yaml")]
    groups: list[dict[str, Any]] = yaml.safe_load(text)["spec"]["groups"]
    return groups


def test_promtool_checks_the_slo_rules() -> None:
    result = promtool("check", "rules", SLO_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "39 rules found" in result.stdout


def test_promtool_unit_tests_cover_every_slo_alert_four_ways() -> None:
    result = promtool("test", "rules", SLO_TEST_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for rule in rules(SLO_FILE.read_text()) if "alert" in rule}
    assert alerts == set(slo_rules.alert_names())
    assert len(alerts) == 6
    tests = yaml.safe_load(SLO_TEST_FILE.read_text())["tests"]
    for alert in alerts:
        fired_in = {
            t["name"].split(": ")[1]
            for t in tests
            for case in t["alert_rule_test"]
            if case["alertname"] == alert and case["exp_alerts"]
        }
        silent_in = {
            t["name"].split(": ")[1]
            for t in tests
            for case in t["alert_rule_test"]
            if case["alertname"] == alert and not case["exp_alerts"]
        }
        kind = "FastBurn" if alert.endswith("FastBurn") else "SlowBurn"
        burn = [n for n in fired_in if ("pages" if kind == "FastBurn" else "ticket") in n]
        assert burn, (alert, fired_in)
        assert any("healthy" in n for n in silent_in), alert
        assert any("inside the budget" in n for n in silent_in), alert
        if kind == "FastBurn":  # a slow burn must not page
            assert any("does not page" in n for n in silent_in), alert


def test_every_slo_alert_names_credential_and_pod_and_links_its_runbook() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for rule in rules(SLO_FILE.read_text()):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        expected = "critical" if name.endswith("FastBurn") else "warning"
        assert rule["labels"]["severity"] == expected, name
        for key in ("summary", "description"):
            for label in ("credential", "namespace", "pod"):
                assert f"$labels.{label}" in rule["annotations"][key], (name, key)
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"
        assert re.search(rf"^## {name}$", runbooks, re.MULTILINE), f"no runbook for {name}"


def test_slo_rules_read_only_exposed_metrics_and_their_own_records() -> None:
    exposed = exposed_names() | {
        "token_sidecar_refresh_duration_seconds_bucket",
        "token_sidecar_refresh_duration_seconds_count",
    }
    used: set[str] = set()
    recorded: set[str] = set()
    for rule in rules(SLO_FILE.read_text()):
        used.update(METRIC_NAME.findall(rule["expr"]))
        used.update(re.findall(r"\b(token_sidecar:[a-z_]+:[a-z0-9]+)\b", rule["expr"]))
        if "record" in rule:
            recorded.add(rule["record"])
    raw = {name for name in used if ":" not in name}
    assert raw <= exposed, raw - exposed
    assert used - raw <= recorded, (used - raw) - recorded
    for window in ("5m", "30m", "1h", "6h", "1d", "3d", "30d"):
        assert f"token_sidecar:slo_error_ratio:{window}" in recorded


def test_the_chart_with_default_values_ships_the_plain_rules() -> None:
    groups = chart_groups()
    plain = yaml.safe_load(SLO_FILE.read_text())["groups"]
    assert groups[-3:] == plain
    assert [g["name"] for g in groups[:-3]] == ["token-sidecar"]
    assert len(chart_groups({"enabled": False})) == 1


def test_changing_one_target_in_the_chart_changes_every_rule_of_that_slo() -> None:
    default = {g["name"]: g for g in chart_groups()}
    changed = {g["name"]: g for g in chart_groups({"refreshSuccess": {"target": 0.995}})}
    differing = 0
    for name, group in default.items():
        for before, after in zip(group["rules"], changed[name]["rules"], strict=True):
            text = json.dumps(after)
            mentions_target = "(1 - 0.999)" in json.dumps(before)
            if before.get("labels", {}).get("slo") == "refresh_success" and mentions_target:
                assert "0.999" not in text, after
                assert "(1 - 0.995)" in text, after
                differing += 1
            else:
                assert before == after
    # the burn rate, the budget remaining and both alerts
    assert differing == 4


def test_the_latency_threshold_can_only_be_a_histogram_bucket() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    latency = schema["properties"]["monitoring"]["properties"]["slo"]["properties"][
        "refreshLatency"
    ]
    allowed = latency["properties"]["thresholdSeconds"]["enum"]
    assert allowed == [floatToGoString(bound) for bound in DURATION_BUCKETS]
    assert slo_rules.DEFAULT_LATENCY_THRESHOLD in allowed
    groups = chart_groups({"refreshLatency": {"target": 0.99, "thresholdSeconds": "0.5"}})
    text = json.dumps(groups)
    assert 'le=\\"0.5\\"' in text
    assert 'le=\\"0.3\\"' not in text


@pytest.mark.parametrize("scale", [60.0, 720.0])
def test_time_scaled_rules_are_valid(tmp_path: Path, scale: float) -> None:
    """The end-to-end test's rendering: every window divided by ``scale``, nothing else."""
    path = tmp_path / "slo.yaml"
    path.write_text(slo_rules.render(scale=scale))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    plain, scaled = rules(SLO_FILE.read_text()), rules(path.read_text())
    strip = re.compile(r"\[[0-9a-z]+\]|:[0-9]+[smhd]{1,2}\b|:rate[0-9]+[a-z]+\b")
    for before, after in zip(plain, scaled, strict=True):
        assert strip.sub("", before["expr"]) == strip.sub("", after["expr"])
        assert before.get("annotations") == after.get("annotations")


def test_the_dashboard_has_an_slo_row_reading_the_recorded_series() -> None:
    dashboard = json.loads(
        (ROOT / "manifests" / "grafana" / "token-sidecar-dashboard.json").read_text()
    )
    panels = dashboard["panels"]
    [row] = [p for p in panels if p["type"] == "row" and "objectives" in p["title"]]
    below = [p for p in panels if p["gridPos"]["y"] == row["gridPos"]["y"] + 1]
    exprs = {p["title"]: p["targets"][0]["expr"] for p in below}
    assert any("token_sidecar:slo_error_ratio:" in e for e in exprs.values()), exprs
    assert any("token_sidecar:slo_error_budget_remaining:ratio" in e for e in exprs.values())
    assert any("token_sidecar:slo_burn_rate:1h" in e for e in exprs.values())
    recorded = {rule["record"] for rule in rules(SLO_FILE.read_text()) if "record" in rule}
    for expr in exprs.values():
        for name in re.findall(r"\b(token_sidecar:[a-z_]+:[a-z0-9]+)\b", expr):
            assert name in recorded, name
        for variable in ("$namespace", "$pod", "$credential"):
            assert variable in expr
